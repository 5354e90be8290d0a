"""Propagation end to end on the real model: vit_tiny geometry with random weights (plumbing only).

Untrained weights give meaningless masks, so this checks shapes, ids,
statuses, the embedding calls and the files written, not quality (the stand-in
tests in tests/test_propagate.py measure the tracking logic).
"""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from src_core.model.build import build_sam_from_config

from tiny_geometry import TINY_256
from src_core.predictor import SamPredictor
from src_core.propagate import (
    ACCEPT_ALL,
    KEY,
    LOST,
    STATUSES,
    TABLE_COLUMNS,
    LabelFile,
    ObjectPrompt,
    TrackingWriter,
    propagate,
    segment_volume,
    write_overlay_video,
)
from src_core.synthetic.videos import make_scene


class CountingPredictor(SamPredictor):
    def __init__(self, model):
        super().__init__(model)
        self.set_image_calls = 0

    def set_image(self, image, *args, **kwargs):
        self.set_image_calls += 1
        return super().set_image(image, *args, **kwargs)


@pytest.fixture(scope="module")
def predictor():
    torch.manual_seed(0)
    return CountingPredictor(build_sam_from_config(TINY_256))


@pytest.mark.parametrize("qc", [None, ACCEPT_ALL], ids=["default-qc", "accept-all"])
def test_real_model_plumbing(tmp_path, predictor, qc):
    scene = make_scene("crossing", size=64)
    prompts = [ObjectPrompt(0, 1, points=[[12, 24]]), ObjectPrompt(0, 2, box=[2, 36, 22, 50]),
               ObjectPrompt(2, 3, points=[[58, 12], [40, 40]], labels=[1, 0])]
    n = 6
    labels = LabelFile(tmp_path / "labels.npy", scene.shape, np.uint16)
    predictor.set_image_calls = 0
    results = []
    with TrackingWriter(labels, tmp_path / "table.csv", tmp_path / "traj.csv", n_frames=n) as writer:
        for r in propagate(scene, predictor, prompts, stop=n, qc=qc):
            writer.write(r)
            results.append(r)
    data, graph = writer.close()
    assert [r.frame for r in results] == list(range(n))
    assert predictor.set_image_calls == n  # one embedding per frame
    for r in results:
        assert set(r.objects) == ({1, 2} if r.frame < 2 else {1, 2, 3})
        claimed = np.zeros((64, 64), int)
        for obj in r.objects.values():
            assert obj.status in STATUSES
            if obj.mask is None:
                assert obj.status == LOST
                continue
            assert obj.mask.shape == (64, 64) and obj.mask.dtype == bool and obj.mask.any()
            claimed += obj.mask
            assert np.isfinite(obj.score)
        assert claimed.max() <= 1
        painted = np.asarray(labels[r.frame])
        for obj in r.objects.values():
            if obj.mask is not None:
                assert np.array_equal(painted == obj.obj_id, obj.mask)
    assert results[0].objects[1].status == KEY and results[2].objects[3].status == KEY
    if qc is ACCEPT_ALL:
        assert all(o.status != LOST for r in results for o in r.objects.values())
    with open(tmp_path / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(TABLE_COLUMNS)
    assert len(rows) == sum(len(r.objects) for r in results)
    with open(tmp_path / "traj.csv", newline="") as f:
        assert len(list(csv.reader(f))) == n + 1
    assert data.ndim == 2 and data.shape[1] == 4 and graph == {}
    labels.close()
    video = write_overlay_video(tmp_path / "overlay.mp4", scene, np.load(tmp_path / "labels.npy"), stop=n)
    assert video.stat().st_size > 0


def test_real_model_volume(predictor):
    scene = make_scene("turning", size=64)
    stack = scene[0:5]
    volume = segment_volume(stack, predictor, [ObjectPrompt(2, 1, points=[[32, 10]])], qc=ACCEPT_ALL)
    assert volume.shape == (5, 64, 64) and volume.dtype == np.int32
    assert set(np.unique(volume)) <= {0, 1}
    assert (volume[2] == 1).any()


def test_builtin_model_on_a_natural_image_says_why_and_lenient_keeps_it():
    """The swan case of issue 25 with the built-in model: a cat panning through the frame.

    With the default thresholds the built-in model's own doubt drops the cat on
    frame 1 (the reason and value say so); the lenient setting keeps it.
    """
    from skimage import data

    from src_core.model.build import build_sam
    from src_core.propagate import LENIENT, REJECTION_CAUSES
    from src_core.propagate.masks import mask_iou

    image = data.chelsea()
    frames = np.stack([np.roll(image, 3 * t, axis=1) for t in range(6)])
    predictor = SamPredictor(build_sam("vit_tiny", device="cpu"))
    prompt = ObjectPrompt(0, 1, box=[60, 20, 330, 290])
    default = [r.objects[1] for r in propagate(frames, predictor, [prompt])]
    assert default[0].status == KEY and default[1].status == LOST
    assert default[1].cause in REJECTION_CAUSES and default[1].cause in ("low-iou", "unstable")
    assert np.isfinite(default[1].value) and str(round(default[1].value, 2)) in default[1].reason
    lenient = [r.objects[1] for r in propagate(frames, predictor, [prompt], qc=LENIENT)]
    assert all(o.mask is not None for o in lenient)
    key = lenient[0].mask
    for t, obj in enumerate(lenient[1:], 1):
        assert mask_iou(obj.mask, np.roll(key, 3 * t, axis=1)) > 0.4, t  # still on the cat
