"""Parity of our MobileSAM image encoder (TinyViT "vit_t") with MobileSAM's own code.

MobileSAM's package (``mobilesam-mirror``) is a test dependency; its TinyViT
imports a few timm helpers, and timm itself needs torchvision at import time,
so a minimal timm stand-in (tests/_timm_standin) is used when timm is absent.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from src_core.model.tiny_vit import TinyViT

# MobileSAM's build_sam_vit_t arguments for its TinyViT.
VIT_T_KWARGS = {
    "img_size": 1024,
    "in_chans": 3,
    "num_classes": 1000,
    "embed_dims": [64, 128, 160, 320],
    "depths": [2, 2, 6, 2],
    "num_heads": [2, 4, 5, 10],
    "window_sizes": [7, 7, 14, 7],
    "mlp_ratio": 4.0,
    "drop_rate": 0.0,
    "drop_path_rate": 0.0,
    "use_checkpoint": False,
    "mbconv_expand_ratio": 4.0,
    "local_conv_size": 3,
    "layer_lr_decay": 0.8,
}


def _import_mobile_sam():
    """Import MobileSAM (skipping the test without it), with the timm stand-in if needed."""
    if importlib.util.find_spec("timm") is None:
        standin = str(Path(__file__).parent / "_timm_standin")
        if standin not in sys.path:
            sys.path.insert(0, standin)
    return pytest.importorskip("mobile_sam")


@torch.no_grad()
def _randomize(model: torch.nn.Module, seed: int) -> None:
    """Seeded random values for every parameter and batch-norm statistic.

    Matrices get a 1/sqrt(fan-in) scale so activations stay bounded through the
    network; 1-D tensors get values of order one (norm scales around 1, positive
    running variances) so that no term, attention biases included, is negligible.
    """
    gen = torch.Generator().manual_seed(seed)
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            continue  # num_batches_tracked
        noise = torch.randn(t.shape, generator=gen, dtype=t.dtype)
        if name.endswith("running_var"):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=t.dtype))
        elif t.ndim >= 2 and not name.endswith("attention_biases"):
            fan_in = t[0].numel()
            t.copy_(noise / fan_in**0.5)
        elif name.endswith("weight") and t.ndim == 1:
            t.copy_(1.0 + 0.2 * noise)
        elif name.endswith("attention_biases"):
            t.copy_(noise)
        else:
            t.copy_(0.2 * noise)


def test_vit_t_embedding_matches_mobile_sam(one_torch_thread):
    _import_mobile_sam()
    from mobile_sam.modeling.tiny_vit_sam import TinyViT as RefTinyViT

    torch.manual_seed(0)
    ref = RefTinyViT(**VIT_T_KWARGS)
    # Randomized before eval(): MobileSAM caches its gathered attention bias in eval().
    _randomize(ref, seed=1234)
    ref.eval()

    ours = TinyViT()
    ref_state = ref.state_dict()
    assert set(ours.state_dict()) == set(ref_state)
    ours.load_state_dict(ref_state, strict=True)
    ours.eval()

    x = torch.randn((1, 3, 1024, 1024), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = ref(x)
        got = ours(x)
    assert got.shape == expected.shape == (1, 256, 64, 64)
    assert got.dtype == torch.float32
    scale = expected.abs().max().item()
    diff = (got - expected).abs().max().item()
    print(
        f"vit_t embedding: max |ours - MobileSAM| = {diff:.3g}, max |MobileSAM| = {scale:.3g}"
    )
    assert diff <= 1e-4 * scale


def test_loads_image_encoder_of_full_mobile_sam(one_torch_thread):
    _import_mobile_sam()
    from mobile_sam.build_sam import build_sam_vit_t

    sam = build_sam_vit_t(checkpoint=None)
    prefix = "image_encoder."
    encoder_state = {
        k[len(prefix) :]: v for k, v in sam.state_dict().items() if k.startswith(prefix)
    }
    ours = TinyViT()
    assert set(ours.state_dict()) == set(encoder_state)
    ours.load_state_dict(encoder_state, strict=True)
    for k, v in ours.state_dict().items():
        assert torch.equal(v, encoder_state[k]), k


def test_attention_bias_index_is_not_saved():
    """Like MobileSAM's, the offset index is a non-persistent buffer (absent from checkpoints)."""
    ours = TinyViT()
    keys = ours.state_dict().keys()
    assert not any(k.endswith("attention_bias_idxs") for k in keys)
    assert any(k.endswith("attention_biases") for k in keys)
    # 7x7 windows have 7 * 7 distinct (|dy|, |dx|) offsets.
    attn = ours.layers[1].blocks[0].attn
    assert attn.attention_biases.shape == (4, 49)
    assert attn.attention_bias_idxs.shape == (49, 49)


def _mobile_sam_with_random_weights(seed: int):
    """MobileSAM's whole vit_t model (its own build function) with seeded random weights."""
    _import_mobile_sam()
    from mobile_sam.build_sam import build_sam_vit_t

    torch.manual_seed(0)
    ref = build_sam_vit_t(checkpoint=None)
    ref.train()  # its attention caches the gathered bias when put in eval mode
    _randomize(ref, seed=seed)
    return ref.eval()


def test_vit_t_predictor_matches_mobile_sam(one_torch_thread, tmp_path):
    """mobile_sam.pt's layout loads strictly through build_sam, and our predictor equals
    MobileSAM's on the same random weights: embedding, low-res logits, IoU, masks."""
    from mobile_sam import SamPredictor as RefPredictor
    from parity_helpers import astronaut_image, mask_iou

    from src_core import SamPredictor, build_sam

    ref = _mobile_sam_with_random_weights(seed=77)
    path = tmp_path / "mobile_sam.pt"
    torch.save(ref.state_dict(), path)  # MobileSAM's released layout: a bare state dict
    ours = build_sam("vit_t", checkpoint=path, device="cpu", dtype="float32")
    assert type(ours.image_encoder).__name__ == "TinyViT"
    assert set(ours.state_dict()) == set(ref.state_dict())

    image = astronaut_image(300, 500)
    ref_predictor, our_predictor = RefPredictor(ref), SamPredictor(ours)
    with torch.no_grad():
        ref_predictor.set_image(image)
        our_predictor.set_image(image)
    expected, got = ref_predictor.features, our_predictor.features
    assert got.shape == expected.shape == (1, 256, 64, 64)
    assert (got - expected).abs().max().item() <= 1e-4 * expected.abs().max().item()

    prompts = [
        {"point_coords": np.array([[250.0, 150.0]]), "point_labels": np.array([1]), "multimask_output": True},
        {"point_coords": np.array([[100.0, 80.0], [400.0, 200.0]]), "point_labels": np.array([1, 0]),
         "box": np.array([40.0, 30.0, 460.0, 280.0]), "multimask_output": False},
    ]
    for prompt in prompts:
        ref_masks, ref_iou, ref_low = ref_predictor.predict(**prompt)
        masks, iou, low = our_predictor.predict(**prompt)
        assert masks.shape == ref_masks.shape and low.shape == ref_low.shape
        scale = np.abs(ref_low).max()
        assert np.abs(low - ref_low).max() <= 1e-3 * scale
        assert np.abs(iou - ref_iou).max() <= 1e-4
        for ours_mask, ref_mask in zip(masks, ref_masks):
            assert mask_iou(ours_mask, ref_mask) >= 0.999
