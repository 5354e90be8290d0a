"""SAM 2.1's model: image encoder, memory, prompt encoder and mask decoder tied together.

:class:`Sam2Model` is our counterpart of Meta's ``SAM2Base`` for inference: the same
state-dict keys (the official ``sam2.1_hiera_*.pt`` ``"model"`` dicts load strictly),
the same methods and output dicts, so a video predictor drives it frame by frame with
:meth:`Sam2Model.forward_image`, :meth:`Sam2Model._prepare_backbone_features` and
:meth:`Sam2Model.track_step`. Features travel as Meta's do: flattened (H*W, B, C).
Only inference is implemented: whatever ``self.training`` says, the model computes
what Meta's computes in eval mode (training-only paths are left out).
"""

from __future__ import annotations

import contextlib
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..mask_decoder import MLP
from .image_encoder import SAM2_ENCODER_CONFIGS, build_image_encoder
from .mask_decoder import MaskDecoder, TwoWayTransformer
from .memory_attention import build_memory_attention
from .memory_encoder import build_memory_encoder
from .prompt_encoder import PromptEncoder
from .sam2_config import Sam2ModelConfig, sam2_size_name
from .sam2_memory import (
    MemoryBankMixin,
    Output,
    OutputDict,
    apply_non_overlapping_constraints,
    to_map,
    to_tokens,
)

__all__ = ["NO_OBJ_SCORE", "SAM2Base", "Sam2Model", "SamHeadOutputs", "build_sam2_model"]

# Mask logit of every pixel of a frame where the object is predicted absent.
NO_OBJ_SCORE = -1024.0
# A binary mask taken as output becomes logits of -10 / +10 (sigmoid ~ 0 / 1).
_MASK_OUT_SCALE, _MASK_OUT_BIAS = 20.0, -10.0


class SamHeadOutputs(NamedTuple):
    """What the SAM heads give for one frame (unpacks like Meta's 7-tuple).

    ``*_multimasks`` are (B, M, ...) with M = 3 in multimask mode, else 1; ``*_masks``
    the chosen one, (B, 1, ...). Low resolution is 4x the embedding, high resolution
    the model input. ``obj_ptr`` is (B, C); ``object_score_logits`` (B, 1).
    """

    low_res_multimasks: Tensor
    high_res_multimasks: Tensor
    ious: Tensor
    low_res_masks: Tensor
    high_res_masks: Tensor
    obj_ptr: Tensor
    object_score_logits: Tensor


class Sam2Model(MemoryBankMixin, nn.Module):
    """SAM 2.1 for images and videos (Meta's ``SAM2Base``, inference only).

    Parameters
    ----------
    image_encoder : nn.Module
        An :class:`~.image_encoder.ImageEncoder` (its neck's ``d_model`` is the width C).
    memory_attention : nn.Module
        A :class:`~.memory_attention.MemoryAttention`.
    memory_encoder : nn.Module
        A :class:`~.memory_encoder.MemoryEncoder` (its ``out_proj`` sets the memory width).
    config : Sam2ModelConfig, optional
        Behaviour flags; SAM 2.1's by default.
    """

    def __init__(
        self,
        image_encoder: nn.Module,
        memory_attention: nn.Module,
        memory_encoder: nn.Module,
        config: Sam2ModelConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = self.config = config or Sam2ModelConfig()
        hidden = self.hidden_dim = image_encoder.neck.d_model
        out_proj = getattr(memory_encoder, "out_proj", None)
        mem_dim = self.mem_dim = out_proj.weight.shape[0] if hasattr(out_proj, "weight") else hidden
        self.num_maskmem = cfg.num_maskmem
        # bfloat16 runs under autocast (weights stay float32): see compute_context
        self.autocast_dtype: torch.dtype | None = None
        self.image_size = cfg.image_size
        self.num_feature_levels = 3 if cfg.use_high_res_features_in_sam else 1
        self.sam_image_embedding_size = cfg.image_size // cfg.backbone_stride

        # Learned tokens; registered before the sub-modules so that the state dict
        # lists them where Meta's does (own parameters come first either way).
        self.maskmem_tpos_enc = nn.Parameter(torch.zeros(cfg.num_maskmem, 1, 1, mem_dim))
        self.no_mem_embed = nn.Parameter(torch.zeros(1, 1, hidden))
        self.no_mem_pos_enc = nn.Parameter(torch.zeros(1, 1, hidden))
        if cfg.pred_obj_scores and cfg.use_obj_ptrs_in_encoder:
            self.no_obj_ptr = nn.Parameter(torch.zeros(1, hidden))
        else:
            self.register_parameter("no_obj_ptr", None)
        if cfg.no_obj_embed_spatial:
            self.no_obj_embed_spatial = nn.Parameter(torch.zeros(1, mem_dim))
        else:
            self.register_parameter("no_obj_embed_spatial", None)
        for p in self.parameters():
            nn.init.trunc_normal_(p, std=0.02)

        self.image_encoder = image_encoder
        if cfg.use_obj_ptrs_in_encoder:
            # brings a full-size mask prompt to the decoder's 4x-embedding mask input
            self.mask_downsample = nn.Conv2d(1, 1, kernel_size=4, stride=4)
        self.memory_attention = memory_attention
        self.memory_encoder = memory_encoder
        side = self.sam_image_embedding_size
        self.sam_prompt_encoder = PromptEncoder(
            embed_dim=hidden,
            image_embedding_size=(side, side),
            input_image_size=(cfg.image_size, cfg.image_size),
            mask_in_chans=16,
        )
        self.sam_mask_decoder = MaskDecoder(
            transformer_dim=hidden,
            transformer=TwoWayTransformer(depth=2, embedding_dim=hidden, num_heads=8, mlp_dim=2048),
            num_multimask_outputs=3,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
            use_high_res_features=cfg.use_high_res_features_in_sam,
            iou_prediction_use_sigmoid=cfg.iou_prediction_use_sigmoid,
            dynamic_multimask_via_stability=cfg.dynamic_multimask_via_stability,
            dynamic_multimask_stability_delta=cfg.dynamic_multimask_stability_delta,
            dynamic_multimask_stability_thresh=cfg.dynamic_multimask_stability_thresh,
            pred_obj_scores=cfg.pred_obj_scores,
            pred_obj_scores_mlp=cfg.pred_obj_scores_mlp,
            use_multimask_token_for_obj_ptr=cfg.use_multimask_token_for_obj_ptr,
        )
        if not cfg.use_obj_ptrs_in_encoder:
            self.obj_ptr_proj = nn.Identity()
        elif cfg.use_mlp_for_obj_ptr_proj:
            self.obj_ptr_proj = MLP(hidden, hidden, hidden, 3)
        else:
            self.obj_ptr_proj = nn.Linear(hidden, hidden)
        # a separate projection keeps temporal and spatial position encodings apart
        self.obj_ptr_tpos_proj = (
            nn.Linear(hidden, mem_dim) if cfg.proj_tpos_enc_in_obj_ptrs else nn.Identity()
        )
        if cfg.compile_image_encoder:
            self.image_encoder.forward = torch.compile(self.image_encoder.forward, dynamic=False)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def set_compute_dtype(self, dtype: torch.dtype | None) -> Sam2Model:
        """Run the model in ``dtype`` (None or float32, or bfloat16); returns self.

        bfloat16: the predictors run under bfloat16 autocast, and the image encoder's
        trunk keeps its weights in bfloat16 so that it runs without autocast's casts
        and with the fused CPU kernels (``src_core.model.fused``); that trunk is
        14% faster than under autocast on the Xeon with AMX. Like SAM 1's
        ``set_encoder_dtype``, going back to float32 keeps the rounded trunk weights.
        """
        dtype = None if dtype in (None, torch.float32) else dtype
        if dtype not in (None, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}: expected float32 or bfloat16")
        self.autocast_dtype = dtype
        self.image_encoder.trunk.to(dtype or torch.float32)
        return self

    def compute_context(self) -> Any:
        """The context the predictors run the model in: bfloat16 autocast when
        ``autocast_dtype`` is set (``build_sam2(dtype="bfloat16")``), else nothing."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def forward(self, *args, **kwargs):
        raise NotImplementedError(
            "Sam2Model has no single forward: use forward_image, then track_step per frame"
        )

    # ---- image features ------------------------------------------------------------

    def forward_image(self, img_batch: Tensor) -> dict[str, Any]:
        """Image encoder output for a (B, 3, image_size, image_size) normalized batch.

        With high-resolution features, ``backbone_fpn[0]`` and ``[1]`` have already been
        through the decoder's ``conv_s0``/``conv_s1`` (once per image, not per prompt).
        """
        out = self.image_encoder(img_batch)
        if self.config.use_high_res_features_in_sam:
            fpn = out["backbone_fpn"] = list(out["backbone_fpn"])
            fpn[0] = self.sam_mask_decoder.conv_s0(fpn[0])
            fpn[1] = self.sam_mask_decoder.conv_s1(fpn[1])
        return out

    def _prepare_backbone_features(
        self, backbone_out: dict[str, Any]
    ) -> tuple[dict[str, Any], list[Tensor], list[Tensor], list[tuple[int, int]]]:
        """The levels the model uses, flattened to (H*W, B, C), finest first, with their sizes."""
        fpn, pos = backbone_out["backbone_fpn"], backbone_out["vision_pos_enc"]
        n = self.num_feature_levels
        if len(fpn) != len(pos) or len(fpn) < n:
            raise ValueError(f"need {n} feature levels with position encodings")
        feat_sizes = [(p.shape[-2], p.shape[-1]) for p in pos[-n:]]
        feats = [to_tokens(x) for x in fpn[-n:]]
        pos_embeds = [to_tokens(x) for x in pos[-n:]]
        return dict(backbone_out), feats, pos_embeds, feat_sizes

    # ---- SAM heads -----------------------------------------------------------------

    def _forward_sam_heads(
        self,
        backbone_features: Tensor,
        point_inputs: dict[str, Tensor] | None = None,
        mask_inputs: Tensor | None = None,
        high_res_features: list[Tensor] | None = None,
        multimask_output: bool = False,
    ) -> SamHeadOutputs:
        """Prompt encoder and mask decoder on (B, C, H, W) features (memory-conditioned).

        Parameters
        ----------
        backbone_features : Tensor
            (B, C, H, W), H = W = ``image_size / backbone_stride``.
        point_inputs : dict, optional
            ``"point_coords"`` (B, P, 2) x, y in input pixels and ``"point_labels"``
            (B, P) (1 positive, 0 negative, 2/3 box corners, -1 padding).
        mask_inputs : Tensor, optional
            (B, 1, h, w) mask prompt; resized (antialiased) to 4H x 4W if needed.
        high_res_features : list of Tensor, optional
            Stride-4 and stride-8 maps after ``conv_s0``/``conv_s1``.
        multimask_output : bool
            Predict three masks and keep the one with the best predicted IoU.
        """
        b, c, h, w = backbone_features.shape
        side = self.sam_image_embedding_size
        if c != self.hidden_dim or (h, w) != (side, side):
            raise ValueError(f"expected (B, {self.hidden_dim}, {side}, {side}) features")
        device, dtype = backbone_features.device, backbone_features.dtype
        if point_inputs is not None:
            coords, labels = point_inputs["point_coords"], point_inputs["point_labels"]
            if coords.shape[0] != b or labels.shape[0] != b:
                raise ValueError("point inputs must have the features' batch size")
        else:  # a single padding point stands for "no clicks"
            coords = torch.zeros(b, 1, 2, device=device)
            labels = -torch.ones(b, 1, dtype=torch.int32, device=device)
        mask_prompt = None
        if mask_inputs is not None:
            if mask_inputs.dim() != 4 or tuple(mask_inputs.shape[:2]) != (b, 1):
                raise ValueError("mask_inputs must be (B, 1, H, W)")
            mask_prompt = mask_inputs
            if tuple(mask_inputs.shape[-2:]) != tuple(self.sam_prompt_encoder.mask_input_size):
                mask_prompt = F.interpolate(
                    mask_inputs.float(),
                    size=self.sam_prompt_encoder.mask_input_size,
                    mode="bilinear",
                    align_corners=False,
                    antialias=True,
                )
            mask_prompt = mask_prompt.to(dtype)
        sparse, dense = self.sam_prompt_encoder(
            points=(coords, labels), boxes=None, masks=mask_prompt
        )
        low_res_multimasks, ious, tokens, object_score_logits = self.sam_mask_decoder(
            image_embeddings=backbone_features,
            image_pe=self.sam_prompt_encoder.get_dense_pe().to(dtype),
            sparse_prompt_embeddings=sparse.to(dtype),
            dense_prompt_embeddings=dense.to(dtype),
            multimask_output=multimask_output,
            repeat_image=False,  # one feature map per object already
            high_res_features=high_res_features,
        )
        is_obj_appearing = None
        if self.config.pred_obj_scores:
            is_obj_appearing = object_score_logits > 0
            # masks (hence memories) see a hard decision on presence
            low_res_multimasks = torch.where(
                is_obj_appearing[:, None, None], low_res_multimasks, NO_OBJ_SCORE
            )
        low_res_multimasks = low_res_multimasks.float()  # interpolate lacks bf16 on old torch
        high_res_multimasks = F.interpolate(
            low_res_multimasks,
            size=(self.image_size, self.image_size),
            mode="bilinear",
            align_corners=False,
        )
        token = tokens[:, 0]
        if multimask_output:
            best = torch.argmax(ious, dim=-1)
            rows = torch.arange(b, device=device)
            low_res_masks = low_res_multimasks[rows, best].unsqueeze(1)
            high_res_masks = high_res_multimasks[rows, best].unsqueeze(1)
            if tokens.shape[1] > 1:  # one token per candidate: the chosen one's
                token = tokens[rows, best]
        else:
            low_res_masks, high_res_masks = low_res_multimasks, high_res_multimasks
        obj_ptr = self.obj_ptr_proj(token)
        if is_obj_appearing is not None:
            if self.config.soft_no_obj_ptr:
                presence = object_score_logits.sigmoid()
            else:
                presence = is_obj_appearing.float()
            obj_ptr = self._mix_no_obj_ptr(obj_ptr, presence)
        return SamHeadOutputs(
            low_res_multimasks, high_res_multimasks, ious,
            low_res_masks, high_res_masks, obj_ptr, object_score_logits,
        )  # fmt: skip

    def _mix_no_obj_ptr(self, obj_ptr: Tensor, presence: Tensor) -> Tensor:
        """Blend in the learned no-object pointer by ``presence`` (B, 1) in [0, 1]."""
        if self.no_obj_ptr is None:
            return obj_ptr
        presence = presence.to(obj_ptr.dtype)
        if self.config.fixed_no_obj_ptr:
            obj_ptr = presence * obj_ptr
        return obj_ptr + (1 - presence) * self.no_obj_ptr

    def _use_mask_as_output(
        self, backbone_features: Tensor, high_res_features: list[Tensor] | None, mask_inputs: Tensor
    ) -> SamHeadOutputs:
        """A (B, 1, image_size, image_size) mask prompt taken as the frame's prediction.

        Logits are -10/+10; presence is "any pixel set"; the decoder, prompted with the
        downsampled mask, only supplies the object pointer.
        """
        mask = mask_inputs.float()
        high_res_masks = mask * _MASK_OUT_SCALE + _MASK_OUT_BIAS
        low_res_masks = F.interpolate(
            high_res_masks,
            size=(high_res_masks.shape[-2] // 4, high_res_masks.shape[-1] // 4),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
        ious = mask.new_ones(mask.shape[0], 1)
        if self.config.use_obj_ptrs_in_encoder:
            weight = self.mask_downsample.weight
            obj_ptr = self._forward_sam_heads(
                backbone_features,
                mask_inputs=self.mask_downsample(mask.to(weight.dtype)),
                high_res_features=high_res_features,
            ).obj_ptr
        else:
            obj_ptr = backbone_features.new_zeros(mask.shape[0], self.hidden_dim)
        presence = torch.any(mask.flatten(1) > 0.0, dim=1, keepdim=True).float()
        object_score_logits = _MASK_OUT_SCALE * presence + _MASK_OUT_BIAS
        if self.config.pred_obj_scores:
            obj_ptr = self._mix_no_obj_ptr(obj_ptr, presence)
        return SamHeadOutputs(
            low_res_masks, high_res_masks, ious,
            low_res_masks, high_res_masks, obj_ptr, object_score_logits,
        )  # fmt: skip

    def _use_multimask(
        self, is_init_cond_frame: bool, point_inputs: dict[str, Tensor] | None
    ) -> bool:
        """Whether the heads predict three masks for this frame."""
        cfg = self.config
        num_pts = 0 if point_inputs is None else point_inputs["point_labels"].shape[1]
        return (
            cfg.multimask_output_in_sam
            and (is_init_cond_frame or cfg.multimask_output_for_tracking)
            and cfg.multimask_min_pt_num <= num_pts <= cfg.multimask_max_pt_num
        )

    def _track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, Tensor] | None,
        mask_inputs: Tensor | None,
        output_dict: OutputDict,
        num_frames: int | None,
        track_in_reverse: bool,
        prev_sam_mask_logits: Tensor | None,
    ) -> tuple[Output, SamHeadOutputs, list[Tensor] | None, Tensor]:
        """Heads of one frame: the output dict so far, head outputs, high-res maps, features."""
        current_out: Output = {"point_inputs": point_inputs, "mask_inputs": mask_inputs}
        high_res_features = None
        if len(current_vision_feats) > 1:
            high_res_features = [
                to_map(x, s) for x, s in zip(current_vision_feats[:-1], feat_sizes[:-1])
            ]
        if mask_inputs is not None and self.config.use_mask_input_as_output_without_sam:
            pix_feat = to_map(current_vision_feats[-1], feat_sizes[-1])
            sam_outputs = self._use_mask_as_output(pix_feat, high_res_features, mask_inputs)
        else:
            pix_feat = self._prepare_memory_conditioned_features(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init_cond_frame,
                current_vision_feats=current_vision_feats[-1:],
                current_vision_pos_embeds=current_vision_pos_embeds[-1:],
                feat_sizes=feat_sizes[-1:],
                output_dict=output_dict,
                num_frames=num_frames,
                track_in_reverse=track_in_reverse,
            )
            if prev_sam_mask_logits is not None:
                # earlier logits of this frame refine new clicks (interactive use)
                if point_inputs is None or mask_inputs is not None:
                    raise ValueError("prev_sam_mask_logits go with point inputs and no mask input")
                mask_inputs = prev_sam_mask_logits
            sam_outputs = self._forward_sam_heads(
                backbone_features=pix_feat,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                high_res_features=high_res_features,
                multimask_output=self._use_multimask(is_init_cond_frame, point_inputs),
            )
        return current_out, sam_outputs, high_res_features, pix_feat

    def _encode_memory_in_output(
        self,
        current_vision_feats: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, Tensor] | None,
        run_mem_encoder: bool,
        high_res_masks: Tensor,
        object_score_logits: Tensor,
        current_out: Output,
    ) -> None:
        """Store the frame's memory (or None) in ``current_out``."""
        features = pos_enc = None
        if run_mem_encoder and self.num_maskmem > 0:
            features, pos_enc = self._encode_new_memory(
                current_vision_feats=current_vision_feats,
                feat_sizes=feat_sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=object_score_logits,
                is_mask_from_pts=point_inputs is not None,
            )
        current_out["maskmem_features"] = features
        current_out["maskmem_pos_enc"] = pos_enc

    def track_step(
        self,
        frame_idx: int,
        is_init_cond_frame: bool,
        current_vision_feats: list[Tensor],
        current_vision_pos_embeds: list[Tensor],
        feat_sizes: list[tuple[int, int]],
        point_inputs: dict[str, Tensor] | None,
        mask_inputs: Tensor | None,
        output_dict: OutputDict,
        num_frames: int | None,
        track_in_reverse: bool = False,
        run_mem_encoder: bool = True,
        prev_sam_mask_logits: Tensor | None = None,
    ) -> Output:
        """Segment one frame of a video from its prompts and the memory bank.

        Parameters
        ----------
        frame_idx : int
            Index of the frame in the video.
        is_init_cond_frame : bool
            A prompted frame segmented without memory (the first one of an object).
        current_vision_feats, current_vision_pos_embeds, feat_sizes
            From :meth:`_prepare_backbone_features`.
        point_inputs : dict, optional
            ``"point_coords"`` (B, P, 2) in input pixels and ``"point_labels"`` (B, P).
        mask_inputs : Tensor, optional
            (B, 1, image_size, image_size) mask prompt.
        output_dict : dict
            Earlier outputs: ``"cond_frame_outputs"`` and ``"non_cond_frame_outputs"``,
            each frame index to a dict returned by this method.
        num_frames : int or None
            Video length (bounds the object pointers looked up).
        track_in_reverse : bool
            Memories come from later frames.
        run_mem_encoder : bool
            Encode this frame's memory (skipped while clicks are still coming).
        prev_sam_mask_logits : Tensor, optional
            (B, 1, 4H, 4W) earlier logits of this frame, prompting with the new clicks.

        Returns
        -------
        dict
            ``point_inputs``, ``mask_inputs``, ``pred_masks`` (B, 1, 4H, 4W),
            ``pred_masks_high_res`` (B, 1, image_size, image_size), ``obj_ptr`` (B, C),
            ``object_score_logits`` (B, 1), ``maskmem_features`` (B, mem_dim, H, W) and
            ``maskmem_pos_enc`` (list of one), the last two None without memory encoding.
        """
        current_out, sam_outputs, _, _ = self._track_step(
            frame_idx, is_init_cond_frame, current_vision_feats, current_vision_pos_embeds,
            feat_sizes, point_inputs, mask_inputs, output_dict, num_frames,
            track_in_reverse, prev_sam_mask_logits,
        )  # fmt: skip
        current_out["pred_masks"] = sam_outputs.low_res_masks
        current_out["pred_masks_high_res"] = sam_outputs.high_res_masks
        current_out["obj_ptr"] = sam_outputs.obj_ptr
        current_out["object_score_logits"] = sam_outputs.object_score_logits
        self._encode_memory_in_output(
            current_vision_feats, feat_sizes, point_inputs, run_mem_encoder,
            sam_outputs.high_res_masks, sam_outputs.object_score_logits, current_out,
        )  # fmt: skip
        return current_out

    @staticmethod
    def _apply_non_overlapping_constraints(pred_masks: Tensor) -> Tensor:
        """See :func:`~.sam2_memory.apply_non_overlapping_constraints`."""
        return apply_non_overlapping_constraints(pred_masks)


SAM2Base = Sam2Model  # Meta's name


def build_sam2_model(size: str = "tiny", **overrides: Any) -> Sam2Model:
    """A randomly initialized SAM 2.1 model of a named size.

    Parameters
    ----------
    size : str
        ``"tiny"``, ``"small"``, ``"base_plus"``, ``"large"``, or Meta's names
        (``"sam2.1_hiera_t"``, ``"sam2.1_hiera_b+"``, ``"sam2.1_hiera_base_plus"``, ...).
    **overrides
        :class:`~.sam2_config.Sam2ModelConfig` fields to change, e.g. ``image_size=512``
        or the video predictor's ``binarize_mask_from_pts_for_mem_enc=True``.

    Returns
    -------
    Sam2Model
        Its state dict has the keys of Meta's checkpoints; load one with
        ``model.load_state_dict(torch.load(path)["model"])``.
    """
    config = Sam2ModelConfig(**overrides)
    side = config.image_size // config.backbone_stride
    return Sam2Model(
        build_image_encoder(SAM2_ENCODER_CONFIGS[sam2_size_name(size)]),
        build_memory_attention(feat_sizes=(side, side)),
        build_memory_encoder(),
        config,
    )
