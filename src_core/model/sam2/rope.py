"""Axial rotary position encoding (RoPE) and the attention that uses it in SAM 2's memory attention.

Each head's channels are taken as consecutive (real, imaginary) pairs; the first
half of the pairs is rotated by angles proportional to a token's column, the
second half by its row. Rotations are done with real cos/sin arithmetic rather
than complex tensors, which not every backend supports (complex numbers appear
only when building the tables, on the CPU); the values are those of Meta's
complex formulation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def axial_rope_angles(dim: int, end_x: float, end_y: float, theta: float = 10000.0) -> Tensor:
    """Rotation angles of the tokens of a row-major ``end_y`` x ``end_x`` grid.

    Parameters
    ----------
    dim : int
        Channels per head (a multiple of 4).
    end_x, end_y : float
        Grid width and height. Meta passes ``sqrt(n)`` as a float when it rebuilds
        the table for ``n`` tokens, hence floats are accepted and used as given.
    theta : float
        Base of the frequency progression.

    Returns
    -------
    Tensor
        (tokens, dim // 2) float32 angles: column angles, then row angles.
    """
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 4)[: dim // 4].float() / dim))
    t = torch.arange(end_x * end_y, dtype=torch.float32)
    cols = t % end_x
    rows = torch.div(t, end_x, rounding_mode="floor")
    return torch.cat((torch.outer(cols, freqs), torch.outer(rows, freqs)), dim=-1)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the channel pairs of ``x`` (..., tokens, dim) by the angles behind ``cos``/``sin``.

    ``cos`` and ``sin`` are (tokens, dim // 2), broadcast over ``x``'s leading axes.
    The rotation runs in float32 and the result has the dtype of ``x``. Where complex
    numbers are supported it is one complex product (3-4x faster on a CPU than the
    real arithmetic, which MPS gets).
    """
    pairs = x.float().reshape(*x.shape[:-1], -1, 2)
    if x.device.type != "mps":
        rotated = torch.view_as_complex(pairs) * torch.complex(cos, sin)
        return torch.view_as_real(rotated).flatten(-2).type_as(x)
    re, im = pairs[..., 0], pairs[..., 1]
    out = torch.stack((re * cos - im * sin, re * sin + im * cos), dim=-1)
    return out.flatten(-2).type_as(x)


class RoPEAttention(nn.Module):
    """Multi-head attention with axial rotary encoding of queries and keys.

    Queries are the tokens of a square feature map. Keys are either the same map
    (self-attention) or, with ``rope_k_repeat``, several frames of it, each frame
    rotated like the query map; trailing keys (object pointers) can be left
    unrotated with ``num_k_exclude_rope``.

    Parameters
    ----------
    embedding_dim : int
        Width of the queries and of the output.
    num_heads : int
        Number of heads; must divide ``embedding_dim // downsample_rate``.
    downsample_rate : int
        Queries, keys and values are projected to ``embedding_dim // downsample_rate``.
    dropout : float
        Attention dropout, in training mode only.
    kv_in_dim : int, optional
        Width of the keys and values (``embedding_dim`` when None).
    rope_theta : float
        Base of the rotary frequencies.
    rope_k_repeat : bool
        Whether keys may be a whole number of repetitions of the query grid.
    feat_sizes : tuple of int
        (width, height) of the grid the angle table is first built for.
    """

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        downsample_rate: int = 1,
        dropout: float = 0.0,
        kv_in_dim: int | None = None,
        rope_theta: float = 10000.0,
        rope_k_repeat: bool = False,
        feat_sizes: tuple[int, int] = (64, 64),
    ) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.kv_in_dim = embedding_dim if kv_in_dim is None else kv_in_dim
        self.internal_dim = embedding_dim // downsample_rate
        self.num_heads = num_heads
        if self.internal_dim % num_heads:
            raise ValueError("num_heads must divide embedding_dim // downsample_rate")
        self.q_proj = nn.Linear(embedding_dim, self.internal_dim)
        self.k_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.v_proj = nn.Linear(self.kv_in_dim, self.internal_dim)
        self.out_proj = nn.Linear(self.internal_dim, embedding_dim)
        self.dropout_p = dropout
        self.rope_theta = rope_theta
        self.rope_k_repeat = rope_k_repeat
        # Not a buffer: it is derived, must stay float32 whatever the module's dtype,
        # and must not enter the state dict. Built on the CPU, as Meta does.
        self._set_angles(feat_sizes[0], feat_sizes[1])

    def _set_angles(self, end_x: float, end_y: float) -> None:
        head_dim = self.internal_dim // self.num_heads
        angles = axial_rope_angles(head_dim, end_x, end_y, self.rope_theta)
        # torch.polar's cos/sin differ from Tensor.cos/sin by an ulp at places; Meta's
        # tables come from torch.polar, so ours do too (real parts kept, built on CPU)
        rotations = torch.polar(torch.ones_like(angles), angles)
        self._cos, self._sin = rotations.real.contiguous(), rotations.imag.contiguous()

    def _rope_tables(self, n_q: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self._cos.shape[0] != n_q:
            # like Meta, any other query count is taken as a square map, and the table
            # is replaced (not added to) so the next call at this size reuses it
            side = math.sqrt(n_q)  # a float, as Meta passes it
            self._set_angles(side, side)
            if self._cos.shape[0] != n_q:
                raise ValueError(f"{n_q} query tokens do not form a square feature map")
        if self._cos.device != device:
            self._cos, self._sin = self._cos.to(device), self._sin.to(device)
        return self._cos, self._sin

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, num_k_exclude_rope: int = 0) -> Tensor:
        """Attend ``q`` (B, Nq, C) to ``k``/``v`` (B, Nk, kv_in_dim); the last
        ``num_k_exclude_rope`` keys are not rotated."""
        q = self._split_heads(self.q_proj(q))
        k = self._split_heads(self.k_proj(k))
        v = self._split_heads(self.v_proj(v))

        n_q, n_k = q.shape[-2], k.shape[-2]
        if n_q != n_k and not self.rope_k_repeat:
            raise ValueError("keys differ in number from queries; needs rope_k_repeat")
        cos, sin = self._rope_tables(n_q, q.device)
        q = apply_rope(q, cos, sin)
        n_rope = n_k - num_k_exclude_rope
        if n_rope > 0:
            if n_rope % n_q:
                raise ValueError(f"{n_rope} rotated keys are not whole frames of {n_q} tokens")
            # key i is rotated like query i mod n_q: every memory frame as the current one
            reps = n_rope // n_q
            frames = k[:, :, :n_rope].reshape(*k.shape[:2], reps, n_q, k.shape[-1])
            rotated = apply_rope(frames, cos, sin).reshape(*k.shape[:2], n_rope, k.shape[-1])
            k = torch.cat((rotated, k[:, :, n_rope:]), dim=-2) if num_k_exclude_rope else rotated

        out = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout_p if self.training else 0.0
        )
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, self.internal_dim))
