"""Segment the objects named by a text: SAM proposes, CLIP chooses, SAM refines.

Meta's released SAM weights have no text head, so :func:`segment_text` works with
them as they are:

1. candidates: SAM's segment everything (:class:`~src_core.automatic.SamAutomaticMaskGenerator`)
   on the image, or masks / boxes given by the caller;
2. each candidate becomes a crop (:mod:`.crops`: its box with some context, the
   background blurred by default), and CLIP scores it against the text and the
   negative texts (:class:`~.clip.ClipScorer`): the score is the softmax
   probability of the text among [text, negatives...];
3. the candidates with a score of at least ``threshold`` are kept, best first, at
   most ``top_k`` of them;
4. each kept candidate is segmented again by SAM from its box (``refine``), and a
   match mostly inside a better one (a part of it) is dropped.

The result is a list of :class:`TextMatch`, best first; :func:`matches_to_labels`
paints them into a label image (label 1 = best match).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .clip import TextPromptError, check_text
from .crops import DEFAULT_BACKGROUND, DEFAULT_CONTEXT, extract_crops, mask_box

__all__ = [
    "DEFAULT_NEGATIVES",
    "DEFAULT_THRESHOLD",
    "NoCandidates",
    "NoMatch",
    "TextMatch",
    "matches_to_labels",
    "negative_texts",
    "select_matches",
    "segment_text",
]

#: Generic texts every candidate is also compared with (besides the caller's
#: negatives), so that a score means "more like the text than like anything else".
DEFAULT_NEGATIVES = ("background", "an object")
#: Keep candidates whose probability for the text is at least this.
DEFAULT_THRESHOLD = 0.5
#: A match whose mask lies inside a better match by more than this fraction is dropped.
PART_OVERLAP = 0.5

Progress = Callable[[int, int], object]


class NoCandidates(TextPromptError):
    """Segment everything (or the caller) gave no candidate mask to compare with the text."""


class NoMatch(TextPromptError):
    """No candidate scored high enough for the text."""


@dataclass(frozen=True)
class TextMatch:
    """One object found for a text.

    Attributes
    ----------
    mask : (H, W) bool
        Its mask (refined by SAM from its box when ``refine``).
    box : (4,) float
        ``(x0, y0, x1, y1)`` of the mask in pixels (x1, y1 exclusive): a box prompt.
    score : float
        CLIP's probability for the text against the negatives (0..1).
    similarity : float
        Cosine similarity of its crop and the text.
    predicted_iou : float
        SAM's predicted IoU of the mask (the candidate's when not refined; NaN when
        the caller gave bare masks).
    candidate : int
        Index of the candidate it came from.
    """

    mask: np.ndarray
    box: np.ndarray
    score: float
    similarity: float
    predicted_iou: float
    candidate: int

    def paste(self, out: Any, value: int | bool = True) -> Any:
        """Set ``out[mask] = value`` (``out`` the image's shape); returns it."""
        out[self.mask] = value
        return out


def negative_texts(text: str, negatives: Sequence[str] | None = None) -> list[str]:
    """The caller's negatives then :data:`DEFAULT_NEGATIVES`, without duplicates or ``text``."""
    out: list[str] = []
    for n in [*(negatives or ()), *DEFAULT_NEGATIVES]:
        n = check_text(n, "negative text")
        if n.lower() != text.lower() and n.lower() not in (o.lower() for o in out):
            out.append(n)
    return out


def select_matches(
    scores: np.ndarray,
    *,
    threshold: float | None = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    tiebreak: np.ndarray | None = None,
) -> np.ndarray:
    """Indices of the kept candidates, best first: score >= ``threshold`` (None: all),
    at most ``top_k`` (None: no limit). Equal scores are ordered by ``tiebreak``
    (higher first), then by index."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
        raise TextPromptError(f"the threshold must be between 0 and 1 (a probability), got {threshold}")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) < 1):
        raise TextPromptError(f"top_k must be 1 or more (or None for no limit), got {top_k}")
    second = np.zeros_like(scores) if tiebreak is None else np.asarray(tiebreak, dtype=np.float64).reshape(-1)
    order = np.lexsort((np.arange(len(scores)), -second, -scores))
    if threshold is not None:
        order = order[scores[order] >= float(threshold)]
    if top_k is not None:
        order = order[: int(top_k)]
    return order


def check_query(
    scorer: Any, text: str, negatives: Sequence[str] | None, threshold: float | None, top_k: int | None
) -> tuple[str, list[str]]:
    """The cleaned text and its negatives; bad text or settings are refused before any
    image work (:class:`~.clip.TextPromptError`)."""
    text = check_text(text)
    negs = negative_texts(text, negatives)
    scorer.encode_text([text, *negs], ["text"] + ["negative text"] * len(negs))
    select_matches(np.zeros(0), threshold=threshold, top_k=top_k)
    return text, negs


def no_candidates(source: str, text: str) -> NoCandidates:
    return NoCandidates(
        f"{source} found no object to compare with {text!r}: nothing to choose from. Lower the "
        "segment everything thresholds (predicted IoU, stability) or use more points per side."
    )


def choose_matches(scores: Any, text: str, threshold: float | None, top_k: int | None) -> np.ndarray:
    """:func:`select_matches` on CLIP's :class:`~.clip.Scores` (ties broken by similarity);
    :class:`NoMatch` when none is kept."""
    chosen = select_matches(scores.probability, threshold=threshold, top_k=top_k, tiebreak=scores.similarity)
    if not len(chosen):
        best = int(np.argmax(scores.probability))
        raise NoMatch(
            f"none of the {len(scores.probability)} candidates matches {text!r} well enough: the best "
            f"scored {scores.probability[best]:.2f} (threshold {threshold:.2f}). Lower the threshold, or "
            "keep the best ones whatever their score with top-k."
        )
    return chosen


def _candidate_masks(records: Sequence[Any], shape: tuple[int, int]) -> tuple[list[np.ndarray], list[float]]:
    masks, ious = [], []
    for record in records:
        if isinstance(record, dict):
            mask = record.get("segmentation")
            iou = float(record.get("predicted_iou", np.nan))
        else:
            mask, iou = record, np.nan
        mask = np.asarray(mask)
        if mask.dtype != bool or mask.shape != shape:
            raise ValueError(
                f"candidate masks must be ({shape[0]}, {shape[1]}) bool arrays (a generator with "
                f"output_mode='binary_mask'), got {mask.dtype} {mask.shape}"
            )
        if mask.any():
            masks.append(mask)
            ious.append(iou)
    return masks, ious


def _masks_from_boxes(predictor, boxes) -> tuple[list[np.ndarray], list[float]]:
    masks, ious = [], []
    for box in np.asarray(boxes, dtype=np.float64).reshape(-1, 4):
        m, s, _ = predictor.predict(box=box, multimask_output=False)
        if m[0].any():
            masks.append(np.asarray(m[0], dtype=bool))
            ious.append(float(s[0]))
    return masks, ious


def segment_text(
    predictor: Any,
    image: np.ndarray,
    text: str,
    *,
    scorer: Any,
    negatives: Sequence[str] | None = None,
    threshold: float | None = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    generator: Any = None,
    candidates: Sequence[Any] | None = None,
    boxes: Any = None,
    background: str = DEFAULT_BACKGROUND,
    context: float = DEFAULT_CONTEXT,
    refine: bool = True,
    set_image: bool = True,
    normalization: dict | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[TextMatch]:
    """The objects of ``image`` that ``text`` names, best first.

    Parameters
    ----------
    predictor : SamPredictor
        Refines the kept candidates from their boxes (and makes the default
        generator from its ``model``). With ``set_image=False`` it must already hold
        ``image``'s embedding.
    image : numpy.ndarray
        (H, W) or (H, W, C), any dtype (see :func:`src_core.preprocess.to_rgb`).
    text : str
        What to find, e.g. ``"nucleus"``.
    scorer : ClipScorer
        CLIP (:func:`~.clip.load_clip`, or a stand-in).
    negatives : sequence of str, optional
        Texts a match should look less like (added to :data:`DEFAULT_NEGATIVES`).
    threshold : float or None
        Keep candidates whose score is at least this (None: no threshold).
    top_k : int or None
        Keep at most this many (None: no limit).
    generator : optional
        Anything with ``generate(rgb, progress=..., should_stop=...)`` returning
        records with bool ``segmentation``; default: segment everything with SAM's
        default settings on ``predictor.model``.
    candidates : sequence, optional
        Candidate masks ((H, W) bool) or records, instead of running the generator.
    boxes : (B, 4) array, optional
        Candidate boxes (x0, y0, x1, y1), each segmented by SAM, instead of the generator.
    background, context
        How crops are made (see :mod:`.crops`).
    refine : bool
        Segment each kept candidate again with SAM from its box.
    set_image : bool
        Compute ``predictor``'s embedding of ``image`` (False: it holds it already).
    normalization : dict, optional
        Keyword arguments of :func:`~src_core.preprocess.to_rgb` (and ``set_image``).
    progress : callable, optional
        ``progress(done, total)``: the generator's point batches, plus one step for
        CLIP and one for refining.
    should_stop : callable, optional
        Asked between batches; when True, :class:`~src_core.jobs.Cancelled` is raised.

    Raises
    ------
    TextPromptError
        Empty or over-long text (before any image work), NoCandidates, NoMatch.
    Cancelled
        ``should_stop`` returned True.
    """
    from ..jobs import check_stop
    from ..preprocess import to_rgb

    text, negs = check_query(scorer, text, negatives, threshold, top_k)
    kwargs = dict(normalization or {})
    rgb = to_rgb(image, **kwargs)
    if rgb.dtype != np.uint8:  # scaled to 0-255 already: what SAM sees
        rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    shape = rgb.shape[:2]

    def stop() -> None:
        check_stop(should_stop, "the text search")

    steps = {"total": 2}

    def gen_progress(done: int, total: int) -> None:
        steps["total"] = total + 2
        if progress is not None:
            progress(done, total + 2)

    embedded = not set_image
    if candidates is not None:
        masks, ious = _candidate_masks(candidates, shape)
        source = "the given candidates"
    elif boxes is not None:
        if not embedded:
            predictor.set_image(image, **kwargs)
            embedded = True
        masks, ious = _masks_from_boxes(predictor, boxes)
        source = "the given boxes"
    else:
        if generator is None:
            model = getattr(predictor, "model", None)
            if model is None:
                raise ValueError("text prompts need a SAM model to propose candidates (load one)")
            from ..automatic import mask_generator_for

            generator = mask_generator_for(model)
        if progress is not None:
            progress(0, steps["total"])
        # SAM's generator on the whole image embeds exactly what refining needs: let it
        # embed into ``predictor`` and keep it, instead of encoding the image twice
        share = (
            refine and not embedded and getattr(generator, "crop_n_layers", None) == 0
            and hasattr(generator, "keep_embedding")
            and getattr(getattr(generator, "predictor", None), "model", None) is getattr(predictor, "model", 0)
        )
        if share:
            own, generator.predictor, generator.keep_embedding = generator.predictor, predictor, True
        try:
            records = generator.generate(rgb, progress=gen_progress, should_stop=should_stop)
        finally:
            if share:
                generator.predictor, generator.keep_embedding = own, False
        embedded = embedded or share
        masks, ious = _candidate_masks(records, shape)
        source = "segment everything"
    if not masks:
        raise no_candidates(source, text)
    stop()
    crops, _ = extract_crops(rgb, masks, scorer.image_size, context=context, background=background)
    scores = scorer.score(crops, text, negs, should_stop=should_stop)
    if progress is not None:
        progress(steps["total"] - 1, steps["total"])
    chosen = choose_matches(scores, text, threshold, top_k)
    stop()
    if refine and not embedded:
        predictor.set_image(image, **kwargs)
    matches: list[TextMatch] = []
    covered = np.zeros(shape, bool)
    for index in chosen:
        mask, iou = masks[index], ious[index]
        if refine:
            x0, y0, x1, y1 = mask_box(mask)
            m, s, _ = predictor.predict(box=np.array([x0, y0, x1, y1], float), multimask_output=False)
            if np.asarray(m[0]).any():
                mask, iou = np.asarray(m[0], dtype=bool), float(s[0])
        area = int(mask.sum())
        if area == 0 or (covered & mask).sum() > PART_OVERLAP * area:
            continue  # a part of a better match (or its duplicate)
        covered |= mask
        matches.append(
            TextMatch(
                mask=mask,
                box=np.asarray(mask_box(mask), dtype=np.float64),
                score=float(scores.probability[index]),
                similarity=float(scores.similarity[index]),
                predicted_iou=float(iou),
                candidate=int(index),
            )
        )
    if progress is not None:
        progress(steps["total"], steps["total"])
    return matches


def matches_to_labels(matches: Sequence[TextMatch], shape: tuple[int, int], dtype=np.uint16) -> np.ndarray:
    """Label image: match k (best first) gets label k + 1; where matches overlap, the
    better one wins."""
    if len(matches) > np.iinfo(dtype).max:
        dtype = np.uint32
    labels = np.zeros(shape, dtype=dtype)
    for k in range(len(matches) - 1, -1, -1):
        labels[matches[k].mask] = k + 1
    return labels
