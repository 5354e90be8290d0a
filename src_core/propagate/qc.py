"""Accept or reject an object's mask on a frame.

A mask is rejected (the object is then *lost* on that frame) when SAM itself
doubts it (low predicted IoU), when it is unstable (it changes a lot when the
logit threshold moves: SAM's ``stability_score``), when its area jumps
against the object's recent area (it leaked into the background or took a
neighbour), or when most of it is already claimed by other objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QualityControl:
    """Thresholds that decide whether a mask is kept.

    Attributes
    ----------
    min_score : float
        Lowest predicted IoU (SAM's own estimate of the mask's quality).
    min_stability : float
        Lowest stability score: IoU of the masks thresholded at
        ``+stability_offset`` and ``-stability_offset`` logits. Needs logits;
        segmenters that do not return them skip the check.
    stability_offset : float
        See ``min_stability``.
    max_area_change : float
        Largest ratio (either way) between the area and the object's area on
        the previous frame where it was kept.
    refind_area_change : float
        The same for an object being searched for after it was lost, against
        its typical area; looser, since it may come back partly hidden.
    max_overlap : float
        Largest fraction of the mask that other objects (kept before it on the
        same frame) may already hold; the overlap is given to them.
    min_area : int
        Fewest pixels a kept mask must have.
    """

    min_score: float = 0.6
    min_stability: float = 0.75
    stability_offset: float = 1.0
    max_area_change: float = 1.8
    refind_area_change: float = 2.5
    max_overlap: float = 0.3
    min_area: int = 10

    def __post_init__(self) -> None:
        if self.max_area_change < 1 or self.refind_area_change < 1:
            raise ValueError("max_area_change and refind_area_change are ratios >= 1")
        if not 0 <= self.max_overlap <= 1:
            raise ValueError(f"max_overlap must be in [0, 1], got {self.max_overlap}")


#: Thresholds that accept every non-empty mask (e.g. to see what raw propagation does).
ACCEPT_ALL = QualityControl(
    min_score=-np.inf, min_stability=-np.inf, max_area_change=np.inf, refind_area_change=np.inf,
    max_overlap=1.0, min_area=1,
)


#: The lenient setting: keep the best candidate unless it is empty (or a speck under
#: ``min_area``) or lies mostly on another object; SAM's own doubts (predicted IoU,
#: stability) and area jumps are ignored. For footage the default thresholds drop
#: objects on (natural images, a model unsure of its masks); it costs ID switches
#: where objects touch (see README, "Tracking and propagation").
LENIENT = QualityControl(
    min_score=-np.inf, min_stability=-np.inf, max_area_change=np.inf, refind_area_change=np.inf,
)


def stability_score(logits: np.ndarray, threshold: float = 0.0, offset: float = 1.0) -> float:
    """IoU between the masks ``logits > threshold + offset`` and ``logits > threshold - offset``."""
    inner = np.count_nonzero(logits > threshold + offset)
    outer = np.count_nonzero(logits > threshold - offset)
    return inner / outer if outer else 0.0


#: Why an object was lost on a frame (the ``reason`` column of the per-frame table).
REJECTION_CAUSES = {
    "empty": "the mask is empty",
    "too-small": "the mask has fewer pixels than min_area",
    "low-iou": "SAM's predicted IoU is below min_score",
    "unstable": "the stability score is below min_stability",
    "overlap": "more than max_overlap of the mask lies on other objects",
    "area-jump": "the area changed more than max_area_change (refind_area_change when searching)",
    "not-found": "searched for, nothing was found near its predicted position",
    "not-on-key": "the user's key frame does not have it",
    "resumed": "it was lost when the interrupted run stopped",
    "absent": "SAM 2's occlusion head says it is not on the frame (hidden or gone)",
}


@dataclass(frozen=True)
class Rejection:
    """Why a mask was rejected: ``cause`` (a key of :data:`REJECTION_CAUSES`), the value that failed and its limit."""

    cause: str
    value: float = float("nan")
    limit: float = float("nan")

    def __post_init__(self) -> None:
        if self.cause not in REJECTION_CAUSES:
            raise ValueError(f"unknown rejection cause {self.cause!r}")

    def __str__(self) -> str:
        v, lim = self.value, self.limit
        return {
            "empty": "empty mask",
            "too-small": f"too small ({v:.0f} px < {lim:.0f})",
            "low-iou": f"low predicted IoU {v:.2f} (min {lim:.2f})",
            "unstable": f"unstable {v:.2f} (min {lim:.2f})",
            "overlap": f"{v:.0%} on other objects (max {lim:.0%})",
            "area-jump": f"area changed x{v:.2f} (limit x{lim:.2f})",
            "not-found": "not found near its predicted position",
            "not-on-key": f"not on key frame {v:.0f}",
            "resumed": f"lost for {v:.0f} frames when the run resumed",
            "absent": f"not on the frame (object score {v:.2f})",
        }[self.cause]


def judge(
    qc: QualityControl,
    *,
    area: int,
    kept_area: int,
    score: float,
    stability: float | None,
    reference_area: float | None,
    searching: bool,
    at_border: bool = False,
) -> Rejection | None:
    """Why the mask is rejected, or None when it is kept.

    Parameters
    ----------
    qc : QualityControl
    area : int
        Pixels in the mask as predicted.
    kept_area : int
        Pixels left once those already held by other objects are removed.
    score : float
        Predicted IoU.
    stability : float or None
        Stability score; None skips that check.
    reference_area : float or None
        The object's previous (or typical, when ``searching``) area; None skips the check.
    searching : bool
        The object was lost and this is an attempt to find it again.
    at_border : bool
        The mask touches the image border: the object may be partly outside
        the frame (leaving or entering), so it may be small, down to a tenth
        of ``reference_area``.
    """
    if area == 0 or kept_area == 0:
        return Rejection("empty", 0.0)
    if area < qc.min_area or kept_area < qc.min_area:
        return Rejection("too-small", float(min(area, kept_area)), float(qc.min_area))
    if score < qc.min_score:
        return Rejection("low-iou", float(score), qc.min_score)
    if stability is not None and stability < qc.min_stability:
        return Rejection("unstable", float(stability), qc.min_stability)
    if 1.0 - kept_area / area > qc.max_overlap:
        return Rejection("overlap", 1.0 - kept_area / area, qc.max_overlap)
    if reference_area:
        limit = qc.refind_area_change if searching else qc.max_area_change
        ratio = kept_area / reference_area
        smallest = min(0.1, 1.0 / limit) if at_border else 1.0 / limit
        if searching:  # coming back into sight (from behind something): part of it is enough
            smallest = min(smallest, 0.2)
        if ratio > limit or ratio < smallest:
            return Rejection("area-jump", ratio, limit if ratio > limit else smallest)
    return None
