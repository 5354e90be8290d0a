"""SAM 2's memory bank: which past frames a frame attends to, and how memories are made.

Pure functions on frame indices and tensors, and :class:`MemoryBankMixin`, the memory
half of :class:`~.sam2_base.Sam2Model`. They follow Meta's ``sam2_utils`` and
``SAM2Base`` semantics, ordering included (the order of memories is the order of the
attention's keys, which decides rounding).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import torch
from torch import Tensor

__all__ = [
    "MemoryBankMixin",
    "apply_non_overlapping_constraints",
    "gather_memory_outputs",
    "gather_pointer_outputs",
    "memory_frame_indices",
    "select_closest_cond_frames",
    "sine_pe_1d",
]

V = TypeVar("V")
Output = dict[str, Any]  # one frame's track_step output
OutputDict = dict[str, dict[int, Output]]  # "cond_frame_outputs", "non_cond_frame_outputs"


def select_closest_cond_frames(
    frame_idx: int, cond_frame_outputs: Mapping[int, V], max_cond_frame_num: int
) -> tuple[dict[int, V], dict[int, V]]:
    """Split conditioning frames into those ``frame_idx`` attends to and the rest.

    With a limit, the nearest conditioning frame before ``frame_idx`` and the nearest
    at or after it always come first, then the others by temporal distance (ties in
    the given order) until ``max_cond_frame_num`` are chosen.

    Parameters
    ----------
    frame_idx : int
        The frame being tracked.
    cond_frame_outputs : mapping of int to anything
        Outputs of the conditioning (prompted) frames by frame index.
    max_cond_frame_num : int
        How many to keep; -1 keeps all. A limit must be at least 2.

    Returns
    -------
    tuple of dict
        ``(selected, unselected)``, each preserving frame index to output.
    """
    if max_cond_frame_num == -1 or len(cond_frame_outputs) <= max_cond_frame_num:
        return dict(cond_frame_outputs), {}
    if max_cond_frame_num < 2:
        raise ValueError("max_cond_frame_num must be -1 or at least 2")
    before = [t for t in cond_frame_outputs if t < frame_idx]
    after = [t for t in cond_frame_outputs if t >= frame_idx]
    chosen = ([max(before)] if before else []) + ([min(after)] if after else [])
    rest = [t for t in cond_frame_outputs if t not in chosen]
    rest.sort(key=lambda t: abs(t - frame_idx))  # stable: ties keep the given order
    chosen += rest[: max_cond_frame_num - len(chosen)]
    selected = {t: cond_frame_outputs[t] for t in chosen}
    unselected = {t: v for t, v in cond_frame_outputs.items() if t not in selected}
    return selected, unselected


def memory_frame_indices(
    frame_idx: int, num_maskmem: int, stride: int = 1, reverse: bool = False
) -> list[tuple[int, int]]:
    """The non-conditioning memory slots of a frame: ``(t_pos, frame index)`` pairs.

    Slot ``t_pos`` runs from 1 (oldest) to ``num_maskmem - 1`` (the adjacent frame).
    The adjacent frame is always used; older slots step back (or forward, when
    tracking in reverse) over every ``stride``-th frame, starting from the multiple
    of ``stride`` nearest to ``frame_idx -+ 2`` (XMem's "r"). Indices may be negative
    or beyond the video; such slots simply find no output.
    """
    slots = []
    for t_pos in range(1, num_maskmem):
        frames_back = num_maskmem - t_pos
        if frames_back == 1:
            idx = frame_idx + 1 if reverse else frame_idx - 1
        elif reverse:
            nearest = -(-(frame_idx + 2) // stride) * stride  # ceiling to a multiple
            idx = nearest + (frames_back - 2) * stride
        else:
            nearest = (frame_idx - 2) // stride * stride  # floor to a multiple
            idx = nearest - (frames_back - 2) * stride
        slots.append((t_pos, idx))
    return slots


def sine_pe_1d(positions: torch.Tensor, dim: int, temperature: float = 10000) -> torch.Tensor:
    """Transformer-style sine encoding of scalar positions: (..., dim), sines then cosines.

    Frequencies pair up (``temperature ** (2 * (i // 2) / (dim / 2))``), as in SAM 2's
    temporal encoding of object pointers.
    """
    half = dim // 2
    idx = torch.arange(half, dtype=torch.float32, device=positions.device)
    freqs = temperature ** (2 * (idx // 2) / half)
    angles = positions.unsqueeze(-1) / freqs
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


def apply_non_overlapping_constraints(pred_masks: torch.Tensor) -> torch.Tensor:
    """Keep each pixel only for its highest-scoring object of a (B, 1, H, W) batch.

    Other objects' logits there are clamped to at most -10 (sigmoid ~ 4.5e-5), so
    masks of objects of one frame stop overlapping. One object is returned as is.
    """
    num_objects = pred_masks.shape[0]
    if num_objects == 1:
        return pred_masks
    winner = torch.argmax(pred_masks, dim=0, keepdim=True)
    ids = torch.arange(num_objects, device=pred_masks.device)[:, None, None, None]
    return torch.where(winner == ids, pred_masks, torch.clamp(pred_masks, max=-10.0))


def gather_memory_outputs(
    frame_idx: int,
    output_dict: Mapping[str, Mapping[int, Any]],
    selected_cond: Mapping[int, Any],
    unselected_cond: Mapping[int, Any],
    num_maskmem: int,
    stride: int,
    reverse: bool,
) -> list[tuple[int, Any]]:
    """``(t_pos, output)`` of every memory a frame attends to; conditioning frames first.

    Conditioning frames get ``t_pos`` 0; a slot whose frame has no non-conditioning
    output may be filled by a conditioning frame left out by the selection.
    """
    memories = [(0, out) for out in selected_cond.values()]
    non_cond = output_dict["non_cond_frame_outputs"]
    for t_pos, idx in memory_frame_indices(frame_idx, num_maskmem, stride, reverse):
        out = non_cond.get(idx)
        if out is None:
            out = unselected_cond.get(idx)
        if out is not None:
            memories.append((t_pos, out))
    return memories


def gather_pointer_outputs(
    frame_idx: int,
    output_dict: Mapping[str, Mapping[int, Any]],
    selected_cond: Mapping[int, Any],
    unselected_cond: Mapping[int, Any],
    max_pointers: int,
    num_frames: int | None,
    only_past: bool,
    signed: bool,
    reverse: bool,
) -> list[tuple[int, Any]]:
    """``(temporal distance, output)`` of the frames whose object pointers are attended to.

    First the selected conditioning frames (only those not ahead of ``frame_idx`` in
    the tracking direction if ``only_past``), at their frame distance (signed if so
    configured, negated when tracking in reverse); then up to ``max_pointers - 1``
    frames just behind ``frame_idx``, stopping at the video's ends.
    """
    sign = -1 if reverse else 1
    ptrs = []
    for t, out in selected_cond.items():
        if only_past and (t < frame_idx if reverse else t > frame_idx):
            continue
        ptrs.append(((frame_idx - t) * sign if signed else abs(frame_idx - t), out))
    non_cond = output_dict["non_cond_frame_outputs"]
    for t_diff in range(1, max_pointers):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break
        out = non_cond.get(t, unselected_cond.get(t))
        if out is not None:
            ptrs.append((t_diff, out))
    return ptrs


def to_tokens(x: Tensor) -> Tensor:
    """(B, C, H, W) to (H*W, B, C)."""
    return x.flatten(2).permute(2, 0, 1)


def to_map(x: Tensor, size: tuple[int, int]) -> Tensor:
    """(H*W, B, C) to (B, C, H, W)."""
    return x.permute(1, 2, 0).view(x.shape[1], x.shape[2], *size)


class MemoryBankMixin:
    """The memory half of :class:`~.sam2_base.Sam2Model`: reading and writing memories.

    Uses the model's ``config``, ``hidden_dim``, ``mem_dim``, ``num_maskmem``, its
    learned ``maskmem_tpos_enc``, ``no_mem_embed``, ``no_mem_pos_enc`` and
    ``no_obj_embed_spatial``, and its ``memory_attention``, ``memory_encoder`` and
    ``obj_ptr_tpos_proj`` modules.
    """

    def _prepare_memory_conditioned_features(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        output_dict: OutputDict,
        num_frames: int | None,
        track_in_reverse: bool = False,
    ) -> Tensor:
        """The frame's (H*W, B, C) top-level features attending to the memory bank.

        Memories: the selected conditioning frames (temporal slot 0), then the last
        ``num_maskmem - 1`` tracked frames, each with its spatial and temporal position
        encoding; then object pointers of past frames, split into ``C / mem_dim``
        tokens each, with a sine encoding of their frame distance. A first
        conditioning frame attends to the no-memory token (or just adds it).

        Returns
        -------
        Tensor
            (B, C, H, W).
        """
        cfg = self.config
        feats, size = current_vision_feats[-1], feat_sizes[-1]
        b, c = feats.shape[1], self.hidden_dim
        device, dtype = feats.device, feats.dtype
        if self.num_maskmem == 0:  # memory disabled: plain SAM on images
            return to_map(feats, size)
        if is_init_cond_frame:
            if cfg.directly_add_no_mem_embed:
                return to_map(feats + self.no_mem_embed, size)
            # a dummy memory token, so that the attention has something to attend to
            memory = self.no_mem_embed.expand(1, b, -1)
            memory_pos = self.no_mem_pos_enc.expand(1, b, -1)
            return self._attend(
                current_vision_feats, current_vision_pos_embeds, memory, memory_pos, 0, size
            )

        cond_outputs = output_dict["cond_frame_outputs"]
        if not cond_outputs:
            raise ValueError("tracking needs at least one conditioning frame")
        selected, unselected = select_closest_cond_frames(
            frame_idx, cond_outputs, cfg.max_cond_frames_in_attn
        )
        memories, memory_pos = [], []
        for t_pos, prev in gather_memory_outputs(
            frame_idx, output_dict, selected, unselected, self.num_maskmem,
            cfg.memory_temporal_stride_for_eval, track_in_reverse,
        ):  # fmt: skip
            # stored memories may live on another device (offloaded) or in bfloat16
            memories.append(to_tokens(prev["maskmem_features"].to(device=device, dtype=dtype)))
            spatial = to_tokens(prev["maskmem_pos_enc"][-1].to(device=device, dtype=dtype))
            memory_pos.append(spatial + self.maskmem_tpos_enc[self.num_maskmem - t_pos - 1])

        num_ptr_tokens = 0
        if cfg.use_obj_ptrs_in_encoder:
            max_ptrs = cfg.max_obj_ptrs_in_encoder
            if num_frames is not None:
                max_ptrs = min(num_frames, max_ptrs)
            pointers = gather_pointer_outputs(
                frame_idx, output_dict, selected, unselected, max_ptrs, num_frames,
                cfg.only_obj_ptrs_in_the_past_for_eval, cfg.use_signed_tpos_enc_to_obj_ptrs,
                track_in_reverse,
            )  # fmt: skip
            if pointers:
                ptrs = torch.stack([out["obj_ptr"] for _, out in pointers])
                ptrs = ptrs.to(device=device, dtype=dtype)
                distances = [t for t, _ in pointers]
                ptr_pos = self._pointer_pos_enc(distances, max_ptrs, b, device, dtype)
                if self.mem_dim < c:
                    # each C-wide pointer becomes C / mem_dim consecutive memory tokens
                    split = c // self.mem_dim
                    ptrs = ptrs.reshape(-1, b, split, self.mem_dim).permute(0, 2, 1, 3)
                    ptrs = ptrs.flatten(0, 1)
                    ptr_pos = ptr_pos.repeat_interleave(split, dim=0)
                memories.append(ptrs)
                memory_pos.append(ptr_pos)
                num_ptr_tokens = ptrs.shape[0]
        return self._attend(
            current_vision_feats, current_vision_pos_embeds,
            torch.cat(memories), torch.cat(memory_pos), num_ptr_tokens, size,
        )  # fmt: skip

    def _pointer_pos_enc(
        self,
        distances: list[int],
        max_ptrs: int,
        batch: int,
        device: torch.device,
        dtype: torch.dtype,
    ) -> Tensor:
        """(P, B, mem_dim) temporal encoding of pointers at the given frame distances."""
        if not self.config.add_tpos_enc_to_obj_ptrs:
            return torch.zeros(len(distances), batch, self.mem_dim, device=device, dtype=dtype)
        width = self.hidden_dim if self.config.proj_tpos_enc_in_obj_ptrs else self.mem_dim
        # distances normalized by the largest one a pointer can have
        pos = torch.tensor(distances, device=device) / (max_ptrs - 1)
        enc = self.obj_ptr_tpos_proj(sine_pe_1d(pos, width).to(dtype))
        return enc.unsqueeze(1).expand(-1, batch, self.mem_dim)

    def _attend(
        self,
        feats: list[Tensor],
        pos: list[Tensor],
        memory: Tensor,
        memory_pos: Tensor,
        num_ptr_tokens: int,
        size: tuple[int, int],
    ) -> Tensor:
        """Memory attention on the top-level tokens; returns (B, C, H, W)."""
        out = self.memory_attention(
            curr=feats[-1:],
            curr_pos=pos[-1:],
            memory=memory,
            memory_pos=memory_pos,
            num_obj_ptr_tokens=num_ptr_tokens,
        )
        return to_map(out, size)

    def _encode_new_memory(
        self,
        current_vision_feats: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        pred_masks_high_res: Tensor,
        object_score_logits: Tensor,
        is_mask_from_pts: bool,
    ) -> tuple[Tensor, list[Tensor]]:
        """The memory of a frame: its top-level features fused with its predicted mask.

        Mask logits (B, 1, image_size, image_size) become probabilities (or a hard
        mask from clicks, if so configured), scaled and shifted; frames where the
        object is absent get ``no_obj_embed_spatial`` added.

        Returns
        -------
        tuple
            (B, mem_dim, H, W) features and their one-item position-encoding list.
        """
        cfg = self.config
        pix_feat = to_map(current_vision_feats[-1], feat_sizes[-1])
        if cfg.non_overlap_masks_for_mem_enc:
            pred_masks_high_res = apply_non_overlapping_constraints(pred_masks_high_res)
        if cfg.binarize_mask_from_pts_for_mem_enc and is_mask_from_pts:
            # the memory then holds exactly the mask the user saw while clicking
            mask_for_mem = (pred_masks_high_res > 0).float()
        else:
            mask_for_mem = torch.sigmoid(pred_masks_high_res)
        if cfg.sigmoid_scale_for_mem_enc != 1.0:
            mask_for_mem = mask_for_mem * cfg.sigmoid_scale_for_mem_enc
        if cfg.sigmoid_bias_for_mem_enc != 0.0:
            mask_for_mem = mask_for_mem + cfg.sigmoid_bias_for_mem_enc
        out = self.memory_encoder(pix_feat, mask_for_mem.to(pix_feat.dtype), skip_mask_sigmoid=True)
        features, pos_enc = out["vision_features"], out["vision_pos_enc"]
        if self.no_obj_embed_spatial is not None:
            absent = (1 - (object_score_logits > 0).float()).to(features.dtype)
            embed = self.no_obj_embed_spatial[..., None, None]
            features = features + absent[..., None, None] * embed
        return features, pos_enc
