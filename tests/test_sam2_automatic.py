"""``SAM2AutomaticMaskGenerator`` against Meta's (``sam2==1.1.0``), record for record.

Meta's SAM2Base built with hydra from ``sam2.1_hiera_t.yaml`` with its image
predictor's decoder settings, seeded random weights (tests/test_sam2_model.py), and
ours loaded strictly from it, at the real 1024-px input, on a real photo. The
thresholds are lowered so that random weights leave masks to compare; both
generators must give the same records in the same order. Meta's hole filling needs
its CUDA extension (skipped on a CPU with a warning), so ``min_mask_region_area``
stays 0 in the comparison; ours is tested on its own.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_core.automatic import (
    SAM2AutomaticMaskGenerator,
    SamAutomaticMaskGenerator,
    mask_generator_for,
)
from src_core.model.sam2.sam2_base import build_sam2_model

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py
# random weights give masks over most of the image, which NMS would reduce to one or
# two: without it every candidate is compared, in order (NMS itself: the last case
# and the SAM 1 generator's tests)
KEEP_ALL = dict(box_nms_thresh=1.0, crop_nms_thresh=1.0)


@pytest.fixture(scope="module")
def pair():
    pytest.importorskip("sam2")
    pytest.importorskip("hydra")
    from test_sam2_model import PREDICTOR_DECODER_ARGS, _meta_model, _randomize

    torch.manual_seed(0)
    ref = _meta_model("tiny", 1024, PREDICTOR_DECODER_ARGS)
    _randomize(ref, seed=5)
    ours = build_sam2_model("tiny", **PREDICTOR_DECODER_ARGS)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    from skimage import data

    return np.ascontiguousarray(data.coffee()[60:300, 100:460])  # 240 x 360 RGB


def _compare(ref_records, our_records, least: int) -> None:
    assert len(our_records) == len(ref_records) >= least, (len(our_records), len(ref_records))
    for k, (r, o) in enumerate(zip(ref_records, our_records)):
        # logits within ~1e-6 of Meta's: a pixel right at the threshold may flip
        assert np.abs(np.subtract(o["bbox"], r["bbox"])).max() <= 1, k
        assert abs(o["area"] - r["area"]) <= max(2, 1e-3 * r["area"]), k
        assert o["crop_box"] == [int(v) for v in r["crop_box"]], k
        np.testing.assert_allclose(o["point_coords"], r["point_coords"], atol=1e-6)
        assert abs(o["predicted_iou"] - r["predicted_iou"]) < 1e-4, k
        assert abs(o["stability_score"] - r["stability_score"]) < 1e-4, k
        a, b = o["segmentation"], r["segmentation"]
        union = np.count_nonzero(a | b)
        assert union == 0 or np.count_nonzero(a & b) / union >= 0.999, k


@pytest.mark.parametrize(
    "settings",
    [
        dict(points_per_side=5, pred_iou_thresh=0.6, stability_score_thresh=0.0, **KEEP_ALL),
        dict(points_per_side=3, pred_iou_thresh=0.0, stability_score_thresh=0.0,
             use_m2m=True, points_per_batch=4, **KEEP_ALL),
        dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.5,
             multimask_output=False, mask_threshold=0.5, box_nms_thresh=0.95),
    ],
    ids=["grid", "m2m", "single-mask-nms"],
)
def test_records_match_meta(pair, photo, settings):
    from sam2.automatic_mask_generator import (
        SAM2AutomaticMaskGenerator as MetaGenerator,
    )

    ref, ours = pair
    with torch.no_grad():
        expected = MetaGenerator(ref, **settings).generate(photo)
    got = SAM2AutomaticMaskGenerator(ours, **settings).generate(photo)
    _compare(expected, got, least=1 if settings.get("box_nms_thresh", 0.7) < 1 else 3)


def test_defaults_match_meta():
    pytest.importorskip("sam2")
    import inspect

    from sam2.automatic_mask_generator import (
        SAM2AutomaticMaskGenerator as MetaGenerator,
    )

    theirs = inspect.signature(MetaGenerator.__init__).parameters
    mine = inspect.signature(SAM2AutomaticMaskGenerator.__init__).parameters
    for name, p in theirs.items():
        if name in ("self", "model", "kwargs"):
            continue
        assert mine[name].default == p.default, name


def test_small_regions_and_the_generator_each_model_gets(monkeypatch):
    """min_mask_region_area fills holes and removes specks in the low-resolution logits
    (the predictor's filling, which runs on a CPU, unlike Meta's), and runs after the
    IoU filter only on the masks kept."""
    from src_core import sam2_predictor

    torch.manual_seed(1)
    model = build_sam2_model("tiny", image_size=1024).eval()
    image = np.zeros((96, 128, 3), np.uint8)
    image[20:70, 30:90] = 200
    calls = []
    real = sam2_predictor.fill_small_regions
    monkeypatch.setattr(sam2_predictor, "fill_small_regions",
                        lambda logits, *a, **k: calls.append((tuple(logits.shape), a, k)) or real(logits, *a, **k))
    generator = mask_generator_for(model, points_per_side=3, pred_iou_thresh=0.0,
                                   stability_score_thresh=0.0, min_mask_region_area=50)
    assert isinstance(generator, SAM2AutomaticMaskGenerator)
    records = generator.generate(image)
    assert records and all(r["segmentation"].shape == (96, 128) for r in records)
    holes = [c for c in calls if c[2]["holes"]]
    assert calls and all(c[1][1] == 50 for c in calls) and holes
    assert isinstance(mask_generator_for(build_sam_tiny()), SamAutomaticMaskGenerator)
    with pytest.raises(ValueError, match="takes a SAM 1 model"):
        SamAutomaticMaskGenerator(model)


def build_sam_tiny():
    from tiny_geometry import TINY_256

    from src_core.model.build import build_sam_from_config

    return build_sam_from_config(TINY_256).eval()
