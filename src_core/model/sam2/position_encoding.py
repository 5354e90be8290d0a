"""Sine position encoding of a feature map (DETR style), as SAM 2 uses it.

Shared by the FPN neck of the image encoder and by the memory encoder; it has no
parameters, so nothing of it appears in a state dict.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Fixed sine/cosine encoding of the (row, column) of every pixel of a map.

    Half of the channels encode the row, half the column; within each half,
    channels alternate sine and cosine of the same frequency.

    Parameters
    ----------
    num_pos_feats : int
        Number of output channels; must be even.
    temperature : float
        Base of the geometric frequency progression.
    normalize : bool
        Whether positions are rescaled to ``(0, scale]`` across the map.
    scale : float, optional
        Range of the normalized positions (``2 * pi`` when None); only with ``normalize``.
    """

    def __init__(
        self,
        num_pos_feats: int,
        temperature: float = 10000,
        normalize: bool = True,
        scale: float | None = None,
    ) -> None:
        super().__init__()
        if num_pos_feats % 2:
            raise ValueError("num_pos_feats must be even")
        if scale is not None and not normalize:
            raise ValueError("scale is only meaningful with normalize=True")
        self.num_pos_feats = num_pos_feats // 2  # per axis
        self.temperature = temperature
        self.normalize = normalize
        self.scale = 2 * math.pi if scale is None else scale
        # (H, W) -> (C, H, W); the encoding depends on the map size only
        self._cache: dict[tuple[int, int], torch.Tensor] = {}

    def _axis(self, length: int, device: torch.device) -> torch.Tensor:
        """(length, num_pos_feats) encoding of positions 1..length along one axis."""
        pos = torch.arange(1, length + 1, dtype=torch.float32, device=device)
        if self.normalize:
            # the small epsilon keeps Meta's exact values (last position just under scale)
            pos = pos / (pos[-1:] + 1e-6) * self.scale
        # channels 2i and 2i + 1 share a frequency: one carries the sine, one the cosine
        idx = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * (idx // 2) / self.num_pos_feats)
        angles = pos[:, None] / dim_t[0::2]
        return torch.stack((angles.sin(), angles.cos()), dim=-1).flatten(1)

    @torch.no_grad()
    def _encoding(self, height: int, width: int, device: torch.device) -> torch.Tensor:
        key = (height, width)
        pe = self._cache.get(key)
        if pe is None or pe.device != device:
            rows = self._axis(height, device)  # (H, F)
            cols = self._axis(width, device)  # (W, F)
            pe = torch.cat(
                (
                    rows[:, None, :].expand(height, width, -1),
                    cols[None, :, :].expand(height, width, -1),
                ),
                dim=-1,
            ).permute(2, 0, 1)
            pe = pe.contiguous()
            self._cache[key] = pe
        return pe

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encoding for the map ``x`` (B, C, H, W): a (B, num_pos_feats, H, W) float32 tensor."""
        pe = self._encoding(x.shape[-2], x.shape[-1], x.device)
        # a copy per batch item, as callers may write into it
        return pe[None].repeat(x.shape[0], 1, 1, 1)
