"""z-stacks: the same propagation along z, from annotated slices up and down, into a 3D label."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..protocols import Predictor
from .outputs import paint_labels
from .prompts import ObjectPrompt, PromptRecipe
from .qc import QualityControl
from .results import FrameResult
from .tracker import propagate

#: Looser area limit than in time: an object's section grows and shrinks fast near its ends.
VOLUME_QC = QualityControl(max_area_change=2.5)


def propagate_volume(
    stack: Any,
    segmenter: Predictor,
    prompts: Sequence[ObjectPrompt],
    *,
    recipe: str | PromptRecipe | None = None,
    qc: QualityControl | None = None,
    labels: Any = None,
    **kwargs: Any,
) -> Iterator[FrameResult]:
    """Propagate objects annotated on some slices up and down a ``(Z, Y, X[, C])`` stack.

    Each object is followed from its annotated slice(s) in both directions and
    ends at the first slice where its mask is rejected (no search): that is
    where the object ends. Yields one :class:`FrameResult` per slice visited
    (``frame`` is the slice index); ``labels``, if given, is read as context so
    objects of the upward and downward passes do not overlap (pass the array
    you paint into).

    Other keyword arguments go to :func:`~src_core.propagate.tracker.propagate`.
    """
    n = _check_stack(stack)
    if n < 2:
        raise ValueError(
            "the stack has a single slice: there is nothing to propagate to; "
            "segment it as a 2D image, or check the axis order (z must be first)"
        )
    return propagate(
        stack, segmenter, prompts, direction="both", recipe=recipe, qc=qc or VOLUME_QC, search_frames=0,
        divisions=False, context_labels=labels, what="slice", **kwargs,
    )


def segment_volume(
    stack: Any,
    segmenter: Predictor,
    prompts: Sequence[ObjectPrompt],
    *,
    out: Any = None,
    **kwargs: Any,
) -> np.ndarray:
    """Run :func:`propagate_volume` to the end and return the ``(Z, Y, X)`` label volume.

    ``out`` is the array to fill (e.g. a memmap); by default a new int32 array.
    """
    n = _check_stack(stack)
    shape = tuple(getattr(stack, "shape", ()))[1:3] or np.asarray(stack[0]).shape[:2]
    if out is None:
        out = np.zeros((n, *shape), np.int32)
    for result in propagate_volume(stack, segmenter, prompts, labels=out, **kwargs):
        paint_labels(out, result)
    return out


def _check_stack(stack: Any) -> int:
    shape = getattr(stack, "shape", None)
    if shape is not None and len(shape) == 2:
        raise ValueError(
            f"expected a (Z, Y, X) stack, got a 2D image of shape {tuple(shape)}: there is nothing to propagate to"
        )
    try:
        return len(stack)
    except TypeError:
        raise ValueError(f"expected a (Z, Y, X) stack, got {type(stack).__name__}") from None
