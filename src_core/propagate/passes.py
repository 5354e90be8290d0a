"""The one pass planner: which frames a run visits, in which order, from which prompts.

``forward`` is one pass from the first prompted frame to the end; ``backward`` one
pass from the last prompted frame to the start; ``both`` the forward pass over every
prompt, then a backward pass from each object's first prompt, seeded with the
forward pass's result there (so an object prompted late is followed back too). The
tracker (:mod:`.tracker`), a resumable run (:mod:`.run`) and the Track panel all
plan with :func:`plan_passes`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .prompts import ObjectPrompt

__all__ = ["PassPlan", "first_frames", "frames_visited", "plan_passes"]


@dataclass(frozen=True)
class PassPlan:
    """One pass: ``direction`` +1 or -1, from ``first`` to ``last`` (both included).

    ``seeds_only``: the backward pass of ``both``, started from each object's first
    prompt (its frame's result comes from the forward pass and is not written again).
    """

    direction: int
    first: int
    last: int
    seeds_only: bool = False

    @property
    def frames(self) -> range:
        return range(self.first, self.last + self.direction, self.direction)


def first_frames(prompts: Sequence[ObjectPrompt]) -> dict[int, int]:
    """Object id -> the first frame it is prompted on."""
    first: dict[int, int] = {}
    for p in sorted(prompts, key=lambda p: p.frame):
        first.setdefault(p.obj_id, p.frame)
    return first


def plan_passes(prompts: Sequence[ObjectPrompt], direction: str, start: int, stop: int) -> list[PassPlan]:
    """The passes of a run over frames ``start`` to ``stop - 1`` (see the module docstring)."""
    if direction not in ("forward", "backward", "both"):
        raise ValueError(f"direction must be forward, backward or both, got {direction!r}")
    frames = sorted({p.frame for p in prompts})
    if not frames:
        return []
    passes = []
    if direction in ("forward", "both"):
        passes.append(PassPlan(1, frames[0], stop - 1))
    if direction == "backward":
        passes.append(PassPlan(-1, frames[-1], start))
    if direction == "both":
        top = max(first_frames(prompts).values())
        if top > start:
            passes.append(PassPlan(-1, top, start, seeds_only=True))
    return passes


def frames_visited(prompts: Sequence[ObjectPrompt], direction: str, start: int, stop: int) -> set[int]:
    """Every frame a run with these prompts fills."""
    inside = [p for p in prompts if start <= p.frame < stop]
    return {t for plan in plan_passes(inside, direction, start, stop) for t in plan.frames}
