"""Measurements of one object's mask, and conversions between masks and SAM's logits.

Conventions (as everywhere in napari-sam): points are ``(x, y)`` = (column, row)
in image pixels; a bounding box is ``(x0, y0, x1, y1)`` with ``x1``/``y1`` the
last column/row that holds the object (inclusive, like ``segment_anything``'s
``batched_mask_to_box``).

SAM's low-resolution logits (``predict``'s third result, and its ``mask_input``)
live on an ``L x L`` grid (256 for the official models, 128 for ``vit_tiny``)
that covers the image resized so that its longest side fills the grid and
padded at the bottom and right. One low-res pixel therefore spans
``max(H, W) / L`` image pixels in both directions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

#: Magnitude of the logits made from a binary mask (SAM's own are about +-5 to +-20).
MASK_LOGIT = 10.0


@dataclass(frozen=True)
class MaskStats:
    """Where an object is and how big.

    Attributes
    ----------
    area : int
        Pixels in the mask.
    bbox : tuple of int
        ``(x0, y0, x1, y1)``, inclusive.
    centroid : tuple of float
        ``(x, y)`` mean pixel position.
    """

    area: int
    bbox: tuple[int, int, int, int]
    centroid: tuple[float, float]

    @property
    def size(self) -> tuple[float, float]:
        """(width, height) of the bounding box in pixels."""
        x0, y0, x1, y1 = self.bbox
        return float(x1 - x0 + 1), float(y1 - y0 + 1)


def mask_stats(mask: np.ndarray) -> MaskStats | None:
    """Area, bounding box and centroid of a boolean mask (None when it is empty)."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    y0, y1, x0, x1 = int(rows[0]), int(rows[-1]), int(cols[0]), int(cols[-1])
    crop = mask[y0 : y1 + 1, x0 : x1 + 1]
    ys, xs = np.nonzero(crop)
    return MaskStats(
        area=int(ys.size),
        bbox=(x0, y0, x1, y1),
        centroid=(float(xs.mean()) + x0, float(ys.mean()) + y0),
    )


def crop_slices(bbox: tuple[int, int, int, int], shape: tuple[int, int], pad: int = 0):
    """``(rows, cols)`` slices of ``bbox`` grown by ``pad`` pixels, inside ``shape``."""
    x0, y0, x1, y1 = bbox
    return (
        slice(max(y0 - pad, 0), min(y1 + 1 + pad, shape[0])),
        slice(max(x0 - pad, 0), min(x1 + 1 + pad, shape[1])),
    )


def interior_point(mask: np.ndarray, bbox: tuple[int, int, int, int] | None = None) -> tuple[float, float] | None:
    """``(x, y)`` of the mask pixel farthest from the background (None when empty).

    A click there is inside the object even for thin, bent or ring-like shapes,
    where the centroid can fall outside.
    """
    if bbox is None:
        stats = mask_stats(mask)
        if stats is None:
            return None
        bbox = stats.bbox
    rows, cols = crop_slices(bbox, mask.shape, pad=1)
    crop = mask[rows, cols]
    if not crop.any():
        return None
    distance = ndi.distance_transform_edt(np.pad(crop, 1))[1:-1, 1:-1]
    r, c = np.unravel_index(int(np.argmax(distance)), distance.shape)
    return float(c + cols.start), float(r + rows.start)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean masks (0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b)) / union if union else 0.0


def shift_mask(mask: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The mask moved by ``(dx, dy)`` pixels (rounded), cut at the image border."""
    dx, dy = int(round(dx)), int(round(dy))
    out = np.zeros_like(mask)
    h, w = mask.shape
    if abs(dx) >= w or abs(dy) >= h:
        return out
    src_r = slice(max(-dy, 0), h - max(dy, 0))
    src_c = slice(max(-dx, 0), w - max(dx, 0))
    dst_r = slice(max(dy, 0), h - max(-dy, 0))
    dst_c = slice(max(dx, 0), w - max(-dx, 0))
    out[dst_r, dst_c] = mask[src_r, src_c]
    return out


def _grid_indices(n_image: int, longest: int, grid: int) -> np.ndarray:
    """For each of ``n_image`` image pixels along an axis, its low-res grid cell."""
    return np.minimum(((np.arange(n_image) + 0.5) * grid / longest).astype(np.intp), grid - 1)


def logits_to_mask(logits: np.ndarray, image_shape: tuple[int, int], threshold: float = 0.0) -> np.ndarray:
    """Low-res ``(L, L)`` logits -> ``(H, W)`` boolean mask (nearest grid cell)."""
    logits = np.asarray(logits).reshape(logits.shape[-2:])
    grid = logits.shape[-1]
    longest = max(image_shape)
    rows = _grid_indices(image_shape[0], longest, grid)
    cols = _grid_indices(image_shape[1], longest, grid)
    return logits[np.ix_(rows, cols)] > threshold


def mask_to_logits(mask: np.ndarray, grid: int, magnitude: float = MASK_LOGIT) -> np.ndarray:
    """``(H, W)`` boolean mask -> ``(1, L, L)`` float32 logits for SAM's ``mask_input``.

    A grid cell is positive when most of the image pixels it covers are in the mask;
    the padding is negative.
    """
    h, w = mask.shape
    longest = max(h, w)
    scale = longest / grid
    # cell centres, in image pixels, of the cells that cover the image
    n_rows = min(grid, int(np.ceil(h / scale)))
    n_cols = min(grid, int(np.ceil(w / scale)))
    inside = np.zeros((grid, grid), bool)
    if scale <= 1.0:  # the grid is finer than the image: sample
        r = np.minimum(((np.arange(n_rows) + 0.5) * scale).astype(np.intp), h - 1)
        c = np.minimum(((np.arange(n_cols) + 0.5) * scale).astype(np.intp), w - 1)
        inside[:n_rows, :n_cols] = mask[np.ix_(r, c)]
    else:  # average the pixels of each cell
        r_idx = _grid_indices(h, longest, grid)
        c_idx = _grid_indices(w, longest, grid)
        cell = (r_idx[:, None] * grid + c_idx[None, :]).ravel()
        counts = np.bincount(cell, minlength=grid * grid).reshape(grid, grid)
        sums = np.bincount(cell, weights=mask.ravel(), minlength=grid * grid).reshape(grid, grid)
        inside = sums > 0.5 * np.maximum(counts, 1.0)
    out = np.where(inside, magnitude, -magnitude).astype(np.float32)
    return out[None]


def shift_logits(logits: np.ndarray, dx: float, dy: float, image_shape: tuple[int, int]) -> np.ndarray:
    """Low-res logits moved by ``(dx, dy)`` image pixels; uncovered cells become negative."""
    logits = np.asarray(logits, dtype=np.float32)
    grid = logits.shape[-1]
    scale = grid / max(image_shape)
    sx, sy = int(round(dx * scale)), int(round(dy * scale))
    if sx == 0 and sy == 0:
        return logits
    flat = logits.reshape(logits.shape[-2:])
    out = np.full_like(flat, -MASK_LOGIT)
    n = grid
    if abs(sx) < n and abs(sy) < n:
        out[max(sy, 0) : n - max(-sy, 0), max(sx, 0) : n - max(-sx, 0)] = flat[
            max(-sy, 0) : n - max(sy, 0), max(-sx, 0) : n - max(sx, 0)
        ]
    return out.reshape(logits.shape)


def components(mask: np.ndarray, bbox: tuple[int, int, int, int]) -> list[np.ndarray]:
    """The connected pieces of ``mask`` (8-connected), largest first, as full-size masks."""
    rows, cols = crop_slices(bbox, mask.shape)
    labels, n = ndi.label(mask[rows, cols], structure=np.ones((3, 3), bool))
    if n <= 1:
        return [mask]
    sizes = np.bincount(labels.ravel())[1:]
    pieces = []
    for index in np.argsort(sizes)[::-1]:
        piece = np.zeros_like(mask)
        piece[rows, cols] = labels == index + 1
        pieces.append(piece)
    return pieces
