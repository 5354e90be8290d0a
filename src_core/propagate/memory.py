"""Propagation with SAM 2's memory: the backend :func:`~.tracker.propagate` uses for a
video predictor (:class:`~src_core.sam2_video.SAM2VideoPredictor`).

Every prompt goes to the predictor first (points and boxes as clicks, masks as
masks); then each pass of :func:`~.passes.plan_passes` is one
``propagate_in_video`` sweep. The model's memory carries the objects: no per-frame
recipe and no search box, since the memory attention finds an object again by
itself after an occlusion. What this module adds is the bookkeeping the SAM 1
recipe has, so both backends write the same outputs:

- key frames keep the user's result (a painted mask exactly as painted);
- an object is *lost* on a frame where SAM 2's occlusion head says it is not
  there (cause ``"absent"``, with the head's logit), or where its mask is empty,
  under ``min_area`` or mostly on other objects (the same checks as SAM 1's QC);
  found again later, it is ``"re-found"``;
- masks of one frame never overlap: each pixel goes to the object with the
  highest logit, key masks and pixels of objects outside the run
  (``context_labels``) first;
- on a frame the user corrected as a whole (``key_frames``), an object not on it is
  given to the model as an empty mask there: it is lost on that frame and the
  memory knows.

The predictor's memory is bounded, so memory does not grow with the video.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from ..jobs import ShouldStop, check_stop
from .frames import FrameReader, FrameReadError
from .masks import mask_stats
from .passes import first_frames, plan_passes
from .prompts import ObjectPrompt
from .qc import QualityControl, Rejection, judge
from .results import (
    KEY,
    LOST,
    REFOUND,
    TRACKED,
    FrameResult,
    ObjectResult,
    PropagationError,
)

__all__ = ["is_video_predictor", "propagate_with_memory"]


def is_video_predictor(segmenter: Any) -> bool:
    """True for a memory-based video predictor (SAM 2's API)."""
    return all(hasattr(segmenter, name) for name in ("init_state", "add_new_points_or_box", "propagate_in_video"))


def propagate_with_memory(
    reader: FrameReader,
    predictor: Any,
    prompts: Sequence[ObjectPrompt],
    *,
    direction: str,
    start: int,
    stop: int,
    qc: QualityControl,
    context_labels: Any = None,
    set_image_kwargs: dict | None = None,
    key_frames: set[int] = frozenset(),
    what: str = "frame",
    should_stop: ShouldStop | None = None,
) -> Iterator[FrameResult]:
    """Per-frame results of SAM 2 memory tracking (arguments as for ``propagate``)."""
    options = dict(set_image_kwargs or {})
    unknown = set(options) - {"contrast_limits", "channels", "channel_axis", "percentiles"}
    if unknown:
        raise ValueError(
            "SAM 2 tracking takes contrast_limits, percentiles, channels and channel_axis, "
            f"not {', '.join(sorted(unknown))}"
        )
    state = predictor.init_state(reader.frames, **options)
    passes = plan_passes(prompts, direction, start, stop)
    total = sum(len(p.frames) for p in passes)
    run = _MemoryRun(predictor, state, reader, qc, context_labels, what)
    run.add_prompts(prompts, key_frames, start, stop)
    first = first_frames(prompts)
    last = {p.obj_id: p.frame for p in sorted(prompts, key=lambda p: p.frame)}
    step = 0
    for plan in passes:
        run.lost.clear()
        starts = last if plan.direction < 0 and not plan.seeds_only else first
        last_done = None
        for seg_start, count, ids in _segments(plan, starts):
            sweep = predictor.propagate_in_video(
                state, start_frame_idx=seg_start, max_frame_num_to_track=count,
                reverse=plan.direction < 0, obj_ids=ids,
            )  # fmt: skip
            while True:
                check_stop(should_stop, "tracking")
                try:
                    frame_idx, obj_ids, logits = next(sweep)
                except StopIteration:
                    break
                except FrameReadError as err:
                    kept = (
                        f"results up to {what} {last_done} stay valid" if last_done is not None
                        else "no frame was done in this pass"
                    )
                    raise PropagationError(
                        f"Tracking stopped: {err}; {kept}. Resume after the last {what} done.",
                        err.frame, last_done, plan.direction,
                    ) from err
                step += 1
                objects = run.frame_results(frame_idx, obj_ids, logits)
                if plan.seeds_only:  # the forward pass delivered each object's first frame
                    objects = {i: o for i, o in objects.items() if first[i] != frame_idx}
                last_done = frame_idx
                yield FrameResult(frame_idx, objects, plan.direction, step, total)


def _segments(plan: Any, starts: dict[int, int]) -> list[tuple[int, int, list[int]]]:
    """A pass as sweeps ``(first frame, frames after it, objects)``: an object joins
    at its starting frame (first prompt forward, last prompt backward), so each
    sweep runs up to the frame before the next object joins."""
    d = plan.direction
    joins = sorted({f for f in starts.values() if f in plan.frames}, key=lambda f: f * d)
    sweeps = []
    for j, begin in enumerate(joins):
        end = joins[j + 1] - d if j + 1 < len(joins) else plan.last
        ids = [i for i, f in starts.items() if f * d <= begin * d]
        sweeps.append((begin, abs(end - begin), ids))
    return sweeps


class _MemoryRun:
    """Prompts in, per-frame object results out, for one video session."""

    def __init__(self, predictor, state, reader: FrameReader, qc: QualityControl, context_labels, what: str) -> None:
        self.predictor, self.state, self.reader, self.qc = predictor, state, reader, qc
        self.context_labels, self.what = context_labels, what
        self.shape = reader.image_shape
        self.given: dict[tuple[int, int], ObjectPrompt] = {}  # (frame, id) -> its prompt
        self.erased: set[tuple[int, int]] = set()  # not on the user's key frame
        self.lost: set[int] = set()

    def add_prompts(self, prompts: Sequence[ObjectPrompt], key_frames: set[int], start: int, stop: int) -> None:
        for p in sorted(prompts, key=lambda p: p.frame):
            self.given[(p.frame, p.obj_id)] = p
            if p.mask is not None:
                if p.lost_for:  # lost when a run stopped: nothing to show the model
                    continue
                self.predictor.add_new_mask(self.state, p.frame, p.obj_id, np.asarray(p.mask, bool))
            else:
                points = np.asarray(p.points, np.float32).reshape(-1, 2)
                labels = np.asarray(p.labels).reshape(-1)
                self.predictor.add_new_points_or_box(
                    self.state, p.frame, p.obj_id,
                    points=points if len(points) else None, labels=labels if len(points) else None,
                    box=None if p.box is None else np.asarray(p.box, np.float32),
                )  # fmt: skip
        ids = {p.obj_id for p in prompts}
        empty = np.zeros(self.shape, bool)
        for t in sorted(k for k in key_frames if start <= k < stop):
            on_key = {i for (f, i) in self.given if f == t}
            for obj_id in sorted(ids - on_key):
                self.predictor.add_new_mask(self.state, t, obj_id, empty)
                self.erased.add((t, obj_id))

    def _forbidden(self, t: int, ids: set[int]) -> np.ndarray:
        if self.context_labels is None:
            return np.zeros(self.shape, bool)
        context = np.asarray(self.context_labels[t])
        return (context > 0) & ~np.isin(context, np.fromiter(ids, dtype=np.int64))

    def frame_results(self, t: int, obj_ids: list, logits: Any) -> dict[int, ObjectResult]:
        logits = logits[:, 0].float().cpu().numpy()  # (N, H, W)
        scores = self.predictor.object_score_logits(self.state, t)
        results: dict[int, ObjectResult] = {}
        claimed = self._forbidden(t, set(obj_ids))
        # the user's masks first, as given
        for obj_id in obj_ids:
            p = self.given.get((t, obj_id))
            if p is not None and p.mask is not None and not p.lost_for:
                mask = np.asarray(p.mask, bool) & ~claimed
                claimed |= mask
                results[obj_id] = self._kept(obj_id, mask, 1.0, KEY if p.key else TRACKED)
        # then the model's: each pixel to the highest logit
        winner = np.argmax(logits, axis=0) if len(obj_ids) > 1 else np.zeros(self.shape, np.int64)
        for k, obj_id in enumerate(obj_ids):
            if obj_id in results:
                continue
            p = self.given.get((t, obj_id))
            if (t, obj_id) in self.erased:
                results[obj_id] = self._lost(obj_id, Rejection("not-on-key", t))
                continue
            if p is not None and p.lost_for:
                results[obj_id] = self._lost(obj_id, Rejection("resumed", p.lost_for))
                continue
            presence = scores.get(obj_id, 0.0)
            if presence <= 0:
                results[obj_id] = self._lost(obj_id, Rejection("absent", presence))
                continue
            predicted = logits[k] > 0
            mask = predicted & (winner == k) & ~claimed
            verdict = judge(
                self.qc, area=int(np.count_nonzero(predicted)), kept_area=int(np.count_nonzero(mask)),
                score=np.inf, stability=None, reference_area=None, searching=False,
            )  # fmt: skip
            if verdict is not None:
                results[obj_id] = self._lost(obj_id, verdict)
                continue
            claimed |= mask
            score = float(1.0 / (1.0 + np.exp(-presence)))
            if p is not None:
                status = KEY if p.key else TRACKED
            else:
                status = REFOUND if obj_id in self.lost else TRACKED
            results[obj_id] = self._kept(obj_id, mask, score, status)
        return {i: results[i] for i in sorted(results)}

    def _kept(self, obj_id: int, mask: np.ndarray, score: float, status: str) -> ObjectResult:
        stats = mask_stats(mask)
        if stats is None:
            return self._lost(obj_id, Rejection("empty", 0.0))
        self.lost.discard(obj_id)
        return ObjectResult(obj_id, status, mask, score, stats)

    def _lost(self, obj_id: int, why: Rejection) -> ObjectResult:
        self.lost.add(obj_id)
        text = str(why).replace(" frame", f" {self.what}")
        return ObjectResult(obj_id, LOST, None, float("nan"), None, None, text, why.cause, why.value)
