"""Automatic mask generation: parity with Meta's ``SamAutomaticMaskGenerator`` and unit tests.

Random weights make SAM's masks pixel noise whose boxes all span the image, so
NMS would leave one mask and parity would be trivial. ``shape_weights_for_blobs_``
edits a random model (identically for the reference and ours, by copying the
state dict) so that each point prompt gives three nested, image-dependent blobs
around the point, with predicted IoUs and stability scores spread across the
default thresholds. The generators then produce dozens of distinct masks and
every filter (IoU, stability, crop edge, NMS within and between crops, small
regions) has real work to do.
"""

from __future__ import annotations

import inspect
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from skimage import data, measure

from parity_helpers import astronaut_image, randomize_
from src_core.jobs import Cancelled
from src_core.automatic import (
    SamAutomaticMaskGenerator,
    batched_nms,
    box_iou,
    masks_to_boxes,
    masks_to_label_image,
    nms,
    remove_small_regions,
)
from src_core.automatic.regions import bbox_crop, clean_mask_crop
from src_core.automatic.upsample import LogitUpsampler
from src_core.model.build import SamConfig, build_sam_from_config
from src_core.rle import (
    area_from_rle,
    coco_decode_rle,
    coco_encode_rle,
    crop_to_rle,
    decode_segmentation,
    mask_to_rle,
    masks_to_rles,
    rle_to_crop,
    rle_to_mask,
)

try:  # Meta's reference (a test dependency): only the tests that compare with it need it
    from segment_anything import SamAutomaticMaskGenerator as RefGenerator
    from segment_anything import SamPredictor as RefPredictor
    from segment_anything.build_sam import _build_sam
    from segment_anything.utils import amg
except ImportError:
    RefGenerator = RefPredictor = _build_sam = amg = None
needs_reference = pytest.mark.skipif(amg is None, reason="Meta's segment_anything is not installed")

# a tiny encoder (the decoder, prompt encoder and 1024 input are the real ones): the
# generator's cost is in the decoder, and the encoder runs once per crop per model
ENCODER = dict(embed_dim=128, depth=2, heads=2, global_idx=(1,))


def shape_weights_for_blobs_(sam: torch.nn.Module) -> torch.nn.Module:
    """Edit a (random) reference ``Sam`` so that a point prompt gives blobs around it.

    The last image-to-token attention of the decoder's transformer is made to
    attend with a kernel on the prompt's and the pixel's positional encodings (the
    same random Fourier features, so the kernel peaks at the point); its output
    dominates the image tokens, which then carry "how close to the point" plus a
    little image content. The upscaling convolutions copy each token to its 4x4
    children (no checkerboard), one upscaled channel is a constant, and each mask
    token's hypernetwork output becomes a fixed direction and offset: three nested
    thresholds of the same blob. The IoU head's bias puts the predictions around
    0.88. Deterministic; returns ``sam``.
    """
    with torch.no_grad():
        prompt, decoder = sam.prompt_encoder, sam.mask_decoder
        first, last = decoder.transformer.layers
        half = prompt.pe_layer.positional_encoding_gaussian_matrix.shape[1]
        attn = last.cross_attn_image_to_token
        heads, head_dim = attn.num_heads, attn.internal_dim // attn.num_heads
        freqs = head_dim // 2
        kernel_dims = list(range(heads * freqs)) + list(range(half, half + heads * freqs))
        # tokens other than the point's own encoding stay out of the kernel's subspace
        prompt.point_embeddings[1].weight.mul_(8.0)
        for emb in (prompt.point_embeddings[1], prompt.not_a_point_embed, decoder.iou_token, decoder.mask_tokens):
            emb.weight[:, kernel_dims] = 0
        # tokens keep their identity: first self-attention attends to itself,
        # later updates from the image and between tokens are damped
        for proj in (first.self_attn.q_proj, first.self_attn.k_proj):
            proj.weight.copy_(10.0 * torch.eye(proj.weight.shape[0]))
            proj.bias.zero_()
        for module in (first.cross_attn_token_to_image, last.cross_attn_token_to_image, last.self_attn):
            module.out_proj.weight.mul_(0.1)
        first.norm4.weight.mul_(0.4)  # image tokens small before the kernel attention
        last.norm3.weight.mul_(0.2)  # token values small in it (out_proj scales them up)
        # each head compares sin/cos of its own frequencies: a kernel of the distance
        select = torch.zeros(attn.internal_dim, attn.embedding_dim)
        for h in range(heads):
            for j in range(freqs):
                select[h * head_dim + j, h * freqs + j] = 1
                select[h * head_dim + freqs + j, half + h * freqs + j] = 1
        for proj in (attn.q_proj, attn.k_proj):
            proj.weight.copy_(1.5 * select)
            proj.bias.zero_()
        attn.out_proj.weight.mul_(100.0)
        upscaling = decoder.output_upscaling
        for conv in (upscaling[0], upscaling[3]):
            conv.weight.copy_(conv.weight[:, :, :1, :1].expand_as(conv.weight))
        upscaling[3].weight[:, 0] = 0
        upscaling[3].bias[0] = 1.0  # channel 0 of the upscaled features: GELU(1), a constant
        decoder.iou_prediction_head.layers[-1].bias.add_(0.92)
        hypernets = decoder.output_hypernetworks_mlps
        for mlp in hypernets:
            mlp.layers[-1].weight.zero_()
        # calibrate: the feature direction from background to the point, on a few points
        captured = {}
        hook = upscaling.register_forward_hook(lambda m, a, out: captured.update(features=out))
        predictor = RefPredictor(sam)
        predictor.set_image(astronaut_image(256, 256))
        points = np.random.default_rng(0).uniform(20, 236, (16, 2))
        coords = torch.as_tensor(predictor.transform.apply_coords(points, (256, 256)), dtype=torch.float)
        predictor.predict_torch(coords[:, None], torch.ones(16, 1, dtype=torch.int))
        hook.remove()
        features = captured["features"]
        pixel = (coords / 4).long().clamp(0, features.shape[-1] - 1)
        at_point = features[torch.arange(16), :, pixel[:, 1], pixel[:, 0]]
        background = features.flatten(2).median(-1).values
        direction = (at_point - background).mean(0)
        direction[0] = 0
        direction /= direction.norm()
        lo, hi = (background @ direction).mean(), (at_point @ direction).mean()
        gain, constant = 60.0 / (hi - lo), F.gelu(torch.tensor(1.0))
        for token, level in enumerate((0.5, 0.3, 0.5, 0.7)):
            bias = gain * direction
            bias[0] = -gain * (lo + level * (hi - lo)) / constant
            hypernets[token].layers[-1].bias.copy_(bias)
    return sam


def build_pair(seed: int = 1) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The reference model and ours with identical (shaped random) weights."""
    torch.manual_seed(0)
    ref = _build_sam(ENCODER["embed_dim"], ENCODER["depth"], ENCODER["heads"], list(ENCODER["global_idx"]))
    shape_weights_for_blobs_(randomize_(ref, seed=seed).eval())
    ours = build_sam_from_config(
        SamConfig(ENCODER["embed_dim"], ENCODER["depth"], ENCODER["heads"], ENCODER["global_idx"])
    )
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.fixture(scope="module")
def pair():
    return build_pair()


def rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=-1)


def _cv2_standin() -> types.ModuleType:
    """``cv2.connectedComponentsWithStats`` for the reference, from scikit-image.

    Labels are numbered like OpenCV's block-based 8-connected labeling (by the first
    2x2 block a region reaches), which decides ties between equally large islands.
    """

    def connected_components_with_stats(image, connectivity=8):
        labels = measure.label(image > 0, connectivity=2 if connectivity == 8 else 1)
        count = int(labels.max())
        rows, cols = np.nonzero(labels)
        key = (rows // 2) * (image.shape[1] + 2) + cols // 2
        first = np.full(count + 1, np.iinfo(np.int64).max)
        np.minimum.at(first, labels[rows, cols], key)
        order = np.argsort(first[1:], kind="stable") + 1
        relabel = np.zeros(count + 1, dtype=np.int32)
        relabel[order] = np.arange(1, count + 1)
        labels = relabel[labels]
        stats = np.zeros((count + 1, 5), dtype=np.int32)
        stats[:, 4] = np.bincount(labels.ravel(), minlength=count + 1)
        return count + 1, labels, stats, np.zeros((count + 1, 2))

    module = types.ModuleType("cv2")
    module.connectedComponentsWithStats = connected_components_with_stats
    return module


@pytest.fixture
def cv2_for_reference(monkeypatch):
    """The reference's small-region removal needs OpenCV; a stand-in where it is missing."""
    try:
        import cv2  # noqa: F401
    except ImportError:
        monkeypatch.setitem(sys.modules, "cv2", _cv2_standin())


def ref_mask(segmentation) -> np.ndarray:
    """Decode a segmentation with the reference's tools (its RLE decoder, pycocotools)."""
    if isinstance(segmentation, dict):
        if isinstance(segmentation["counts"], str):
            from pycocotools import mask as mask_utils

            return mask_utils.decode({**segmentation, "counts": segmentation["counts"].encode()}).astype(bool)
        return amg.rle_to_mask(segmentation)
    return np.asarray(segmentation, dtype=bool)


def match(ref_records, our_records):
    """One-to-one matching on mask IoU; returns (ref index, our index, IoU) arrays."""
    a = np.stack([ref_mask(r["segmentation"]).ravel() for r in ref_records]).astype(np.float32)
    b = np.stack([ref_mask(r["segmentation"]).ravel() for r in our_records]).astype(np.float32)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(-iou)
    return rows, cols, iou[rows, cols]


def assert_parity(ref_records, our_records, min_masks=20):
    """>= 99% of the reference's masks matched at IoU >= 0.99, counts within 1%, records close."""
    assert len(ref_records) >= min_masks, "the test must produce enough masks to mean something"
    assert abs(len(our_records) - len(ref_records)) <= 0.01 * len(ref_records)
    rows, cols, ious = match(ref_records, our_records)
    good = ious >= 0.99
    assert good.sum() >= 0.99 * len(ref_records), f"matched {good.sum()} of {len(ref_records)}"
    same_place = 0
    for r, c in zip(rows[good], cols[good]):
        ref, ours = ref_records[r], our_records[c]
        assert set(ours) == set(ref)
        assert np.abs(np.subtract(ours["bbox"], ref["bbox"])).max() <= 1
        assert abs(ours["area"] - ref["area"]) <= max(2, 0.01 * ref["area"])
        assert ours["predicted_iou"] == pytest.approx(ref["predicted_iou"], abs=1e-3)
        assert ours["stability_score"] == pytest.approx(ref["stability_score"], abs=5e-3)
        np.testing.assert_allclose(ours["point_coords"], ref["point_coords"], atol=1e-6)
        assert ours["crop_box"] == ref["crop_box"]
        assert all(isinstance(v, int) for v in ours["bbox"] + ours["crop_box"] + [ours["area"]])
        same_place += r == c
    # same order (by predicted IoU, or by crop size between crops)
    assert same_place >= 0.95 * len(ref_records)
    return good.sum(), len(ref_records), len(our_records)


# -- parity with the reference ---------------------------------------------------------


@needs_reference
def test_defaults_match_reference():
    ours = inspect.signature(SamAutomaticMaskGenerator.__init__).parameters
    ref = inspect.signature(RefGenerator.__init__).parameters
    assert list(ours) == list(ref)
    for name, param in ref.items():
        assert ours[name].default == param.default, name


@needs_reference
def test_parity_default_thresholds_binary_masks(pair):
    """Astronaut 300x450 (non-square), defaults but a 12x12 grid (3 batches, the last short)."""
    ref_model, our_model = pair
    image = astronaut_image(300, 450)
    ref = RefGenerator(ref_model, points_per_side=12).generate(image)
    ours = SamAutomaticMaskGenerator(our_model, points_per_side=12).generate(image)
    matched, n_ref, n_ours = assert_parity(ref, ours)
    assert matched == n_ref == n_ours
    for record in ours:
        mask = record["segmentation"]
        assert mask.shape == (300, 450) and mask.dtype == bool
        assert record["area"] == mask.sum()
        assert record["predicted_iou"] > 0.88 and record["stability_score"] >= 0.95


@needs_reference
def test_parity_crop_layers_uncompressed_rle(pair):
    """Coins (303x384) as RGB with one crop layer: 5 crops, edge filter, NMS between crops."""
    ref_model, our_model = pair
    image = rgb(data.coins())
    settings = dict(
        points_per_side=6,
        crop_n_layers=1,
        crop_n_points_downscale_factor=2,
        pred_iou_thresh=0.86,
        stability_score_thresh=0.92,
        output_mode="uncompressed_rle",
    )
    ref = RefGenerator(ref_model, **settings).generate(image)
    ours = SamAutomaticMaskGenerator(our_model, **settings).generate(image)
    assert_parity(ref, ours)
    assert len({tuple(r["crop_box"]) for r in ours}) > 1  # masks from the crops survive too
    for record in ours:
        rle = record["segmentation"]
        assert rle["size"] == [303, 384] and all(isinstance(c, int) for c in rle["counts"])
        assert area_from_rle(rle) == record["area"]


@needs_reference
def test_parity_small_regions_coco_rle(pair, cv2_for_reference):
    """Cell image (330x275) as RGB, min_mask_region_area > 0: holes, islands, NMS again."""
    pytest.importorskip("pycocotools")
    ref_model, our_model = pair
    image = rgb(data.cell()[::2, ::2])
    settings = dict(points_per_side=8, pred_iou_thresh=0.86, stability_score_thresh=0.92)
    ref = RefGenerator(ref_model, min_mask_region_area=150, output_mode="coco_rle", **settings).generate(image)
    ours = SamAutomaticMaskGenerator(
        our_model, min_mask_region_area=150, output_mode="coco_rle", **settings
    ).generate(image)
    assert_parity(ref, ours)
    assert all(isinstance(r["segmentation"]["counts"], str) for r in ours)
    # the cleanup had work to do: some masks differ from the uncleaned ones
    raw = SamAutomaticMaskGenerator(our_model, **settings).generate(image)
    raw_masks = {tuple(r["point_coords"][0]) + (round(r["predicted_iou"], 6),): r["segmentation"] for r in raw}
    changed = 0
    for record in ours:
        key = tuple(record["point_coords"][0]) + (round(record["predicted_iou"], 6),)
        changed += not np.array_equal(raw_masks[key], ref_mask(record["segmentation"]))
    assert changed >= 3


@needs_reference
def test_output_modes_describe_the_same_masks(pair):
    _, our_model = pair
    image = astronaut_image(200, 260)
    outputs = {
        mode: SamAutomaticMaskGenerator(our_model, points_per_side=4, pred_iou_thresh=0.8,
                                        stability_score_thresh=0.8, output_mode=mode).generate(image)
        for mode in ("binary_mask", "uncompressed_rle", "coco_rle")
    }
    binary = outputs["binary_mask"]
    assert len(binary) >= 5
    for mode, records in outputs.items():
        assert len(records) == len(binary)
        for ours, reference in zip(records, binary):
            assert {k: v for k, v in ours.items() if k != "segmentation"} == {
                k: v for k, v in reference.items() if k != "segmentation"
            }
            assert np.array_equal(ref_mask(ours["segmentation"]), reference["segmentation"])
            assert np.array_equal(decode_segmentation(ours["segmentation"]), reference["segmentation"])
    for ours in outputs["uncompressed_rle"]:
        assert ours["segmentation"] == amg.mask_to_rle_pytorch(torch.from_numpy(ref_mask(ours["segmentation"]))[None])[0]
    for ours, plain in zip(outputs["coco_rle"], outputs["uncompressed_rle"]):
        assert ours["segmentation"] == amg.coco_encode_rle(plain["segmentation"])


@needs_reference
def test_staged_decoding_matches_predict_torch(pair):
    """The generator's decoder call (IoU first, upscaling only where needed) = predict_torch."""
    _, our_model = pair
    generator = SamAutomaticMaskGenerator(our_model, points_per_side=4, pred_iou_thresh=0.88)
    predictor = generator.predictor
    image = astronaut_image(240, 320)
    predictor.set_image(image)
    points = amg.build_point_grid(5) * np.array([[320, 240]])
    coords = torch.as_tensor(predictor.transform.apply_coords(points, (240, 320)), dtype=torch.float)
    _, iou_all, low_all = predictor.predict_torch(coords[:, None], torch.ones(25, 1, dtype=torch.int))
    low, iou, decoded = generator._decode(coords, generator._image_tokens())
    torch.testing.assert_close(iou, iou_all, atol=1e-5, rtol=0)
    expected = torch.nonzero((iou_all > 0.88).any(dim=1)).flatten()
    assert torch.equal(decoded, expected) and 0 < len(decoded) < 25
    torch.testing.assert_close(low, low_all[decoded], atol=1e-4, rtol=0)
    generator.pred_iou_thresh = 0.0
    low, iou, decoded = generator._decode(coords, generator._image_tokens())
    assert len(decoded) == 25
    torch.testing.assert_close(low, low_all, atol=1e-4, rtol=0)


# -- progress, cancel, inputs ----------------------------------------------------------


@needs_reference
def test_progress_and_cancel(pair):
    _, our_model = pair
    image = astronaut_image(120, 160)
    generator = SamAutomaticMaskGenerator(our_model, points_per_side=4, points_per_batch=7, crop_n_layers=1)
    calls = []
    generator.generate(image, progress=lambda done, total: calls.append((done, total)))
    total = 5 * 3  # 5 crops x ceil(16 / 7) batches
    assert calls == [(i, total) for i in range(total + 1)]

    def stop_after_three(done, total):
        if done == 3:
            generator.cancel()

    with pytest.raises(Cancelled):
        generator.generate(image, progress=stop_after_three)
    asked = []
    with pytest.raises(Cancelled, match="cancelled"):
        generator.generate(image, should_stop=lambda: asked.append(1) or len(asked) > 2)
    # usable again afterwards
    generator.crop_n_layers = 0
    assert isinstance(generator.generate(image), list)


@needs_reference
def test_grayscale_and_float_images_are_converted(pair):
    _, our_model = pair
    generator = SamAutomaticMaskGenerator(our_model, points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0)
    gray = data.camera()[::4, ::4]
    from_gray = generator.generate(gray)
    from_rgb = generator.generate(rgb(gray))
    assert [r["bbox"] for r in from_gray] == [r["bbox"] for r in from_rgb]
    assert from_gray[0]["segmentation"].shape == gray.shape


@needs_reference
def test_invalid_settings_raise_helpful_errors(pair):
    _, our_model = pair
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(our_model, points_per_side=None)
    with pytest.raises(ValueError, match="exactly one"):
        SamAutomaticMaskGenerator(our_model, point_grids=[amg.build_point_grid(4)])
    with pytest.raises(ValueError, match="output_mode"):
        SamAutomaticMaskGenerator(our_model, output_mode="polygons")
    with pytest.raises(ValueError, match="one per layer"):
        SamAutomaticMaskGenerator(our_model, points_per_side=None, point_grids=[amg.build_point_grid(4)], crop_n_layers=1)
    with pytest.raises(ValueError, match="no points"):
        SamAutomaticMaskGenerator(our_model, points_per_side=2, crop_n_layers=2, crop_n_points_downscale_factor=4)
    with pytest.raises(ValueError, match="points_per_batch"):
        SamAutomaticMaskGenerator(our_model, points_per_batch=0)


@needs_reference
def test_explicit_point_grids(pair):
    _, our_model = pair
    grid = np.array([[0.3, 0.4], [0.7, 0.6]])
    records = SamAutomaticMaskGenerator(
        our_model, points_per_side=None, point_grids=[grid], pred_iou_thresh=0.0, stability_score_thresh=0.0,
        box_nms_thresh=1.0,
    ).generate(astronaut_image(100, 200))
    points = {tuple(r["point_coords"][0]) for r in records}
    assert points <= {(60.0, 40.0), (140.0, 60.0)} and len(records) >= 2


# -- building blocks -------------------------------------------------------------------


def _greedy_nms(boxes, scores, threshold):
    order = sorted(range(len(boxes)), key=lambda i: -scores[i])  # sorted() is stable
    keep = []
    for i in order:
        ok = True
        for j in keep:
            x0, y0 = max(boxes[i][0], boxes[j][0]), max(boxes[i][1], boxes[j][1])
            x1, y1 = min(boxes[i][2], boxes[j][2]), min(boxes[i][3], boxes[j][3])
            inter = max(x1 - x0, 0) * max(y1 - y0, 0)
            area_i = (boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1])
            area_j = (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])
            union = area_i + area_j - inter
            if union > 0 and inter / union > threshold:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


@pytest.mark.parametrize("block", [1024, 7])
def test_nms_matches_a_simple_loop(block):
    rng = np.random.default_rng(0)
    for trial in range(20):
        n = int(rng.integers(1, 80))
        xy = rng.integers(0, 60, (n, 2))
        wh = rng.integers(0, 40, (n, 2))  # zero-area boxes included
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = rng.integers(0, 5, n).astype(np.float32)  # many ties
        threshold = float(rng.choice([0.0, 0.3, 0.7, 0.95]))
        kept = nms(torch.as_tensor(boxes).float(), torch.as_tensor(scores), threshold, block=block)
        assert kept.tolist() == _greedy_nms(boxes.tolist(), scores.tolist(), threshold)
    assert nms(torch.zeros(0, 4), torch.zeros(0), 0.5).tolist() == []


def test_batched_nms_never_suppresses_across_categories():
    rng = np.random.default_rng(1)
    boxes = torch.as_tensor(rng.integers(0, 30, (60, 2))).repeat(1, 2).float()
    boxes[:, 2:] += torch.as_tensor(rng.integers(5, 30, (60, 2))).float()
    scores = torch.as_tensor(rng.random(60), dtype=torch.float32)
    categories = torch.as_tensor(rng.integers(0, 3, 60))
    kept = batched_nms(boxes, scores, categories, 0.5)
    expected = []
    for c in range(3):
        members = torch.nonzero(categories == c).flatten()
        expected += members[nms(boxes[members], scores[members], 0.5)].tolist()
    assert sorted(kept.tolist()) == sorted(expected)
    assert torch.all(scores[kept][:-1] >= scores[kept][1:])


@needs_reference
def test_box_iou_and_boxes_from_masks():
    a = torch.tensor([[0.0, 0, 10, 10], [5, 5, 15, 15], [3, 3, 3, 3]])
    iou = box_iou(a, a)
    assert iou[0, 1].item() == pytest.approx(25 / 175)
    assert torch.isnan(iou[2, 2])  # 0/0 never exceeds a threshold, as in torchvision
    rng = np.random.default_rng(2)
    masks = torch.as_tensor(rng.random((6, 2, 23, 31)) < 0.002)
    masks[0, 0] = False
    masks[1, 1] = True
    assert torch.equal(masks_to_boxes(masks), amg.batched_mask_to_box(masks))
    assert masks_to_boxes(torch.zeros(0, 5, 5, dtype=torch.bool)).shape == (0, 4)


@needs_reference
def test_geometry_matches_reference():
    from src_core.automatic.geometry import build_all_layer_point_grids, generate_crop_boxes, is_box_near_crop_edge

    for size, layers, ratio in [((300, 450), 1, 512 / 1500), ((1000, 777), 3, 0.25), ((17, 5), 2, 0.5)]:
        assert generate_crop_boxes(size, layers, ratio) == amg.generate_crop_boxes(size, layers, ratio)
    for grid, ref in zip(build_all_layer_point_grids(10, 2, 2), amg.build_all_layer_point_grids(10, 2, 2)):
        np.testing.assert_array_equal(grid, ref)
    boxes = torch.tensor([[0, 0, 50, 50], [100, 5, 180, 90], [20, 30, 40, 45]])
    for crop in ([0, 0, 200, 100], [100, 0, 300, 100], [50, 50, 250, 150]):
        assert torch.equal(
            is_box_near_crop_edge(boxes, crop, [0, 0, 300, 150]),
            amg.is_box_near_crop_edge(boxes, crop, [0, 0, 300, 150]),
        )


def _random_masks(rng, count, height, width):
    masks = np.zeros((count, height, width), dtype=bool)
    for mask in masks:
        for _ in range(int(rng.integers(0, 4))):
            y, x = rng.integers(0, height), rng.integers(0, width)
            r = rng.integers(0, max(height, width) // 3 + 1)
            mask[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1] ^= True
    masks[0] = False
    masks[1] = True
    masks[2, -1, -1] = True  # ends with a run of True
    return masks


@needs_reference
def test_rle_round_trips_and_matches_reference():
    rng = np.random.default_rng(3)
    for height, width in [(1, 1), (7, 5), (40, 33), (64, 1)]:
        masks = _random_masks(rng, 8, height, width)
        ours = masks_to_rles(masks)
        assert ours == amg.mask_to_rle_pytorch(torch.from_numpy(masks))
        for mask, rle in zip(masks, ours):
            assert mask_to_rle(mask) == rle
            assert np.array_equal(rle_to_mask(rle), mask)
            assert rle_to_mask(rle).flags.c_contiguous
            assert np.array_equal(amg.rle_to_mask(rle), mask)
            assert area_from_rle(rle) == mask.sum()
            crop, origin = rle_to_crop(rle)
            expected_crop, expected_origin = bbox_crop(mask)
            assert np.array_equal(crop, expected_crop) and origin == expected_origin
            assert crop_to_rle(crop, origin, mask.shape) == rle
    with pytest.raises(ValueError, match="does not fit"):
        crop_to_rle(np.ones((3, 3), bool), (5, 5), (6, 6))
    with pytest.raises(ValueError, match="add up"):
        rle_to_mask({"size": [2, 2], "counts": [1, 2]})


def test_crops_placed_in_a_frame_encode_like_the_padded_mask():
    rng = np.random.default_rng(4)
    for _ in range(50):
        height, width = rng.integers(1, 30, 2)
        h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
        y0, x0 = rng.integers(0, height - h + 1), rng.integers(0, width - w + 1)
        crop = rng.random((h, w)) < rng.uniform(0.2, 1.0)
        full = np.zeros((height, width), dtype=bool)
        full[y0 : y0 + h, x0 : x0 + w] = crop
        assert crop_to_rle(crop, (y0, x0), (height, width)) == mask_to_rle(full)


@needs_reference
def test_coco_rle_matches_pycocotools():
    mask_utils = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(5)
    for mask in _random_masks(rng, 6, 37, 21):
        rle = mask_to_rle(mask)
        coco = coco_encode_rle(rle)
        assert coco == amg.coco_encode_rle(rle)
        expected = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert coco["counts"] == expected["counts"].decode() and coco["size"] == [37, 21]
        assert np.array_equal(coco_decode_rle(coco), mask)


@needs_reference
def test_windowed_upsampling_matches_postprocess_masks(pair):
    _, our_model = pair
    torch.manual_seed(0)
    for input_size, original in [((1024, 1024), (1024, 1024)), ((683, 1024), (300, 450)), ((1024, 77), (1200, 90))]:
        low = torch.randn(3, 256, 256) * 4 - 6
        low[1] = -8
        low[1, 100:110, 30:45] = 5
        low[2] = -8  # nothing above the floor: no window at all
        full = our_model.postprocess_masks(low[:, None], input_size, original)[:, 0].numpy()
        upsampler = LogitUpsampler(256, 1024, input_size, original, floor=-1.0)
        rows, cols = upsampler.active(low.numpy())
        for k in range(3):
            window = upsampler.window(low[k].numpy(), rows[k], cols[k])
            inside = np.zeros(original, dtype=bool)
            if window is None:
                assert (full[k] <= -1).all()
                continue
            logits, (y0, x0) = window
            inside[y0 : y0 + logits.shape[0], x0 : x0 + logits.shape[1]] = True
            np.testing.assert_allclose(logits, full[k][inside].reshape(logits.shape), atol=1e-5, rtol=0)
            assert (full[k][~inside] <= -1).all()
            if k == 1:
                assert inside.sum() < 0.05 * inside.size


# -- small regions and label images ----------------------------------------------------


@needs_reference
def test_small_region_removal_matches_reference(cv2_for_reference):
    rng = np.random.default_rng(6)
    for trial in range(200):
        height, width = rng.integers(3, 40, 2)
        mask = rng.random((height, width)) < rng.uniform(0.05, 0.95)
        area = float(rng.integers(1, 40))
        for mode in ("holes", "islands"):
            expected, changed = amg.remove_small_regions(mask, area, mode)
            ours, our_changed = remove_small_regions(mask, area, mode)
            assert np.array_equal(ours, expected) and our_changed == changed, (trial, mode)
    with pytest.raises(ValueError, match="mode"):
        remove_small_regions(mask, 3, "gaps")


def test_cleaning_a_crop_equals_cleaning_the_full_mask():
    rng = np.random.default_rng(7)
    for _ in range(300):
        height, width = rng.integers(2, 40, 2)
        mask = _random_masks(rng, 3, height, width)[int(rng.integers(0, 3))]
        if rng.random() < 0.5:
            mask ^= rng.random(mask.shape) < 0.05
        area = float(rng.integers(1, 60))
        full, filled = remove_small_regions(mask, area, "holes")
        full, removed = remove_small_regions(full, area, "islands")
        crop, origin = bbox_crop(mask)
        cleaned, new_origin, changed = clean_mask_crop(crop, origin, (height, width), area)
        placed = np.zeros((height, width), dtype=bool)
        placed[new_origin[0] : new_origin[0] + cleaned.shape[0], new_origin[1] : new_origin[1] + cleaned.shape[1]] = cleaned
        assert np.array_equal(placed, full) and changed == (filled or removed)


def test_label_image_keeps_small_objects_on_top():
    big = np.zeros((20, 30), dtype=bool)
    big[2:18, 2:28] = True
    small = np.zeros_like(big)
    small[8:12, 10:14] = True
    other = np.zeros_like(big)
    other[0:4, 20:30] = True  # overlaps big's corner
    records = [
        {"segmentation": small, "predicted_iou": 0.9},
        {"segmentation": big, "predicted_iou": 0.95},
        {"segmentation": mask_to_rle(other), "predicted_iou": 0.99},
    ]
    labels = masks_to_label_image(records)
    assert labels.dtype == np.uint32 and labels.shape == (20, 30)
    assert (labels[small] == 1).all()
    assert (labels[other] == 3).all()  # smaller than big: painted over it
    assert (labels[big & ~small & ~other] == 2).all() and (labels[~(big | small | other)] == 0).all()
    by_iou = masks_to_label_image(records, order="predicted_iou")
    assert (by_iou[big & ~other] == 2).all()  # big (0.95) over small (0.9)
    assert masks_to_label_image([], shape=(4, 5)).shape == (4, 5)
    with pytest.raises(ValueError, match="shape"):
        masks_to_label_image([])
    with pytest.raises(ValueError, match="order"):
        masks_to_label_image(records, order="random")
