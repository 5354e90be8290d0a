"""Stand-in for ``timm.models.layers``: the three names MobileSAM's TinyViT imports."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def to_2tuple(x: Any) -> tuple:
    """``(x, x)`` for a scalar; an iterable is returned as a tuple."""
    if isinstance(x, (list, tuple)):
        return tuple(x)
    return (x, x)


def trunc_normal_(
    tensor: torch.Tensor,
    mean: float = 0.0,
    std: float = 1.0,
    a: float = -2.0,
    b: float = 2.0,
) -> torch.Tensor:
    """Fill ``tensor`` from a truncated normal distribution (same meaning as timm's)."""
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


class DropPath(nn.Module):
    """Stochastic depth per sample; an identity in eval mode or with probability 0."""

    def __init__(
        self, drop_prob: float | None = 0.0, scale_by_keep: bool = True
    ) -> None:
        super().__init__()
        self.drop_prob = drop_prob or 0.0
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.drop_prob == 0.0:
            return x
        keep = 1.0 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if self.scale_by_keep:
            mask = mask / keep
        return x * mask
