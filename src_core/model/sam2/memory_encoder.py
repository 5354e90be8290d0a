"""SAM 2's memory encoder: a frame's features fused with its predicted mask.

Parameter names match Meta's checkpoints (``memory_encoder.*``). The constructors
take the same arguments as Meta's, sub-modules included, so a model config maps
onto them one to one; :func:`build_memory_encoder` builds the SAM 2.1 layout.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from ..common import LayerNorm2d as _LayerNorm2d
from .position_encoding import PositionEmbeddingSine


class LayerNorm2d(_LayerNorm2d):
    """:class:`~src_core.model.common.LayerNorm2d` dividing by the standard deviation.

    Dividing (rather than multiplying by ``rsqrt``) rounds as Meta's SAM 2 does, which
    makes the memory encoder's output bitwise equal to Meta's on the CPU instead of
    within ~1e-6: memories are fed back frame after frame, so rounding could compound.
    """

    def forward(self, x: Tensor) -> Tensor:
        centered = x - x.mean(1, keepdim=True)
        x = centered / torch.sqrt(centered.pow(2).mean(1, keepdim=True) + self.eps)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class MaskDownSampler(nn.Module):
    """Strided convolutions taking a 1-channel mask down by ``total_stride``.

    Each step divides the size by ``stride`` and multiplies the channels by
    ``stride ** 2`` (conv, LayerNorm2d, activation); a 1x1 conv then projects to
    ``embed_dim``. Modules sit in ``encoder`` in that order, as in the checkpoints.

    Parameters
    ----------
    embed_dim : int
        Output channels.
    kernel_size, stride, padding : int
        Of every strided convolution.
    total_stride : int
        Overall downsampling; must be a power of ``stride``.
    activation : type of nn.Module
        Activation after each normalization.
    """

    def __init__(
        self,
        embed_dim: int = 256,
        kernel_size: int = 4,
        stride: int = 4,
        padding: int = 0,
        total_stride: int = 16,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        num_steps = int(math.log2(total_stride) // math.log2(stride))
        if stride**num_steps != total_stride:
            raise ValueError("total_stride must be a power of stride")
        self.encoder = nn.Sequential()
        channels = 1
        for _ in range(num_steps):
            out_channels = channels * stride**2
            self.encoder.append(
                nn.Conv2d(channels, out_channels, kernel_size, stride=stride, padding=padding)
            )
            self.encoder.append(LayerNorm2d(out_channels))
            self.encoder.append(activation())
            channels = out_channels
        self.encoder.append(nn.Conv2d(channels, embed_dim, kernel_size=1))

    def forward(self, x: Tensor) -> Tensor:
        return self.encoder(x)


class CXBlock(nn.Module):
    """ConvNeXt block: depthwise conv, LayerNorm, pointwise MLP, layer scale, residual.

    The pointwise layers are ``nn.Linear`` on channels-last data, as in the checkpoints.

    Parameters
    ----------
    dim : int
        Channels.
    kernel_size, padding : int
        Of the depthwise convolution.
    drop_path : float
        Probability of skipping the block per sample (training only).
    layer_scale_init_value : float
        Initial layer-scale ``gamma``; no ``gamma`` when not positive.
    use_dwconv : bool
        Depthwise (True) or dense (False) spatial convolution.
    """

    def __init__(
        self,
        dim: int,
        kernel_size: int = 7,
        padding: int = 3,
        drop_path: float = 0.0,
        layer_scale_init_value: float = 1e-6,
        use_dwconv: bool = True,
    ) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(
            dim, dim, kernel_size=kernel_size, padding=padding, groups=dim if use_dwconv else 1
        )
        self.norm = LayerNorm2d(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = (
            nn.Parameter(torch.full((dim,), layer_scale_init_value))
            if layer_scale_init_value > 0
            else None
        )
        self.drop_path = drop_path

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(self.dwconv(x)).permute(0, 2, 3, 1)  # channels last for the Linears
        y = self.pwconv2(self.act(self.pwconv1(y)))
        if self.gamma is not None:
            y = self.gamma * y
        y = y.permute(0, 3, 1, 2)
        if self.training and self.drop_path > 0:
            # stochastic depth: drop the branch for whole samples, rescale the kept ones
            keep = 1.0 - self.drop_path
            mask = y.new_empty((y.shape[0], 1, 1, 1)).bernoulli_(keep)
            y = y * mask / keep
        return x + y


class Fuser(nn.Module):
    """Optional 1x1 input projection, then ``num_layers`` copies of ``layer``.

    Parameters
    ----------
    layer : nn.Module
        Template block (a :class:`CXBlock`); independent copies are made.
    num_layers : int
        Number of copies.
    dim : int, optional
        Channels, needed with ``input_projection``.
    input_projection : bool
        Whether a 1x1 conv (``proj``) comes first.
    """

    def __init__(
        self,
        layer: nn.Module,
        num_layers: int,
        dim: int | None = None,
        input_projection: bool = False,
    ) -> None:
        super().__init__()
        if input_projection and dim is None:
            raise ValueError("input_projection needs dim")
        self.proj = nn.Conv2d(dim, dim, kernel_size=1) if input_projection else nn.Identity()
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        for layer in self.layers:
            x = layer(x)
        return x


class MemoryEncoder(nn.Module):
    """Encode a frame's features (B, in_dim, H, W) and its mask into a memory.

    Parameters
    ----------
    out_dim : int
        Channels of the memory; a 1x1 ``out_proj`` exists when it differs from ``in_dim``.
    mask_downsampler : MaskDownSampler
        Brings the mask to the feature map's size and width.
    fuser : Fuser
        Mixes features and mask.
    position_encoding : nn.Module
        Position encoding of the memory map (parameter-free).
    in_dim : int
        Channels of the frame's features.
    """

    def __init__(
        self,
        out_dim: int,
        mask_downsampler: nn.Module,
        fuser: nn.Module,
        position_encoding: nn.Module,
        in_dim: int = 256,
    ) -> None:
        super().__init__()
        self.mask_downsampler = mask_downsampler
        self.pix_feat_proj = nn.Conv2d(in_dim, in_dim, kernel_size=1)
        self.fuser = fuser
        self.position_encoding = position_encoding
        self.out_proj = (
            nn.Conv2d(in_dim, out_dim, kernel_size=1) if out_dim != in_dim else nn.Identity()
        )

    def forward(
        self, pix_feat: Tensor, masks: Tensor, skip_mask_sigmoid: bool = False
    ) -> dict[str, Tensor | list[Tensor]]:
        """Memory of one frame.

        Parameters
        ----------
        pix_feat : Tensor
            (B, in_dim, H, W) image features.
        masks : Tensor
            (B, 1, H * s, W * s) mask logits (``s`` the downsampler's total stride), or
            values already mapped by the caller when ``skip_mask_sigmoid``.
        skip_mask_sigmoid : bool
            Whether ``masks`` are used as given instead of through a sigmoid.

        Returns
        -------
        dict
            ``"vision_features"``: (B, out_dim, H, W); ``"vision_pos_enc"``: a list
            holding its (B, out_dim, H, W) position encoding, as Meta returns them.
        """
        if not skip_mask_sigmoid:
            masks = torch.sigmoid(masks)
        masks = self.mask_downsampler(masks)
        # features may have been kept on the CPU (offloaded) while masks are on the GPU
        x = self.pix_feat_proj(pix_feat.to(masks.device)) + masks
        x = self.out_proj(self.fuser(x))
        pos = self.position_encoding(x).to(x.dtype)
        return {"vision_features": x, "vision_pos_enc": [pos]}


def build_memory_encoder(out_dim: int = 64, in_dim: int = 256) -> MemoryEncoder:
    """The memory encoder of every SAM 2.1 model (tiny to large share it)."""
    block = CXBlock(in_dim, kernel_size=7, padding=3, layer_scale_init_value=1e-6, use_dwconv=True)
    return MemoryEncoder(
        out_dim,
        mask_downsampler=MaskDownSampler(embed_dim=in_dim, kernel_size=3, stride=2, padding=1),
        fuser=Fuser(block, num_layers=2),
        position_encoding=PositionEmbeddingSine(out_dim, temperature=10000, normalize=True),
        in_dim=in_dim,
    )
