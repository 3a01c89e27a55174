"""Real photographs for checks and demos, from the package that ships them (scikit-image).

The one loader of sample photographs: the export's parity check, the precision gate, int8
calibration, ``ccnet predict --sample`` and the benches all read them here. It sits in the
lowest layer because the export build side (below the inference library) needs it too. Nothing
is downloaded: scikit-image carries these files.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

__all__ = ["SAMPLE_IMAGES", "sample_photograph"]

# the photographs ``ccnet predict --sample`` offers
SAMPLE_IMAGES = ("astronaut", "coffee", "camera")


@functools.cache
def _load(name: str) -> np.ndarray:
    import numpy as np  # here: the command line reads SAMPLE_IMAGES without loading numpy

    try:
        import skimage.data
    except ImportError:
        raise ValueError(
            f"the sample photograph {name!r} ships with scikit-image: "
            "pip install 'ccnet-stack[samples]'"
        ) from None
    loader = getattr(skimage.data, name, None)
    if loader is None or not callable(loader):
        raise ValueError(f"scikit-image has no sample image {name!r}")
    image = np.asarray(loader())
    if image.ndim == 2:  # grayscale (camera): three equal channels
        image = np.repeat(image[:, :, None], 3, axis=2)
    rgb = np.ascontiguousarray(image[..., :3], dtype=np.uint8)
    rgb.setflags(write=False)  # cached: shared by every caller
    return rgb


def sample_photograph(name: str) -> np.ndarray:
    """scikit-image's sample ``name`` as (H, W, 3) uint8 RGB (grayscale repeated, alpha
    dropped). The array is read-only (cached); copy it to change it.

    Raises:
        ValueError: scikit-image is missing (the message names the extra) or has no such image.
    """
    return _load(name)
