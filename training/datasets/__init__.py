"""Data sets for training and evaluation: layout readers, up-front checks, torch datasets.

``load_split`` lists a split of any supported layout (plain folder, clips, Cityscapes, CamVid,
ADE20K), ``check_split`` verifies it file by file, and ``FrameDataset`` / ``ClipDataset``
turn it into samples for a ``DataLoader``.
"""

from ccnet.training.datasets.dataset import ClipDataset, FrameDataset
from ccnet.training.datasets.index import IGNORE_INDEX, Frame, LabelMap, Layout, SplitIndex
from ccnet.training.datasets.layouts import LAYOUTS, detect_layout, load_split
from ccnet.training.datasets.validation import check_split

__all__ = [
    "IGNORE_INDEX",
    "LAYOUTS",
    "ClipDataset",
    "Frame",
    "FrameDataset",
    "LabelMap",
    "Layout",
    "SplitIndex",
    "check_split",
    "detect_layout",
    "load_split",
]
