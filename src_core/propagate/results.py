"""What propagation yields: one :class:`FrameResult` per frame, one :class:`ObjectResult` per object."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .masks import MaskStats

#: The user's own mask (or the mask of the user's prompt) on a key frame.
KEY = "key"
#: Carried over from the previous frame and accepted.
TRACKED = "tracked"
#: Lost on an earlier frame, found again around its predicted position (same id).
REFOUND = "re-found"
#: Rejected on this frame (see ``ObjectResult.reason``); no mask. Searched for on the next frames.
LOST = "lost"
#: First frame of a daughter of a dividing object (``ObjectResult.parent`` is the mother).
DIVIDED = "divided"

STATUSES = (KEY, TRACKED, REFOUND, LOST, DIVIDED)


@dataclass(frozen=True)
class ObjectResult:
    """One object on one frame.

    Attributes
    ----------
    obj_id : int
    status : str
        One of :data:`STATUSES`.
    mask : (H, W) bool array or None
        None when the object is lost. Masks of one frame never overlap.
    score : float
        SAM's predicted IoU of the mask (1.0 for a mask the user gave; NaN when lost).
    stats : MaskStats or None
        Area, bounding box, centroid of ``mask``.
    parent : int or None
        For ``"divided"``: the id of the object that divided.
    reason : str
        For ``"lost"``: why the mask was rejected, in words with the value and its
        limit ("low predicted IoU 0.41 (min 0.60)").
    cause : str
        For ``"lost"``: the same as a key of :data:`~src_core.propagate.qc.REJECTION_CAUSES`
        ("low-iou", "unstable", "area-jump", "overlap", "empty", ...).
    value : float
        For ``"lost"``: the value that failed (predicted IoU, stability, area ratio,
        overlap fraction, ...); NaN where there is none.
    """

    obj_id: int
    status: str
    mask: np.ndarray | None
    score: float
    stats: MaskStats | None
    parent: int | None = None
    reason: str = ""
    cause: str = ""
    value: float = float("nan")

    @property
    def area(self) -> int:
        return self.stats.area if self.stats is not None else 0

    @property
    def centroid(self) -> tuple[float, float] | None:
        """``(x, y)``, or None when lost."""
        return self.stats.centroid if self.stats is not None else None

    @property
    def bbox(self) -> tuple[int, int, int, int] | None:
        """Inclusive ``(x0, y0, x1, y1)``, or None when lost."""
        return self.stats.bbox if self.stats is not None else None


@dataclass(frozen=True)
class FrameResult:
    """The objects of one frame, as propagation reaches it.

    Attributes
    ----------
    frame : int
        Frame (or slice) index.
    objects : dict of int to ObjectResult
        The objects handled on this frame by this pass. With ``direction="both"``
        a frame can come twice (once per pass) with different objects; write
        them with :func:`~src_core.propagate.outputs.paint_labels`, which only
        replaces the objects given.
    direction : int
        +1 forward pass, -1 backward pass.
    step, total : int
        Progress: this is frame ``step`` (1-based) of ``total`` the run will visit.
    """

    frame: int
    objects: dict[int, ObjectResult] = field(default_factory=dict)
    direction: int = 1
    step: int = 0
    total: int = 0

    def label_image(self, shape: tuple[int, int]) -> np.ndarray:
        """An (H, W) int32 label image of this frame's masks (0 background)."""
        out = np.zeros(shape, np.int32)
        for obj in self.objects.values():
            if obj.mask is not None:
                out[obj.mask] = obj.obj_id
        return out


class PropagationError(RuntimeError):
    """Propagation had to stop (e.g. a frame could not be read).

    Everything yielded before is valid and was meant to be kept: write it, then
    resume (see :func:`~src_core.propagate.tracker.propagate`).

    Attributes
    ----------
    frame : int
        The frame that failed.
    last_done : int or None
        The last frame whose result was yielded in the failing pass (None if none).
    direction : int
        +1 or -1: the pass that failed.
    """

    def __init__(self, message: str, frame: int, last_done: int | None, direction: int) -> None:
        super().__init__(message)
        self.frame = frame
        self.last_done = last_done
        self.direction = direction
