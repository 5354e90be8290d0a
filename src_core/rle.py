"""Run-length encodings of binary masks, in the formats COCO and Meta's SAM use.

An *uncompressed RLE* is ``{"size": [h, w], "counts": [n0, n1, ...]}``: run lengths
of alternating False/True pixels in column-major (Fortran) order, always starting
with a False run (0 when the first pixel is True), no trailing empty run. A *COCO
RLE* is the same run lengths compressed to a string by pycocotools.

The encoders here work on a mask's bounding-box crop placed in a larger frame, so
that small objects in large images cost time in proportion to their box, not to
the image.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "area_from_rle",
    "coco_decode_rle",
    "coco_encode_rle",
    "crop_to_rle",
    "decode_segmentation",
    "mask_to_rle",
    "masks_to_rles",
    "rle_to_mask",
    "rle_to_crop",
]

Rle = dict[str, Any]


def crop_to_rle(
    crop: np.ndarray, origin: Sequence[int], size: Sequence[int]
) -> Rle:
    """Uncompressed RLE of a (h, w) boolean ``crop`` placed at ``origin`` in a frame.

    Parameters
    ----------
    crop : numpy.ndarray
        (h, w) boolean mask of a region of the frame.
    origin : (int, int)
        (row, column) of the crop's top-left pixel in the frame.
    size : (int, int)
        (height, width) of the frame; everything outside the crop is False.

    Returns
    -------
    dict
        ``{"size": [H, W], "counts": [...]}`` with Python int counts.
    """
    crop = np.asarray(crop, dtype=bool)
    height, width = int(size[0]), int(size[1])
    y0, x0 = int(origin[0]), int(origin[1])
    h, w = crop.shape
    if y0 < 0 or x0 < 0 or y0 + h > height or x0 + w > width:
        raise ValueError(
            f"a {h}x{w} crop at (row {y0}, column {x0}) does not fit in a {height}x{width} frame"
        )
    # per column (column-major order): +1 where a run of True starts, -1 one past its end
    padded = np.zeros((w, h + 2), dtype=np.int8)
    padded[:, 1:-1] = crop.T
    edges = np.flatnonzero(np.diff(padded, axis=1))
    column, row = np.divmod(edges, h + 1)
    positions = (column + x0) * height + y0 + row
    if len(positions) > 2:
        # a run ending at the foot of a column and one starting at the head of the
        # next are a single run in the frame's column-major order
        touching = positions[1:-1:2] == positions[2::2]
        if touching.any():
            drop = np.zeros(len(positions), dtype=bool)
            ends = 1 + 2 * np.flatnonzero(touching)
            drop[ends] = drop[ends + 1] = True
            positions = positions[~drop]
    return {"size": [height, width], "counts": _counts(positions, height * width)}


def _counts(positions: np.ndarray, total: int) -> list[int]:
    """Run lengths from sorted change positions (start, end, start, end, ...)."""
    bounds = np.empty(len(positions) + 2, dtype=np.int64)
    bounds[0], bounds[-1] = 0, total
    bounds[1:-1] = positions
    counts = np.diff(bounds)
    if len(positions) and positions[-1] == total:
        counts = counts[:-1]  # the mask ends with a True run: no empty False run after it
    return counts.tolist()


def mask_to_rle(mask: np.ndarray) -> Rle:
    """Uncompressed RLE of one (H, W) boolean mask."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2D (H, W), got shape {mask.shape}")
    return crop_to_rle(mask, (0, 0), mask.shape)


def masks_to_rles(masks: Any) -> list[Rle]:
    """Uncompressed RLEs of a (B, H, W) stack of boolean masks (numpy or torch).

    Same output as the reference's ``mask_to_rle_pytorch``. Each mask is encoded
    from its bounding-box crop, so the work beyond finding the box follows the
    object's size rather than the image's.
    """
    if hasattr(masks, "detach"):
        masks = masks.detach().cpu().numpy()
    masks = np.asarray(masks, dtype=bool)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (B, H, W), got shape {masks.shape}")
    rles = []
    for mask in masks:
        rows = np.flatnonzero(mask.any(axis=1))
        if len(rows) == 0:
            rles.append(crop_to_rle(mask[:0, :0], (0, 0), mask.shape))
            continue
        cols = np.flatnonzero(mask.any(axis=0))
        y0, x0 = rows[0], cols[0]
        rles.append(crop_to_rle(mask[y0 : rows[-1] + 1, x0 : cols[-1] + 1], (y0, x0), mask.shape))
    return rles


def rle_to_mask(rle: Rle) -> np.ndarray:
    """(H, W) boolean mask of an uncompressed RLE (C-contiguous)."""
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    if counts.sum() != height * width:
        raise ValueError(
            f"RLE counts add up to {counts.sum()} pixels but its size is {height}x{width}"
        )
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return np.ascontiguousarray(flat.reshape(width, height).T)


def rle_to_crop(rle: Rle) -> tuple[np.ndarray, tuple[int, int]]:
    """The bounding-box crop of an uncompressed RLE's mask and its (row, column) origin.

    An empty mask gives a (0, 0) crop at (0, 0).
    """
    height, width = (int(v) for v in rle["size"])
    counts = np.asarray(rle["counts"], dtype=np.int64)
    ends = np.cumsum(counts)
    starts = ends - counts
    starts, ends = starts[1::2], ends[1::2]
    nonempty = ends > starts
    starts, ends = starts[nonempty], ends[nonempty]
    if len(starts) == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    x0, x1 = int(starts[0] // height), int((ends[-1] - 1) // height)
    first_rows = starts % height
    last_rows = (ends - 1) % height
    spans_columns = (ends - 1) // height > starts // height
    y0 = 0 if spans_columns.any() else int(first_rows.min())
    y1 = height - 1 if spans_columns.any() else int(last_rows.max())
    crop_h, crop_w = y1 - y0 + 1, x1 - x0 + 1
    # paint the runs into a column-major buffer of the box's columns
    flat = np.zeros(crop_w * height + 1, dtype=np.int8)
    offset = x0 * height
    np.add.at(flat, starts - offset, 1)
    np.add.at(flat, ends - offset, -1)
    columns = np.cumsum(flat[:-1]).astype(bool).reshape(crop_w, height)
    return np.ascontiguousarray(columns[:, y0 : y1 + 1].T), (y0, x0)


def area_from_rle(rle: Rle) -> int:
    """Number of True pixels of an uncompressed RLE."""
    return int(sum(rle["counts"][1::2]))


def coco_encode_rle(rle: Rle) -> Rle:
    """Compress an uncompressed RLE to COCO's string form (JSON-serializable).

    Needs ``pycocotools``.
    """
    mask_utils = _pycocotools()
    height, width = rle["size"]
    encoded = mask_utils.frPyObjects(rle, height, width)
    encoded["counts"] = encoded["counts"].decode("utf-8")
    return encoded


def coco_decode_rle(rle: Rle) -> np.ndarray:
    """(H, W) boolean mask of a COCO RLE (string or bytes counts). Needs ``pycocotools``."""
    mask_utils = _pycocotools()
    counts = rle["counts"]
    if isinstance(counts, str):
        rle = {"size": list(rle["size"]), "counts": counts.encode("utf-8")}
    return mask_utils.decode(rle).astype(bool)


def decode_segmentation(segmentation: Any) -> np.ndarray:
    """(H, W) boolean mask of a record's segmentation in any of the three output modes."""
    if isinstance(segmentation, dict):
        if isinstance(segmentation.get("counts"), (str, bytes)):
            return coco_decode_rle(segmentation)
        return rle_to_mask(segmentation)
    mask = np.asarray(segmentation)
    if mask.ndim != 2:
        raise ValueError(f"a segmentation must be a 2D mask or an RLE dict, got shape {mask.shape}")
    return mask.astype(bool, copy=False)


def _pycocotools():
    try:
        from pycocotools import mask as mask_utils
    except ImportError as err:  # pragma: no cover - pycocotools is a dependency
        raise ImportError(
            "COCO RLEs need pycocotools: `pip install pycocotools`, "
            "or use output_mode='uncompressed_rle'"
        ) from err
    return mask_utils

