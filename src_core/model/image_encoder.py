"""SAM's image encoder: a ViT with windowed and global attention (ViTDet style).

Parameter names match Meta's released checkpoints (``image_encoder.*``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from ..jobs import check_stop
from .common import LayerNorm2d, MLPBlock
from .vit_attention import Attention


class ImageEncoderViT(nn.Module):
    """Vision transformer turning a padded 3 x S x S image into a 256 x S/16 x S/16 embedding.

    Parameters
    ----------
    img_size : int
        Side of the square, padded input (1024 for the released models).
    patch_size : int
        Patch side; the embedding is ``img_size // patch_size`` wide.
    in_chans, embed_dim, depth, num_heads, mlp_ratio, out_chans, qkv_bias
        Transformer geometry.
    use_abs_pos : bool
        Learned absolute position embedding added after patch embedding.
    use_rel_pos : bool
        Decomposed relative position bias in every attention layer.
    window_size : int
        Side of the attention windows (0: global attention everywhere).
    global_attn_indexes : tuple of int
        Blocks that attend globally instead of within windows.
    """

    def __init__(
        self,
        img_size: int = 1024,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        out_chans: int = 256,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | partial = partial(nn.LayerNorm, eps=1e-6),
        act_layer: type[nn.Module] = nn.GELU,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 14,
        global_attn_indexes: tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        self.img_size = img_size
        grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.pos_embed: nn.Parameter | None = None
        if use_abs_pos:
            self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, embed_dim))
        self.blocks = nn.ModuleList(
            Block(
                dim=embed_dim,
                num_heads=num_heads,
                mlp_ratio=mlp_ratio,
                qkv_bias=qkv_bias,
                norm_layer=norm_layer,
                act_layer=act_layer,
                use_rel_pos=use_rel_pos,
                window_size=0 if i in global_attn_indexes else window_size,
                input_size=(grid, grid),
            )
            for i in range(depth)
        )
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )

    def forward(
        self, x: torch.Tensor, should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """Encode ``x``; ``should_stop`` is asked between blocks and, when it answers
        True, :class:`~src_core.jobs.Cancelled` is raised (a few hundred ms at most on a CPU)."""
        x = self.patch_embed(x)
        if self.pos_embed is not None:
            x = x + self.pos_embed
        for block in self.blocks:
            check_stop(should_stop, "image encoding")
            x = block(x)
        return self.neck(x.permute(0, 3, 1, 2))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection, returning channels-last tokens (B, H, W, C)."""

    def __init__(self, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # contiguous: a channels-first buffer seen as channels-last would make every
        # later elementwise op, layer norm and copy in the blocks strided (3-7x slower)
        return self.proj(x).permute(0, 2, 3, 1).contiguous()


class Block(nn.Module):
    """Pre-norm transformer block, attending within windows or globally."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        norm_layer: type[nn.Module] | partial = nn.LayerNorm,
        act_layer: type[nn.Module] = nn.GELU,
        use_rel_pos: bool = False,
        window_size: int = 0,
        input_size: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = norm_layer(dim)
        attn_size = input_size if window_size == 0 else (window_size, window_size)
        self.attn = Attention(dim, num_heads, qkv_bias, use_rel_pos, attn_size)
        self.norm2 = norm_layer(dim)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), act_layer)
        self.window_size = window_size
        # stochastic depth rate for training (seed recipe: "drop path"); no weights,
        # so checkpoints and inference are unaffected
        self.drop_path = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.drop_path > 0:
            return self._forward_drop_path(x)
        x = self.attn.attend_grid(self.norm1(x), self.window_size, residual=x)
        return self.mlp(self.norm2(x), residual=x)

    def _branch_attention(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn.attend_grid(self.norm1(x), self.window_size)

    def _forward_drop_path(self, x: torch.Tensor) -> torch.Tensor:
        """Training forward with stochastic depth: each residual branch is dropped
        per sample with probability ``drop_path`` and rescaled when kept."""
        keep = 1.0 - self.drop_path

        def drop(branch: torch.Tensor) -> torch.Tensor:
            shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
            mask = torch.empty(shape, device=branch.device, dtype=branch.dtype).bernoulli_(keep)
            return branch * mask / keep

        x = x + drop(self._branch_attention(x))
        return x + drop(self.mlp(self.norm2(x)))
