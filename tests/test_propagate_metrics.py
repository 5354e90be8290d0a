"""Tracking metrics (src_core.propagate.metrics) checked against py-motmetrics and by hand."""

from __future__ import annotations

import numpy as np
import pytest

from src_core.propagate import TrackingEvaluator, evaluate
from src_core.propagate.metrics import label_iou


def _disc(shape, cx, cy, r):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (xx - cx) ** 2 + (yy - cy) ** 2 <= r * r


def _random_sequence(seed, n_frames=40, shape=(64, 80)):
    """Ground truth of moving discs and a flawed prediction: swaps, misses, false positives, drift."""
    rng = np.random.default_rng(seed)
    n_obj = 4
    pos = rng.uniform([10, 10], [shape[1] - 10, shape[0] - 10], size=(n_obj, 2))
    vel = rng.normal(0, 1.5, size=(n_obj, 2))
    gts, preds = [], []
    relabel = {i: i for i in range(1, n_obj + 1)}
    for t in range(n_frames):
        pos = np.clip(pos + vel, 8, [shape[1] - 8, shape[0] - 8])
        gt = np.zeros(shape, np.int32)
        pred = np.zeros(shape, np.int32)
        if t == 20 or rng.random() < 0.08:  # the tracker swaps two identities from now on
            a, b = rng.choice(np.arange(1, n_obj + 1), 2, replace=False)
            relabel[a], relabel[b] = relabel[b], relabel[a]
        for i in range(1, n_obj + 1):
            if rng.random() < 0.1:  # hidden on this frame
                continue
            gt[_disc(shape, *pos[i - 1], 6) & (gt == 0)] = i
            if rng.random() < 0.1:  # missed
                continue
            # drift: IoU from about 0.2 to 1, so some fall under the 0.5 threshold
            shift = rng.choice([0.0, 0.0, 1.0, 3.0, 6.0])
            pred[_disc(shape, pos[i - 1][0] + shift, pos[i - 1][1], 6) & (pred == 0)] = 10 + relabel[i]
        if rng.random() < 0.2:  # a false positive somewhere
            pred[_disc(shape, *rng.uniform(5, 55, 2), 4) & (pred == 0)] = 30 + rng.integers(0, 3)
        gts.append(gt)
        preds.append(pred)
    return gts, preds


@pytest.mark.parametrize("seed", range(6))
def test_clear_mot_and_idf1_match_motmetrics(seed):
    mm = pytest.importorskip("motmetrics")
    gts, preds = _random_sequence(seed)
    ours = evaluate(gts, preds)

    acc = mm.MOTAccumulator(auto_id=True)
    for gt, pred in zip(gts, preds):
        g_ids, p_ids, iou = label_iou(gt, pred)
        dist = np.where(iou >= 0.5, 1.0 - iou, np.nan)
        acc.update(g_ids, p_ids, dist)
    names = ["num_switches", "num_misses", "num_false_positives", "num_matches", "mota", "idf1",
             "num_objects", "num_predictions"]
    ref = mm.metrics.create().compute(acc, metrics=names, name="seq").iloc[0]
    assert ours.id_switches == int(ref["num_switches"])
    assert ours.misses == int(ref["num_misses"])
    assert ours.false_positives == int(ref["num_false_positives"])
    assert ours.matches - ours.id_switches == int(ref["num_matches"])  # motmetrics counts switches apart
    assert ours.gt_count == int(ref["num_objects"]) and ours.pred_count == int(ref["num_predictions"])
    assert ours.mota == pytest.approx(float(ref["mota"]), abs=1e-9)
    assert ours.idf1 == pytest.approx(float(ref["idf1"]), abs=1e-9)
    # the sequences are flawed enough for the comparison to mean something
    assert ours.id_switches > 0 and ours.misses > 0 and ours.false_positives > 0


def test_scores_by_hand():
    shape = (20, 20)
    a = np.zeros(shape, np.int32)
    a[2:8, 2:8] = 1
    a[12:18, 12:18] = 2
    swapped = np.where(a == 1, 2, np.where(a == 2, 1, 0))
    half = a.copy()
    half[2:8, 2:5] = 0  # object 1 predicted with half its pixels: IoU 0.5
    # frames: perfect, perfect, ids swapped, object 1 at IoU 0.5, object 2 missing
    gts = [a, a, a, a, a]
    preds = [a, a, swapped, half, np.where(a == 2, 0, a)]
    s = evaluate(gts, preds)
    assert s.id_switches == 4  # to the swapped ids and back, for both objects
    assert s.misses == 1 and s.false_positives == 0
    assert s.gt_count == 10 and s.pred_count == 9
    assert s.mota == pytest.approx(1 - (1 + 0 + 4) / 10)
    assert s.pairing == {1: 1, 2: 2}
    assert s.idf1 == pytest.approx(2 * (4 + 3) / (10 + 9))
    # J of object 1: IoU 1, 1, 0 (swapped), 0.5, 1 over 5 frames
    assert s.j[1] == pytest.approx((1 + 1 + 0 + 0.5 + 1) / 5)
    assert s.j[2] == pytest.approx((1 + 1 + 0 + 1 + 0) / 5)
    with pytest.raises(ValueError, match="differ in shape"):
        TrackingEvaluator().update(a, a[:10])
