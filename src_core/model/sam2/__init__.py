"""SAM 2.1 (Meta, Apache-2.0): the parts, one a file, parameter names as in the official checkpoints.

Written for napari-sam from the published architecture; Meta's ``sam2`` package
(test-only) is the reference the parity tests compare against, never imported here.

Modules: :mod:`.hiera` (the Hiera backbone), :mod:`.image_encoder` (FPN neck, the
image encoder and the four SAM 2.1 sizes), :mod:`.position_encoding` (the sine
encoding of a map's grid), :mod:`.prompt_encoder` (SAM 1's, with box corners as
points), :mod:`.mask_decoder` (SAM 2's two-way transformer and mask decoder:
high-resolution features, object-score head, stability-based multimask),
:mod:`.memory_encoder` (mask downsampler and fuser), :mod:`.memory_attention` and
:mod:`.rope` (memory attention with axial rotary position encoding).

The model that ties them together: :mod:`.sam2_base` (``Sam2Model``, Meta's
``SAM2Base``: image features, SAM heads with object pointers and the occlusion
score, memory-conditioned features, new memories, ``track_step``),
:mod:`.sam2_memory` (which past frames and pointers fill the memory, temporal
encodings) and :mod:`.sam2_config` (its settings, the four SAM 2.1 sizes):
``build_sam2_model("tiny" | "small" | "base_plus" | "large")``.

Loading: :mod:`.build` (``build_sam2``: the registry's SAM 2.1 checkpoints, cached
and downloaded like SAM 1's, or a local file, loaded strictly; a file of another
family or size is refused naming what it holds). The image predictor is
:class:`src_core.sam2_predictor.SAM2ImagePredictor`.

The video predictor is :mod:`src_core.sam2_video` (``build_sam2_video_predictor``).
"""

from .build import build_sam2, describe_sam2_state_dict, infer_sam2_size

__all__ = ["build_sam2", "describe_sam2_state_dict", "infer_sam2_size"]
