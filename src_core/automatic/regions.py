"""Small-region cleanup of masks, and painting many masks into one label image.

Cleanup follows Meta's reference (``remove_small_regions``, which uses OpenCV's
``connectedComponentsWithStats`` with 8-connectivity) with scipy instead:

* *holes*: connected regions (8-connected) of the mask's complement smaller than
  ``min_area`` pixels are filled. Like the reference, this includes small
  background regions cut off at the image border, not only enclosed holes.
* *islands*: connected regions (8-connected) of the mask smaller than
  ``min_area`` are removed; if every region is smaller, the largest is kept.

Holes are filled first, then islands removed. Masks are handled as their
bounding-box crops (plus a one-pixel ring standing in for the rest of the
image), so the cost follows the object's size, not the image's.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from ..rle import decode_segmentation

__all__ = [
    "bbox_crop",
    "clean_mask_crop",
    "masks_to_label_image",
    "remove_small_regions",
]

_EIGHT = np.ones((3, 3), dtype=bool)


def remove_small_regions(mask: np.ndarray, min_area: float, mode: str) -> tuple[np.ndarray, bool]:
    """Fill small holes (``mode="holes"``) or drop small islands (``"islands"``) of a full mask.

    Returns the new mask and whether anything changed. Semantics of the reference's
    function of the same name.
    """
    if mode not in ("holes", "islands"):
        raise ValueError(f"mode must be 'holes' or 'islands', got {mode!r}")
    mask = np.asarray(mask, dtype=bool)
    holes = mode == "holes"
    labels, count = ndimage.label(~mask if holes else mask, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = sizes < min_area
    if not small.any():
        return mask, False
    if holes:
        fill = np.concatenate([[True], small])  # label 0 (the mask itself) stays
    else:
        fill = np.concatenate([[False], ~small])
        if not fill.any():
            fill[_largest_label(labels, sizes)] = True
    return fill[labels], True


def _largest_label(labels: np.ndarray, sizes: np.ndarray, origin: tuple[int, int] = (0, 0)) -> int:
    """Label of the largest region; ties go to the region OpenCV numbers first.

    OpenCV's 8-connected labeling scans 2x2 blocks (row pairs, then column pairs),
    so its first region is the one reaching the earliest block, not the earliest
    pixel in raster order. ``origin`` places ``labels`` in the image (block parity).
    """
    largest = np.flatnonzero(sizes == sizes.max()) + 1
    if len(largest) == 1:
        return int(largest[0])
    rows, cols = np.nonzero(np.isin(labels, largest))
    block = ((rows + origin[0]) // 2) * (labels.shape[1] + origin[1] + 2) + (cols + origin[1]) // 2
    first = {}
    for label, key in zip(labels[rows, cols].tolist(), block.tolist()):
        if key < first.get(label, key + 1):
            first[label] = key
    return min(first, key=first.get)


def bbox_crop(mask: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The bounding-box crop of a boolean mask and its (row, column) origin; (0, 0) if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    if len(rows) == 0:
        return np.zeros((0, 0), dtype=bool), (0, 0)
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    return np.ascontiguousarray(mask[y0:y1, x0:x1]), (int(y0), int(x0))


def clean_mask_crop(
    crop: np.ndarray, origin: tuple[int, int], size: Sequence[int], min_area: float
) -> tuple[np.ndarray, tuple[int, int], bool]:
    """Fill small holes then remove small islands of a mask given as its bounding-box crop.

    Parameters
    ----------
    crop : numpy.ndarray
        The mask inside its bounding box (boolean).
    origin : (int, int)
        (row, column) of the crop in the image.
    size : (int, int)
        The image's (height, width).
    min_area : float
        Regions with fewer pixels are filled (holes) or removed (islands).

    Returns
    -------
    crop, origin, changed
        The cleaned mask's bounding-box crop, its origin, and whether it changed
        (it changed if either step found a small region, as in the reference).
    """
    height, width = int(size[0]), int(size[1])
    h, w = crop.shape
    y0, x0 = origin
    if h == 0 or w == 0:
        return _clean_full(_paste(crop, origin, size), min_area)
    pad = (y0 > 0, y0 + h < height, x0 > 0, x0 + w < width)  # top, bottom, left, right
    top, bottom, left, right = (int(p) for p in pad)
    # the complement, with a ring of background standing in for the image outside the box
    work = np.ones((h + top + bottom, w + left + right), dtype=bool)
    work[top : top + h, left : left + w] = ~crop
    labels, count = ndimage.label(work, structure=_EIGHT)
    inner = labels[top : top + h, left : left + w]
    sizes = np.bincount(inner.ravel(), minlength=count + 1)
    # each strip of the image outside the box belongs to the region of its ring side
    strips = [
        (top, (0, 0), y0 * width),
        (bottom, (-1, 0), (height - y0 - h) * width),
        (left, (top, 0), h * x0),
        (right, (top, -1), h * (width - x0 - w)),
    ]
    outside = set()
    for present, where, area in strips:
        if present:
            sizes[labels[where]] += area
            outside.add(int(labels[where]))
    small = sizes < min_area
    small[0] = False
    changed = bool(small.any())
    if changed:
        if any(small[label] for label in outside):
            # a whole strip outside the box gets filled: rare, do it on the full image
            return _clean_full(_paste(crop, origin, size), min_area)
        crop = crop | small[inner]
    # islands lie inside the box
    labels, count = ndimage.label(crop, structure=_EIGHT)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)[1:]
    small = sizes < min_area
    if small.any():
        keep = np.concatenate([[False], ~small])
        if not keep.any():
            keep[_largest_label(labels, sizes, (y0, x0))] = True
        crop, offset = bbox_crop(keep[labels])
        return crop, (y0 + offset[0], x0 + offset[1]), True
    return crop, (y0, x0), changed


def _paste(crop: np.ndarray, origin: tuple[int, int], size: Sequence[int]) -> np.ndarray:
    full = np.zeros((int(size[0]), int(size[1])), dtype=bool)
    h, w = crop.shape
    full[origin[0] : origin[0] + h, origin[1] : origin[1] + w] = crop
    return full


def _clean_full(mask: np.ndarray, min_area: float) -> tuple[np.ndarray, tuple[int, int], bool]:
    mask, filled = remove_small_regions(mask, min_area, "holes")
    mask, removed = remove_small_regions(mask, min_area, "islands")
    crop, origin = bbox_crop(mask)
    return crop, origin, filled or removed


def masks_to_label_image(
    records: Sequence[dict[str, Any]],
    shape: Sequence[int] | None = None,
    order: str = "area",
) -> np.ndarray:
    """Paint mask records into one non-overlapping uint32 label image.

    Record ``i`` gets label ``i + 1``; 0 is background. Where masks overlap, the
    one painted last wins:

    * ``order="area"`` (default): larger masks first, smaller ones on top, so an
      object inside a larger one (a nucleus in a cell, a window in a wall) keeps
      its own label;
    * ``order="predicted_iou"``: lower predicted IoU first, the best on top.

    Ties keep the records' order (the earlier record is painted first).

    Parameters
    ----------
    records : sequence of dict
        Output of :meth:`SamAutomaticMaskGenerator.generate` in any output mode
        (``segmentation`` as a boolean mask, an uncompressed RLE or a COCO RLE).
    shape : (int, int), optional
        (height, width) of the image; needed only when ``records`` is empty.
    order : {"area", "predicted_iou"}
        Painting order, see above.

    Returns
    -------
    numpy.ndarray
        (H, W) uint32 labels.
    """
    if order not in ("area", "predicted_iou"):
        raise ValueError(f"order must be 'area' or 'predicted_iou', got {order!r}")
    masks = [decode_segmentation(r["segmentation"]) for r in records]
    if shape is None:
        if not masks:
            raise ValueError("masks_to_label_image needs `shape` when there are no records")
        shape = masks[0].shape
    shape = (int(shape[0]), int(shape[1]))
    if any(m.shape != shape for m in masks):
        raise ValueError(f"every mask must have the image's shape {shape}")
    if len(records) >= np.iinfo(np.uint32).max:  # pragma: no cover
        raise ValueError("too many masks for a uint32 label image")
    if order == "area":
        keys = [-int(m.sum()) for m in masks]
    else:
        keys = [float(r["predicted_iou"]) for r in records]
    labels = np.zeros(shape, dtype=np.uint32)
    for index in sorted(range(len(masks)), key=lambda i: keys[i]):
        crop, (y0, x0) = bbox_crop(masks[index])
        region = labels[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]]
        region[crop] = index + 1
    return labels
