"""Lazy access to a large image, one RGB tile at a time, with one global contrast setting.

A 20,000 x 20,000 uint16 image is 800 MB as it is and 4.8 GB as float32 RGB:
it is never converted as a whole. The image stays whatever array-like it is
(numpy array, ``np.memmap``, tifffile/zarr/dask array); only tiles are read.

Contrast must not change from tile to tile, or one object would look different
on either side of a seam. For integer images wider than 8 bits and float images
the low/high values mapped to 0 and 255 are therefore computed once, from a
strided subsample of at most ``max_samples`` pixels, with the same rule as
:func:`src_core.preprocess.to_rgb` (percentiles of the finite values, jointly for
gray/RGB, per channel when ``channels`` is given; the full finite range when the
percentiles coincide). Each tile is then converted by ``to_rgb`` with those
limits and rounded to uint8. uint8 and bool images need no limits and pass
through exactly as ``to_rgb`` passes them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..preprocess import to_rgb
from .grid import Tile

__all__ = ["TiledImage", "sample_contrast_limits"]

DEFAULT_MAX_SAMPLES = 1 << 22  # 4 Mi pixels: 16 MB as float32, percentiles to ~0.01%


class TiledImage:
    """A large (Y, X) or (Y, X, C) image read tile by tile as uint8 RGB.

    Parameters
    ----------
    image : array-like
        Anything with ``shape``, ``dtype`` and numpy slicing (numpy array,
        ``np.memmap``, zarr or dask array); other objects go through
        ``np.asarray``. 2D grayscale or 3D with a channel axis.
    channel_axis : int, optional
        Axis of the channels in a 3D image, as for :func:`~src_core.preprocess.to_rgb`
        (default: the last axis if it has at most 4 entries, else the first).
    channels, contrast_limits, percentiles
        As for :func:`~src_core.preprocess.to_rgb`; ``percentiles`` are taken over a
        subsample (see the module notes).
    max_samples : int
        Upper bound on the pixels read to estimate the contrast limits.

    Raises
    ------
    ValueError
        If the image is not numeric, empty, smaller than 2x2, not 2D/3D, or the
        channel settings do not fit it.
    """

    def __init__(
        self,
        image: object,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        self.image = _array_like(image)
        self.dtype = np.dtype(self.image.dtype)
        self._channel_axis = _channel_axis(tuple(self.image.shape), channel_axis)
        spatial = [n for axis, n in enumerate(self.image.shape) if axis != self._channel_axis]
        self.shape: tuple[int, int] = (int(spatial[0]), int(spatial[1]))
        if min(self.shape) < 2:
            raise ValueError(
                f"Expected an image of at least 2x2 pixels, got {self.shape[0]}x{self.shape[1]} "
                f"(input shape {tuple(self.image.shape)})."
            )
        self.channels = channels
        self.percentiles = percentiles
        # to_rgb on a 2x2 stand-in checks channels, contrast limits and percentiles now
        corner = self._read(0, 0, 2, 2, 1)
        to_rgb(np.zeros(corner.shape, corner.dtype), **self._rgb_kwargs(contrast_limits))
        if contrast_limits is not None:
            self.contrast_limits = contrast_limits
        elif self.dtype in (np.uint8, np.bool_):
            self.contrast_limits = None
        else:
            self.contrast_limits = sample_contrast_limits(
                self, percentiles=percentiles, max_samples=max_samples
            )

    def __repr__(self) -> str:
        return (
            f"TiledImage(shape={self.shape}, dtype={self.dtype}, "
            f"contrast_limits={self.contrast_limits})"
        )

    def read(self, tile: Tile) -> np.ndarray:
        """The raw (h, w) or (h, w, C) pixels of ``tile`` (every ``tile.step``-th pixel)."""
        return self._read(tile.y0, tile.x0, tile.y1, tile.x1, tile.step)

    def read_rgb(self, tile: Tile) -> np.ndarray:
        """``tile`` as an (h, w, 3) uint8 RGB array, with the image's global contrast."""
        raw = self.read(tile)
        if raw.dtype.kind == "f" and not np.isfinite(raw).any():
            return np.zeros(raw.shape[:2] + (3,), dtype=np.uint8)  # e.g. NaN padding of a slide
        rgb = to_rgb(raw, **self._rgb_kwargs(self.contrast_limits))
        if rgb.dtype == np.uint8:
            return rgb
        return np.rint(rgb, out=rgb).astype(np.uint8)

    def sample(self, max_samples: int) -> np.ndarray:
        """Every k-th pixel in both directions, (h, w) or (h, w, C), at most ``max_samples`` pixels."""
        height, width = self.shape
        step = max(1, math.ceil(math.sqrt(height * width / max(1, int(max_samples)))))
        while math.ceil(height / step) * math.ceil(width / step) > max_samples and step < max(height, width):
            step += 1
        return self._read(0, 0, height, width, step)

    # -- internals --------------------------------------------------------------------

    def _read(self, y0: int, x0: int, y1: int, x1: int, step: int) -> np.ndarray:
        rows, cols = slice(y0, y1, step), slice(x0, x1, step)
        if self._channel_axis is None:
            return np.asarray(self.image[rows, cols])
        index = [rows, cols]
        index.insert(self._channel_axis, slice(None))
        return np.moveaxis(np.asarray(self.image[tuple(index)]), self._channel_axis, -1)

    def _rgb_kwargs(self, contrast_limits: object) -> dict:
        return {
            "channel_axis": None if self._channel_axis is None else -1,
            "channels": self.channels,
            "contrast_limits": contrast_limits,
            "percentiles": self.percentiles,
        }


def sample_contrast_limits(
    image: TiledImage, *, percentiles: Sequence[float] = (0.5, 99.5), max_samples: int = DEFAULT_MAX_SAMPLES
) -> list[tuple[float, float]]:
    """Contrast limits of a large image from a strided subsample, by :func:`to_rgb`'s rule.

    Parameters
    ----------
    image : TiledImage
        The image (its ``channels`` setting chooses the channels shown).
    percentiles : (low, high)
        Percentiles of the finite sampled values mapped to 0 and 255.
    max_samples : int
        Upper bound on the sampled pixels.

    Returns
    -------
    list of (float, float)
        One (low, high) pair per shown channel, ``low < high``.

    Raises
    ------
    ValueError
        If no sampled pixel is finite.
    """
    sample = image.sample(max_samples)
    hwc = sample[..., None] if sample.ndim == 2 else sample
    n = hwc.shape[-1]
    if image.channels is None:
        shown, joint = hwc[..., : min(n, 3)], True
    else:
        shown, joint = hwc[..., [int(c) for c in image.channels]], False
    narrow = shown.dtype.itemsize <= 2 or shown.dtype == np.float32
    data = shown.astype(np.float32 if narrow else np.float64)
    groups = [data] if joint else [data[..., i] for i in range(data.shape[-1])]
    limits = [_percentile_limits(group, percentiles, image) for group in groups]
    return limits * data.shape[-1] if joint else limits


def _percentile_limits(values: np.ndarray, percentiles: Sequence[float], image: TiledImage) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        raise ValueError(
            f"The sampled pixels of the image (shape {image.shape}) are all NaN or inf. "
            "Pass contrast_limits=(low, high) explicitly, or check the data."
        )
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = np.percentile(finite, [float(p) for p in percentiles])
    if not hi > lo:  # sparse signal: keep it visible, as to_rgb does
        lo, hi = finite.min(), finite.max()
    lo, hi = float(lo), float(hi)
    if not hi > lo:  # a constant sample: everything above it is bright
        hi = lo + 1.0
    return lo, hi


def _array_like(image: object) -> object:
    if image is None:
        raise ValueError("Expected an image array (Y, X) or (Y, X, C), got None.")
    if not (hasattr(image, "shape") and hasattr(image, "dtype") and hasattr(image, "__getitem__")):
        try:
            image = np.asarray(image)
        except Exception as err:  # ragged lists and the like
            raise ValueError(
                f"Expected an array-like image, got {type(image).__name__} ({err})."
            ) from None
    try:
        dtype = np.dtype(image.dtype)
    except TypeError:
        raise ValueError(
            f"Expected a numeric image, got {type(image).__name__} with dtype {image.dtype}."
        ) from None
    if dtype.kind not in "biuf":
        raise ValueError(
            f"Expected a real numeric image (bool, integer or float), got dtype {dtype}. "
            "Complex data: pass np.abs(image) or its real part."
        )
    shape = tuple(int(n) for n in image.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            f"Expected a 2D image (Y, X) or a 3D image with channels (Y, X, C) or (C, Y, X), "
            f"got {len(shape)}D data of shape {shape}. Pass stacks one 2D plane at a time."
        )
    if 0 in shape:
        raise ValueError(f"Expected a non-empty image, got shape {shape}.")
    return image


def _channel_axis(shape: tuple[int, ...], channel_axis: int | None) -> int | None:
    if len(shape) == 2:
        if channel_axis is not None:
            raise ValueError(
                f"channel_axis={channel_axis} was given but the image is 2D {shape}; "
                "pass channel_axis=None for grayscale images."
            )
        return None
    if channel_axis is None:
        if shape[-1] <= 4:
            return 2
        if shape[0] <= 4:
            return 0
        raise ValueError(
            f"Cannot tell which axis holds channels in an image of shape {shape}: "
            "neither the first nor the last axis has 4 or fewer entries. "
            "Pass channel_axis (e.g. channel_axis=-1 or 0)."
        )
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise ValueError(f"channel_axis must be an integer or None, got {channel_axis!r}.")
    if not -3 <= channel_axis <= 2:
        raise ValueError(
            f"channel_axis={channel_axis} is out of range for a 3D image of shape {shape}; use -3..2."
        )
    return int(channel_axis) % 3
