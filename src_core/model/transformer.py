"""SAM's two-way transformer: prompt tokens and image embedding attend to each other.

Parameter names match Meta's released checkpoints (``mask_decoder.transformer.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .common import MLPBlock


class Attention(nn.Module):
    """Multi-head attention whose projections may be narrower than the embedding.

    Between a few prompt tokens and thousands of image tokens, the per-head projection
    of the image side is folded into the few tokens' side: the same arithmetic with
    (heads x few) instead of ``internal_dim`` columns on the image side, about 2x fewer
    operations for a typical click.

    Parameters
    ----------
    embedding_dim : int
        Width of the inputs and of the output.
    num_heads : int
        Number of heads; must divide ``embedding_dim // downsample_rate``.
    downsample_rate : int
        Queries, keys and values are projected to ``embedding_dim // downsample_rate``.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.v_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None = None) -> Tensor:
        """Attention output, plus ``residual`` when given (fused where that saves a pass)."""
        few = self.num_heads * min(q.shape[1], k.shape[1])
        if few < self.internal_dim and k.shape[1] != q.shape[1]:
            if k.shape[1] < q.shape[1]:
                return self._many_queries_few_keys(q, k, v, residual)
            out = self._few_queries_many_keys(q, k, v)
        else:
            out = self._standard(q, k, v)
        return out if residual is None else residual + out

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def _head_weights(self, linear: nn.Linear) -> Tensor:
        """(heads, head_dim, embedding_dim) view of a projection's weight."""
        return linear.weight.view(self.num_heads, -1, self.embedding_dim)

    def _standard(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.internal_dim))

    def _many_queries_few_keys(
        self, q: Tensor, k: Tensor, v: Tensor, residual: Tensor | None
    ) -> Tensor:
        """Image tokens attending to prompt tokens, without projecting the image tokens."""
        batch = max(q.shape[0], k.shape[0])
        n_q, n_k = q.shape[1], k.shape[1]
        heads = self.num_heads
        head_dim = self.internal_dim // heads
        keys = self._split_heads(self.k_proj(k))  # (B, h, n_k, d)
        values = self._split_heads(self.v_proj(v))
        # logits[b, h, j, i] = (q_i Wq_h^T + bq_h) . keys[b, h, j] / sqrt(d), laid out with
        # the image tokens last so that softmax over the few keys runs on long rows
        scale = head_dim**-0.5
        fold = torch.einsum("hde,bhjd->bhje", self._head_weights(self.q_proj), keys) * scale
        offset = torch.einsum("hd,bhjd->bhj", self.q_proj.bias.view(heads, head_dim), keys) * scale
        logits = torch.baddbmm(
            offset.reshape(batch, heads * n_k, 1),
            fold.reshape(batch, heads * n_k, -1),
            q.expand(batch, -1, -1).transpose(1, 2),
        )
        probs = torch.softmax(logits.view(batch, heads, n_k, n_q), dim=2)
        # out = sum_h probs_h @ (values_h @ Wo_h^T) + bo; each head's probabilities sum
        # to one, so bo / heads on every row of the folded values adds bo exactly once
        w_out = self.out_proj.weight.view(self.embedding_dim, heads, head_dim)
        value_out = torch.einsum("bhjd,ehd->bhje", values, w_out) + self.out_proj.bias / heads
        base = residual if residual is not None else q.new_zeros(())
        return torch.baddbmm(
            base.expand(batch, n_q, self.embedding_dim),
            probs.view(batch, heads * n_k, n_q).transpose(1, 2),
            value_out.reshape(batch, heads * n_k, -1),
        )

    def _few_queries_many_keys(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Prompt tokens attending to image tokens, without projecting the image tokens."""
        batch = max(q.shape[0], k.shape[0])
        n_q = q.shape[1]
        heads = self.num_heads
        head_dim = self.internal_dim // heads
        queries = self._split_heads(self.q_proj(q))  # (B, h, n_q, d)
        # logits_h = queries_h (Wk_h X^T + bk_h): the bias term is the same for every
        # key of a query, and softmax ignores it.
        fold = torch.einsum("bhid,hde->bhie", queries, self._head_weights(self.k_proj))
        fold = fold * head_dim**-0.5
        keys_t = k.expand(batch, -1, -1).transpose(1, 2)
        probs = torch.softmax(torch.bmm(fold.reshape(batch, heads * n_q, -1), keys_t), dim=-1)
        # probs_h @ (X Wv_h^T + bv_h) = (probs_h @ X) Wv_h^T + bv_h, rows of probs sum to 1
        mixed = torch.bmm(probs, v.expand(batch, -1, -1)).view(batch, heads, n_q, -1)
        out = torch.einsum("bhie,hde->bihd", mixed, self._head_weights(self.v_proj))
        out = out + self.v_proj.bias.view(heads, head_dim)
        return self.out_proj(out.reshape(batch, n_q, self.internal_dim))


class TwoWayAttentionBlock(nn.Module):
    """Token self-attention, token-to-image attention, token MLP, image-to-token attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int = 2048,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = Attention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(
        self,
        queries: Tensor,
        keys: Tensor,
        query_pe: Tensor,
        key_pe: Tensor,
        keys_with_pe: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """One block; ``keys_with_pe`` (= keys + key_pe) may be passed in if already known."""
        if self.skip_first_layer_pe:
            queries = self.self_attn(q=queries, k=queries, v=queries)
        else:
            q = queries + query_pe
            queries = self.self_attn(q=q, k=q, v=queries, residual=queries)
        queries = self.norm1(queries)

        if keys_with_pe is None:
            keys_with_pe = keys + key_pe
        q = queries + query_pe
        queries = self.norm2(
            self.cross_attn_token_to_image(q=q, k=keys_with_pe, v=keys, residual=queries)
        )
        queries = self.norm3(queries + self.mlp(queries))

        q = queries + query_pe
        keys = self.norm4(
            self.cross_attn_image_to_token(q=keys_with_pe, k=q, v=queries, residual=keys)
        )
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token-to-image attention.

    Parameters
    ----------
    depth : int
        Number of two-way blocks (2).
    embedding_dim : int
        Token and image channel width (256).
    num_heads : int
        Heads of every attention (8).
    mlp_dim : int
        Hidden width of the token MLP (2048).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.depth = depth
        self.embedding_dim = embedding_dim
        self.num_heads = num_heads
        self.mlp_dim = mlp_dim
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim=embedding_dim,
                num_heads=num_heads,
                mlp_dim=mlp_dim,
                activation=activation,
                attention_downsample_rate=attention_downsample_rate,
                skip_first_layer_pe=(i == 0),
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = Attention(
            embedding_dim, num_heads, downsample_rate=attention_downsample_rate
        )
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(
        self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Return updated tokens (B, N, C) and image tokens (B, H*W, C).

        ``image_embedding`` and ``image_pe`` are (B, C, H, W) (or batch 1, shared).
        """
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        return self.forward_tokens(keys, key_pe, point_embedding)

    def forward_tokens(
        self,
        keys: Tensor,
        key_pe: Tensor,
        point_embedding: Tensor,
        keys_with_pe: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The transformer on channels-last image tokens (B or 1, H*W, C).

        ``keys_with_pe`` (keys + key_pe) can be given when it is already known, e.g.
        cached for an image whose prompts carry no mask.
        """
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(
                queries=queries,
                keys=keys,
                query_pe=point_embedding,
                key_pe=key_pe,
                keys_with_pe=keys_with_pe,
            )
            keys_with_pe = None  # the keys changed
        q = queries + point_embedding
        queries = self.final_attn_token_to_image(q=q, k=keys + key_pe, v=keys, residual=queries)
        batch = max(queries.shape[0], keys.shape[0])
        return self.norm_final_attn(queries), keys.expand(batch, -1, -1)
