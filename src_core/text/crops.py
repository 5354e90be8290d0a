"""What CLIP sees of a candidate mask: a square crop around it, with its background
treated, resized and normalized the way OpenAI's CLIP was trained.

One crop per candidate: the mask's bounding box, grown by ``context`` (a fraction
of its longer side) on every side and made square around the box's centre, so that
CLIP's resize keeps the whole object with some surroundings and never squashes it.
Parts of the square outside the image are filled with CLIP's mean colour (a neutral
grey after normalization). Then the pixels outside the mask are

- ``"blur"``: replaced by a strongly blurred copy of the crop (the object stays
  sharp, its surroundings keep their colours but lose detail);
- ``"blank"``: replaced by CLIP's mean colour;
- ``"none"``: kept as they are (a plain box crop).

The default is ``"blur"``: in the comparison of visual prompts for CLIP by Yang et
al. (2023, "Fine-Grained Visual Prompting"), blurring outside the mask did better
than blanking or cropping. That was measured there, with real CLIP weights, not
here (see the README).

CLIP's preprocessing is done here with numpy and PIL (bicubic resize of the shorter
side, centre crop, OpenAI's mean and std), not with open_clip's torchvision
transforms, so that torchvision is never needed.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from scipy import ndimage as ndi

__all__ = [
    "BACKGROUNDS",
    "DEFAULT_BACKGROUND",
    "DEFAULT_CONTEXT",
    "OPENAI_MEAN",
    "OPENAI_STD",
    "context_box",
    "extract_crop",
    "extract_crops",
    "mask_box",
    "preprocess",
    "to_clip_tensor",
]

BACKGROUNDS = ("blur", "blank", "none")
DEFAULT_BACKGROUND = "blur"
DEFAULT_CONTEXT = 0.1
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
_FILL = tuple(int(round(255 * m)) for m in OPENAI_MEAN)


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """``(x0, y0, x1, y1)`` of the mask's pixels (x1, y1 exclusive); None if it is empty."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.any(mask, axis=1), np.any(mask, axis=0)
    if not rows.any():
        return None
    y0, y1 = np.flatnonzero(rows)[[0, -1]]
    x0, x1 = np.flatnonzero(cols)[[0, -1]]
    return int(x0), int(y0), int(x1) + 1, int(y1) + 1


def context_box(box: tuple[float, float, float, float], context: float = DEFAULT_CONTEXT) -> tuple[int, int, int, int]:
    """The square crop (x0, y0, x1, y1), integer pixels, around ``box`` grown by
    ``context`` times its longer side on each side. It may reach outside the image."""
    if context < 0:
        raise ValueError(f"context must be >= 0 (a fraction of the object's size), got {context}")
    x0, y0, x1, y1 = (float(v) for v in box)
    side = max(x1 - x0, y1 - y0, 1.0)
    side = int(np.ceil(side * (1 + 2 * context)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = int(np.floor(cx - side / 2)), int(np.floor(cy - side / 2))
    return left, top, left + side, top + side


def _take(array: np.ndarray, box: tuple[int, int, int, int], fill) -> np.ndarray:
    """``array[y0:y1, x0:x1]`` where parts outside ``array`` read as ``fill``."""
    x0, y0, x1, y1 = box
    h, w = array.shape[:2]
    out = np.empty((y1 - y0, x1 - x0, *array.shape[2:]), dtype=array.dtype)
    out[...] = fill
    sx0, sy0, sx1, sy1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = array[sy0:sy1, sx0:sx1]
    return out


def preprocess(rgb: np.ndarray, size: int) -> np.ndarray:
    """CLIP's geometry on an (H, W, 3) uint8 image: bicubic resize of the shorter side
    to ``size``, then the centre ``size`` x ``size`` crop. Returns uint8."""
    h, w = rgb.shape[:2]
    scale = size / min(h, w)
    new = (max(size, int(round(w * scale))), max(size, int(round(h * scale))))
    resized = np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize(new, Image.BICUBIC))
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return resized[top : top + size, left : left + size]


def _resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    h, w = mask.shape
    scale = size / min(h, w)
    new = (max(size, int(round(w * scale))), max(size, int(round(h * scale))))
    resized = np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).resize(new, Image.BILINEAR)) >= 128
    top, left = (resized.shape[0] - size) // 2, (resized.shape[1] - size) // 2
    return resized[top : top + size, left : left + size]


def extract_crop(
    rgb: np.ndarray,
    mask: np.ndarray,
    size: int = 224,
    *,
    context: float = DEFAULT_CONTEXT,
    background: str = DEFAULT_BACKGROUND,
    blur_sigma: float | None = None,
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The (size, size, 3) uint8 crop CLIP sees for one candidate, and its square box.

    Parameters
    ----------
    rgb : (H, W, 3) uint8
    mask : (H, W) bool, not empty
    size : int
        CLIP's input side (224 for ViT-B/32).
    context : float
        Margin around the mask's box on each side, as a fraction of its longer side.
    background : {"blur", "blank", "none"}
        What happens to the pixels outside the mask (see the module's text).
    blur_sigma : float, optional
        Gaussian sigma of ``"blur"``, in output pixels (default ``size / 28``, 8 px
        at 224).
    """
    if background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {', '.join(BACKGROUNDS)}, got {background!r}")
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"extract_crop expects an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"mask shape {mask.shape} does not match the image's {rgb.shape[:2]}")
    box = mask_box(mask)
    if box is None:
        raise ValueError("the candidate mask is empty")
    square = context_box(box, context)
    crop = preprocess(_take(rgb, square, _FILL), size)
    if background == "none":
        return crop, square
    inside = _resize_mask(_take(mask, square, False), size)
    out = crop.copy()
    if background == "blank":
        out[~inside] = _FILL
    else:
        sigma = float(blur_sigma) if blur_sigma is not None else size / 28
        blurred = ndi.gaussian_filter(crop.astype(np.float32), sigma=(sigma, sigma, 0), mode="nearest")
        out[~inside] = np.clip(np.rint(blurred[~inside]), 0, 255).astype(np.uint8)
    return out, square


def extract_crops(rgb: np.ndarray, masks, size: int = 224, **kwargs) -> tuple[np.ndarray, list]:
    """:func:`extract_crop` for every mask: (N, size, size, 3) uint8 and the N boxes."""
    crops, boxes = [], []
    for mask in masks:
        crop, box = extract_crop(rgb, mask, size, **kwargs)
        crops.append(crop)
        boxes.append(box)
    if not crops:
        return np.zeros((0, size, size, 3), np.uint8), []
    return np.stack(crops), boxes


def to_clip_tensor(crops: np.ndarray, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """(N, S, S, 3) uint8 -> (N, 3, S, S) float32, scaled to [0, 1] and normalized."""
    x = torch.from_numpy(np.ascontiguousarray(crops)).permute(0, 3, 1, 2).float() / 255.0
    m = torch.tensor(mean, dtype=torch.float32).reshape(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).reshape(1, 3, 1, 1)
    return (x - m) / s
