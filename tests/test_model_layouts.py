"""Our parameter names and shapes are exactly those of Meta's checkpoints."""

from __future__ import annotations

import pytest
import torch

from src_core.model.build import MODEL_CONFIGS, build_sam_from_config, infer_model_type, load_weights

def _meta_state_dict(model_type):
    """Meta's model's state dict (shapes only); skips the test without Meta's package."""
    ref_registry = pytest.importorskip("segment_anything").sam_model_registry
    with torch.device("meta"):
        return ref_registry[model_type]().state_dict()


@pytest.mark.parametrize("model_type", ["vit_b", "vit_l", "vit_h"])
def test_official_layout_loads_strict(model_type):
    reference = _meta_state_dict(model_type)
    with torch.device("meta"):
        ours = build_sam_from_config(MODEL_CONFIGS[model_type])
    own = ours.state_dict()
    assert set(own) == set(reference)
    assert all(tuple(own[k].shape) == tuple(reference[k].shape) for k in own)
    # a strict load goes through (assign keeps meta tensors: no memory)
    ours.load_state_dict(reference, strict=True, assign=True)
    assert infer_model_type(reference) == model_type


def test_wrong_model_type_names_the_matching_one():
    reference = _meta_state_dict("vit_b")
    with torch.device("meta"):
        ours = build_sam_from_config(MODEL_CONFIGS["vit_l"])
    with pytest.raises(ValueError, match="vit_b"):
        load_weights(ours, reference, "vit_l", "sam_vit_b.pth")


def test_missing_keys_are_named():
    reference = dict(_meta_state_dict("vit_b"))
    del reference["mask_decoder.iou_token.weight"]
    with torch.device("meta"):
        ours = build_sam_from_config(MODEL_CONFIGS["vit_b"])
    with pytest.raises(ValueError, match="missing keys.*iou_token"):
        load_weights(ours, reference, "vit_b", "partial.pth")


def test_unknown_model_type():
    from src_core import build_sam

    with pytest.raises(ValueError, match="unknown model type"):
        build_sam("vit_x", checkpoint={})


def test_auto_model_type_reads_the_checkpoint():
    from src_core import build_sam

    torch.manual_seed(0)
    state = build_sam_from_config(MODEL_CONFIGS["vit_b"]).state_dict()
    model = build_sam("auto", checkpoint=state, device="cpu")
    assert model.image_encoder.pos_embed.shape[-1] == 768 and len(model.image_encoder.blocks) == 12
    with pytest.raises(ValueError, match="needs a checkpoint"):
        build_sam("auto")
    small = build_sam_from_config(
        __import__("src_core.model.build", fromlist=["SamConfig"]).SamConfig(64, 2, 2, (1,))
    ).state_dict()
    with pytest.raises(ValueError, match="not a known SAM model"):
        build_sam("auto", checkpoint=small)
