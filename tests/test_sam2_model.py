"""Parity of our SAM 2.1 model (``Sam2Model``) with Meta's ``SAM2Base``.

Meta's model is built with hydra from its ``sam2.1_hiera_t.yaml`` (image size and
rotary table sizes reduced for speed where said), every parameter randomized with a
seeded generator (the zero-initialized memory and pointer embeddings too), and its
state dict loaded strictly into ours. Both run in float32, eval mode, driven frame by
frame the way Meta's video predictor drives ``track_step``; each model reads back
its own earlier outputs, so differences would compound over frames.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from src_core.model.sam2.sam2_base import Sam2Model, build_sam2_model
from src_core.model.sam2.sam2_config import Sam2ModelConfig, sam2_size_name
from src_core.model.sam2.sam2_memory import memory_frame_indices, sine_pe_1d

TOL = 1e-4  # relative to the output's magnitude (at least 1)
YAML_NAMES = {"tiny": "t", "small": "s", "base_plus": "b+", "large": "l"}
OUT_KEYS = ("pred_masks", "pred_masks_high_res", "obj_ptr", "object_score_logits",
            "maskmem_features")  # fmt: skip
# how Meta's video predictor builds the model (build_sam2_video_predictor's overrides)
PREDICTOR_DECODER_ARGS = dict(
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)
EMBEDDINGS = ("maskmem_tpos_enc", "no_mem_embed", "no_mem_pos_enc", "no_obj_ptr",
              "no_obj_embed_spatial")  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _meta_model(size: str = "tiny", image_size: int = 1024, decoder_args=None, **changes):
    """Meta's SAM2Base from its SAM 2.1 yaml, with model-level changes."""
    import sam2
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    configs = Path(sam2.__file__).parent / "configs" / "sam2.1"
    cfg = OmegaConf.load(configs / f"sam2.1_hiera_{YAML_NAMES[size]}.yaml").model
    cfg.image_size = image_size
    side = image_size // 16
    cfg.memory_attention.layer.self_attention.feat_sizes = [side, side]
    cfg.memory_attention.layer.cross_attention.feat_sizes = [side, side]
    for key, value in changes.items():
        cfg[key] = value
    if decoder_args:
        cfg.sam_mask_decoder_extra_args = dict(decoder_args)
    return instantiate(cfg, _recursive_=True)


def _randomize(model: nn.Module, seed: int) -> None:
    """Seeded values of order one in every parameter (the defaults leave many at 0 or 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for sub_name, sub in model.named_modules():
            for name, p in sub.named_parameters(recurse=False):
                noise = torch.randn(p.shape, generator=gen)
                if isinstance(sub, nn.Embedding) or name in EMBEDDINGS or "pos_embed" in name:
                    p.copy_(0.5 * noise)
                elif p.dim() > 1:
                    p.copy_(noise / math.sqrt(p[0].numel()))
                elif name == "gamma":  # layer scale, 1e-6 at init
                    p.copy_(0.5 * noise)
                elif name == "weight":  # norms
                    p.copy_(1 + 0.2 * noise)
                else:
                    p.copy_(0.2 * noise)


def _pair(seed: int, image_size: int, decoder_args=None, score_shift: float = 0.0, **changes):
    """Meta's model randomized and ours loaded strictly from it, both eval.

    ``score_shift`` moves the object-score logits (random heads leave them near a
    constant), to choose how often the object is present.
    """
    torch.manual_seed(seed)
    ref = _meta_model("tiny", image_size, decoder_args, **changes)
    _randomize(ref, seed)
    with torch.no_grad():
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += score_shift
    ours = build_sam2_model("tiny", image_size=image_size, **(decoder_args or {}), **changes)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


def _rel(ours: torch.Tensor, ref: torch.Tensor) -> float:
    assert ours.shape == ref.shape and ours.dtype == ref.dtype, (ours.shape, ref.shape)
    return float((ours - ref).abs().max()) / max(1.0, float(ref.abs().max()))


def _note(worst: dict, key: str, ours, ref) -> None:
    worst[key] = max(worst.get(key, 0.0), _rel(ours, ref))


def _compare_outputs(ours: dict, ref: dict, worst: dict, where: str) -> None:
    assert ours.keys() == ref.keys(), (ours.keys(), ref.keys())
    for key in OUT_KEYS:
        if ref[key] is None:
            assert ours[key] is None, (where, key)
            continue
        _note(worst, key, ours[key], ref[key])
        assert worst[key] <= TOL, (where, key, worst[key])
    if ref["maskmem_pos_enc"] is not None:
        assert len(ours["maskmem_pos_enc"]) == len(ref["maskmem_pos_enc"]) == 1
        _note(worst, "maskmem_pos_enc", ours["maskmem_pos_enc"][0], ref["maskmem_pos_enc"][0])
        assert worst["maskmem_pos_enc"] <= TOL, where
    # presence decisions are discrete: they must agree exactly
    assert torch.equal(ours["object_score_logits"] > 0, ref["object_score_logits"] > 0), where


class _Driver:
    """One model's video state, driven as Meta's video predictor drives ``track_step``."""

    def __init__(self, model, frames: torch.Tensor, num_objects: int) -> None:
        self.model, self.frames, self.num_objects = model, frames, num_objects
        self.output_dict = {"cond_frame_outputs": {}, "non_cond_frame_outputs": {}}
        self.cache: dict[int, dict] = {}

    def features(self, idx: int):
        if idx not in self.cache:
            with torch.no_grad():
                self.cache[idx] = self.model.forward_image(self.frames[idx : idx + 1])
        out = self.cache[idx]
        # one image for all objects: expanded views, as the predictor passes them
        expanded = {
            key: [x.expand(self.num_objects, -1, -1, -1) for x in out[key]]
            for key in ("backbone_fpn", "vision_pos_enc")
        }
        return self.model._prepare_backbone_features(expanded)[1:]

    def step(self, idx, *, init=False, cond=False, points=None, masks=None, reverse=False,
             prev_logits=None, run_mem_encoder=True):  # fmt: skip
        feats, pos, sizes = self.features(idx)
        with torch.no_grad():
            out = self.model.track_step(
                frame_idx=idx, is_init_cond_frame=init, current_vision_feats=feats,
                current_vision_pos_embeds=pos, feat_sizes=sizes, point_inputs=points,
                mask_inputs=masks, output_dict=self.output_dict, num_frames=len(self.frames),
                track_in_reverse=reverse, run_mem_encoder=run_mem_encoder,
                prev_sam_mask_logits=prev_logits,
            )  # fmt: skip
        store = "cond_frame_outputs" if (init or cond) else "non_cond_frame_outputs"
        self.output_dict[store][idx] = out
        return out


def _points(coords, labels) -> dict:
    return {
        "point_coords": torch.tensor(coords, dtype=torch.float32),
        "point_labels": torch.tensor(labels, dtype=torch.int32),
    }


def _frames(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _run_both(ref, ours, frames, num_objects, script) -> tuple[dict, list]:
    """Run ``script`` (a list of step kwargs with frame index ``idx``) on both models."""
    drivers = [_Driver(ref, frames, num_objects), _Driver(ours, frames, num_objects)]
    worst: dict[str, float] = {}
    scores = []
    for step in script:
        step = dict(step)
        idx = step.pop("idx")
        outs = []
        for driver in drivers:
            kwargs = dict(step)
            if kwargs.pop("refine", False):  # new clicks on a tracked frame: its old logits
                earlier = driver.output_dict["non_cond_frame_outputs"][idx]
                kwargs["prev_logits"] = earlier["pred_masks"]
            outs.append(driver.step(idx, **kwargs))
        _compare_outputs(outs[1], outs[0], worst, f"frame {idx}")
        scores.append(outs[0]["object_score_logits"].flatten().tolist())
    return worst, scores


def test_forward_image_and_tracking_at_1024():
    """The real input size: image features, a prompted frame and two tracked frames."""
    pytest.importorskip("sam2")
    ref, ours = _pair(seed=0, image_size=1024)
    image = _frames(1, 1024, seed=1)
    start = time.perf_counter()
    with torch.no_grad():
        expected, got = ref.forward_image(image), ours.forward_image(image)
    worst: dict[str, float] = {}
    _note(worst, "vision_features", got["vision_features"], expected["vision_features"])
    for key in ("backbone_fpn", "vision_pos_enc"):
        assert len(got[key]) == len(expected[key]) == 3
        for level, (a, b) in enumerate(zip(got[key], expected[key])):
            _note(worst, f"{key}[{level}]", a, b)
    assert max(worst.values()) <= 1e-5, worst
    shapes = [tuple(x.shape[1:]) for x in got["backbone_fpn"]]
    assert shapes == [(32, 256, 256), (64, 128, 128), (256, 64, 64)]  # conv_s0, conv_s1 applied
    # the same image as frames 0..2 (features computed once per model)
    drivers = [_Driver(m, image.expand(3, -1, -1, -1), 1) for m in (ref, ours)]
    for driver, out in zip(drivers, (expected, got)):
        driver.cache = {i: out for i in range(3)}
    for idx in range(3):
        kw = dict(init=True, points=_points([[[500.0, 300.0]]], [[1]])) if idx == 0 else {}
        outs = [driver.step(idx, **kw) for driver in drivers]
        _compare_outputs(outs[1], outs[0], worst, f"frame {idx}")
        print("1024 frame", idx, outs[0]["object_score_logits"].flatten().tolist())
        assert outs[1]["pred_masks_high_res"].shape == (1, 1, 1024, 1024)
        assert outs[1]["maskmem_features"].shape == (1, 64, 64, 64)
    print(f"1024: {time.perf_counter() - start:.1f} s, max relative differences {worst}")


def test_video_sequence_matches_meta():
    """512 px, one object: a clicked first frame, then three frames tracked from memory."""
    pytest.importorskip("sam2")
    ref, ours = _pair(seed=2, image_size=512, decoder_args=PREDICTOR_DECODER_ARGS)
    script = [dict(idx=0, init=True, points=_points([[[200.0, 260.0]]], [[1]]))]
    script += [dict(idx=i) for i in (1, 2, 3)]
    worst, scores = _run_both(ref, ours, _frames(4, 512, seed=3), 1, script)
    print("512 sequence: max relative differences", worst, "object scores", scores)


def test_prompts_memory_selection_and_pointers_match_meta():
    """256 px, two objects, the memory options SAM 2.1 leaves off turned on.

    Conditioning frames 0 (clicks), 4 (mask input; one object's mask empty) and 6
    (two clicks: single mask with the stability fallback) are prompted first, as in
    the predictor; then frames are tracked with at most two conditioning frames
    attended to and a memory stride of 2, so an unselected conditioning frame serves
    as a plain memory and future pointers are left out; then a tracked frame gets a
    refining click (with its earlier logits) and the next frame is tracked again.
    """
    pytest.importorskip("sam2")
    changes = dict(max_cond_frames_in_attn=2, memory_temporal_stride_for_eval=2)
    ref, ours = _pair(seed=4, image_size=256, decoder_args=PREDICTOR_DECODER_ARGS,
                      score_shift=0.7, **changes)  # fmt: skip
    frames = _frames(8, 256, seed=5)
    mask = torch.zeros(2, 1, 256, 256)
    mask[0, :, 40:150, 60:200] = 1.0  # object 1's mask stays empty: absent
    script = [
        dict(idx=0, init=True, points=_points([[[100.0, 80.0]], [[30.0, 200.0]]], [[1], [1]])),
        dict(idx=4, init=True, masks=mask),
        dict(idx=6, init=True, points=_points([[[120.0, 90.0], [10.0, 10.0]],
                                                [[40.0, 190.0], [200.0, 30.0]]], [[1, 0], [1, 1]])),
        *[dict(idx=i) for i in (1, 2, 3, 5, 7)],
        dict(idx=2, points=_points([[[90.0, 100.0]], [[50.0, 180.0]]], [[1], [0]]), refine=True),
        dict(idx=3),
    ]  # fmt: skip
    worst, scores = _run_both(ref, ours, frames, 2, script)
    flat = [s for frame in scores for s in frame]
    assert min(flat) < 0 < max(flat)  # both presence branches were taken
    print("256 options: max relative differences", worst, "object scores", scores)


def test_reverse_tracking_matches_meta():
    """Tracking backwards from a clicked last frame, a clicked frame 1 lying ahead.

    With pointers of future frames allowed, frame 1's enters with a negative
    (signed) distance.
    """
    pytest.importorskip("sam2")
    ref, ours = _pair(seed=6, image_size=256, score_shift=0.9,
                      only_obj_ptrs_in_the_past_for_eval=False)  # fmt: skip
    script = [
        dict(idx=5, init=True, reverse=True, points=_points([[[70.0, 150.0]]], [[1]])),
        dict(idx=1, init=True, reverse=True, points=_points([[[90.0, 140.0]]], [[1]])),
        *[dict(idx=i, reverse=True) for i in (4, 3, 2, 0)],
    ]
    worst, scores = _run_both(ref, ours, _frames(6, 256, seed=7), 1, script)
    print("256 reverse: max relative differences", worst, "object scores", scores)


def test_memory_encoding_options_match_meta():
    """Binarized click masks and non-overlapping objects, on identical inputs."""
    pytest.importorskip("sam2")
    changes = dict(binarize_mask_from_pts_for_mem_enc=True, non_overlap_masks_for_mem_enc=True)
    ref, ours = _pair(seed=8, image_size=256, **changes)
    gen = torch.Generator().manual_seed(9)
    feats = [torch.randn(256, 3, 256, generator=gen)]
    masks = 6 * torch.randn(3, 1, 256, 256, generator=gen)
    scores = torch.tensor([[2.0], [-1.0], [0.5]])
    for from_pts in (True, False):
        with torch.no_grad():
            expected = ref._encode_new_memory(feats, [(16, 16)], masks, scores, from_pts)
            got = ours._encode_new_memory(feats, [(16, 16)], masks, scores, from_pts)
        assert _rel(got[0], expected[0]) <= 1e-5
        assert _rel(got[1][0], expected[1][0]) <= 1e-6
    expected = ref._apply_non_overlapping_constraints(masks)
    assert torch.equal(ours._apply_non_overlapping_constraints(masks), expected)


def test_memory_helpers_match_meta():
    """Conditioning-frame selection, slots of the memory bank and the pointer encoding."""
    pytest.importorskip("sam2")
    from sam2.modeling.sam2_utils import get_1d_sine_pe, select_closest_cond_frames

    from src_core.model.sam2.sam2_memory import (
        select_closest_cond_frames as ours_select,
    )

    cond = {t: f"out{t}" for t in (9, 0, 4, 12, 6, 20)}
    for frame_idx in range(-1, 23):
        for limit in (-1, 2, 3, 5, 6, 7):
            expected = select_closest_cond_frames(frame_idx, cond, limit)
            got = ours_select(frame_idx, cond, limit)
            assert [list(d.items()) for d in got] == [list(d.items()) for d in expected]
    pos = torch.tensor([0, 1, 5, -3, 15]) / 15
    for dim in (64, 256):
        assert torch.equal(sine_pe_1d(pos, dim), get_1d_sine_pe(pos, dim))
    # the slots of Meta's _prepare_memory_conditioned_features, written out
    assert memory_frame_indices(10, 7) == [(1, 4), (2, 5), (3, 6), (4, 7), (5, 8), (6, 9)]
    strided = [(1, -6), (2, -3), (3, 0), (4, 3), (5, 6), (6, 9)]
    assert memory_frame_indices(10, 7, stride=3) == strided
    assert memory_frame_indices(10, 4, stride=3, reverse=True) == [(1, 15), (2, 12), (3, 11)]


@pytest.mark.parametrize("size", list(YAML_NAMES))
def test_sizes_match_meta_state_dicts(size):
    """Keys (in order) and shapes of every SAM 2.1 size equal Meta's yaml-built model."""
    pytest.importorskip("sam2")
    ref = _meta_model(size)
    with torch.device("meta"):  # keys and shapes only
        ours = build_sam2_model(f"sam2.1_hiera_{YAML_NAMES[size]}")
    assert [(k, tuple(v.shape)) for k, v in ours.state_dict().items()] == [
        (k, tuple(v.shape)) for k, v in ref.state_dict().items()
    ]
    for attr in ("hidden_dim", "mem_dim", "num_maskmem", "image_size", "num_feature_levels",
                 "sam_image_embedding_size"):  # fmt: skip
        assert getattr(ours, attr) == getattr(ref, attr), attr
    # every config field is a SAM2Base argument of the same value (the decoder's extras aside)
    for field in dataclasses.fields(ours.config):
        if field.name == "compile_image_encoder":  # not kept by SAM2Base
            continue
        owner = ref.sam_mask_decoder if field.name.startswith("dynamic_multimask") else ref
        mine, theirs = getattr(ours.config, field.name), getattr(owner, field.name)
        if field.name == "no_obj_embed_spatial":  # Meta keeps the parameter or None
            theirs = theirs is not None
        assert mine == theirs, field.name


def test_size_names_and_config():
    names = ("tiny", "sam2.1_hiera_t", "sam2.1_hiera_t.yaml", "SAM2.1_HIERA_TINY.pt",
             "facebook/sam2.1-hiera-tiny")  # fmt: skip
    assert {sam2_size_name(n) for n in names} == {"tiny"}
    assert sam2_size_name("sam2.1_hiera_b+") == "base_plus"
    assert sam2_size_name("facebook/sam2.1-hiera-base-plus") == "base_plus"
    assert sam2_size_name("l") == "large" and sam2_size_name("hiera_small") == "small"
    for bad in ("huge", "sam2_hiera_x", ""):
        with pytest.raises(ValueError):
            sam2_size_name(bad)
    with pytest.raises(ValueError):
        Sam2ModelConfig(max_cond_frames_in_attn=1)
    with pytest.raises(ValueError):
        Sam2ModelConfig(add_tpos_enc_to_obj_ptrs=False)  # projection needs the encoding
    with pytest.raises(NotImplementedError):
        build_sam2_model("tiny", image_size=256)(torch.zeros(1))


def test_bfloat16_autocast_tracking_runs():
    """bfloat16 autocast, as Meta's predictors run on GPUs: prompted, tracked and mask frames."""
    torch.manual_seed(0)
    model: Sam2Model = build_sam2_model("tiny", image_size=256).eval()
    driver = _Driver(model, _frames(3, 256, seed=1), 1)
    mask = torch.zeros(1, 1, 256, 256)
    mask[..., 50:100, 50:100] = 1
    with torch.autocast("cpu", dtype=torch.bfloat16):
        driver.step(0, init=True, points=_points([[[100.0, 100.0]]], [[1]]))
        outs = [driver.step(1), driver.step(2, cond=True, masks=mask)]
    assert driver.cache[0]["backbone_fpn"][0].dtype == torch.bfloat16
    for out in outs:
        assert out["pred_masks_high_res"].dtype == torch.float32
        assert all(torch.isfinite(out[k].float()).all() for k in OUT_KEYS)
