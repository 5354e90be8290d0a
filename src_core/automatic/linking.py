"""3D instances from per-slice label images: link masks across slices by overlap.

Segmenting a stack slice by slice (e.g. segment everything per slice) gives each
slice its own ids. :func:`link_slices` renumbers them so that one object keeps one
id through the stack. The rules:

* **Matching.** Slices are processed in order. The objects of slice ``z`` are
  matched one-to-one to the objects of slice ``z - 1`` (after renumbering) by
  their intersection over union (IoU): the pairing maximizes the summed IoU
  (``scipy.optimize.linear_sum_assignment``) over pairs with ``IoU >= min_iou``.
  A matched object takes the id of its partner.
* **Appear / disappear.** An object with no partner gets a new id (the next
  unused one, in order of slices and, within a slice, of its input label). An
  object of ``z - 1`` with no partner ends: its id is not reused later, except
  across a gap (below).
* **Split.** When one object of ``z - 1`` overlaps two objects of ``z``, the
  one-to-one matching gives its id to one of them (the better overlap, as part of
  the best total pairing) and the other gets a new id. **Merge** is the mirror
  image: the merged object continues the id of its best partner, the other ends.
* **Gaps.** With ``max_gap = g > 0``, objects of ``z`` still unmatched after the
  step above are matched, the same way, to objects last seen in slice
  ``z - 1 - k`` (for ``k = 1 .. g``, nearest first), so an object missed in up
  to ``g`` slices keeps its id.
* **Labels are objects.** An input label is one object even if it is not
  connected; 0 is background; empty slices are fine (and count as a gap).

The work per slice pair is vectorized: labels are renumbered 0..n-1 and pixel
pairs counted as pair codes (``np.bincount``, or ``np.unique`` when the labels
or pairs are too many to count directly); only objects that overlap something
enter the assignment.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike
from scipy.optimize import linear_sum_assignment

__all__ = ["label_overlaps", "link_slices"]


def _check_labels(labels: ArrayLike, ndim: int | None, name: str) -> np.ndarray:
    array = np.asarray(labels)
    if ndim is not None and array.ndim != ndim:
        raise ValueError(
            f"{name} must be a {ndim}D integer label image "
            f"({'(Z, Y, X)' if ndim == 3 else '(Y, X)'}), got shape {array.shape}"
        )
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"{name} must hold integer labels (0 = background), got dtype {array.dtype}; "
            "convert masks or float images to integer labels first (e.g. scipy.ndimage.label)"
        )
    if array.size and array.min() < 0:
        raise ValueError(f"{name} must not hold negative labels (0 is background)")
    return array


def _compact(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.unique(flat, return_inverse=True, return_counts=True)`` of non-negative
    integers, by counting instead of sorting when the largest label is not huge."""
    top = int(flat.max()) if flat.size else 0
    if top > 4 * flat.size + 65536:
        return np.unique(flat, return_inverse=True, return_counts=True)
    counts = np.bincount(flat.astype(np.intp, copy=False), minlength=top + 1)
    ids = np.flatnonzero(counts)
    lut = np.zeros(top + 1, dtype=np.intp)
    lut[ids] = np.arange(len(ids))
    return ids.astype(flat.dtype), lut[flat], counts[ids]


def label_overlaps(previous: ArrayLike, current: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The IoU of every pair of overlapping objects of two label images.

    Parameters
    ----------
    previous, current : array-like
        Integer label images of the same shape (0 = background).

    Returns
    -------
    previous_ids, current_ids, iou : numpy.ndarray
        One entry per overlapping pair (sorted by ``previous_ids``, then
        ``current_ids``): the two labels and their intersection over union.
        Pairs that do not overlap are left out (their IoU is 0).
    """
    a = _check_labels(previous, None, "previous")
    b = _check_labels(current, None, "current")
    if a.shape != b.shape:
        raise ValueError(f"label images differ in shape: {a.shape} and {b.shape}")
    return _overlaps(a.ravel(), b.ravel())


def _overlaps(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`label_overlaps` of two flat, checked label arrays."""
    ids_a, inverse_a, area_a = _compact(a)
    ids_b, inverse_b, area_b = _compact(b)
    both = (a != 0) & (b != 0)
    codes = inverse_a[both].astype(np.int64) * len(ids_b) + inverse_b[both]
    bins = len(ids_a) * len(ids_b)
    if bins <= 4 * len(codes) + 65536:
        counts = np.bincount(codes, minlength=bins)
        pairs = np.flatnonzero(counts)
        intersection = counts[pairs]
    else:
        pairs, intersection = np.unique(codes, return_counts=True)
    index_a, index_b = np.divmod(pairs, len(ids_b))
    union = area_a[index_a] + area_b[index_b] - intersection
    return ids_a[index_a], ids_b[index_b], intersection / union


def _match(previous: np.ndarray, current: np.ndarray, min_iou: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (previous id, current id) maximizing summed IoU, each >= ``min_iou``."""
    ids_a, ids_b, iou = _overlaps(previous.ravel(), current.ravel())
    good = iou >= min_iou
    ids_a, ids_b, iou = ids_a[good], ids_b[good], iou[good]
    if not len(iou):
        return ids_a, ids_b
    rows, row_of = np.unique(ids_a, return_inverse=True)
    cols, col_of = np.unique(ids_b, return_inverse=True)
    matrix = np.zeros((len(rows), len(cols)))
    matrix[row_of, col_of] = iou
    r, c = linear_sum_assignment(matrix, maximize=True)
    kept = matrix[r, c] > 0  # a forced pairing of two non-overlapping objects is no match
    return rows[r[kept]], cols[c[kept]]


def link_slices(labels: ArrayLike, min_iou: float = 0.3, max_gap: int = 0) -> np.ndarray:
    """Give objects that continue from slice to slice one id through a stack.

    See the module documentation for the rules (matching, appearing and
    disappearing objects, splits and merges, gaps).

    Parameters
    ----------
    labels : array-like
        (Z, Y, X) integer labels, numbered independently per slice (0 = background).
    min_iou : float
        Smallest IoU, in (0, 1], for two objects of neighbouring slices to be one.
    max_gap : int
        Number of consecutive slices an object may be missing from and keep its id.

    Returns
    -------
    numpy.ndarray
        (Z, Y, X) uint32 labels, ids 1, 2, ... in order of first appearance.

    Raises
    ------
    ValueError
        When ``labels`` is not a 3D array of non-negative integers, or
        ``min_iou``/``max_gap`` are out of range.
    """
    stack = _check_labels(labels, 3, "labels")
    if not 0 < float(min_iou) <= 1:
        raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
    if int(max_gap) != max_gap or max_gap < 0:
        raise ValueError(f"max_gap must be a whole number of slices >= 0, got {max_gap}")
    max_gap = int(max_gap)
    out = np.zeros(stack.shape, dtype=np.uint32)
    last_seen = np.full(1, -1, dtype=np.int64)  # slice where each new id was last seen
    for z in range(stack.shape[0]):
        current = stack[z]
        ids, inverse, _ = _compact(current.ravel())
        inverse = inverse.reshape(current.shape)
        new = np.zeros(len(ids), dtype=np.int64)  # output id per input id; 0: none yet
        objects = ids != 0
        for distance in range(1, max_gap + 2):
            if z - distance < 0 or not np.any(objects & (new == 0)):
                break
            candidates = np.flatnonzero(last_seen == z - distance)
            if not len(candidates):
                continue
            previous = out[z - distance]
            if distance > 1:  # only objects that ended there, not ones seen since
                previous = np.where(np.isin(previous, candidates), previous, 0)
            open_ids = ids[objects & (new == 0)]
            pending = current
            if len(open_ids) < objects.sum():  # only the objects not matched yet
                pending = np.where(np.isin(current, open_ids), current, 0)
            old, cur = _match(previous, pending, min_iou)
            new[np.searchsorted(ids, cur)] = old
        fresh = objects & (new == 0)
        start = len(last_seen)
        if start + fresh.sum() > np.iinfo(np.uint32).max:  # pragma: no cover
            raise ValueError("too many objects for uint32 labels")
        new[fresh] = np.arange(start, start + int(fresh.sum()))
        last_seen = np.concatenate([last_seen, np.full(int(fresh.sum()), z, dtype=np.int64)])
        last_seen[new[objects]] = z
        out[z] = new[inverse]
    return out
