"""SAM 2.1 (Meta, Apache-2.0): the parts, one a file, parameter names as in the official checkpoints.

Written for napari-sam from the published architecture; Meta's ``sam2`` package
(test-only) is the reference the parity tests compare against, never imported here.

Modules: :mod:`.hiera` (the Hiera backbone), :mod:`.image_encoder` (FPN neck and
the image encoder), :mod:`.mask_decoder` (SAM 2's mask decoder: high-resolution
features, object-score head), :mod:`.memory_encoder`, :mod:`.memory_attention`
(rotary position encoding).
"""
