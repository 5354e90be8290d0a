"""SAM 2's memory attention: the current frame's features attend to encoded past frames.

Parameter names match Meta's checkpoints (``memory_attention.*``). The constructors
take the same arguments as Meta's, sub-modules included, so a model config maps
onto them one to one; :func:`build_memory_attention` builds the SAM 2.1 layout.
"""

from __future__ import annotations

import copy

import torch.nn.functional as F
from torch import Tensor, nn

from .rope import RoPEAttention

_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu, "glu": F.glu}


class MemoryAttentionLayer(nn.Module):
    """Pre-norm block: self-attention, cross-attention to the memory, MLP.

    Parameters
    ----------
    activation : str
        MLP activation: ``"relu"``, ``"gelu"`` or ``"glu"``.
    cross_attention : nn.Module
        Attention of the current tokens (queries) to the memory (keys, values).
    d_model : int
        Token width.
    dim_feedforward : int
        Hidden width of the MLP.
    dropout : float
        Dropout after each sub-block and inside the MLP, in training mode only.
    pos_enc_at_attn : bool
        Whether the current tokens' position encoding is added before self-attention.
    pos_enc_at_cross_attn_keys : bool
        Whether the memory's position encoding is added to the keys.
    pos_enc_at_cross_attn_queries : bool
        Whether the current tokens' position encoding is added to the cross-attention queries.
    self_attention : nn.Module
        Attention of the current tokens to themselves.
    """

    def __init__(
        self,
        activation: str,
        cross_attention: nn.Module,
        d_model: int,
        dim_feedforward: int,
        dropout: float,
        pos_enc_at_attn: bool,
        pos_enc_at_cross_attn_keys: bool,
        pos_enc_at_cross_attn_queries: bool,
        self_attention: nn.Module,
    ) -> None:
        super().__init__()
        if activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}")
        self.d_model = d_model
        self.dim_feedforward = dim_feedforward
        self.self_attn = self_attention
        self.cross_attn_image = cross_attention
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.dropout3 = nn.Dropout(dropout)
        self.activation = _ACTIVATIONS[activation]
        self.pos_enc_at_attn = pos_enc_at_attn
        self.pos_enc_at_cross_attn_keys = pos_enc_at_cross_attn_keys
        self.pos_enc_at_cross_attn_queries = pos_enc_at_cross_attn_queries

    def forward(
        self,
        tgt: Tensor,
        memory: Tensor,
        pos: Tensor | None = None,
        query_pos: Tensor | None = None,
        num_k_exclude_rope: int = 0,
    ) -> Tensor:
        """Update ``tgt`` (B, N, d_model) from ``memory`` (B, M, mem_dim), batch first.

        ``pos`` and ``query_pos`` are the position encodings of ``memory`` and ``tgt``;
        the last ``num_k_exclude_rope`` memory tokens get no rotary encoding.
        """
        x = self.norm1(tgt)
        qk = x + query_pos if self.pos_enc_at_attn else x
        tgt = tgt + self.dropout1(self.self_attn(qk, qk, v=x))

        x = self.norm2(tgt)
        extra = {"num_k_exclude_rope": num_k_exclude_rope} if num_k_exclude_rope > 0 else {}
        attended = self.cross_attn_image(
            q=x + query_pos if self.pos_enc_at_cross_attn_queries else x,
            k=memory + pos if self.pos_enc_at_cross_attn_keys else memory,
            v=memory,
            **extra,
        )
        tgt = tgt + self.dropout2(attended)

        x = self.norm3(tgt)
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return tgt + self.dropout3(x)


class MemoryAttention(nn.Module):
    """A stack of copies of one :class:`MemoryAttentionLayer`, then a LayerNorm.

    Parameters
    ----------
    d_model : int
        Token width.
    pos_enc_at_input : bool
        Whether 0.1 x the current tokens' position encoding is added to them first.
    layer : MemoryAttentionLayer
        Template layer; ``num_layers`` independent copies are made.
    num_layers : int
        Number of layers.
    batch_first : bool
        Whether the layers run on (B, N, C); inputs and output are (N, B, C) either way.
    """

    def __init__(
        self,
        d_model: int,
        pos_enc_at_input: bool,
        layer: nn.Module,
        num_layers: int,
        batch_first: bool = True,
    ) -> None:
        super().__init__()
        self.d_model = d_model
        self.layers = nn.ModuleList(copy.deepcopy(layer) for _ in range(num_layers))
        self.num_layers = num_layers
        self.norm = nn.LayerNorm(d_model)
        self.pos_enc_at_input = pos_enc_at_input
        self.batch_first = batch_first

    def forward(
        self,
        curr: Tensor | list[Tensor],
        memory: Tensor,
        curr_pos: Tensor | list[Tensor] | None = None,
        memory_pos: Tensor | None = None,
        num_obj_ptr_tokens: int = 0,
    ) -> Tensor:
        """Condition the current frame on the memory.

        Parameters
        ----------
        curr : Tensor or list of one Tensor
            (N, B, d_model) tokens of the current frame's feature map, row-major.
        memory : Tensor
            (M, B, mem_dim): spatial memories of past frames, then object pointer tokens.
        curr_pos, memory_pos : Tensor, optional
            Position encodings shaped like ``curr`` and ``memory``.
        num_obj_ptr_tokens : int
            Number of object pointer tokens at the end of ``memory`` (not rotated).

        Returns
        -------
        Tensor
            (N, B, d_model) conditioned tokens.
        """
        if isinstance(curr, list):
            if len(curr) != 1 or not isinstance(curr_pos, list) or len(curr_pos) != 1:
                raise ValueError("curr and curr_pos as lists must hold one tensor each")
            curr, curr_pos = curr[0], curr_pos[0]
        if curr.shape[1] != memory.shape[1]:
            raise ValueError("curr and memory must have the same batch size")

        out = curr
        if self.pos_enc_at_input and curr_pos is not None:
            out = out + 0.1 * curr_pos
        if self.batch_first:
            out, memory = out.transpose(0, 1), memory.transpose(0, 1)
            curr_pos = None if curr_pos is None else curr_pos.transpose(0, 1)
            memory_pos = None if memory_pos is None else memory_pos.transpose(0, 1)

        for layer in self.layers:
            # pointer tokens only exist for (and are only excluded by) rotary attention
            exclude = num_obj_ptr_tokens if isinstance(layer.cross_attn_image, RoPEAttention) else 0
            out = layer(out, memory, pos=memory_pos, query_pos=curr_pos, num_k_exclude_rope=exclude)
        out = self.norm(out)
        return out.transpose(0, 1) if self.batch_first else out


def build_memory_attention(
    d_model: int = 256,
    mem_dim: int = 64,
    num_layers: int = 4,
    feat_sizes: tuple[int, int] = (64, 64),
) -> MemoryAttention:
    """The memory attention of every SAM 2.1 model (tiny to large share it)."""

    def rope_attention(**kwargs) -> RoPEAttention:
        return RoPEAttention(
            d_model, num_heads=1, downsample_rate=1, dropout=0.1, rope_theta=10000.0,
            feat_sizes=feat_sizes, **kwargs,
        )  # fmt: skip

    layer = MemoryAttentionLayer(
        activation="relu",
        cross_attention=rope_attention(rope_k_repeat=True, kv_in_dim=mem_dim),
        d_model=d_model,
        dim_feedforward=2048,
        dropout=0.1,
        pos_enc_at_attn=False,
        pos_enc_at_cross_attn_keys=True,
        pos_enc_at_cross_attn_queries=False,
        self_attention=rope_attention(),
    )
    return MemoryAttention(d_model, pos_enc_at_input=True, layer=layer, num_layers=num_layers)
