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


def stability_score(logits: np.ndarray, threshold: float = 0.0, offset: float = 1.0) -> float:
    """IoU between the masks ``logits > threshold + offset`` and ``logits > threshold - offset``."""
    inner = np.count_nonzero(logits > threshold + offset)
    outer = np.count_nonzero(logits > threshold - offset)
    return inner / outer if outer else 0.0


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
) -> str:
    """Why the mask is rejected, or ``""`` when it is kept.

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
    if area < qc.min_area or kept_area < qc.min_area:
        return "too small" if area else "empty"
    if score < qc.min_score:
        return f"low score {score:.2f}"
    if stability is not None and stability < qc.min_stability:
        return f"unstable {stability:.2f}"
    if area and 1.0 - kept_area / area > qc.max_overlap:
        return f"overlaps other objects ({1.0 - kept_area / area:.0%})"
    if reference_area:
        limit = qc.refind_area_change if searching else qc.max_area_change
        ratio = kept_area / reference_area
        smallest = min(0.1, 1.0 / limit) if at_border else 1.0 / limit
        if searching:  # coming back into sight (from behind something): part of it is enough
            smallest = min(smallest, 0.2)
        if ratio > limit or ratio < smallest:
            return f"area changed x{ratio:.2f}"
    return ""
