"""``ToTensor``, ``Resize`` and ``Normalize`` as torchvision defines them, for tensors.

``Resize`` and ``Normalize`` are modules that ``torch.jit.script`` accepts, as
Meta's ``SAM2Transforms`` scripts them inside an ``nn.Sequential``.
"""

from enum import Enum
from typing import List, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class InterpolationMode(Enum):
    NEAREST = "nearest"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"


class ToTensor:
    """(H, W, C) array or PIL image -> (C, H, W) tensor; uint8 is divided by 255,
    other dtypes keep their values (torchvision's rule)."""

    def __call__(self, pic) -> torch.Tensor:
        if not isinstance(pic, np.ndarray):
            from PIL import Image

            if not isinstance(pic, Image.Image):
                raise TypeError(f"pic should be a PIL Image or ndarray, got {type(pic)}")
            if pic.mode not in ("RGB", "RGBA", "L"):
                raise TypeError(f"the torchvision stand-in converts RGB, RGBA and L images, not {pic.mode}")
            pic = np.array(pic, copy=True)
        if pic.ndim == 2:
            pic = pic[:, :, None]
        if pic.ndim != 3:
            raise ValueError(f"pic should be 2/3 dimensional. Got {pic.ndim} dimensions.")
        img = torch.from_numpy(pic.transpose((2, 0, 1))).contiguous()
        if img.dtype == torch.uint8:
            return img.to(dtype=torch.get_default_dtype()).div(255)
        return img


class Resize(nn.Module):
    """Resize (C, H, W) or (B, C, H, W) float tensors to an exact (h, w) (an int size
    is not supported), bilinear without corner alignment, antialiased by default."""

    size: List[int]
    antialias: bool

    def __init__(self, size: Union[int, Sequence[int]], interpolation=InterpolationMode.BILINEAR,
                 max_size=None, antialias: bool = True) -> None:
        super().__init__()
        if isinstance(size, int) or len(size) != 2:
            raise ValueError("the torchvision stand-in's Resize takes an exact (h, w) size")
        if interpolation not in (InterpolationMode.BILINEAR, "bilinear") or max_size is not None:
            raise ValueError("the torchvision stand-in's Resize is bilinear only, without max_size")
        self.size = [int(size[0]), int(size[1])]
        self.antialias = bool(antialias)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if [img.shape[-2], img.shape[-1]] == self.size:
            return img
        if not img.is_floating_point():
            raise ValueError("the torchvision stand-in's Resize takes float tensors only")
        squeeze = img.dim() == 3
        x = img.unsqueeze(0) if squeeze else img
        x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=self.antialias)
        return x.squeeze(0) if squeeze else x


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel of a (..., C, H, W) float tensor."""

    mean: List[float]
    std: List[float]

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False) -> None:
        super().__init__()
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        return tensor.sub(mean).div(std)
