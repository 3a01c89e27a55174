"""The clip folder layout for CCNet3D: ``SPLIT/CLIP_ID/images/*`` + ``SPLIT/CLIP_ID/masks/*.png``.

Each clip is a folder; its frames are in name order (zero-pad the numbers), each with the mask
of the same stem (training ids, 255 = ignore). ``classes.json`` at the root as in the plain
folder layout. Other files in a clip folder (``ccnet synth`` writes ``corruptions.json``) are
ignored.
"""

from __future__ import annotations

from pathlib import Path

from ccnet.training.datasets.folder import infer_classes, pair_by_stem, read_classes_file
from ccnet.training.datasets.index import Frame, LabelMap, SplitIndex

__all__ = ["clip_folders", "index_clips"]


def clip_folders(split_dir: Path) -> list[Path]:
    """The clip folders of a split (those holding ``images/``), in name order."""
    if not split_dir.is_dir():
        raise ValueError(f"{split_dir}: folder not found")
    clips = [p for p in sorted(split_dir.iterdir()) if (p / "images").is_dir()]
    if not clips:
        raise ValueError(f"{split_dir}: no clips (expected CLIP_ID/images/ and CLIP_ID/masks/)")
    return clips


def index_clips(root: Path, split: str, *, progress: bool = True) -> SplitIndex:
    """The ``split`` of the clip data set at ``root``: every clip's frames, in order."""
    frames: list[Frame] = []
    clips: list[tuple[int, ...]] = []
    folders = clip_folders(root / split)
    for folder in folders:
        clip_frames = pair_by_stem(folder / "images", folder / "masks")
        clips.append(tuple(range(len(frames), len(frames) + len(clip_frames))))
        frames.extend(clip_frames)
    classes_file = root / "classes.json"
    if classes_file.is_file():
        classes, palette = read_classes_file(classes_file)
    else:
        masks = [
            f.mask
            for folder in clip_folders(root / "train")
            for f in pair_by_stem(folder / "images", folder / "masks")
            if f.mask
        ]
        classes, palette = infer_classes(masks, progress)
    return SplitIndex(
        root=root,
        split=split,
        layout="clips",
        frames=tuple(frames),
        classes=classes,
        palette=palette,
        label_map=LabelMap.identity(len(classes)),
        clips=tuple(clips),
        clip_names=tuple(folder.name for folder in folders),
    )
