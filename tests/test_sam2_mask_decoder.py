"""Parity of SAM 2's prompt encoder and mask decoder with Meta's ``sam2`` (test-only).

Meta's modules get random parameters, ours load their state dict strictly, and both
run on the same random prompts, images and high-resolution features.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from src_core.model.sam2.mask_decoder import MaskDecoder, TwoWayTransformer
from src_core.model.sam2.prompt_encoder import PromptEncoder

TOL = 1e-5
# mask logits reach ~15 here; a few float32 roundings of that exceed 1e-5
MASK_TOL = 3e-5
OUTPUTS = ("masks", "iou", "tokens", "object")
# SAM 2.1's decoder (sam2_base._build_sam_heads with the image predictor's extra args)
SAM21_DECODER = dict(
    num_multimask_outputs=3,
    iou_head_depth=3,
    iou_head_hidden_dim=256,
    use_high_res_features=True,
    iou_prediction_use_sigmoid=True,
    pred_obj_scores=True,
    pred_obj_scores_mlp=True,
    use_multimask_token_for_obj_ptr=True,
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)


def _randomize(module: nn.Module, seed: int) -> None:
    """Random values in every parameter (the defaults leave norms at 1 and biases at 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub in module.modules():
            for name, p in sub.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen)
                if isinstance(sub, nn.Embedding):
                    p.copy_(noise)
                elif p.dim() > 1:
                    p.copy_(noise / p[0].numel() ** 0.5)
                elif name == "weight":  # norms
                    p.copy_(1 + 0.2 * noise)
                else:
                    p.copy_(0.2 * noise)


def _pair(dim: int, grid: int, heads: int, mlp_dim: int, seed: int, **decoder_args):
    """Meta's prompt encoder and decoder, randomized, and ours loaded from them."""
    from sam2.modeling.sam.mask_decoder import MaskDecoder as RefDecoder
    from sam2.modeling.sam.prompt_encoder import PromptEncoder as RefEncoder
    from sam2.modeling.sam.transformer import TwoWayTransformer as RefTransformer

    torch.manual_seed(seed)
    enc_args = dict(
        embed_dim=dim,
        image_embedding_size=(grid, grid),
        input_image_size=(16 * grid, 16 * grid),
        mask_in_chans=16,
    )
    tf_args = dict(depth=2, embedding_dim=dim, mlp_dim=mlp_dim, num_heads=heads)
    ref_enc = RefEncoder(**enc_args)
    ref_dec = RefDecoder(
        transformer_dim=dim, transformer=RefTransformer(**tf_args), **decoder_args
    )
    _randomize(ref_enc, seed)
    _randomize(ref_dec, seed + 1)
    enc = PromptEncoder(**enc_args)
    dec = MaskDecoder(transformer_dim=dim, transformer=TwoWayTransformer(**tf_args), **decoder_args)
    # same keys in the same order, loaded strictly
    assert list(enc.state_dict()) == list(ref_enc.state_dict())
    assert list(dec.state_dict()) == list(ref_dec.state_dict())
    enc.load_state_dict(ref_enc.state_dict(), strict=True)
    dec.load_state_dict(ref_dec.state_dict(), strict=True)
    return [m.eval() for m in (ref_enc, ref_dec, enc, dec)]


def _prompts(batch: int, grid: int, seed: int):
    """Clicks with padding, box corners as points (labels 2, 3), boxes and mask inputs."""
    gen = torch.Generator().manual_seed(seed)
    size = 16 * grid
    coords = torch.rand(batch, 5, 2, generator=gen) * size
    labels = torch.tensor([[1, 0, 2, 3, -1], [1, 1, 0, -1, -1], [2, 3, 1, 0, 0]])[:batch]
    boxes = torch.sort(torch.rand(batch, 2, 2, generator=gen) * size, dim=1).values
    masks = 4 * torch.randn(batch, 1, 4 * grid, 4 * grid, generator=gen)
    return (coords, labels), boxes.reshape(batch, 4), masks


def _max_diff(ours, ref) -> float:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype
    return (ours - ref).abs().max().item()


def _check_pair(ref_enc, ref_dec, enc, dec, grid: int, batch: int, seed: int) -> dict:
    """Compare prompt encodings and decoder outputs over prompt kinds and modes."""
    gen = torch.Generator().manual_seed(seed)
    dim = dec.transformer_dim
    points, boxes, masks = _prompts(batch, grid, seed)
    worst: dict[str, float] = {}

    def note(key, ours, ref):
        worst[key] = max(worst.get(key, 0.0), _max_diff(ours, ref))

    with torch.no_grad():
        pe = ref_enc.get_dense_pe()
        assert _max_diff(enc.get_dense_pe(), pe) <= TOL
        kinds = [(points, None, None), (points, boxes, masks), (None, boxes, None)]
        encoded = []
        for prompt in kinds:
            sparse, dense = enc(*prompt)
            encoded.append(ref_enc(*prompt))
            note("sparse", sparse, encoded[-1][0])
            note("dense", dense, encoded[-1][1])
        # every mode, each with another prompt kind in turn (the full product is slow)
        modes = itertools.product((True, False), (True, False))
        for i, (repeat_image, multimask) in enumerate(modes):
            images = 1 if repeat_image else batch
            embed = torch.randn(images, dim, grid, grid, generator=gen)
            high_res = [
                torch.randn(images, dim // 8, 4 * grid, 4 * grid, generator=gen),
                torch.randn(images, dim // 4, 2 * grid, 2 * grid, generator=gen),
            ]
            args = (embed, pe, *encoded[i % len(kinds)], multimask, repeat_image)
            ours = dec(*args, high_res_features=high_res)
            ref = ref_dec(*args, high_res_features=high_res)
            for key, a, b in zip(OUTPUTS, ours, ref):
                note(key, a, b)
    return worst


def _assert_within(worst: dict[str, float]) -> None:
    assert worst.pop("masks") <= MASK_TOL, worst
    assert max(worst.values()) <= TOL, worst


def test_sam21_prompt_encoder_and_decoder_match_meta():
    """Full SAM 2.1 geometry: 256 channels, 64x64 embedding, 1024 input."""
    pytest.importorskip("sam2")
    pair = _pair(256, 64, 8, 2048, seed=0, **SAM21_DECODER)
    worst = _check_pair(*pair, grid=64, batch=3, seed=1)
    print("max abs differences:", worst)
    _assert_within(worst)


@pytest.mark.parametrize(
    "options",
    [
        dict(),  # SAM 2's defaults: no high-res features, no object scores
        dict(use_high_res_features=True, pred_obj_scores=True, iou_prediction_use_sigmoid=True),
        dict(SAM21_DECODER, use_multimask_token_for_obj_ptr=False),
    ],
    ids=["plain", "linear-obj-head", "single-obj-ptr"],
)
def test_reduced_decoder_variants_match_meta(options):
    """A narrow decoder on a 16x16 embedding, over the constructor's options."""
    pytest.importorskip("sam2")
    pair = _pair(64, 16, 4, 128, seed=2, **options)
    _assert_within(_check_pair(*pair, grid=16, batch=3, seed=3))


def test_training_mode_skips_dynamic_selection():
    """In training mode the single-mask output is always token 0, as in Meta's."""
    pytest.importorskip("sam2")
    ref_enc, ref_dec, _, dec = _pair(64, 16, 4, 128, seed=4, **SAM21_DECODER)
    ref_dec.train()
    dec.train()
    gen = torch.Generator().manual_seed(5)
    sparse, dense = ref_enc(*_prompts(2, 16, 6)[:1], None, None)
    embed = torch.randn(1, 64, 16, 16, generator=gen)
    high_res = [torch.randn(1, 8, 64, 64, generator=gen), torch.randn(1, 16, 32, 32, generator=gen)]
    args = (embed, ref_enc.get_dense_pe(), sparse, dense, False, True)
    with torch.no_grad():
        ours = dec(*args, high_res_features=high_res)
        ref = ref_dec(*args, high_res_features=high_res)
    _assert_within({k: _max_diff(a, b) for k, a, b in zip(OUTPUTS, ours, ref)})


def test_dynamic_multimask_selection_matches_meta():
    """Stable single masks are kept, unstable ones replaced by the best multimask output."""
    pytest.importorskip("sam2")
    _, ref_dec, _, dec = _pair(64, 16, 4, 128, seed=7, **SAM21_DECODER)
    gen = torch.Generator().manual_seed(8)
    logits = torch.randn(6, 4, 32, 32, generator=gen)
    # rows 0-2: far from zero except for a few pixels -> stable; rows 3-5: noise near zero
    logits[:3, 0] = 20 * torch.sign(logits[:3, 0])
    logits[0, 0, :2, :2] = 0.01  # inside (-delta, delta): still stable, score < 1
    logits[3:, 0] *= 0.05
    logits[4, 0] = -5.0  # nothing above -delta: empty union counts as stable
    iou = torch.rand(6, 4, generator=gen)
    ours = dec._dynamic_multimask_via_stability(logits, iou)
    ref = ref_dec._dynamic_multimask_via_stability(logits, iou)
    for a, b in zip(ours, ref):
        assert torch.equal(a, b)
    kept = ours[1][:, 0] == iou[:, 0]
    assert kept.tolist() == [True, True, True, False, True, False]


def test_dynamic_selection_end_to_end_takes_both_branches():
    """With the threshold between two prompts' stability scores, one keeps its mask."""
    pytest.importorskip("sam2")
    ref_enc, ref_dec, _, dec = _pair(64, 16, 4, 128, seed=9, **SAM21_DECODER)
    gen = torch.Generator().manual_seed(10)
    sparse, dense = ref_enc(*_prompts(3, 16, 11)[:1], None, None)
    embed = torch.randn(1, 64, 16, 16, generator=gen)
    high_res = [torch.randn(1, 8, 64, 64, generator=gen), torch.randn(1, 16, 32, 32, generator=gen)]
    pe = ref_enc.get_dense_pe()
    with torch.no_grad():
        all_masks = ref_dec.predict_masks(embed, pe, sparse, dense, True, high_res)[0]
        scores = ref_dec._get_stability_scores(all_masks[:, 0:1]).flatten().sort().values
        # midway between distinct scores, far from any pixel-count tie
        assert scores[1] - scores[0] > 1e-3
        for decoder in (ref_dec, dec):
            decoder.dynamic_multimask_stability_thresh = float(scores[:2].mean())
        args = (embed, pe, sparse, dense, False, True)
        ours = dec(*args, high_res_features=high_res)
        ref = ref_dec(*args, high_res_features=high_res)
    _assert_within({k: _max_diff(a, b) for k, a, b in zip(OUTPUTS, ours, ref)})
    kept = torch.isclose(ref[0], all_masks[:, 0:1]).flatten(1).all(dim=1)
    assert 0 < int(kept.sum()) < 3
