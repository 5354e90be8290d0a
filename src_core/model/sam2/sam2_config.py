"""Settings of a SAM 2.1 model (the arguments of Meta's ``SAM2Base``) and its size names.

Defaults are the values of Meta's ``configs/sam2.1/sam2.1_hiera_*.yaml``, which all
four sizes share; only the image encoder (:data:`~.image_encoder.SAM2_ENCODER_CONFIGS`)
differs between sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SAM2_SIZE_ALIASES", "Sam2ModelConfig", "sam2_size_name"]


@dataclass(frozen=True)
class Sam2ModelConfig:
    """Behaviour of :class:`~.sam2_base.Sam2Model`; field names are ``SAM2Base``'s.

    Parameters
    ----------
    num_maskmem : int
        Spatial memories attended to: one conditioning slot plus ``num_maskmem - 1``
        past frames; 0 disables memory (SAM on single images).
    image_size : int
        Side of the square model input, in pixels.
    backbone_stride : int
        Stride of the image embedding (16).
    sigmoid_scale_for_mem_enc, sigmoid_bias_for_mem_enc : float
        Mask probabilities are mapped to ``p * scale + bias`` before the memory encoder.
    binarize_mask_from_pts_for_mem_enc : bool
        On frames with clicks, the memory encoder sees the thresholded mask instead
        (Meta's video predictor turns this on).
    use_mask_input_as_output_without_sam : bool
        A mask prompt is taken as the frame's output as is (the decoder then only
        supplies the object pointer).
    max_cond_frames_in_attn : int
        Conditioning frames attended to, the temporally closest; -1 for all.
    directly_add_no_mem_embed : bool
        A first conditioning frame adds ``no_mem_embed`` instead of running memory
        attention against it.
    use_high_res_features_in_sam : bool
        The mask decoder adds the stride-4 and stride-8 features.
    multimask_output_in_sam : bool
        Three candidate masks (the best by predicted IoU is kept) for frames with
        ``multimask_min_pt_num`` to ``multimask_max_pt_num`` points (a box is two):
        on initial conditioning frames, and while tracking with
        ``multimask_output_for_tracking``.
    use_multimask_token_for_obj_ptr : bool
        In multimask mode the pointer comes from the chosen mask's token.
    iou_prediction_use_sigmoid : bool
        IoU predictions in [0, 1].
    memory_temporal_stride_for_eval : int
        Stride between the older memory frames (the adjacent frame is always used).
    non_overlap_masks_for_mem_enc : bool
        Objects of one batch (one frame) get non-overlapping masks before encoding.
    use_obj_ptrs_in_encoder : bool
        Memory attention also attends to object pointers of other frames.
    max_obj_ptrs_in_encoder : int
        Frames whose pointers are attended to (capped by the video length).
    add_tpos_enc_to_obj_ptrs, proj_tpos_enc_in_obj_ptrs, use_signed_tpos_enc_to_obj_ptrs : bool
        Pointers carry a sine encoding of their frame distance, projected by a linear
        layer, with a sign telling past from future.
    only_obj_ptrs_in_the_past_for_eval : bool
        Conditioning frames ahead of the current one give no pointer.
    pred_obj_scores, pred_obj_scores_mlp : bool
        Predict whether the object is visible (with an MLP head); absent objects get
        mask logits of -1024 and the learned ``no_obj_ptr``.
    fixed_no_obj_ptr : bool
        An absent object's pointer is ``no_obj_ptr`` alone (not added to the decoder's).
    soft_no_obj_ptr : bool
        Mix ``no_obj_ptr`` in by the score's sigmoid instead of its sign.
    use_mlp_for_obj_ptr_proj : bool
        Output token to pointer through a 3-layer MLP instead of one linear layer.
    no_obj_embed_spatial : bool
        Memories of frames where the object is absent get a learned embedding added.
    dynamic_multimask_via_stability : bool
        The decoder's fallback from an unstable single mask to the best of three
        (Meta's predictors turn this on through ``sam_mask_decoder_extra_args``).
    dynamic_multimask_stability_delta, dynamic_multimask_stability_thresh : float
        Its stability score's logit margin and threshold.
    compile_image_encoder : bool
        Wrap the image encoder's forward in ``torch.compile``.
    """

    num_maskmem: int = 7
    image_size: int = 1024
    backbone_stride: int = 16
    sigmoid_scale_for_mem_enc: float = 20.0
    sigmoid_bias_for_mem_enc: float = -10.0
    binarize_mask_from_pts_for_mem_enc: bool = False
    use_mask_input_as_output_without_sam: bool = True
    max_cond_frames_in_attn: int = -1
    directly_add_no_mem_embed: bool = True
    use_high_res_features_in_sam: bool = True
    multimask_output_in_sam: bool = True
    multimask_min_pt_num: int = 0
    multimask_max_pt_num: int = 1
    multimask_output_for_tracking: bool = True
    use_multimask_token_for_obj_ptr: bool = True
    iou_prediction_use_sigmoid: bool = True
    memory_temporal_stride_for_eval: int = 1
    non_overlap_masks_for_mem_enc: bool = False
    use_obj_ptrs_in_encoder: bool = True
    max_obj_ptrs_in_encoder: int = 16
    add_tpos_enc_to_obj_ptrs: bool = True
    proj_tpos_enc_in_obj_ptrs: bool = True
    use_signed_tpos_enc_to_obj_ptrs: bool = True
    only_obj_ptrs_in_the_past_for_eval: bool = True
    pred_obj_scores: bool = True
    pred_obj_scores_mlp: bool = True
    fixed_no_obj_ptr: bool = True
    soft_no_obj_ptr: bool = False
    use_mlp_for_obj_ptr_proj: bool = True
    no_obj_embed_spatial: bool = True
    dynamic_multimask_via_stability: bool = False
    dynamic_multimask_stability_delta: float = 0.05
    dynamic_multimask_stability_thresh: float = 0.98
    compile_image_encoder: bool = False

    def __post_init__(self) -> None:
        if self.proj_tpos_enc_in_obj_ptrs and not self.add_tpos_enc_to_obj_ptrs:
            raise ValueError("proj_tpos_enc_in_obj_ptrs needs add_tpos_enc_to_obj_ptrs")
        if self.fixed_no_obj_ptr and not (self.pred_obj_scores and self.use_obj_ptrs_in_encoder):
            raise ValueError("fixed_no_obj_ptr needs pred_obj_scores and use_obj_ptrs_in_encoder")
        if self.image_size % self.backbone_stride:
            raise ValueError("image_size must be a multiple of backbone_stride")
        if self.max_cond_frames_in_attn != -1 and self.max_cond_frames_in_attn < 2:
            raise ValueError("max_cond_frames_in_attn must be -1 or at least 2")
        if self.memory_temporal_stride_for_eval < 1:
            raise ValueError("memory_temporal_stride_for_eval must be at least 1")


# Our size names and Meta's short ones (``sam2.1_hiera_<short>.yaml``).
SAM2_SIZE_ALIASES: dict[str, str] = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}


def sam2_size_name(name: str) -> str:
    """``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"`` for any accepted spelling.

    Accepts our names, Meta's config names (``"sam2.1_hiera_t"``, ``"sam2.1_hiera_b+"``),
    checkpoint stems (``"sam2.1_hiera_base_plus"``) and Hugging Face ids
    (``"facebook/sam2.1-hiera-base-plus"``), with or without ``.yaml``/``.pt``, in any case.
    """
    key = name.strip().lower().rsplit("/", 1)[-1]
    for suffix in (".yaml", ".pt"):
        key = key.removesuffix(suffix)
    key = key.replace("-", "_")
    for prefix in ("sam2.1_", "hiera_"):
        key = key.removeprefix(prefix)
    for size, short in SAM2_SIZE_ALIASES.items():
        if key in (size, short):
            return size
    raise ValueError(
        f"unknown SAM 2.1 size {name!r}; use tiny, small, base_plus, large "
        "or Meta's names such as sam2.1_hiera_t"
    )
