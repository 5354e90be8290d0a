"""Upscale one low-resolution mask's logits only where they can matter.

SAM's masks come out of the decoder as (256, 256) logits. ``Sam.postprocess_masks``
resizes them bilinearly to the encoder's square input (1024), crops away the
padding, and resizes again to the original image. Every output pixel is therefore
a convex combination of a few low-resolution logits: when all of those are at or
below a threshold, so is the pixel. The automatic mask generator only counts
pixels above three thresholds (-1, 0, +1 around the mask threshold), so pixels
whose low-resolution neighbourhood lies entirely below the lowest one contribute
nothing and need not be computed.

:class:`LogitUpsampler` computes the same two bilinear resizes (same source
indices and weights as ``torch.nn.functional.interpolate`` with
``align_corners=False``) but only inside the window of output pixels that can
exceed the lowest threshold. A small object in a large image costs in proportion
to its size; values agree with ``postprocess_masks`` to float rounding.

It works in numpy: on small CPUs shared with other work, torch's multi-threaded
elementwise kernels spend more time synchronizing than computing on arrays this size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["LogitUpsampler", "linear_taps"]


@dataclass(frozen=True)
class _Taps:
    """Source indices and weights of a 1D bilinear resize, one entry per output index."""

    index0: np.ndarray
    index1: np.ndarray
    weight0: np.ndarray
    weight1: np.ndarray


def linear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and weights of ``interpolate(mode="bilinear", align_corners=False)`` on one axis.

    Read off PyTorch's own kernel (resizing an identity matrix), so that the weights
    are bit-for-bit the ones ``postprocess_masks`` uses. Returns ``index0, index1,
    weight0, weight1`` with one entry per output index; ``index1`` is ``index0 + 1``
    (or ``index0`` at the last input) and a weight may be 0.
    """
    dst = np.arange(out_size)
    if in_size == out_size:
        ones = np.ones(out_size, dtype=np.float32)
        return dst, dst, ones, np.zeros(out_size, dtype=np.float32)
    probe = torch.eye(in_size, dtype=torch.float32)[None, None]
    weights = F.interpolate(probe, (out_size, in_size), mode="bilinear", align_corners=False)
    weights = weights[0, 0].numpy()
    nonzero = weights != 0
    index0 = np.argmax(nonzero, axis=1)
    index1 = np.minimum(index0 + 1, in_size - 1)
    weight0 = weights[dst, index0]
    weight1 = np.where(index1 != index0, weights[dst, index1], 0).astype(np.float32)
    return index0, index1, weight0.astype(np.float32), weight1


def _to_taps(index0, index1, weight0, weight1) -> _Taps:
    return _Taps(
        np.ascontiguousarray(index0, dtype=np.intp),
        np.ascontiguousarray(index1, dtype=np.intp),
        np.ascontiguousarray(weight0, dtype=np.float32),
        np.ascontiguousarray(weight1, dtype=np.float32),
    )


class _Axis:
    """Both resizes along one axis: low-res -> square input -> (cropped) -> original."""

    def __init__(self, low_res: int, square: int, valid: int, original: int) -> None:
        first = linear_taps(low_res, square)
        # the square is cropped to its first `valid` entries before the second resize
        self.first = _to_taps(*(a[:valid] for a in first))
        self.resized = valid != original
        if self.resized:
            second = linear_taps(valid, original)
            self.second = _to_taps(*second)
            support_lo = first[0][second[0]]
            support_hi = first[1][second[1]]
        else:
            support_lo, support_hi = first[0][:valid], first[1][:valid]
        # low-res index range each output index reads from (non-decreasing)
        self.support_lo = support_lo
        self.support_hi = support_hi
        self.low_res_used = int(support_hi.max()) + 1 if original else 0

    def window(self, lo: int, hi: int) -> tuple[int, int] | None:
        """Output index range [start, stop) reading any low-res index in [lo, hi]."""
        start = int(np.searchsorted(self.support_hi, lo, side="left"))
        stop = int(np.searchsorted(self.support_lo, hi, side="right"))
        return (start, stop) if start < stop else None

    def plan(self, start: int, stop: int):
        """Taps for outputs [start, stop), rebased onto the sources they read."""
        if self.resized:
            second = _slice(self.second, start, stop)
            mid_lo = int(second.index0[0])
            mid_hi = int(second.index1[-1]) + 1
            second = _rebase(second, mid_lo)
        else:
            second, mid_lo, mid_hi = None, start, stop
        first = _slice(self.first, mid_lo, mid_hi)
        low_lo = int(first.index0[0])
        low_hi = int(first.index1[-1]) + 1
        return (low_lo, low_hi), _rebase(first, low_lo), second


def _slice(taps: _Taps, start: int, stop: int) -> _Taps:
    return _Taps(
        taps.index0[start:stop], taps.index1[start:stop], taps.weight0[start:stop], taps.weight1[start:stop]
    )


def _rebase(taps: _Taps, origin: int) -> _Taps:
    return _Taps(taps.index0 - origin, taps.index1 - origin, taps.weight0, taps.weight1)


def _resize_columns(x: np.ndarray, taps: _Taps) -> np.ndarray:
    out = np.take(x, taps.index0, axis=1)
    out *= taps.weight0
    other = np.take(x, taps.index1, axis=1)
    other *= taps.weight1
    out += other
    return out


def _resize_rows(x: np.ndarray, taps: _Taps) -> np.ndarray:
    out = np.take(x, taps.index0, axis=0)
    out *= taps.weight0[:, None]
    other = np.take(x, taps.index1, axis=0)
    other *= taps.weight1[:, None]
    out += other
    return out


class LogitUpsampler:
    """``Sam.postprocess_masks`` for one mask at a time, restricted to where it matters.

    Parameters
    ----------
    low_res_size : int
        Side of the decoder's logits (256).
    square_size : int
        Side of the encoder's square input (1024).
    input_size : (int, int)
        The resized image inside the square, (h, w).
    original_size : (int, int)
        The image the masks are for, (H, W).
    floor : float
        Output pixels that cannot exceed this value are not computed.
    """

    def __init__(
        self,
        low_res_size: int,
        square_size: int,
        input_size: tuple[int, int],
        original_size: tuple[int, int],
        floor: float,
    ) -> None:
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.rows = _Axis(low_res_size, square_size, int(input_size[0]), self.original_size[0])
        self.cols = _Axis(low_res_size, square_size, int(input_size[1]), self.original_size[1])
        self.floor = float(floor)

    def active(self, low_res: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which low-res rows and columns of (K, h, w) logits exceed the floor, (K, h), (K, w)."""
        used = low_res[:, : self.rows.low_res_used, : self.cols.low_res_used] > self.floor
        return used.any(axis=2), used.any(axis=1)

    def window(
        self, low_res: np.ndarray, rows: np.ndarray, cols: np.ndarray
    ) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Logits of one (h, w) low-res mask in the output window that can exceed the floor.

        ``rows``/``cols`` are that mask's entries from :meth:`active`. Returns the
        window's logits and its (row, column) origin in the original image, or None
        when no output pixel can exceed the floor.
        """
        row_idx = np.flatnonzero(rows)
        col_idx = np.flatnonzero(cols)
        if len(row_idx) == 0 or len(col_idx) == 0:
            return None
        out_rows = self.rows.window(int(row_idx[0]), int(row_idx[-1]))
        out_cols = self.cols.window(int(col_idx[0]), int(col_idx[-1]))
        if out_rows is None or out_cols is None:
            return None
        (r0, r1), first_r, second_r = self.rows.plan(*out_rows)
        (c0, c1), first_c, second_c = self.cols.plan(*out_cols)
        x = low_res[r0:r1, c0:c1]
        # same order of operations as interpolate: columns, then rows, per resize
        x = _resize_rows(_resize_columns(x, first_c), first_r)
        if second_c is not None:
            x = _resize_columns(x, second_c)
        if second_r is not None:
            x = _resize_rows(x, second_r)
        return x, (out_rows[0], out_cols[0])
