"""Hiera, the hierarchical vision transformer behind SAM 2's image encoder.

Four stages of transformer blocks; between stages the queries of the first
block are max-pooled (2 x 2), halving the resolution and doubling the width.
Most blocks attend within square windows, a few attend globally. Parameter
names match Meta's released SAM 2.1 checkpoints (``image_encoder.trunk.*``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..fused import linear_act, linear_add


def window_partition(x: torch.Tensor, window: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Cut a (B, H, W, C) map into (B * nh * nw, window, window, C) windows.

    The map is zero-padded at the bottom and right up to a multiple of ``window``.

    Returns
    -------
    windows : torch.Tensor
        The windows, row-major over the window grid, batch outermost.
    grid : tuple of int
        ``(nh, nw)``, the number of windows down and across.
    """
    b, h, w, c = x.shape
    pad_h, pad_w = -h % window, -w % window
    if pad_h or pad_w:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))
    nh, nw = (h + pad_h) // window, (w + pad_w) // window
    x = x.view(b, nh, window, nw, window, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(b * nh * nw, window, window, c), (nh, nw)


def window_unpartition(windows: torch.Tensor, grid: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Undo :func:`window_partition`: stitch the windows and crop the padding to ``hw``.

    The window side is read from ``windows``, so windows shrunk by query pooling
    are stitched on the same grid.
    """
    nh, nw = grid
    window = windows.shape[1]
    b = windows.shape[0] // (nh * nw)
    x = windows.reshape(b, nh, nw, window, window, -1).permute(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, nh * window, nw * window, -1)
    h, w = hw
    if x.shape[1] > h or x.shape[2] > w:
        x = x[:, :h, :w, :]
    return x


def _max_pool_hw(x: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """Max-pool a (B, H, W, C) map by ``stride`` (odd remainders dropped)."""
    x = F.max_pool2d(x.permute(0, 3, 1, 2), kernel_size=stride, stride=stride)
    return x.permute(0, 2, 3, 1)


class PatchEmbed(nn.Module):
    """Overlapping patch embedding: a 7 x 7 stride-4 convolution, output (B, H/4, W/4, C)."""

    def __init__(
        self,
        kernel_size: tuple[int, int] = (7, 7),
        stride: tuple[int, int] = (4, 4),
        padding: tuple[int, int] = (3, 3),
        in_chans: int = 3,
        embed_dim: int = 96,
    ) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous channels-last tokens: a permuted view would leave the whole
        # residual stream strided, and every add, norm and copy after it slower
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class MLP(nn.Module):
    """Linear layers (``layers.0``, ``layers.1``, ...) with an activation between them."""

    def __init__(self, dims: Sequence[int], act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.act = act()

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """The layers on ``x``, plus ``residual`` when given (fused where it pays)."""
        for layer in self.layers[:-1]:
            x = linear_act(x, layer, self.act)
        if residual is None:
            return linear_act(x, self.layers[-1])
        return linear_add(x, self.layers[-1], residual)


class MultiScaleAttention(nn.Module):
    """Multi-head self-attention on a (B, H, W, dim) map, optionally with pooled queries.

    Parameters
    ----------
    dim, dim_out : int
        Input and output widths; keys and values are projected to ``dim_out``.
    num_heads : int
        Attention heads.
    q_stride : tuple of int, optional
        Max-pool the queries by this stride, so the output is (B, H/s, W/s, dim_out).
    """

    def __init__(self, dim: int, dim_out: int, num_heads: int, q_stride: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.dim, self.dim_out, self.num_heads = dim, dim_out, num_heads
        self.q_stride = q_stride
        self.qkv = nn.Linear(dim, dim_out * 3)
        self.proj = nn.Linear(dim_out, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, h, w, _ = x.shape
        qkv = linear_act(x, self.qkv).reshape(b, h * w, 3, self.num_heads, -1)
        q, k, v = qkv.unbind(2)  # each (B, HW, heads, head_dim)
        if self.q_stride:
            # Pool over space with heads and channels stacked, as the channels were laid out.
            q = _max_pool_hw(q.reshape(b, h, w, -1), self.q_stride)
            h, w = q.shape[1:3]
            q = q.reshape(b, h * w, self.num_heads, -1)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        x = x.transpose(1, 2).reshape(b, h, w, -1)
        return linear_act(x, self.proj)


class MultiScaleBlock(nn.Module):
    """Pre-norm transformer block on a (B, H, W, C) map, windowed or global.

    Parameters
    ----------
    dim, dim_out : int
        Input and output widths; when they differ the shortcut is projected (``proj``).
    num_heads : int
        Attention heads.
    mlp_ratio : float
        Hidden width of the MLP relative to ``dim_out``.
    q_stride : tuple of int, optional
        Query pooling stride of a stage's first block (the shortcut is pooled too).
    window_size : int
        Side of the attention windows before pooling; 0 attends globally.
    """

    def __init__(
        self,
        dim: int,
        dim_out: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        q_stride: tuple[int, int] | None = None,
        window_size: int = 0,
    ) -> None:
        super().__init__()
        self.dim, self.dim_out = dim, dim_out
        self.window_size = window_size
        self.q_stride = q_stride
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = MultiScaleAttention(dim, dim_out, num_heads, q_stride=q_stride)
        self.norm2 = nn.LayerNorm(dim_out, eps=1e-6)
        self.mlp = MLP((dim_out, int(dim_out * mlp_ratio), dim_out))
        if dim != dim_out:
            self.proj = nn.Linear(dim, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        if self.dim != self.dim_out:
            # The shortcut of a widening block starts from the normalized input.
            shortcut = self.proj(x)
            if self.q_stride:
                shortcut = _max_pool_hw(shortcut, self.q_stride)
        if self.window_size > 0:
            x, grid = window_partition(x, self.window_size)
            x = self.attn(x)
            # Pooled queries shrink each window; the grid of windows is unchanged.
            x = window_unpartition(x, grid, shortcut.shape[1:3])
        else:
            x = self.attn(x)
        x = shortcut + x
        return self.mlp(self.norm2(x), residual=x)


class Hiera(nn.Module):
    """Hierarchical backbone returning one (B, C_i, H_i, W_i) map per stage, finest first.

    Parameters
    ----------
    embed_dim, num_heads : int
        Width and heads of the first stage; both grow by ``dim_mul`` / ``head_mul`` per stage.
    q_pool : int
        How many stage transitions pool the queries.
    q_stride : tuple of int
        Pooling stride at those transitions.
    stages : sequence of int
        Blocks per stage.
    window_pos_embed_bkg_spatial_size : tuple of int
        Side of the learned background position embedding, resized to the patch grid.
    window_spec : sequence of int
        Attention window per stage; the first also sizes the tiled window embedding.
    global_att_blocks : sequence of int
        Blocks (counted over all stages) that attend globally.
    """

    def __init__(
        self,
        embed_dim: int = 96,
        num_heads: int = 1,
        q_pool: int = 3,
        q_stride: tuple[int, int] = (2, 2),
        stages: Sequence[int] = (2, 3, 16, 3),
        dim_mul: float = 2.0,
        head_mul: float = 2.0,
        window_pos_embed_bkg_spatial_size: tuple[int, int] = (14, 14),
        window_spec: Sequence[int] = (8, 4, 14, 7),
        global_att_blocks: Sequence[int] = (12, 16, 20),
    ) -> None:
        super().__init__()
        if len(stages) != len(window_spec):
            raise ValueError("stages and window_spec need one entry per stage")
        self.window_spec = tuple(window_spec)
        self.global_att_blocks = tuple(global_att_blocks)
        self.stage_ends = [sum(stages[: i + 1]) - 1 for i in range(len(stages))]
        if not 0 <= q_pool < len(stages):
            raise ValueError(f"q_pool must be in [0, {len(stages) - 1}]")
        pool_blocks = {end + 1 for end in self.stage_ends[:-1][:q_pool]}

        self.patch_embed = PatchEmbed(embed_dim=embed_dim)
        # Windowed position embedding (Bolya et al. 2023): a coarse background
        # resized to the grid plus one window-sized pattern tiled over it.
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_dim, *window_pos_embed_bkg_spatial_size))
        self.pos_embed_window = nn.Parameter(torch.zeros(1, embed_dim, self.window_spec[0], self.window_spec[0]))

        self.blocks = nn.ModuleList()
        stage = 0
        dim = embed_dim
        for i in range(sum(stages)):
            # A stage's first block still windows at the previous stage's size:
            # its queries are pooled, so its output windows are already the new size.
            window = 0 if i in self.global_att_blocks else self.window_spec[stage]
            dim_out = dim
            if i - 1 in self.stage_ends:
                dim_out = int(dim * dim_mul)
                num_heads = int(num_heads * head_mul)
                stage += 1
            self.blocks.append(
                MultiScaleBlock(
                    dim,
                    dim_out,
                    num_heads,
                    q_stride=tuple(q_stride) if i in pool_blocks else None,
                    window_size=window,
                )
            )
            dim = dim_out
        self.channel_list = [self.blocks[end].dim_out for end in reversed(self.stage_ends)]

    def _pos_embed(self, hw: tuple[int, int]) -> torch.Tensor:
        """The position embedding for an (h, w) patch grid, as contiguous (1, h, w, C).

        Without autograd it is kept for the next frame of the same size (the bicubic
        resize alone took 28 ms of a 0.55 s bfloat16 encoder on two cores); the key
        includes the parameters' versions, so loading new weights recomputes it.
        """
        h, w = hw
        window = self.pos_embed_window.shape[-1]
        if h % window or w % window:
            raise ValueError(f"patch grid {h}x{w} must be a multiple of the window {window} (image of 32 px steps)")
        key = (h, w, self.pos_embed.dtype, self.pos_embed.device) + tuple(
            (p.data_ptr(), 0 if p.is_inference() else p._version)
            for p in (self.pos_embed, self.pos_embed_window)
        )
        cached = getattr(self, "_pos_cache", None)
        if cached is not None and cached[0] == key and not torch.is_grad_enabled():
            return cached[1]
        pos = F.interpolate(self.pos_embed, size=(h, w), mode="bicubic")
        pos = pos + self.pos_embed_window.tile(1, 1, h // window, w // window)
        pos = pos.permute(0, 2, 3, 1).contiguous()
        if not torch.is_grad_enabled():
            self._pos_cache = (key, pos)
        return pos

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Encode a (B, 3, H, W) image into per-stage maps at strides 4, 8, 16 and 32."""
        x = self.patch_embed(x)
        x = x + self._pos_embed(x.shape[1:3])
        outputs = []
        ends = set(self.stage_ends)
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in ends:
                outputs.append(x.permute(0, 3, 1, 2))
        return outputs
