"""Carry objects prompted on key frames through a video (or a stack), frame by frame.

For every frame in the range, in order: read it (lazily), embed it (one
embedding at a time, optionally from an :class:`~src_core.embedding_cache.EmbeddingCache`),
then

1. apply the prompts given on this frame (key frames: the user's result is
   kept as it is and resets the object's motion);
2. prompt every object kept on the previous frame per the
   :class:`~src_core.propagate.prompts.PromptRecipe` (moved, enlarged box;
   previous logits; interior click; the other objects as negative clicks) and
   judge the masks (:mod:`~src_core.propagate.qc`), most confident first, each
   object keeping only pixels no earlier object took;
3. search for lost objects (and those just rejected) with a box around their
   predicted position that grows with every frame lost, for ``search_frames``
   frames; an object found again keeps its id (status ``"re-found"``); on a
   frame listed in ``key_frames`` (a frame the user corrected as a whole) an
   object that is not prompted there is lost on it, not looked for;
4. optionally (time-lapse, forward) detect divisions: a mask in two large
   pieces, or one that halves with a second object of that size where the rest
   of it was, ends the object and starts two daughters with new ids.

Memory does not depend on the number of frames: one frame, one embedding and
one mask plus one logit grid per object are held.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..jobs import ShouldStop, check_stop
from ..protocols import Predictor
from .frames import FrameReader, FrameReadError
from .masks import components, interior_point, mask_iou, mask_stats
from .memory import is_video_predictor, propagate_with_memory
from .passes import plan_passes
from .prompts import ObjectPrompt, PromptRecipe, check_prompts, get_recipe
from .qc import QualityControl, Rejection, judge
from .results import (
    DIVIDED,
    KEY,
    LOST,
    REFOUND,
    TRACKED,
    FrameResult,
    ObjectResult,
    PropagationError,
)
from .state import (
    Candidate,
    TrackState,
    decode,
    logit_grid,
    mask_threshold,
    negatives_for,
)

DIRECTIONS = ("forward", "backward", "both")


def propagate(
    frames: Any,
    segmenter: Predictor,
    prompts: Sequence[ObjectPrompt],
    *,
    direction: str = "forward",
    start: int = 0,
    stop: int | None = None,
    recipe: str | PromptRecipe | None = None,
    qc: QualityControl | None = None,
    search_frames: int = 30,
    divisions: bool = False,
    context_labels: Any = None,
    first_new_id: int | None = None,
    cache: Any = None,
    model_id: str | None = None,
    set_image_kwargs: Mapping[str, Any] | None = None,
    what: str = "frame",
    key_frames: Iterable[int] = (),
    should_stop: ShouldStop | None = None,
) -> Iterator[FrameResult]:
    """Propagate prompted objects over frames; a generator of per-frame results.

    Arguments are checked when this is called (ValueError); frames are read
    only as the generator is consumed, so a GUI can show each result as it
    comes; ``should_stop`` cancels it between frames.

    Parameters
    ----------
    frames : array-like
        ``(T, H, W)`` or ``(T, H, W, C)``: numpy array or memmap,
        :class:`~src_core.video.VideoFrames`, dask/zarr array, synthetic scene.
    segmenter : SamPredictor or alike, or SAM2VideoPredictor
        Anything with ``set_image`` and ``predict`` like
        :class:`~src_core.predictor.SamPredictor` (e.g. the stand-in of
        :mod:`~src_core.propagate.standin`): the SAM 1 recipe, frame by frame.
        A :class:`~src_core.sam2_video.SAM2VideoPredictor`: SAM 2's memory
        carries the objects (:mod:`~src_core.propagate.memory`; ``recipe``,
        ``search_frames`` and the IoU, stability and area-jump checks of ``qc``
        do not apply).
    prompts : sequence of ObjectPrompt
        Objects on key frames. Prompts outside ``[start, stop)`` are ignored.
    direction : {"forward", "backward", "both"}
        "forward" runs from each object's first prompt to ``stop - 1``;
        "backward" from its last prompt down to ``start``; "both" runs forward
        from the first prompt, then backward from it (each frame and object is
        done once; frames before the first prompt come in a second pass).
    start, stop : int
        Frame range (``stop`` defaults to the number of frames).
    recipe : str or PromptRecipe, optional
        How each frame's prompt is made (see :data:`~src_core.propagate.prompts.RECIPES`).
    qc : QualityControl, optional
        Accept/reject thresholds.
    search_frames : int
        Frames a lost object is searched for before it is given up (0: an
        object ends where it is first lost, as along z in a stack).
    divisions : bool
        Detect dividing objects (cells) in forward passes; daughters get new ids.
    context_labels : array-like, optional
        ``(T, H, W)`` labels read on every frame: pixels of objects this pass
        does not track are off limits. Pass the array the results are painted
        into when running ``direction="both"`` with objects whose first prompts
        are on different frames, or to respect objects segmented otherwise.
    first_new_id : int, optional
        Smallest id for daughters (default: one more than the largest id known).
    cache : EmbeddingCache, optional
        Reuse embeddings (needs ``model_id``; SamPredictor only).
    model_id : str, optional
        Names the weights in the cache key.
    set_image_kwargs : mapping, optional
        Passed to ``set_image`` (``contrast_limits``, ``channel_axis``...): fix
        ``contrast_limits`` for time-lapses so the contrast does not flicker.
    what : str
        "frame" or "slice", for messages.
    key_frames : iterable of int
        Frames the user corrected as a whole (their prompts are masks of every
        object on them): an object tracked into such a frame that is not
        prompted there is not on it. It is reported lost there (the user erased
        it) and searched for on the next frames like any lost object.
    should_stop : callable, optional
        Asked before every frame; True stops with :class:`~src_core.jobs.Cancelled`
        (the engine's one idiom for long work, :mod:`src_core.jobs`).

    Yields
    ------
    FrameResult
        One per frame visited (its ``objects`` may be empty).

    Raises
    ------
    ValueError
        Bad frames, prompts or options (raised by this call, before any work).
    Cancelled
        ``should_stop()`` answered True (asked before every frame; an embedding in
        progress stops through the predictor's ``cancel``); everything yielded
        before stays valid.
    PropagationError
        A frame could not be read; everything yielded before stays valid.
        Resume with ``start``/``stop`` at the last frame done and
        :func:`~src_core.propagate.prompts.resume_prompts` of the labels as
        seed prompts (objects lost there are searched for on).
    """
    reader = FrameReader(frames, what=what)
    n = len(reader)
    stop = n if stop is None else int(stop)
    start = int(start)
    if not 0 <= start < stop <= n:
        raise ValueError(f"the {what} range must satisfy 0 <= start < stop <= {n}, got start={start}, stop={stop}")
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if search_frames < 0:
        raise ValueError(f"search_frames must be >= 0, got {search_frames}")
    if cache is not None and not model_id:
        raise ValueError("an embedding cache needs a model_id naming the weights")
    prompts = list(prompts)
    check_prompts(prompts, n, reader.image_shape)
    inside = [p for p in prompts if start <= p.frame < stop]
    if not inside:
        frames_given = sorted({p.frame for p in prompts})
        raise ValueError(
            f"no prompt lies in {what}s {start} to {stop - 1} (prompts are on {what}s {frames_given}): "
            "widen the range or prompt a frame inside it"
        )
    if is_video_predictor(segmenter):
        if divisions:
            raise ValueError("divisions are detected with the SAM 1 recipe only, not with SAM 2's memory")
        if cache is not None:
            raise ValueError("SAM 2 tracking keeps its own features: pass no embedding cache")
        return propagate_with_memory(
            reader, segmenter, inside, direction=direction, start=start, stop=stop,
            qc=qc or QualityControl(), context_labels=context_labels, set_image_kwargs=set_image_kwargs,
            key_frames={int(t) for t in key_frames}, what=what, should_stop=should_stop,
        )  # fmt: skip
    run = _Run(
        reader, segmenter, inside, get_recipe(recipe), qc or QualityControl(), search_frames, divisions,
        context_labels, first_new_id, cache, model_id, dict(set_image_kwargs or {}),
        {int(t) for t in key_frames}, what, should_stop,
    )
    return run.results(direction, start, stop)


@dataclass
class _Pass:
    direction: int
    frames: range
    prompts_at: dict[int, list[ObjectPrompt]]
    reuse_seeds: bool = False  # "both": restore the forward pass's first results, do not emit them


@dataclass
class _Seed:
    frame: int
    result: ObjectResult
    logits: np.ndarray


@dataclass
class _Frame:
    """Working data of the frame being processed."""

    index: int
    shape: tuple[int, int]
    claimed: np.ndarray  # pixels taken by objects of this frame
    forbidden: np.ndarray  # pixels of objects outside this pass (context labels)
    results: dict[int, ObjectResult] = field(default_factory=dict)


class _Run:
    """One propagation run: the objects' states and the frame loop."""

    def __init__(self, reader, segmenter, prompts, recipe, qc, search_frames, divisions,
                 context_labels, first_new_id, cache, model_id, set_image_kwargs,
                 key_frames=frozenset(), what="frame", should_stop=None) -> None:
        self.reader, self.segmenter, self.prompts = reader, segmenter, prompts
        self.recipe, self.qc, self.search_frames, self.divisions = recipe, qc, search_frames, divisions
        self.context_labels, self.cache, self.model_id = context_labels, cache, model_id
        self.set_image_kwargs = set_image_kwargs
        self.key_frames, self.what, self.should_stop = key_frames, what, should_stop
        self.shape = reader.image_shape
        self.grid = logit_grid(segmenter)
        self.threshold = mask_threshold(segmenter)
        self.offset = qc.stability_offset if np.isfinite(qc.min_stability) else None
        largest = max(p.obj_id for p in prompts)
        self.next_id = max(largest + 1, first_new_id or 0)
        self.tracks: dict[int, TrackState] = {}
        self.direction = 1
        self.seeds: dict[int, _Seed] = {}

    # -- plan ---------------------------------------------------------------------------

    def _plan(self, direction: str, start: int, stop: int) -> list[_Pass]:
        by_frame: dict[int, list[ObjectPrompt]] = {}
        first: dict[int, ObjectPrompt] = {}
        for p in sorted(self.prompts, key=lambda p: p.frame):
            by_frame.setdefault(p.frame, []).append(p)
            first.setdefault(p.obj_id, p)
        seeds: dict[int, list[ObjectPrompt]] = {}
        for p in first.values():
            seeds.setdefault(p.frame, []).append(p)
        return [_Pass(plan.direction, plan.frames, seeds if plan.seeds_only else by_frame, plan.seeds_only)
                for plan in plan_passes(self.prompts, direction, start, stop)]

    def results(self, direction: str, start: int, stop: int) -> Iterator[FrameResult]:
        passes = self._plan(direction, start, stop)
        total = sum(len(p.frames) for p in passes)
        step = 0
        for plan in passes:
            self.tracks, self.direction = {}, plan.direction
            last_done = None
            for t in plan.frames:
                step += 1
                check_stop(self.should_stop, "tracking")
                try:
                    frame = self._process(t, plan)
                except FrameReadError as err:
                    done = f"frames up to {last_done}" if plan.direction > 0 else f"frames down to {last_done}"
                    kept = f"results for {done} were delivered and stay valid" if last_done is not None else "no frame was done in this pass"
                    raise PropagationError(
                        f"Tracking stopped: {err}. The video may be truncated or damaged; {kept}. "
                        "Resume after the last frame done, seeding it with its labels "
                        "(prompts_from_labels), or stop the range before the damaged frame.",
                        t, last_done, plan.direction,
                    ) from err
                last_done = t
                yield FrameResult(
                    t, {i: frame.results[i] for i in sorted(frame.results)}, plan.direction, step, total
                )

    # -- one frame ----------------------------------------------------------------------

    def _process(self, t: int, plan: _Pass) -> _Frame:
        prompts = plan.prompts_at.get(t, [])
        prompted = {p.obj_id for p in prompts}
        following = [s for i, s in self.tracks.items() if i not in prompted]
        absent = following if t in self.key_frames else []  # the user's frame has them all
        if absent:
            following = []
        needs_model = bool(following) or any(
            p.mask is None and not (plan.reuse_seeds and p.obj_id in self.seeds) for p in prompts
        )
        frame = _Frame(t, self.shape, np.zeros(self.shape, bool), self._forbidden(t, prompted))
        if needs_model:
            self._embed(self.reader.read(t))
        for p in prompts:
            self._apply_prompt(frame, p, plan)
        rejected = self._follow(frame, [s for s in following if not s.lost])
        searching = [s for s in following if s.lost] + rejected
        if self.search_frames > 0 and searching:
            self._search(frame, searching)
        for s in absent:
            s.reason = Rejection("not-on-key", t)
        for s in searching + absent:
            if s.obj_id in frame.results:
                continue
            s.lost_for += 1
            given_up = s.lost_for > self.search_frames
            if given_up:
                self.tracks.pop(s.obj_id, None)
            frame.results[s.obj_id] = self._lost(s.obj_id, s.reason, s.parent, given_up and self.search_frames > 0)
        return frame

    def _embed(self, image: np.ndarray) -> None:
        if self.cache is not None:
            from ..embedding_cache import embed_with_cache

            embed_with_cache(self.segmenter, image, self.cache, model_id=self.model_id, **self.set_image_kwargs)
        else:
            self.segmenter.set_image(image, **self.set_image_kwargs)

    def _forbidden(self, t: int, prompted: set[int]) -> np.ndarray:
        if self.context_labels is None:
            return np.zeros(self.shape, bool)
        context = np.asarray(self.context_labels[t])
        ours = np.fromiter(set(self.tracks) | prompted, dtype=np.int64)
        return (context > 0) & ~np.isin(context, ours)

    def _apply_prompt(self, frame: _Frame, p: ObjectPrompt, plan: _Pass) -> None:
        """A key frame (or seed) for ``p.obj_id``: its mask as the user gave or prompted it."""
        status = KEY if p.key else TRACKED
        if p.lost_for:
            if not plan.reuse_seeds:  # the backward half of "both" does not look for it
                self._lost_seed(frame, p)
            return
        if plan.reuse_seeds and p.obj_id in self.seeds:
            seed = self.seeds[p.obj_id]
            if seed.result.mask is not None:
                self._start(p.obj_id, seed.result, seed.logits)
                frame.claimed |= seed.result.mask
            return  # already delivered by the forward pass
        if p.mask is not None:
            mask, score, logits = p.mask, 1.0, None
        else:
            single = len(p.points) == 1 and p.box is None
            cands = decode(self.segmenter, points=p.points, labels=p.labels, box=p.box, multimask=single,
                           stability_offset=None, threshold=self.threshold)
            best = max(cands, key=lambda c: c.score)
            mask, score, logits = best.mask, best.score, best.low_res
        mask = mask & ~frame.claimed  # two key masks never share pixels either
        stats = mask_stats(mask)
        if stats is None:
            result = ObjectResult(p.obj_id, LOST, None, float("nan"), None, None, "the prompt gave an empty mask",
                                  "empty", 0.0)
            self.tracks.pop(p.obj_id, None)
        else:
            frame.claimed |= mask
            state = self.tracks.get(p.obj_id)
            parent = state.parent if state is not None else None
            result = ObjectResult(p.obj_id, status, mask, score, stats, parent)
            if p.history:
                state = self.tracks[p.obj_id] = self._replay(p, mask)
            else:
                state = self._start(p.obj_id, result, logits, parent)
            logits = state.logits
        self.seeds.setdefault(p.obj_id, _Seed(frame.index, result, logits))
        frame.results[p.obj_id] = result

    def _lost_seed(self, frame: _Frame, p: ObjectPrompt) -> None:
        """An object lost when an earlier run stopped: lost here, searched for from the next frame."""
        reason = Rejection("resumed", p.lost_for)
        if p.lost_for <= self.search_frames:
            state = self._replay(p)
            state.lost_for, state.reason = p.lost_for, reason
            self.tracks[p.obj_id] = state
        else:
            self.tracks.pop(p.obj_id, None)
        frame.results[p.obj_id] = self._lost(p.obj_id, reason, None, p.lost_for > self.search_frames)

    def _lost(self, obj_id: int, why: Rejection | None, parent: int | None, given_up: bool) -> ObjectResult:
        why = why or Rejection("not-found")
        text = str(why).replace(" frame", f" {self.what}")
        if given_up:
            text += "; given up"
        return ObjectResult(obj_id, LOST, None, float("nan"), None, parent, text, why.cause, why.value)

    def _replay(self, p: ObjectPrompt, last: np.ndarray | None = None) -> TrackState:
        """A seed's state as the interrupted run had it: its masks accepted again in order.

        ``last``: the seed's mask as kept on this frame (default ``p.mask``).
        """
        state = TrackState(p.obj_id, self.recipe)
        previous = None  # frames between the sighting and p.frame
        seen = [(abs(p.frame - t), m) for t, m in p.history] + [(p.lost_for, p.mask if last is None else last)]
        for distance, mask in seen:
            if previous is not None:
                state.lost_for = max(previous - distance - 1, 0)  # frames it was not seen in between
            state.accept(mask, mask_stats(mask), None, float("nan"), self.grid, reset=previous is None)
            previous = distance
        return state

    def _start(self, obj_id: int, result: ObjectResult, logits, parent: int | None = None) -> TrackState:
        state = self.tracks.get(obj_id) or TrackState(obj_id, self.recipe, parent)
        state.accept(result.mask, result.stats, logits, result.score, self.grid, reset=True)
        self.tracks[obj_id] = state
        return state

    def _points(self, frame: _Frame, states: Sequence[TrackState]) -> dict[int, np.ndarray]:
        """Where every object is (this frame's results) or is expected (others)."""
        points = {s.obj_id: s.predicted_interior(self.shape) for s in states}
        for obj_id, r in frame.results.items():
            if r.mask is not None:
                points[obj_id] = self.tracks[obj_id].interior if obj_id in self.tracks else np.array(r.stats.centroid)
        return points

    def _follow(self, frame: _Frame, states: list[TrackState]) -> list[TrackState]:
        """Prompt and judge the objects kept on the previous frame; return those rejected."""
        points = self._points(frame, states) if self.recipe.negative_points else {}
        proposals = []
        for s in states:
            predicted = s.predicted_mask()
            negatives = negatives_for(s.region(self.shape), predicted, points, s.obj_id)
            cands = decode(self.segmenter, **s.tracking_prompt(self.shape, negatives),
                           stability_offset=self.offset, threshold=self.threshold)
            fits = [mask_iou(c.mask, predicted) for c in cands]
            best = int(np.argmax([c.score + f for c, f in zip(cands, fits)]))
            proposals.append((fits[best] + cands[best].score, s, cands[best]))
        rejected = []
        for _, s, cand in sorted(proposals, key=lambda item: -item[0]):
            if not self._judge_and_keep(frame, s, cand, searching=False):
                rejected.append(s)
        return rejected

    def _search(self, frame: _Frame, states: list[TrackState]) -> None:
        """Look for lost objects around their predicted positions."""
        for s in sorted(states, key=lambda s: s.lost_for):
            box = s.search_box(self.shape)
            points = self._points(frame, [])
            negatives = negatives_for(box, None, points, s.obj_id)
            cands = decode(self.segmenter, **s.search_prompt(self.shape, negatives),
                           stability_offset=self.offset, threshold=self.threshold)
            best = max(cands, key=lambda c: c.score)
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            inside = np.count_nonzero(best.mask[max(y0, 0):y1 + 1, max(x0, 0):x1 + 1])
            if inside < 0.5 * max(np.count_nonzero(best.mask), 1):
                s.reason = Rejection("not-found")
                continue
            self._judge_and_keep(frame, s, best, searching=True)

    def _judge_and_keep(self, frame: _Frame, s: TrackState, cand: Candidate, searching: bool) -> bool:
        mask = cand.mask
        kept = mask & ~frame.claimed & ~frame.forbidden
        area, kept_area = int(np.count_nonzero(mask)), int(np.count_nonzero(kept))
        reference = s.typical_area if searching else (s.stats.area if s.stats else None)
        at_border = bool(kept[0].any() or kept[-1].any() or kept[:, 0].any() or kept[:, -1].any())
        verdict = judge(self.qc, area=area, kept_area=kept_area, score=cand.score, stability=cand.stability,
                        reference_area=reference, searching=searching, at_border=at_border)
        if self.divisions and self._can_divide(verdict) and self._divide(frame, s, kept, cand):
            return True
        if verdict:
            s.reason = verdict
            return False
        stats = mask_stats(kept)
        status = REFOUND if s.lost else TRACKED
        s.accept(kept, stats, cand.low_res, cand.score, self.grid)
        frame.claimed |= kept
        frame.results[s.obj_id] = ObjectResult(s.obj_id, status, kept, cand.score, stats, s.parent)
        return True

    # -- divisions ----------------------------------------------------------------------

    def _can_divide(self, verdict: Rejection | None) -> bool:
        return self.direction > 0 and (verdict is None or verdict.cause == "area-jump")

    def _divide(self, frame: _Frame, s: TrackState, kept: np.ndarray, cand: Candidate) -> bool:
        """Two daughters instead of ``s`` if ``kept`` is in two large pieces or half the mother."""
        stats = mask_stats(kept)
        if stats is None:
            return False
        mother_area = s.stats.area
        pieces = components(kept, stats.bbox)
        if len(pieces) >= 2 and np.count_nonzero(pieces[1]) >= 0.25 * stats.area:
            first = pieces[0]
            daughters = [(first, cand.score), (kept & ~first, cand.score)]
        elif stats.area < 0.75 * mother_area:
            rest = s.predicted_mask() & ~ndi.binary_dilation(kept, iterations=2) & ~frame.claimed & ~frame.forbidden
            if np.count_nonzero(rest) < 0.25 * mother_area:
                return False
            click = interior_point(rest)
            inner = interior_point(kept, stats.bbox)
            second = max(
                decode(self.segmenter, points=np.array([click, inner]), labels=np.array([1, 0]),
                       stability_offset=self.offset, threshold=self.threshold),
                key=lambda c: c.score,
            )
            other = second.mask & ~kept & ~frame.claimed & ~frame.forbidden
            other_area = int(np.count_nonzero(other))
            verdict = judge(self.qc, area=int(np.count_nonzero(second.mask)), kept_area=other_area,
                            score=second.score, stability=second.stability, reference_area=stats.area,
                            searching=False)
            if verdict or np.count_nonzero(other & rest) < 0.5 * other_area:
                return False
            daughters = [(kept, cand.score), (other, second.score)]
        else:
            return False
        del self.tracks[s.obj_id]
        for mask, score in daughters:
            obj_id, self.next_id = self.next_id, self.next_id + 1
            result = ObjectResult(obj_id, DIVIDED, mask, score, mask_stats(mask), s.obj_id)
            self._start(obj_id, result, None, parent=s.obj_id)
            frame.claimed |= mask
            frame.results[obj_id] = result
        return True
