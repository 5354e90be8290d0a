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

Not there yet: SAM2Base (the tracking step that ties these together: object
pointers, temporal encodings, occlusion), the checkpoint registry entries, the
image and video predictors.
"""
