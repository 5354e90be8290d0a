"""Text prompts on planes larger than the model input, tile by tile.

:func:`segment_text_tiled` takes the steps of :func:`~.search.segment_text` with the
tiling's parts, so that nothing image-sized is ever made:

1. candidates: segment everything tile by tile (:func:`~src_core.tiling.generate_tiled`,
   masks as bounding-box crops; objects cut by tile sides are united);
2. CLIP's crop of each candidate is read from the image around it alone, with the
   image's global contrast (:class:`~src_core.tiling.TiledImage`); the crops are
   the ones :func:`~.crops.extract_crop` makes from the whole image;
3. the candidates with a score of at least ``threshold`` are kept, best first;
4. each is segmented again from its box by the :class:`~src_core.tiling.TiledPredictor`
   (in tile order, so that tile embeddings are reused), and a match mostly inside a
   better one is dropped.

The result is a list of :class:`TiledTextMatch`: crops with offsets, pasted into
a caller's label image (numpy, memmap, zarr) with :meth:`TiledTextMatch.paste`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .crops import DEFAULT_BACKGROUND, DEFAULT_CONTEXT, context_box, extract_crop
from .search import (
    DEFAULT_THRESHOLD,
    PART_OVERLAP,
    check_query,
    choose_matches,
    no_candidates,
)

__all__ = ["TiledTextMatch", "read_clip_crop", "segment_text_tiled", "visible_parts"]

#: Candidates scored by CLIP at a time (their crops are held in memory together).
SCORE_BATCH = 256
#: A candidate's crop is read from the image at every k-th pixel when its square is
#: larger than this many pixels a side (CLIP sees it at 224 px anyway).
MAX_CROP_READ = 2048


@dataclass(frozen=True)
class TiledTextMatch:
    """One object found for a text in a large plane.

    Attributes
    ----------
    mask : (h, w) bool
        The mask inside its bounding box.
    offset : (int, int)
        (row, column) of ``mask[0, 0]`` in the plane.
    score, similarity, predicted_iou, candidate
        As in :class:`~.search.TextMatch`.
    """

    mask: np.ndarray
    offset: tuple[int, int]
    score: float
    similarity: float
    predicted_iou: float
    candidate: int

    @property
    def box(self) -> np.ndarray:
        """(x0, y0, x1, y1) in plane pixels (x1, y1 exclusive): a box prompt."""
        y0, x0 = self.offset
        return np.array([x0, y0, x0 + self.mask.shape[1], y0 + self.mask.shape[0]], dtype=np.float64)

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.mask))

    def paste(self, out: Any, value: int | bool = True) -> Any:
        """Set ``out[mask] = value`` in a full-size array; returns it."""
        from ..tiling.predictor import paste_crop

        return paste_crop(out, self.mask, self.offset, value)


def read_clip_crop(
    source: Any,
    mask: np.ndarray,
    offset: tuple[int, int],
    size: int,
    *,
    context: float = DEFAULT_CONTEXT,
    background: str = DEFAULT_BACKGROUND,
) -> np.ndarray:
    """CLIP's (size, size, 3) uint8 crop of one candidate, read from a
    :class:`~src_core.tiling.TiledImage` around it.

    The same crop as :func:`~.crops.extract_crop` on the whole RGB image (exactly, up
    to :data:`MAX_CROP_READ`; past it, from every k-th pixel).
    """
    from ..tiling.grid import Tile

    mask = np.asarray(mask, dtype=bool)
    r0, c0 = int(offset[0]), int(offset[1])
    height, width = source.shape
    x0, y0, x1, y1 = context_box((c0, r0, c0 + mask.shape[1], r0 + mask.shape[0]), context)
    # the part of the square inside the image; extract_crop pads the rest as it does
    # at the whole image's border
    top, left = max(y0, 0), max(x0, 0)
    bottom, right = min(y1, height), min(x1, width)
    step = max(1, -(-max(bottom - top, right - left) // MAX_CROP_READ))
    region = Tile(top, left, bottom, right, step)
    rgb = source.read_rgb(region)
    local = np.zeros((bottom - top, right - left), dtype=bool)
    local[r0 - top : r0 - top + mask.shape[0], c0 - left : c0 - left + mask.shape[1]] = mask
    if step > 1:
        local = local[::step, ::step]
        if not local.any():  # a thin object between the sampled rows: keep its box
            local[(r0 - top) // step : -(-(r0 - top + mask.shape[0]) // step),
                  (c0 - left) // step : -(-(c0 - left + mask.shape[1]) // step)] = True
    crop, _ = extract_crop(rgb, local, size, context=context, background=background)
    return crop


def segment_text_tiled(
    tiled: Any,
    image: Any,
    text: str,
    *,
    scorer: Any,
    generator: Any,
    negatives: Sequence[str] | None = None,
    threshold: float | None = DEFAULT_THRESHOLD,
    top_k: int | None = None,
    background: str = DEFAULT_BACKGROUND,
    context: float = DEFAULT_CONTEXT,
    refine: bool = True,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Any = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    progress: Callable[[int, int], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[TiledTextMatch]:
    """The objects of a large plane that ``text`` names, best first.

    Parameters
    ----------
    tiled : TiledPredictor
        Gives the tile size and overlap, and refines the kept candidates; its image is
        set here.
    image : array-like
        (Y, X) or (Y, X, C)/(C, Y, X), read lazily (numpy, memmap, zarr, dask).
    generator : SamAutomaticMaskGenerator or callable
        Segment everything on one tile (see :func:`~src_core.tiling.generate_tiled`;
        ``output_mode="uncompressed_rle"`` saves memory).
    text, scorer, negatives, threshold, top_k, background, context, refine
        As for :func:`~.search.segment_text`.
    channel_axis, channels, contrast_limits, percentiles
        The plane's channels and contrast, one setting for all tiles.
    progress : callable, optional
        ``progress(done, total)``: the tiles, plus one step for CLIP and one for refining.
    should_stop : callable, optional
        Asked between tiles and CLIP batches; True raises
        :class:`~src_core.jobs.Cancelled`.

    Raises
    ------
    TextPromptError
        Bad text or settings (before any image work), NoCandidates, NoMatch.
    """
    from ..jobs import check_stop
    from ..tiling import generate_tiled, record_crop
    from .clip import Scores

    text, negs = check_query(scorer, text, negatives, threshold, top_k)
    tiled.set_image(image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits,
                    percentiles=percentiles)
    source = tiled.source
    total = [len(tiled.grid) + 2]

    def stop() -> None:
        check_stop(should_stop, "the text search")

    def tile_progress(done: int, tiles: int) -> None:
        total[0] = tiles + 2
        if progress is not None:
            progress(done, total[0])

    records = generate_tiled(
        generator, source.image, tiled.tile_size, tiled.overlap, channel_axis=channel_axis, channels=channels,
        contrast_limits=source.contrast_limits, percentiles=percentiles, output_mode="crop",
        progress=tile_progress, should_stop=should_stop,
    )
    candidates = []
    for record in records:
        crop, offset = record_crop(record)
        if crop.any():
            candidates.append((crop, offset, float(record.get("predicted_iou", np.nan))))
    if not candidates:
        raise no_candidates("segment everything (tile by tile)", text)
    parts = []
    for start in range(0, len(candidates), SCORE_BATCH):
        stop()
        crops = np.stack([
            read_clip_crop(source, crop, offset, scorer.image_size, context=context, background=background)
            for crop, offset, _ in candidates[start : start + SCORE_BATCH]
        ])
        parts.append(scorer.score(crops, text, negs, should_stop=should_stop))
    scores = Scores(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                      ("probability", "similarity", "negative_similarity")))
    if progress is not None:
        progress(total[0] - 1, total[0])
    chosen = [int(i) for i in choose_matches(scores, text, threshold, top_k)]
    stop()
    masks = {i: candidates[i] for i in chosen}
    if refine:
        # in tile order, so that each tile is embedded once however the scores rank them
        def tile_of(i: int) -> tuple[int, int]:
            r0, c0 = candidates[i][1]
            return r0 // tiled.tile_size, c0 // tiled.tile_size

        for i in sorted(chosen, key=tile_of):
            stop()
            crop, (r0, c0), _ = candidates[i]
            box = np.array([c0, r0, c0 + crop.shape[1], r0 + crop.shape[0]], dtype=np.float64)
            result = tiled.predict(box=box, multimask_output=False)
            if result.area:
                masks[i] = (result.mask, result.offset, result.score)
    matches: list[TiledTextMatch] = []
    for i in chosen:
        crop, offset, iou = masks[i]
        area = int(np.count_nonzero(crop))
        if area == 0 or _covered(crop, offset, matches) > PART_OVERLAP * area:
            continue  # a part of a better match (or its duplicate)
        matches.append(TiledTextMatch(
            mask=crop, offset=(int(offset[0]), int(offset[1])), score=float(scores.probability[i]),
            similarity=float(scores.similarity[i]), predicted_iou=float(iou), candidate=i,
        ))
    if progress is not None:
        progress(total[0], total[0])
    return matches


def visible_parts(matches: Sequence[TiledTextMatch]) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Each match's (crop, offset) without the pixels of better matches (earlier in the
    list): what a label image shows, painted crop by crop in any order."""
    return [(m.mask & ~_union(m.mask.shape, m.offset, matches[:k]), m.offset) for k, m in enumerate(matches)]


def _covered(mask: np.ndarray, offset: tuple[int, int], kept: Sequence[TiledTextMatch]) -> int:
    """Pixels of ``mask`` (at ``offset``) inside the union of the ``kept`` matches."""
    return int(np.count_nonzero(_union(mask.shape, offset, kept) & mask))


def _union(shape: tuple[int, int], offset: tuple[int, int], kept: Sequence[TiledTextMatch]) -> np.ndarray:
    """The union of the ``kept`` matches in the ``shape`` window at ``offset``."""
    mask = np.zeros(shape, dtype=bool)
    r0, c0 = offset
    r1, c1 = r0 + mask.shape[0], c0 + mask.shape[1]
    union = mask
    for match in kept:
        m0, n0 = match.offset
        m1, n1 = m0 + match.mask.shape[0], n0 + match.mask.shape[1]
        top, left, bottom, right = max(r0, m0), max(c0, n0), min(r1, m1), min(c1, n1)
        if bottom > top and right > left:
            union[top - r0 : bottom - r0, left - c0 : right - c0] |= match.mask[top - m0 : bottom - m0,
                                                                                left - n0 : right - n0]
    return union
