"""Turn what scientists have into what SAM expects.

Microscopy and other scientific images come as 16-bit, float, signed,
multichannel or channels-first data, often with NaN or inf. SAM expects an
(H, W, 3) RGB image with values in [0, 255], resized so that its longest
side is the encoder's input size. This module does that conversion, the
resize, and the matching transform of point and box prompts.

uint8 RGB input passes through unchanged and is resized with PIL exactly as
Meta's reference does, so results on ordinary photographs are bit-identical.
"""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "blank_value",
    "preprocess_shape",
    "to_rgb",
    "resize_longest_side",
    "transform_coords",
    "transform_boxes",
    "image_to_tensor",
]

ArrayLike = Union[np.ndarray, Sequence]


def blank_value(image: object) -> float | None:
    """The one value of a blank image (every pixel the same: all zeros, a constant), else None.

    A multichannel (Y, X, C) image with C <= 4 is blank when every channel is
    constant; NaN and inf are ignored (all-NaN is blank, value NaN). SAM has nothing
    to segment in such a plane: whatever mask it returns is arbitrary (on an all-zero
    16-bit plane, a mask of almost every pixel), so callers refuse or warn.
    """
    a = np.asarray(image)
    if a.size == 0 or a.dtype.kind not in "buif":
        return None
    columns = a.reshape(-1, a.shape[-1]) if a.ndim == 3 and a.shape[-1] <= 4 else a.reshape(-1, 1)
    if a.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            finite = np.where(np.isfinite(columns), columns, np.nan)
            if np.isnan(finite).all():
                return float("nan")
            lo, hi = np.nanmin(finite, axis=0), np.nanmax(finite, axis=0)
    else:
        lo, hi = columns.min(axis=0), columns.max(axis=0)
    same = (lo == hi) | np.isnan(lo)
    return float(np.nan_to_num(lo, nan=0.0)[0]) if same.all() else None


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a positive integer, got {value!r}.")
    if value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value}.")
    return int(value)


def _original_size(original_size: Sequence[int]) -> tuple[int, int]:
    try:
        h, w = original_size
    except (TypeError, ValueError):
        raise ValueError(
            f"original_size must be the image's (height, width), got {original_size!r}."
        ) from None
    return _positive_int("original_size height", h), _positive_int("original_size width", w)


def preprocess_shape(h: int, w: int, long_side: int) -> tuple[int, int]:
    """Size (h, w) of an image resized so that its longest side is ``long_side``.

    Rounds like Meta's reference (``int(x * scale + 0.5)``).

    Parameters
    ----------
    h, w : int
        Original height and width in pixels.
    long_side : int
        Target length of the longest side (1024 for SAM).

    Returns
    -------
    tuple of int
        The resized (height, width).
    """
    h = _positive_int("h", h)
    w = _positive_int("w", w)
    long_side = _positive_int("long_side", long_side)
    scale = long_side * 1.0 / max(h, w)
    return int(h * scale + 0.5), int(w * scale + 0.5)


# --------------------------------------------------------------------------
# to_rgb
# --------------------------------------------------------------------------


def _as_numeric_array(image: object) -> np.ndarray:
    if image is None:
        raise ValueError(
            "Expected an image array (H, W), (H, W, C) or (C, H, W), got None. "
            "Pass the image data, e.g. a napari layer's `.data`."
        )
    try:
        array = np.asarray(image)
    except Exception as err:  # ragged lists, GPU tensors, ...
        raise ValueError(
            f"Expected an array-like image, got {type(image).__name__} that numpy "
            f"cannot convert ({err}). Pass a numpy array (move GPU tensors to the CPU)."
        ) from None
    if array.dtype.kind == "c":
        raise ValueError(
            f"Expected a real-valued image, got complex dtype {array.dtype}. "
            "Pass the magnitude (np.abs) or the real part instead."
        )
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"Expected a numeric image (bool, integer or float), got "
            f"{type(image).__name__} with dtype {array.dtype}."
        )
    return array


def _to_channels_last(array: np.ndarray, channel_axis: int | None) -> np.ndarray:
    """Validate dimensions and return an (H, W, C) view."""
    if array.ndim not in (2, 3):
        hint = (
            " Stacks (Z, T, ...) must be passed one 2D slice at a time."
            if array.ndim > 3
            else ""
        )
        raise ValueError(
            f"Expected a 2D image (H, W) or a 3D image with channels (H, W, C) or "
            f"(C, H, W), got {array.ndim}D data of shape {array.shape}.{hint}"
        )
    if 0 in array.shape:
        raise ValueError(f"Expected a non-empty image, got shape {array.shape}.")
    if array.ndim == 2:
        if channel_axis is not None:
            raise ValueError(
                f"channel_axis={channel_axis} was given but the image is 2D "
                f"{array.shape}; pass channel_axis=None for grayscale images."
            )
        return array[:, :, None]
    if channel_axis is None:
        if array.shape[-1] <= 4:
            channel_axis = -1
        elif array.shape[0] <= 4:
            channel_axis = 0
        else:
            raise ValueError(
                f"Cannot tell which axis holds channels in an image of shape "
                f"{array.shape}: neither the first nor the last axis has 4 or fewer "
                "entries. Pass channel_axis (e.g. channel_axis=-1 or 0)."
            )
    if isinstance(channel_axis, bool) or not isinstance(channel_axis, (int, np.integer)):
        raise ValueError(f"channel_axis must be an integer or None, got {channel_axis!r}.")
    if not -3 <= channel_axis <= 2:
        raise ValueError(
            f"channel_axis={channel_axis} is out of range for a 3D image of shape "
            f"{array.shape}; use -3..2."
        )
    return np.moveaxis(array, int(channel_axis), -1)


def _select_channels(
    hwc: np.ndarray, channels: Sequence[int] | None
) -> tuple[np.ndarray, bool]:
    """Return the (H, W, k) channels to show (k in 1..3) and whether to normalize jointly."""
    n = hwc.shape[-1]
    if channels is None:
        if n == 1:
            return hwc, True
        if n in (3, 4):
            return hwc[..., :3], True
        raise ValueError(
            f"The image has {n} channels; SAM sees at most 3 (as RGB). Pass "
            f"channels=[i] (shown as gray), [i, j] (red, green) or [i, j, k] (RGB) "
            f"with indices in 0..{n - 1}."
        )
    try:
        indices = list(channels)
    except TypeError:
        indices = []
    is_index = [isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in indices]
    if not 1 <= len(indices) <= 3 or not all(is_index):
        raise ValueError(
            f"channels must be a sequence of 1 to 3 integer channel indices, "
            f"got {channels!r}."
        )
    indices = [int(c) for c in indices]
    for c in indices:
        if not -n <= c < n:
            raise ValueError(
                f"Channel index {c} is out of range: the image has {n} channel(s) "
                f"(indices 0..{n - 1}). Check channels and channel_axis."
            )
    return hwc[..., indices], False


def _parse_limits(contrast_limits: object, k: int) -> list[tuple[float, float]]:
    limits = np.asarray(contrast_limits, dtype=np.float64)
    if limits.shape == (2,):
        limits = np.broadcast_to(limits, (k, 2))
    if limits.shape != (k, 2):
        raise ValueError(
            f"contrast_limits must be (low, high) or one (low, high) pair per shown "
            f"channel ({k}), got {contrast_limits!r}."
        )
    if not np.isfinite(limits).all() or not (limits[:, 0] < limits[:, 1]).all():
        raise ValueError(
            f"contrast_limits must be finite with low < high, got {contrast_limits!r}."
        )
    return [(float(lo), float(hi)) for lo, hi in limits]


def _parse_percentiles(percentiles: Sequence[float]) -> tuple[float, float]:
    try:
        lo, hi = (float(p) for p in percentiles)
    except (TypeError, ValueError):
        raise ValueError(
            f"percentiles must be a (low, high) pair, got {percentiles!r}."
        ) from None
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles!r}.")
    return lo, hi


def _percentile_limits(values: np.ndarray, percentiles: tuple[float, float]) -> tuple[float, float]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return 0.0, 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        lo, hi = np.percentile(finite, percentiles)
    if not hi > lo:
        # Sparse signal (e.g. a few bright spots) can collapse the percentile
        # range; fall back to the full range so that it stays visible.
        lo, hi = finite.min(), finite.max()
    return float(lo), float(hi)


def _scale_to_255(data: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map [lo, hi] linearly onto [0, 255]; NaN -> 0, +inf -> 255, -inf -> 0."""
    lo_w, hi_w = data.dtype.type(lo), data.dtype.type(hi)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        if hi_w > lo_w:
            scaled = (data - lo_w) / (hi_w - lo_w) * data.dtype.type(255)
            np.clip(scaled, 0, 255, out=scaled)
            scaled[np.isnan(scaled)] = 0
        else:  # constant image: no contrast to stretch
            scaled = np.where(data > lo_w, 255.0, 0.0)
    return scaled


def to_rgb(
    image: ArrayLike,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
) -> np.ndarray:
    """Convert a scientific image to the (H, W, 3) RGB image SAM expects.

    Parameters
    ----------
    image : array-like
        2D grayscale (H, W), or 3D with a channel axis: RGB, RGBA or any
        number of channels. Any real dtype (bool, integer, float); NaN and
        inf are allowed.
    channel_axis : int, optional
        Axis holding channels in a 3D image. When omitted: the last axis if
        it has at most 4 entries, else the first axis if it has at most 4,
        else a ValueError asks for it.
    channels : sequence of int, optional
        1 to 3 channel indices to show: one is shown as gray, two as red and
        green (blue stays 0), three as RGB. Required unless the image has 1
        (gray), 3 (RGB) or 4 (RGBA; alpha is dropped) channels.
    contrast_limits : (low, high) or sequence of (low, high), optional
        Values mapped to 0 and 255 (clipped outside), e.g. a napari layer's
        ``contrast_limits``; one pair for all shown channels or one per
        shown channel. Overrides ``percentiles``.
    percentiles : (low, high)
        Percentiles of the finite values mapped to 0 and 255 when no
        ``contrast_limits`` are given: jointly over R, G and B for gray/RGB/
        RGBA images, per channel when ``channels`` is given. If they
        coincide (e.g. sparse bright spots), the full finite range is used.

    Returns
    -------
    numpy.ndarray
        A new (H, W, 3) array. uint8 with the original values when the input
        is uint8 (or bool, as 0/255) and no ``contrast_limits`` are given;
        otherwise float32 in [0, 255] with NaN -> 0, +inf -> 255, -inf -> 0.
        A constant image becomes 0.

    Raises
    ------
    ValueError
        If the image is None, not numeric, complex, empty, not 2D/3D, smaller
        than 2x2 pixels or has no finite pixel, or if ``channel_axis``,
        ``channels``, ``contrast_limits`` or ``percentiles`` do not fit it.
    """
    array = _as_numeric_array(image)
    hwc = _to_channels_last(array, channel_axis)
    if hwc.shape[0] < 2 or hwc.shape[1] < 2:
        raise ValueError(
            f"Expected an image of at least 2x2 pixels, got {hwc.shape[0]}x{hwc.shape[1]} "
            f"(input shape {array.shape}). Check channel_axis if the image has channels."
        )
    shown, joint = _select_channels(hwc, channels)
    k = shown.shape[-1]
    p_range = _parse_percentiles(percentiles)
    limits = None if contrast_limits is None else _parse_limits(contrast_limits, k)

    if shown.dtype.kind == "f" and not np.isfinite(shown).any():
        raise ValueError(
            f"The image (shape {array.shape}) has no finite pixel: all values are "
            "NaN or inf. Check the data or the channel selection."
        )

    out_dtype = np.uint8 if limits is None and shown.dtype in (np.uint8, np.bool_) else np.float32
    out = np.zeros(shown.shape[:2] + (3,), dtype=out_dtype)
    if out_dtype == np.uint8:
        # uint8 is already display range: keep values bit-identical.
        _fill(out, shown.astype(np.uint8) * np.uint8(255) if shown.dtype == np.bool_ else shown)
        return out

    # Wide integers and float64 keep their precision while scaling.
    narrow = shown.dtype.itemsize <= 2 or shown.dtype == np.float32
    data = shown.astype(np.float32 if narrow else np.float64)
    if limits is None:
        if joint:
            limits = [_percentile_limits(data, p_range)] * k
        else:
            limits = [_percentile_limits(data[..., i], p_range) for i in range(k)]
    scaled = [_scale_to_255(data[..., i], lo, hi) for i, (lo, hi) in enumerate(limits)]
    _fill(out, np.stack(scaled, axis=-1))
    return out


def _fill(out: np.ndarray, shown: np.ndarray) -> None:
    """Write k shown channels into RGB: 1 -> gray, 2 -> red and green, 3 -> RGB."""
    if shown.shape[-1] == 1:
        out[...] = shown
    else:
        out[..., : shown.shape[-1]] = shown


# --------------------------------------------------------------------------
# resize and coordinate transforms
# --------------------------------------------------------------------------


def resize_longest_side(image: np.ndarray, long_side: int) -> np.ndarray:
    """Resize an RGB image so that its longest side is ``long_side``.

    uint8 images are resized with PIL bilinear, bit-identical to the
    reference's ``ResizeLongestSide.apply_image``; float32 images with
    torch's antialiased bilinear interpolation (which follows PIL).

    Parameters
    ----------
    image : numpy.ndarray
        (H, W, 3) uint8 or float32 in [0, 255], e.g. from :func:`to_rgb`.
    long_side : int
        Target length of the longest side.

    Returns
    -------
    numpy.ndarray
        The resized (h, w, 3) image, same dtype as the input.
    """
    long_side = _positive_int("long_side", long_side)
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[-1] != 3:
        shape = getattr(image, "shape", None)
        raise ValueError(
            f"Expected an (H, W, 3) numpy array, got {type(image).__name__} with "
            f"shape {shape}. Convert it with to_rgb first."
        )
    if image.dtype not in (np.uint8, np.float32):
        raise ValueError(
            f"Expected a uint8 or float32 image, got dtype {image.dtype}. "
            "Convert it with to_rgb first."
        )
    new_h, new_w = preprocess_shape(image.shape[0], image.shape[1], long_side)
    if (new_h, new_w) == image.shape[:2]:
        return image.copy()
    if image.dtype == np.uint8:
        pil = Image.fromarray(np.ascontiguousarray(image), mode="RGB")
        return np.asarray(pil.resize((new_w, new_h), Image.BILINEAR)).copy()
    chw = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    resized = F.interpolate(
        chw, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True
    )
    return resized[0].permute(1, 2, 0).clamp_(0, 255).contiguous().numpy()


def transform_coords(
    coords: ArrayLike, original_size: Sequence[int], long_side: int
) -> np.ndarray:
    """Scale (..., 2) x, y pixel coordinates from the original to the resized image.

    Parameters
    ----------
    coords : array-like
        Points with x, y in the last axis, in original image pixels.
    original_size : (int, int)
        The original image's (height, width).
    long_side : int
        The resized image's longest side.

    Returns
    -------
    numpy.ndarray
        A new float64 array of the same shape; the input is not modified.
    """
    points = np.array(coords, dtype=np.float64)
    if points.ndim == 0 or points.shape[-1] != 2:
        raise ValueError(
            f"Expected coordinates with x, y in the last axis (shape (..., 2)), "
            f"got shape {points.shape}."
        )
    old_h, old_w = _original_size(original_size)
    new_h, new_w = preprocess_shape(old_h, old_w, long_side)
    points[..., 0] = points[..., 0] * (new_w / old_w)
    points[..., 1] = points[..., 1] * (new_h / old_h)
    return points


def transform_boxes(
    boxes: ArrayLike, original_size: Sequence[int], long_side: int
) -> np.ndarray:
    """Scale x0, y0, x1, y1 boxes from the original to the resized image.

    Parameters
    ----------
    boxes : array-like
        (N, 4) boxes or a single (4,) box, in original image pixels.
    original_size : (int, int)
        The original image's (height, width).
    long_side : int
        The resized image's longest side.

    Returns
    -------
    numpy.ndarray
        A new float64 array of the input's shape; the input is not modified.
    """
    array = np.asarray(boxes)
    if array.ndim not in (1, 2) or array.shape[-1] != 4:
        raise ValueError(
            f"Expected boxes of shape (N, 4) or (4,) as x0, y0, x1, y1, got shape "
            f"{array.shape}."
        )
    corners = transform_coords(array.reshape(-1, 2, 2), original_size, long_side)
    return corners.reshape(array.shape)


def image_to_tensor(image_hwc: np.ndarray, device: torch.device | str | None = None) -> torch.Tensor:
    """Turn an (H, W, 3) image into the (1, 3, H, W) float32 tensor SAM consumes.

    Parameters
    ----------
    image_hwc : numpy.ndarray
        (H, W, 3) image with values in [0, 255], uint8 or float.
    device : torch.device or str, optional
        Where to put the tensor; the CPU when omitted.

    Returns
    -------
    torch.Tensor
        (1, 3, H, W) float32 tensor with values 0..255 (not normalized).
    """
    if not isinstance(image_hwc, np.ndarray) or image_hwc.ndim != 3 or image_hwc.shape[-1] != 3:
        shape = getattr(image_hwc, "shape", None)
        raise ValueError(
            f"Expected an (H, W, 3) numpy array, got {type(image_hwc).__name__} with "
            f"shape {shape}. Convert it with to_rgb and resize_longest_side first."
        )
    # Transfer the compact dtype, convert on the device.
    tensor = torch.as_tensor(np.ascontiguousarray(image_hwc), device=device)
    return tensor.permute(2, 0, 1).contiguous()[None].to(torch.float32)
