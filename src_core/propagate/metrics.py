"""Tracking metrics on label videos: per-object J, ID switches, MOTA, IDF1.

Ground truth and prediction are label images, frame by frame (0 background,
one id per object). An object and a hypothesis *match* on a frame when their
mask IoU is at least ``iou_threshold`` (0.5: then a match is unique). The
CLEAR-MOT and ID measures follow ``py-motmetrics`` (the tests check them
against it) fed with the distance ``1 - IoU``:

* per frame, a ground-truth object keeps the hypothesis it was last matched
  to when they still match; the others are assigned by minimum total
  distance (Hungarian);
* an **ID switch** is a ground-truth object matched to a hypothesis other
  than the one it was last matched to;
* **MOTA** = 1 - (misses + false positives + ID switches) / ground-truth objects
  (summed over frames);
* **IDF1** = 2 IDTP / (ground-truth + predicted objects), where IDTP counts the
  frames on which each ground-truth track matches the predicted track it is
  paired with in the one-to-one pairing that maximises IDTP.

**J** (region similarity, as in DAVIS) of a ground-truth object is the mean
mask IoU with its paired predicted track over the frames where either is
present (0 where only one is); unpaired objects score 0.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass(frozen=True)
class TrackingScores:
    """What :class:`TrackingEvaluator` measured.

    Attributes
    ----------
    j : dict of int to float
        J per ground-truth object.
    mean_j : float
        Mean of ``j`` over the ground-truth objects.
    id_switches, misses, false_positives, matches, gt_count, pred_count : int
        CLEAR-MOT counts, summed over frames (``matches`` includes the
        switches; py-motmetrics' ``num_matches`` counts them apart).
    mota, idf1 : float
    pairing : dict of int to int
        Ground-truth id -> predicted id of the IDF1 pairing.
    frames : int
    """

    j: dict[int, float]
    mean_j: float
    id_switches: int
    misses: int
    false_positives: int
    matches: int
    gt_count: int
    pred_count: int
    mota: float
    idf1: float
    pairing: dict[int, int]
    frames: int

    def summary(self) -> str:
        return (f"J {self.mean_j:.3f}  IDsw {self.id_switches}  MOTA {self.mota:.3f}  "
                f"IDF1 {self.idf1:.3f}  (FN {self.misses}, FP {self.false_positives})")


class TrackingEvaluator:
    """Accumulates frames one at a time (memory grows with the number of ids, not frames).

    Parameters
    ----------
    iou_threshold : float
        Lowest mask IoU that counts as a match.
    """

    def __init__(self, iou_threshold: float = 0.5) -> None:
        self.iou_threshold = float(iou_threshold)
        self.frames = 0
        self.id_switches = self.misses = self.false_positives = self.matches = 0
        self.gt_count = self.pred_count = 0
        self._last_match: dict[int, int] = {}
        self._gt_frames: dict[int, int] = defaultdict(int)
        self._pred_frames: dict[int, int] = defaultdict(int)
        self._matchable: dict[tuple[int, int], int] = defaultdict(int)  # frames with IoU >= threshold
        self._iou_sum: dict[tuple[int, int], float] = defaultdict(float)
        self._both: dict[tuple[int, int], int] = defaultdict(int)  # frames with both present

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one frame: ground-truth and predicted (H, W) label images."""
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.shape != pred.shape:
            raise ValueError(f"ground truth {gt.shape} and prediction {pred.shape} differ in shape")
        gt_ids, pred_ids, iou = label_iou(gt, pred)
        self.frames += 1
        self.gt_count += len(gt_ids)
        self.pred_count += len(pred_ids)
        for g in gt_ids:
            self._gt_frames[g] += 1
        for h in pred_ids:
            self._pred_frames[h] += 1
        for i, g in enumerate(gt_ids):
            for j, h in enumerate(pred_ids):
                self._both[(g, h)] += 1
                if iou[i, j] > 0:
                    self._iou_sum[(g, h)] += iou[i, j]
                if iou[i, j] >= self.iou_threshold:
                    self._matchable[(g, h)] += 1
        matched = self._match(gt_ids, pred_ids, iou)
        self.matches += len(matched)
        self.misses += len(gt_ids) - len(matched)
        self.false_positives += len(pred_ids) - len(matched)

    def _match(self, gt_ids: list[int], pred_ids: list[int], iou: np.ndarray) -> dict[int, int]:
        valid = iou >= self.iou_threshold
        matched: dict[int, int] = {}
        used_g, used_h = set(), set()
        column = {h: j for j, h in enumerate(pred_ids)}
        for i, g in enumerate(gt_ids):  # keep last correspondences that still hold
            h = self._last_match.get(g)
            if h is not None and h in column and h not in used_h and valid[i, column[h]]:
                matched[g] = h
                used_g.add(i)
                used_h.add(h)
        rows = [i for i in range(len(gt_ids)) if i not in used_g]
        cols = [j for j, h in enumerate(pred_ids) if h not in used_h]
        if rows and cols:
            sub = np.where(valid[np.ix_(rows, cols)], 1.0 - iou[np.ix_(rows, cols)], 1e6)
            for r, c in zip(*linear_sum_assignment(sub)):
                if sub[r, c] >= 1e6:
                    continue
                g, h = gt_ids[rows[r]], pred_ids[cols[c]]
                if g in self._last_match and self._last_match[g] != h:
                    self.id_switches += 1
                matched[g] = h
        self._last_match.update(matched)
        return matched

    def scores(self) -> TrackingScores:
        """The metrics over all frames added so far."""
        gts, preds = sorted(self._gt_frames), sorted(self._pred_frames)
        pairing: dict[int, int] = {}
        idtp = 0
        if gts and preds:
            gain = np.array([[self._matchable.get((g, h), 0) for h in preds] for g in gts], float)
            for r, c in zip(*linear_sum_assignment(-gain)):
                if gain[r, c] > 0:
                    pairing[gts[r]] = preds[c]
                    idtp += int(gain[r, c])
        j = {}
        for g in gts:
            h = pairing.get(g)
            if h is None:
                j[g] = 0.0
                continue
            frames = self._gt_frames[g] + self._pred_frames[h] - self._both.get((g, h), 0)
            j[g] = self._iou_sum.get((g, h), 0.0) / frames if frames else 0.0
        total = self.gt_count + self.pred_count
        return TrackingScores(
            j=j,
            mean_j=float(np.mean(list(j.values()))) if j else float("nan"),
            id_switches=self.id_switches,
            misses=self.misses,
            false_positives=self.false_positives,
            matches=self.matches,
            gt_count=self.gt_count,
            pred_count=self.pred_count,
            mota=1.0 - (self.misses + self.false_positives + self.id_switches) / self.gt_count
            if self.gt_count else float("nan"),
            idf1=2.0 * idtp / total if total else float("nan"),
            pairing=pairing,
            frames=self.frames,
        )


def label_iou(gt: np.ndarray, pred: np.ndarray) -> tuple[list[int], list[int], np.ndarray]:
    """Ids present in each label image and the IoU of every (gt, pred) pair."""
    g_vals, g_inv = np.unique(gt.ravel(), return_inverse=True)
    p_vals, p_inv = np.unique(pred.ravel(), return_inverse=True)
    table = np.bincount(g_inv * len(p_vals) + p_inv, minlength=len(g_vals) * len(p_vals))
    table = table.reshape(len(g_vals), len(p_vals))
    g_area, p_area = table.sum(axis=1), table.sum(axis=0)
    union = g_area[:, None] + p_area[None, :] - table
    iou = np.where(union > 0, table / np.maximum(union, 1), 0.0)
    g_keep, p_keep = g_vals != 0, p_vals != 0
    return (
        [int(v) for v in g_vals[g_keep]],
        [int(v) for v in p_vals[p_keep]],
        iou[np.ix_(g_keep, p_keep)],
    )


def evaluate(gt_frames: Iterable[np.ndarray], pred_frames: Iterable[np.ndarray], iou_threshold: float = 0.5) -> TrackingScores:
    """Metrics of predicted label frames against ground-truth label frames (paired in order)."""
    evaluator = TrackingEvaluator(iou_threshold)
    for gt, pred in zip(gt_frames, pred_frames, strict=True):
        evaluator.update(gt, pred)
    return evaluator.scores()
