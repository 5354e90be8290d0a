"""When an image is large enough to be prompted tile by tile, and how to open one lazily.

One rule for the plugin and the command line: a plane whose long side exceeds
:data:`LARGE_FACTOR` times the model input (4,096 px for SAM's 1024-px models,
2,048 px for the 512-px vit_tiny) is tiled with tiles of the model input and a
quarter of it as overlap. Smaller planes are embedded whole, resized to the
model input, exactly as SAM does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LARGE_FACTOR", "open_image_lazily", "tiling_plan"]

LARGE_FACTOR = 4
DEFAULT_MODEL_SIZE = 1024  # predictors that do not say their input size (stand-ins)


def tiling_plan(shape: Sequence[int], model_size: int | None) -> tuple[int, int] | None:
    """(tile_size, overlap) for a plane of ``shape`` (height, width, ...), or None to embed it whole.

    Parameters
    ----------
    shape : sequence of int
        (height, width) of the plane (more entries are ignored).
    model_size : int or None
        The image encoder's input size (None: 1024).
    """
    size = int(model_size or DEFAULT_MODEL_SIZE)
    if max(int(shape[0]), int(shape[1])) <= LARGE_FACTOR * size:
        return None
    return size, size // 4


def open_image_lazily(path: str | os.PathLike) -> Any:
    """The pixels of an image file, memory-mapped when the file allows it.

    Uncompressed TIFFs (one contiguous series) come back as a read-only
    ``np.memmap``: a 20,000 x 20,000 uint16 TIFF then costs no memory until tiles
    are read. Compressed TIFFs and other formats are read whole, in their own
    dtype (never as float).

    Raises
    ------
    OSError, ValueError
        From the readers, for files that are missing or not images.
    """
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        try:
            return tifffile.memmap(path, mode="r")
        except ValueError:  # compressed or not contiguous: read it as it is
            return tifffile.imread(path)
    import imageio.v3 as iio

    return np.asarray(iio.imread(path))
