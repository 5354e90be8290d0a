"""MobileSAM's image encoder ("vit_t"): a TinyViT-5M with SAM's 256-channel neck.

The module and parameter names follow MobileSAM's released checkpoint
(``image_encoder.*`` of ``mobile_sam.pt``), so its weights load strictly. Only
inference is supported: stochastic depth, dropout and gradient checkpointing of
the training code are left out, as they are identities in eval mode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..jobs import check_stop
from .common import LayerNorm2d


class Conv2d_BN(nn.Sequential):
    """A bias-free convolution followed by batch normalization (children ``c``, ``bn``).

    Parameters
    ----------
    in_chans, out_chans : int
        Channel counts.
    kernel_size, stride, padding, dilation, groups : int
        Passed to :class:`torch.nn.Conv2d`.
    bn_weight_init : float
        Initial scale of the batch norm (0 makes a residual branch start as identity).
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        dilation: int = 1,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module(
            "c",
            nn.Conv2d(
                in_chans,
                out_chans,
                kernel_size,
                stride,
                padding,
                dilation,
                groups,
                bias=False,
            ),
        )
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)


class PatchEmbed(nn.Module):
    """Two stride-2 3x3 convolutions: image (B, 3, S, S) to (B, C, S/4, S/4).

    Parameters
    ----------
    in_chans, embed_dim : int
        Input and output channels (the hidden convolution has ``embed_dim // 2``).
    resolution : int
        Side of the square input image.
    activation : type[nn.Module]
        Activation between the two convolutions.
    """

    def __init__(
        self,
        in_chans: int,
        embed_dim: int,
        resolution: int,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.patches_resolution = (resolution // 4, resolution // 4)
        self.seq = nn.Sequential(
            Conv2d_BN(in_chans, embed_dim // 2, 3, 2, 1),
            activation(),
            Conv2d_BN(embed_dim // 2, embed_dim, 3, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.seq(x)


class MBConv(nn.Module):
    """Inverted residual block (expand 1x1, depthwise 3x3, project 1x1) on (B, C, H, W).

    Parameters
    ----------
    in_chans, out_chans : int
        Channel counts; they must be equal for the residual sum.
    expand_ratio : float
        Width of the hidden depthwise stage relative to ``in_chans``.
    activation : type[nn.Module]
        Activation used after each stage and after the residual sum.
    """

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        expand_ratio: float,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        hidden = int(in_chans * expand_ratio)
        self.conv1 = Conv2d_BN(in_chans, hidden, kernel_size=1)
        self.act1 = activation()
        self.conv2 = Conv2d_BN(
            hidden, hidden, kernel_size=3, stride=1, padding=1, groups=hidden
        )
        self.act2 = activation()
        self.conv3 = Conv2d_BN(hidden, out_chans, kernel_size=1, bn_weight_init=0.0)
        self.act3 = activation()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.conv1(x))
        y = self.act2(self.conv2(y))
        y = self.conv3(y)
        # The activation comes after the sum, unlike a pre-activation residual.
        return self.act3(y + x)


class PatchMerging(nn.Module):
    """Downsampling between stages: 1x1, depthwise 3x3 (stride 2), 1x1 convolutions.

    Returns tokens (B, L', out_dim). MobileSAM keeps the last stage at the
    previous resolution (stride 1) for widths 320, 448 and 576, so the encoder
    ends at S/16 like SAM's ViT rather than at TinyViT's S/32.

    Parameters
    ----------
    input_resolution : tuple of int
        (H, W) of the incoming tokens when they arrive flattened.
    dim, out_dim : int
        Input and output channels.
    activation : type[nn.Module]
        Activation after the first two convolutions.
    """

    def __init__(
        self,
        input_resolution: tuple[int, int],
        dim: int,
        out_dim: int,
        activation: type[nn.Module],
    ) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = activation()
        self.conv1 = Conv2d_BN(dim, out_dim, 1, 1, 0)
        stride = 1 if out_dim in (320, 448, 576) else 2
        self.conv2 = Conv2d_BN(out_dim, out_dim, 3, stride, 1, groups=out_dim)
        self.conv3 = Conv2d_BN(out_dim, out_dim, 1, 1, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            # Tokens from a transformer stage: back to an image for the convolutions.
            h, w = self.input_resolution
            x = x.view(x.shape[0], h, w, -1).permute(0, 3, 1, 2)
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        x = self.conv3(x)
        return x.flatten(2).transpose(1, 2)


class _Stage(nn.Module):
    """A stage: ``blocks`` in order, then the optional ``downsample`` (a :class:`PatchMerging`)."""

    blocks: nn.ModuleList
    downsample: PatchMerging | None

    def forward(
        self, x: torch.Tensor, should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        for block in self.blocks:
            check_stop(should_stop, "image encoding")
            x = block(x)
        if self.downsample is not None:
            x = self.downsample(x)
        return x


def _downsample(
    wanted: bool, input_resolution: tuple[int, int], dim: int, out_dim: int | None,
    activation: type[nn.Module],
) -> PatchMerging | None:
    return PatchMerging(input_resolution, dim, out_dim or dim, activation) if wanted else None


class ConvLayer(_Stage):
    """First stage: MBConv blocks on (B, C, H, W), then an optional :class:`PatchMerging`.

    Parameters
    ----------
    dim : int
        Channels of the stage.
    input_resolution : tuple of int
        (H, W) of the stage's feature map.
    depth : int
        Number of MBConv blocks.
    activation : type[nn.Module]
        Activation of the blocks and of the downsampling.
    downsample : bool
        Whether a :class:`PatchMerging` to ``out_dim`` channels follows.
    out_dim : int or None
        Channels after downsampling.
    conv_expand_ratio : float
        MBConv expansion ratio.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        activation: type[nn.Module],
        downsample: bool = False,
        out_dim: int | None = None,
        conv_expand_ratio: float = 4.0,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            MBConv(dim, dim, conv_expand_ratio, activation) for _ in range(depth)
        )
        self.downsample = _downsample(downsample, input_resolution, dim, out_dim, activation)


class Mlp(nn.Module):
    """Pre-normalized two-layer MLP (``norm``, ``fc1``, ``fc2``) on tokens."""

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        act_layer: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(in_features)
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.fc2 = nn.Linear(hidden_features, in_features)
        self.act = act_layer()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(self.norm(x))))


class Attention(nn.Module):
    """Pre-normalized multi-head self-attention inside a window, with a learned
    bias per head for each (|dy|, |dx|) offset between two positions (LeViT style).

    Parameters
    ----------
    dim : int
        Token width.
    key_dim : int
        Width of queries and keys per head.
    num_heads : int
        Number of heads.
    attn_ratio : float
        Width of values per head relative to ``key_dim``.
    resolution : tuple of int
        (h, w) of the window; the bias table is built for it.
    """

    def __init__(
        self,
        dim: int,
        key_dim: int,
        num_heads: int = 8,
        attn_ratio: float = 4,
        resolution: tuple[int, int] = (14, 14),
    ) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.scale = key_dim**-0.5
        self.key_dim = key_dim
        self.d = int(attn_ratio * key_dim)
        self.dh = self.d * num_heads
        self.norm = nn.LayerNorm(dim)
        # Per head, the projection is laid out as [q | k | v] (not all q, then all k).
        self.qkv = nn.Linear(dim, self.dh + 2 * key_dim * num_heads)
        self.proj = nn.Linear(self.dh, dim)

        points = list(itertools.product(range(resolution[0]), range(resolution[1])))
        offsets: dict[tuple[int, int], int] = {}
        idxs = []
        for p1 in points:
            for p2 in points:
                offset = (abs(p1[0] - p2[0]), abs(p1[1] - p2[1]))
                # Numbered in order of first appearance: the checkpoint's table follows it.
                idxs.append(offsets.setdefault(offset, len(offsets)))
        n = len(points)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, len(offsets)))
        # Not persistent: the released checkpoints do not contain it.
        self.register_buffer(
            "attention_bias_idxs",
            torch.tensor(idxs, dtype=torch.long).view(n, n),
            persistent=False,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        x = self.norm(x)
        q, k, v = (
            self.qkv(x)
            .view(b, n, self.num_heads, -1)
            .split([self.key_dim, self.key_dim, self.d], dim=3)
        )
        q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
        # Gathered at every call (it is small) so a changed table is never stale.
        bias = self.attention_biases[:, self.attention_bias_idxs]
        attn = (q @ k.transpose(-2, -1)) * self.scale + bias
        attn = attn.softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(b, n, self.dh)
        return self.proj(x)


class TinyViTBlock(nn.Module):
    """Windowed attention, a depthwise "local" convolution, then an MLP, on tokens (B, H*W, C).

    Parameters
    ----------
    dim : int
        Token width.
    input_resolution : tuple of int
        (H, W) of the token grid.
    num_heads : int
        Attention heads (``dim`` must be divisible by it).
    window_size : int
        Side of the attention windows; the grid is zero-padded to a multiple of it.
    mlp_ratio : float
        MLP hidden width relative to ``dim``.
    local_conv_size : int
        Kernel of the depthwise convolution between attention and MLP.
    activation : type[nn.Module]
        MLP activation.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int = 7,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError("window_size must be positive")
        if dim % num_heads:
            raise ValueError("dim must be divisible by num_heads")
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(
            dim,
            dim // num_heads,
            num_heads,
            attn_ratio=1,
            resolution=(window_size, window_size),
        )
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=activation)
        self.local_conv = Conv2d_BN(
            dim,
            dim,
            kernel_size=local_conv_size,
            stride=1,
            padding=local_conv_size // 2,
            groups=dim,
        )

    def _windowed_attention(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        ws = self.window_size
        if h == ws and w == ws:
            return self.attn(x)
        x = x.view(b, h, w, c)
        pad_b = (ws - h % ws) % ws
        pad_r = (ws - w % ws) % ws
        if pad_b or pad_r:
            # Padded positions take part in attention (as in the original), so
            # they are zeros fed through the attention's LayerNorm, not masked.
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        ph, pw = h + pad_b, w + pad_r
        nh, nw = ph // ws, pw // ws
        x = (
            x.view(b, nh, ws, nw, ws, c)
            .transpose(2, 3)
            .reshape(b * nh * nw, ws * ws, c)
        )
        x = self.attn(x)
        x = x.view(b, nh, nw, ws, ws, c).transpose(2, 3).reshape(b, ph, pw, c)
        if pad_b or pad_r:
            x = x[:, :h, :w].contiguous()
        return x.view(b, length, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = self.input_resolution
        b, length, c = x.shape
        if length != h * w:
            raise ValueError(f"expected {h * w} tokens, got {length}")
        x = x + self._windowed_attention(x)
        # The local convolution has no residual of its own.
        x = self.local_conv(x.transpose(1, 2).reshape(b, c, h, w))
        x = x.view(b, c, length).transpose(1, 2)
        return x + self.mlp(x)


class BasicLayer(_Stage):
    """A transformer stage: :class:`TinyViTBlock` s, then an optional :class:`PatchMerging`.

    Parameters
    ----------
    dim : int
        Token width of the stage.
    input_resolution : tuple of int
        (H, W) of the token grid.
    depth, num_heads, window_size, mlp_ratio, local_conv_size
        Block geometry (see :class:`TinyViTBlock`).
    activation : type[nn.Module]
        Activation of the MLPs and of the downsampling.
    downsample : bool
        Whether a :class:`PatchMerging` to ``out_dim`` channels follows.
    out_dim : int or None
        Channels after downsampling.
    """

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float = 4.0,
        local_conv_size: int = 3,
        activation: type[nn.Module] = nn.GELU,
        downsample: bool = False,
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim,
                input_resolution,
                num_heads,
                window_size=window_size,
                mlp_ratio=mlp_ratio,
                local_conv_size=local_conv_size,
                activation=activation,
            )
            for _ in range(depth)
        )
        self.downsample = _downsample(downsample, input_resolution, dim, out_dim, activation)


class TinyViT(nn.Module):
    """MobileSAM's image encoder: (B, 3, 1024, 1024) to a (B, 256, 64, 64) embedding.

    The defaults are MobileSAM's "vit_t" (TinyViT-5M). ``norm_head`` and ``head``
    are TinyViT's unused classifier; they are kept because the released
    checkpoint has them and loads strictly.

    Parameters
    ----------
    img_size : int
        Side of the square, padded input.
    in_chans : int
        Image channels.
    num_classes : int
        Width of the (unused) classifier head; 0 makes it an identity.
    embed_dims, depths, num_heads, window_sizes : sequence of int
        Per-stage width, block count, heads and window side (stage 0 is convolutional,
        its heads and window are ignored).
    mlp_ratio : float
        MLP hidden width relative to the token width.
    mbconv_expand_ratio : float
        Expansion of the MBConv blocks of stage 0.
    local_conv_size : int
        Kernel of the depthwise convolutions inside the transformer blocks.
    out_chans : int
        Channels of the embedding (SAM's prompt width).
    """

    def __init__(
        self,
        img_size: int = 1024,
        in_chans: int = 3,
        num_classes: int = 1000,
        embed_dims: Sequence[int] = (64, 128, 160, 320),
        depths: Sequence[int] = (2, 2, 6, 2),
        num_heads: Sequence[int] = (2, 4, 5, 10),
        window_sizes: Sequence[int] = (7, 7, 14, 7),
        mlp_ratio: float = 4.0,
        mbconv_expand_ratio: float = 4.0,
        local_conv_size: int = 3,
        out_chans: int = 256,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        activation = nn.GELU
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0], img_size, activation)
        grid = self.patch_embed.patches_resolution
        n_stages = len(depths)
        self.layers = nn.ModuleList()
        for i in range(n_stages):
            # Every PatchMerging halves the grid except the one into the last
            # stage (stride 1), so the last stage sees the third stage's grid.
            scale = 2 ** (i - 1 if i == 3 else i)
            common: dict[str, Any] = {
                "dim": embed_dims[i],
                "input_resolution": (grid[0] // scale, grid[1] // scale),
                "depth": depths[i],
                "activation": activation,
                "downsample": i < n_stages - 1,
                "out_dim": embed_dims[min(i + 1, len(embed_dims) - 1)],
            }
            layer: nn.Module
            if i == 0:
                layer = ConvLayer(conv_expand_ratio=mbconv_expand_ratio, **common)
            else:
                layer = BasicLayer(
                    num_heads=num_heads[i],
                    window_size=window_sizes[i],
                    mlp_ratio=mlp_ratio,
                    local_conv_size=local_conv_size,
                    **common,
                )
            self.layers.append(layer)

        self.norm_head = nn.LayerNorm(embed_dims[-1])
        self.head = (
            nn.Linear(embed_dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(
        self, x: torch.Tensor, should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """Encode ``x``; ``should_stop`` is asked between blocks and, when it answers
        True, :class:`~src_core.jobs.Cancelled` is raised."""
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x, should_stop)
        b, length, c = x.shape
        # Tokens of the last stage lie on a square grid (64 x 64 for a 1024 input).
        side = round(length**0.5)
        if side * side != length:
            raise ValueError(f"{length} tokens do not form a square grid")
        x = x.view(b, side, side, c).permute(0, 3, 1, 2)
        return self.neck(x)
