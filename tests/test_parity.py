"""Parity with Meta's ``segment-anything==1.0``: same weights, same inputs, same outputs."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from parity_helpers import mask_iou, randomize_, astronaut_image
from src_core.model.build import SamConfig, build_sam, build_sam_from_config, load_weights
from src_core.predictor import SamPredictor

segment_anything = pytest.importorskip("segment_anything")
from segment_anything import SamPredictor as RefPredictor  # noqa: E402
from segment_anything.build_sam import _build_sam  # noqa: E402

EMBED_TOL = 2e-3
LOGIT_TOL = 1e-3
IOU_TOL = 1e-4
# a reduced encoder (narrow, 4 blocks, 2 global) with the real 1024 input, windows and decoder
SMALL = dict(embed_dim=256, depth=4, heads=4, global_idx=(1, 3))
SIZES = [(300, 500), (1024, 1024), (77, 1200)]


@pytest.fixture(scope="module")
def small_pair(tmp_path_factory):
    torch.manual_seed(0)
    ref = _build_sam(SMALL["embed_dim"], SMALL["depth"], SMALL["heads"], list(SMALL["global_idx"]))
    randomize_(ref, seed=1)
    ref.eval()
    path = tmp_path_factory.mktemp("ckpt") / "small.pth"
    torch.save(ref.state_dict(), path)
    from src_core.checkpoints import load_state_dict

    ours = build_sam_from_config(
        SamConfig(SMALL["embed_dim"], SMALL["depth"], SMALL["heads"], SMALL["global_idx"])
    )
    load_weights(ours, load_state_dict(path), "small", str(path))
    return ref, ours


@pytest.fixture(scope="module", params=SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def predictors(request, small_pair):
    ref, ours = small_pair
    image = astronaut_image(*request.param)
    ref_pred, our_pred = RefPredictor(ref), SamPredictor(ours)
    ref_pred.set_image(image)
    our_pred.set_image(image)
    return ref_pred, our_pred, image


def assert_same(ref_out, our_out, multimask=True):
    ref_masks, ref_iou, ref_low = ref_out
    masks, iou, low = our_out
    assert masks.shape == ref_masks.shape and masks.dtype == ref_masks.dtype
    assert iou.shape == ref_iou.shape and low.shape == ref_low.shape
    assert np.abs(low - ref_low).max() <= LOGIT_TOL
    assert np.abs(iou - ref_iou).max() <= IOU_TOL
    for a, b in zip(masks.reshape(-1, *masks.shape[-2:]), ref_masks.reshape(-1, *masks.shape[-2:])):
        assert mask_iou(a, b) >= 0.999


def test_embedding_matches(predictors):
    ref_pred, our_pred, image = predictors
    assert our_pred.original_size == tuple(ref_pred.original_size)
    assert our_pred.input_size == tuple(ref_pred.input_size)
    diff = (ref_pred.features - our_pred.get_image_embedding()).abs().max().item()
    assert diff <= EMBED_TOL


def _prompts(image):
    h, w = image.shape[:2]
    return {
        "one_point": dict(point_coords=np.array([[w * 0.5, h * 0.4]]), point_labels=np.array([1])),
        "points_with_negatives": dict(
            point_coords=np.array([[w * 0.3, h * 0.3], [w * 0.6, h * 0.5], [w * 0.8, h * 0.9]]),
            point_labels=np.array([1, 0, 1]),
        ),
        "box": dict(box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9])),
        "box_and_points": dict(
            box=np.array([w * 0.1, h * 0.2, w * 0.7, h * 0.9]),
            point_coords=np.array([[w * 0.4, h * 0.5], [w * 0.15, h * 0.25]]),
            point_labels=np.array([1, 0]),
        ),
    }


@pytest.mark.parametrize("multimask", [True, False], ids=["multimask", "single"])
@pytest.mark.parametrize("kind", ["one_point", "points_with_negatives", "box", "box_and_points"])
def test_predict_matches(predictors, kind, multimask):
    ref_pred, our_pred, image = predictors
    prompt = _prompts(image)[kind]
    ref_out = ref_pred.predict(**prompt, multimask_output=multimask)
    our_out = our_pred.predict(**prompt, multimask_output=multimask)
    assert our_out[0].shape[0] == (3 if multimask else 1)
    assert_same(ref_out, our_out)


def test_mask_input_from_previous_call(predictors):
    ref_pred, our_pred, image = predictors
    prompt = _prompts(image)["one_point"]
    _, ref_iou, ref_low = ref_pred.predict(**prompt)
    _, _, low = our_pred.predict(**prompt)
    best = int(np.argmax(ref_iou))
    ref_out = ref_pred.predict(**prompt, mask_input=ref_low[best : best + 1], multimask_output=False)
    our_out = our_pred.predict(**prompt, mask_input=low[best : best + 1], multimask_output=False)
    assert_same(ref_out, our_out)


def test_return_logits_match(predictors):
    ref_pred, our_pred, image = predictors
    prompt = _prompts(image)["box"]
    ref_logits = ref_pred.predict(**prompt, return_logits=True)[0]
    logits = our_pred.predict(**prompt, return_logits=True)[0]
    assert logits.dtype == np.float32 and logits.shape == ref_logits.shape
    assert np.abs(logits - ref_logits).max() <= LOGIT_TOL


def test_batched_boxes_match(predictors):
    ref_pred, our_pred, image = predictors
    h, w = image.shape[:2]
    boxes = np.array(
        [[0.1 * w, 0.1 * h, 0.5 * w, 0.6 * h], [0.4 * w, 0.3 * h, 0.9 * w, 0.95 * h], [0, 0, w, h]]
    )
    ref_boxes = ref_pred.transform.apply_boxes_torch(torch.as_tensor(boxes, dtype=torch.float), (h, w))
    ref_masks, ref_iou, ref_low = ref_pred.predict_torch(None, None, boxes=ref_boxes, multimask_output=True)
    masks, iou, low = our_pred.predict(box=boxes, multimask_output=True)
    assert masks.shape == (3, 3, h, w)
    assert_same((ref_masks.numpy(), ref_iou.numpy(), ref_low.numpy()), (masks, iou, low))
    # the torch API takes the reference's own transform output unchanged
    our_masks, our_iou, our_low = our_pred.predict_torch(None, None, boxes=ref_boxes)
    assert np.abs(our_low.numpy() - ref_low.numpy()).max() <= LOGIT_TOL


def test_batched_point_sets_match(predictors):
    ref_pred, our_pred, image = predictors
    h, w = image.shape[:2]
    coords = np.array([[[0.2 * w, 0.3 * h], [0.5 * w, 0.5 * h]], [[0.7 * w, 0.8 * h], [0.1 * w, 0.1 * h]]])
    labels = np.array([[1, 0], [1, 1]])
    masks, iou, low = our_pred.predict(point_coords=coords, point_labels=labels)
    for i in range(2):
        ref_out = ref_pred.predict(point_coords=coords[i], point_labels=labels[i])
        assert_same(ref_out, (masks[i], iou[i], low[i]))


def test_model_forward_matches(small_pair):
    ref, ours = small_pair
    image = torch.as_tensor(astronaut_image(200, 300)).permute(2, 0, 1).float()
    resized = torch.nn.functional.interpolate(image[None], (683, 1024), mode="bilinear")[0]
    batch = [
        {
            "image": resized,
            "original_size": (200, 300),
            "point_coords": torch.tensor([[[300.0, 200.0]]]),
            "point_labels": torch.tensor([[1]]),
            "boxes": torch.tensor([[100.0, 100.0, 700.0, 600.0]]),
        }
    ]
    ref_out = ref(batch, multimask_output=True)[0]
    our_out = ours(batch, multimask_output=True)[0]
    assert (ref_out["low_res_logits"] - our_out["low_res_logits"]).abs().max() <= LOGIT_TOL
    assert torch.equal(ref_out["masks"], our_out["masks"]) or mask_iou(
        ref_out["masks"].numpy(), our_out["masks"].numpy()
    ) >= 0.999


def test_bfloat16_masks_close_to_float32(small_pair):
    _, ours = small_pair
    image = astronaut_image(400, 600)
    fp32 = SamPredictor(ours)
    fp32.set_image(image)
    prompt = _prompts(image)
    bf16_model = build_sam_from_config(
        SamConfig(SMALL["embed_dim"], SMALL["depth"], SMALL["heads"], SMALL["global_idx"])
    )
    bf16_model.load_state_dict(ours.state_dict())
    bf16_model.set_encoder_dtype(torch.bfloat16)
    bf16 = SamPredictor(bf16_model)
    bf16.set_image(image)
    assert bf16.get_image_embedding().dtype == torch.float32
    for kind in ("one_point", "box", "box_and_points"):
        a = fp32.predict(**prompt[kind], multimask_output=False)[0][0]
        b = bf16.predict(**prompt[kind], multimask_output=False)[0][0]
        assert mask_iou(a, b) >= 0.98, kind


@pytest.mark.slow
def test_full_vit_b_geometry(tmp_path):
    """The real vit_b geometry (768 wide, 12 blocks, 12 heads), random weights, via build_sam."""
    torch.manual_seed(0)
    ref = randomize_(_build_sam(768, 12, 12, [2, 5, 8, 11]), seed=3).eval()
    path = tmp_path / "vit_b_random.pth"
    torch.save(ref.state_dict(), path)
    ours = build_sam("vit_b", checkpoint=path, device="cpu")
    image = astronaut_image(480, 640)
    ref_pred, our_pred = RefPredictor(ref), SamPredictor(ours)
    ref_pred.set_image(image)
    our_pred.set_image(image)
    assert (ref_pred.features - our_pred.features).abs().max().item() <= EMBED_TOL
    for kind, prompt in _prompts(image).items():
        assert_same(ref_pred.predict(**prompt), our_pred.predict(**prompt))
    # bfloat16 encoder on the full geometry
    del ref, ref_pred
    bf16 = SamPredictor(build_sam("vit_b", checkpoint=path, device="cpu", dtype="bfloat16"))
    bf16.set_image(image)
    for kind, prompt in _prompts(image).items():
        a = our_pred.predict(**prompt, multimask_output=False)[0][0]
        b = bf16.predict(**prompt, multimask_output=False)[0][0]
        assert mask_iou(a, b) >= 0.98, kind


@pytest.mark.parametrize("path", ["sdpa", "blocked", "folded"])
def test_every_attention_path_matches_reference(small_pair, monkeypatch, path):
    """Each attention kernel the dispatcher can pick computes Meta's encoder in float32
    (the rule picks only by hardware and dtype, so every kernel runs on any CPU)."""
    from src_core.model.vit_attention import Attention

    ref, ours = small_pair
    x = torch.as_tensor(astronaut_image(1024, 1024)).permute(2, 0, 1)[None].float()
    monkeypatch.setattr(Attention, "path", path)
    with torch.no_grad():
        expected = ref.image_encoder(ref.preprocess(x))
        got = ours.encode_image(ours.preprocess(x))
    assert (got - expected).abs().max() <= EMBED_TOL


@pytest.mark.parametrize("path", ["sdpa", "blocked", "folded"])
def test_every_attention_path_in_bfloat16(small_pair, monkeypatch, path):
    """bfloat16 encoders on each kernel stay close to the float32 reference."""
    from src_core.model.vit_attention import Attention

    ref, ours = small_pair
    x = torch.as_tensor(astronaut_image(1024, 1024)).permute(2, 0, 1)[None].float()
    monkeypatch.setattr(Attention, "path", path)
    with torch.no_grad():
        expected = ref.image_encoder(ref.preprocess(x))
        ours16 = copy.deepcopy(ours).set_encoder_dtype(torch.bfloat16)
        got = ours16.encode_image(ours16.preprocess(x))
    assert got.dtype == torch.float32
    rel = (got - expected).abs().max() / expected.abs().max()
    assert rel <= 0.05, rel


def test_attention_rule(monkeypatch):
    """The dispatcher's documented rule: folded only for bfloat16 on AMX CPUs without
    autograd; blocked on other CPUs; SDPA on GPUs and for training; the override wins."""
    from src_core.model import vit_attention
    from src_core.model.vit_attention import Attention, attention_path

    x32, x16 = torch.zeros(1, 2, 2, 4), torch.zeros(1, 2, 2, 4, dtype=torch.bfloat16)
    for amx, expect16 in ((True, "folded"), (False, "blocked")):
        monkeypatch.setattr(vit_attention, "cpu_has_amx", lambda amx=amx: amx)
        with torch.no_grad():
            assert attention_path(x16) == expect16
            assert attention_path(x32) == "blocked"
        with torch.enable_grad():
            assert attention_path(x16) == "sdpa"
    attn = Attention(8, 2, use_rel_pos=True, input_size=(2, 2))
    monkeypatch.setattr(Attention, "path", "blocked")
    with torch.no_grad():
        assert attn.kernel(x16) == "blocked"
    monkeypatch.setattr(Attention, "path", "folded")
    with torch.enable_grad():
        assert attn.kernel(x16) == "sdpa"  # folded fills buffers in place: not for autograd
    monkeypatch.setattr(Attention, "path", "fast")
    with pytest.raises(ValueError, match="unknown attention path 'fast'"):
        attn.kernel(x16)
