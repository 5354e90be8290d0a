"""SAM 2's image encoder: Hiera trunk, FPN neck and sine position encoding.

The output dict (``vision_features``, ``vision_pos_enc``, ``backbone_fpn``)
is the one Meta's ``ImageEncoder`` returns; parameter names match the released
SAM 2.1 checkpoints under ``image_encoder.`` (``trunk.*``, ``neck.*``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import torch
import torch.nn.functional as F
from torch import nn

from .hiera import Hiera
from .position_encoding import PositionEmbeddingSine


class FpnNeck(nn.Module):
    """Feature pyramid neck: 1 x 1 lateral convs, top-down fusion on chosen levels.

    Parameters
    ----------
    position_encoding : nn.Module
        Maps a (B, d_model, H, W) level to its position encoding.
    d_model : int
        Output channels of every level.
    backbone_channel_list : sequence of int
        Trunk channels, coarsest level first (``Hiera.channel_list``).
    fpn_interp_model : str
        ``F.interpolate`` mode for the 2x upsampling of the coarser level.
    fuse_type : str
        ``"sum"`` or ``"avg"`` of lateral and top-down features.
    fpn_top_down_levels : sequence of int, optional
        Levels (0 = finest) that receive top-down features; others keep only their
        lateral conv. Default: all.
    """

    def __init__(
        self,
        position_encoding: nn.Module,
        d_model: int,
        backbone_channel_list: Sequence[int],
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        fpn_interp_model: str = "bilinear",
        fuse_type: str = "sum",
        fpn_top_down_levels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if fuse_type not in ("sum", "avg"):
            raise ValueError(f"fuse_type must be 'sum' or 'avg', not {fuse_type!r}")
        self.position_encoding = position_encoding
        self.d_model = d_model
        self.backbone_channel_list = list(backbone_channel_list)
        self.convs = nn.ModuleList()
        for dim in self.backbone_channel_list:
            # A named Sequential keeps the checkpoint's ``convs.<i>.conv.*`` keys.
            lateral = nn.Sequential()
            lateral.add_module("conv", nn.Conv2d(dim, d_model, kernel_size, stride=stride, padding=padding))
            self.convs.append(lateral)
        self.fpn_interp_model = fpn_interp_model
        self.fuse_type = fuse_type
        levels = range(len(self.convs)) if fpn_top_down_levels is None else fpn_top_down_levels
        self.fpn_top_down_levels = list(levels)

    def forward(self, xs: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Fuse the trunk's maps (finest first); returns features and position encodings, finest first."""
        n = len(self.convs)
        if len(xs) != n:
            raise ValueError(f"expected {n} trunk levels, got {len(xs)}")
        out: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        pos: list[torch.Tensor] = [None] * n  # type: ignore[list-item]
        prev = None
        for i in range(n - 1, -1, -1):  # coarsest to finest
            lateral = self.convs[n - 1 - i](xs[i])
            if i in self.fpn_top_down_levels and prev is not None:
                # Upsampled in float32 (as the reference does), so under autocast
                # the fused level is float32 too.
                top_down = F.interpolate(
                    prev.to(dtype=torch.float32),
                    scale_factor=2.0,
                    mode=self.fpn_interp_model,
                    align_corners=None if self.fpn_interp_model == "nearest" else False,
                    antialias=False,
                )
                prev = lateral + top_down
                if self.fuse_type == "avg":
                    prev = prev / 2
            else:
                prev = lateral
            out[i] = prev
            pos[i] = self.position_encoding(prev).to(prev.dtype)
        return out, pos


class ImageEncoder(nn.Module):
    """Trunk plus neck; ``scalp`` drops that many of the coarsest levels.

    ``forward`` returns ``vision_features`` (the coarsest kept level),
    ``vision_pos_enc`` and ``backbone_fpn`` (lists, finest first).
    """

    def __init__(self, trunk: nn.Module, neck: FpnNeck, scalp: int = 0) -> None:
        super().__init__()
        if list(trunk.channel_list) != list(neck.backbone_channel_list):
            raise ValueError(f"trunk channels {trunk.channel_list} != neck channels {neck.backbone_channel_list}")
        self.trunk = trunk
        self.neck = neck
        self.scalp = scalp

    def forward(self, sample: torch.Tensor) -> dict[str, torch.Tensor | list[torch.Tensor]]:
        trunk_dtype = self.trunk.patch_embed.proj.weight.dtype
        levels = self.trunk(sample.to(trunk_dtype))
        if trunk_dtype != sample.dtype:  # a bfloat16 trunk (Sam2Model.set_compute_dtype)
            levels = [level.to(sample.dtype) for level in levels]
        features, pos = self.neck(levels)
        if self.scalp > 0:
            features, pos = features[: -self.scalp], pos[: -self.scalp]
        return {"vision_features": features[-1], "vision_pos_enc": pos, "backbone_fpn": features}


@dataclass(frozen=True)
class Sam2EncoderConfig:
    """Geometry of a SAM 2.1 image encoder (the ``image_encoder`` node of Meta's yaml).

    Fields left at their defaults are the ones the yaml leaves at Hiera's defaults.
    """

    embed_dim: int
    num_heads: int
    stages: tuple[int, ...] = (2, 3, 16, 3)
    global_att_blocks: tuple[int, ...] = (12, 16, 20)
    window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14)
    window_spec: tuple[int, ...] = (8, 4, 14, 7)
    q_pool: int = 3
    q_stride: tuple[int, int] = (2, 2)
    dim_mul: float = 2.0
    head_mul: float = 2.0
    d_model: int = 256
    fpn_top_down_levels: tuple[int, ...] | None = (2, 3)
    fpn_interp_model: str = "nearest"
    fuse_type: str = "sum"
    scalp: int = 1

    @property
    def backbone_channel_list(self) -> list[int]:
        """Trunk channels per stage, coarsest first (the neck's ``backbone_channel_list``)."""
        dims = [self.embed_dim]
        for _ in self.stages[1:]:
            dims.append(int(dims[-1] * self.dim_mul))
        return dims[::-1]


SAM2_ENCODER_CONFIGS: Mapping[str, Sam2EncoderConfig] = MappingProxyType(
    {
        # configs/sam2.1/sam2.1_hiera_{t,s,b+,l}.yaml
        "tiny": Sam2EncoderConfig(96, 1, (1, 2, 7, 2), (5, 7, 9), (7, 7)),
        "small": Sam2EncoderConfig(96, 1, (1, 2, 11, 2), (7, 10, 13), (7, 7)),
        "base_plus": Sam2EncoderConfig(112, 2),
        "large": Sam2EncoderConfig(144, 2, (2, 6, 36, 4), (23, 33, 43), (7, 7), (8, 4, 16, 8)),
    }
)


def build_image_encoder(config: Sam2EncoderConfig | str) -> ImageEncoder:
    """A randomly initialized SAM 2.1 image encoder of a named size or a given geometry.

    Parameters
    ----------
    config : Sam2EncoderConfig or str
        ``"tiny"``, ``"small"``, ``"base_plus"``, ``"large"`` or a custom config.
    """
    if isinstance(config, str):
        if config not in SAM2_ENCODER_CONFIGS:
            raise ValueError(f"unknown SAM 2.1 size {config!r}; known: {', '.join(SAM2_ENCODER_CONFIGS)}")
        config = SAM2_ENCODER_CONFIGS[config]
    trunk = Hiera(
        embed_dim=config.embed_dim,
        num_heads=config.num_heads,
        q_pool=config.q_pool,
        q_stride=config.q_stride,
        stages=config.stages,
        dim_mul=config.dim_mul,
        head_mul=config.head_mul,
        window_pos_embed_bkg_spatial_size=config.window_pos_embed_bkg_spatial_size,
        window_spec=config.window_spec,
        global_att_blocks=config.global_att_blocks,
    )
    neck = FpnNeck(
        PositionEmbeddingSine(config.d_model),
        d_model=config.d_model,
        backbone_channel_list=config.backbone_channel_list,
        fpn_interp_model=config.fpn_interp_model,
        fuse_type=config.fuse_type,
        fpn_top_down_levels=config.fpn_top_down_levels,
    )
    return ImageEncoder(trunk, neck, scalp=config.scalp)
