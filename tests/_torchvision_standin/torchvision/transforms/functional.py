"""``to_pil_image`` and ``resize`` with torchvision's PIL-path semantics."""

from __future__ import annotations

from typing import Sequence, Union

import numpy as np
import torch
from PIL import Image

_MODES_BY_CHANNELS = {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}


def to_pil_image(pic: Union[np.ndarray, torch.Tensor], mode: str | None = None) -> Image.Image:
    """Convert an (H, W) / (H, W, C) array or a (C, H, W) tensor to a PIL image.

    Parameters
    ----------
    pic : numpy.ndarray or torch.Tensor
        uint8 or floating point data in [0, 1] (floats are scaled by 255 and
        truncated to uint8, as torchvision does). Arrays are channels-last,
        tensors channels-first.
    mode : str, optional
        PIL mode; inferred from the channel count when omitted.

    Returns
    -------
    PIL.Image.Image
        Mode ``L``, ``LA``, ``RGB`` or ``RGBA``.
    """
    if isinstance(pic, torch.Tensor):
        if pic.ndim == 2:
            pic = pic.unsqueeze(0)
        if pic.ndim != 3:
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        if pic.is_floating_point() and mode != "F":
            pic = pic.mul(255).byte()
        npimg = np.transpose(pic.cpu().numpy(), (1, 2, 0))
    elif isinstance(pic, np.ndarray):
        if pic.ndim == 2:
            pic = pic[:, :, None]
        if pic.ndim != 3:
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        npimg = pic
        if np.issubdtype(npimg.dtype, np.floating) and mode != "F":
            npimg = (npimg * 255).astype(np.uint8)
    else:
        raise TypeError(f"pic should be Tensor or ndarray. Got {type(pic)}.")

    channels = npimg.shape[-1]
    if npimg.dtype != np.uint8:
        raise TypeError(f"the torchvision stand-in only converts uint8 data, got {npimg.dtype}")
    if channels not in _MODES_BY_CHANNELS:
        raise ValueError(f"pic should not have > 4 channels. Got {channels} channels.")
    inferred = _MODES_BY_CHANNELS[channels]
    if mode is not None and mode != inferred:
        raise ValueError(f"the torchvision stand-in infers mode {inferred!r}, got {mode!r}")
    if channels == 1:
        npimg = npimg[:, :, 0]
    return Image.fromarray(np.ascontiguousarray(npimg), mode=inferred)


def resize(
    img: Image.Image,
    size: Union[int, Sequence[int]],
    interpolation: int = Image.BILINEAR,
    max_size: int | None = None,
    antialias: bool | None = True,
) -> Image.Image:
    """Resize a PIL image the way torchvision's PIL backend does.

    Parameters
    ----------
    img : PIL.Image.Image
        The image to resize.
    size : int or sequence of int
        ``(h, w)`` for an exact size; a single int matches the shorter edge
        and keeps the aspect ratio.
    interpolation : int
        PIL resampling filter; bilinear by default, like torchvision.
    max_size : int, optional
        Upper bound for the longer edge when ``size`` is a single int.
    antialias : bool, optional
        Ignored: PIL always antialiases.

    Returns
    -------
    PIL.Image.Image
        The resized image, via ``img.resize((w, h), interpolation)``.
    """
    if not isinstance(img, Image.Image):
        raise TypeError(f"the torchvision stand-in only resizes PIL images, got {type(img)}")
    if isinstance(size, int):
        size = [size]
    size = list(size)
    if len(size) == 2:
        new_h, new_w = size
    elif len(size) == 1:
        w, h = img.size
        short, long = (w, h) if w <= h else (h, w)
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None and new_long > max_size:
            new_short, new_long = int(max_size * new_short / new_long), max_size
        new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
    else:
        raise ValueError(f"size must be an int or a sequence of 1 or 2 ints, got {size}")
    return img.resize((new_w, new_h), interpolation)
