"""One object's running state, the prompts made from it, and the segmenter call."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..protocols import Predictor
from .masks import MaskStats, interior_point, mask_to_logits, shift_logits, shift_mask
from .motion import MotionModel, clip_box, predicted_box
from .prompts import PromptRecipe
from .qc import stability_score


@dataclass(frozen=True)
class Candidate:
    """One mask a segmenter returned, with what QC needs to judge it."""

    mask: np.ndarray
    score: float
    low_res: np.ndarray  # (1, L, L) logits, reusable as mask_input
    stability: float | None


def logit_grid(segmenter: Any) -> int:
    """Side of the segmenter's low-res logit grid (256 for official SAM, 128 for vit_tiny)."""
    encoder = getattr(getattr(segmenter, "model", None), "prompt_encoder", None)
    size = getattr(encoder, "mask_input_size", None) or getattr(segmenter, "mask_input_size", None)
    return int(size[-1]) if size is not None else 256


def mask_threshold(segmenter: Any) -> float:
    return float(getattr(getattr(segmenter, "model", None), "mask_threshold", 0.0))


def decode(
    segmenter: Predictor,
    *,
    points: np.ndarray | None = None,
    labels: np.ndarray | None = None,
    box: np.ndarray | None = None,
    mask_input: np.ndarray | None = None,
    multimask: bool = False,
    stability_offset: float | None = 1.0,
    threshold: float = 0.0,
) -> list[Candidate]:
    """Call ``segmenter.predict`` once; one :class:`Candidate` per mask it returns.

    With ``stability_offset`` set, logits are requested and each candidate gets
    its stability score; with None, plain masks (no stability).
    """
    kwargs: dict[str, Any] = {}
    if points is not None and len(points):
        kwargs["point_coords"] = np.asarray(points, dtype=np.float64)
        kwargs["point_labels"] = np.asarray(labels, dtype=np.int64)
    if box is not None:
        kwargs["box"] = np.asarray(box, dtype=np.float64)
    if mask_input is not None:
        kwargs["mask_input"] = mask_input
    want_logits = stability_offset is not None
    masks, scores, low_res = segmenter.predict(
        **kwargs, multimask_output=multimask, return_logits=want_logits
    )
    candidates = []
    for i in range(len(masks)):
        if want_logits:
            logits = np.asarray(masks[i])
            mask = logits > threshold
            stability = stability_score(logits, threshold, stability_offset)
        else:
            mask, stability = np.asarray(masks[i]).astype(bool), None
        candidates.append(Candidate(mask, float(scores[i]), np.asarray(low_res[i], np.float32)[None], stability))
    return candidates


def clip_point(point: np.ndarray, image_shape: tuple[int, int]) -> np.ndarray:
    h, w = image_shape
    return np.array([min(max(float(point[0]), 0.0), w - 0.5), min(max(float(point[1]), 0.0), h - 0.5)])


class TrackState:
    """Everything propagation remembers about one object between frames.

    Memory is one mask and one low-res logit grid per object, whatever the
    length of the video.
    """

    def __init__(self, obj_id: int, recipe: PromptRecipe, parent: int | None = None) -> None:
        self.obj_id = obj_id
        self.recipe = recipe
        self.parent = parent
        self.motion = MotionModel(recipe.velocity_smoothing if recipe.motion else 0.0)
        self.mask: np.ndarray | None = None
        self.stats: MaskStats | None = None
        self.logits: np.ndarray | None = None
        self.interior: np.ndarray | None = None
        self.score = float("nan")
        self.typical_area: float | None = None
        self.typical_size: float | None = None  # longest bounding-box side
        self.lost_for = 0  # consecutive frames on which it was lost
        self.reason = None  # why it was last rejected (a qc.Rejection)

    @property
    def lost(self) -> bool:
        return self.lost_for > 0

    def accept(
        self, mask: np.ndarray, stats: MaskStats, logits: np.ndarray | None, score: float,
        grid: int, reset: bool = False,
    ) -> None:
        """Remember the mask kept on this frame (``reset``: a key frame; forget the motion)."""
        # the visible area changing fast means the object is coming into or going out of
        # sight: its centroid then says little about its motion or its size
        steady = self.typical_area is not None and abs(stats.area / self.typical_area - 1.0) < 0.15
        if reset or self.motion.position is None:
            self.motion.reset(stats.centroid)
        else:
            self.motion.observe(stats.centroid, frames=self.lost_for + 1, steady=steady)
        self.mask, self.stats, self.score = mask, stats, score
        self.logits = logits if logits is not None else mask_to_logits(mask, grid)
        point = interior_point(mask, stats.bbox)
        self.interior = np.asarray(point if point is not None else stats.centroid, dtype=float)
        side = max(stats.size)
        if reset or self.typical_area is None:
            self.typical_area, self.typical_size = float(stats.area), side
        else:
            weight = 0.2 if steady else 0.05
            self.typical_area = (1 - weight) * self.typical_area + weight * stats.area
            self.typical_size = (1 - weight) * self.typical_size + weight * side
        self.lost_for = 0

    def displacement(self) -> np.ndarray:
        """Predicted (dx, dy) from the last kept mask to the frame being processed."""
        return self.motion.displacement(self.lost_for + 1, lost=self.lost)

    def predicted_interior(self, image_shape: tuple[int, int]) -> np.ndarray:
        return clip_point(self.interior + self.displacement(), image_shape)

    def predicted_mask(self) -> np.ndarray:
        dx, dy = self.displacement()
        return shift_mask(self.mask, dx, dy)

    def region(self, image_shape: tuple[int, int]) -> np.ndarray:
        """The moved, enlarged box where the object is expected."""
        return predicted_box(self.stats.bbox, self.displacement(), self.recipe.box_margin, image_shape)

    def tracking_prompt(self, image_shape: tuple[int, int], negatives: list[np.ndarray]) -> dict[str, Any]:
        """``decode`` arguments for an object kept on the previous frame, per the recipe."""
        recipe = self.recipe
        shift = self.displacement()
        points, labels = [], []
        if recipe.interior_point:
            points.append(clip_point(self.interior + shift, image_shape))
            labels.append(1)
        if recipe.negative_points:
            points.extend(negatives)
            labels.extend([0] * len(negatives))
        prompt: dict[str, Any] = {"multimask": recipe.multimask}
        if points:
            prompt["points"], prompt["labels"] = np.array(points), np.array(labels)
        if recipe.box:
            prompt["box"] = self.region(image_shape)
        if recipe.mask_logits:
            prompt["mask_input"] = shift_logits(self.logits, shift[0], shift[1], image_shape)
        return prompt

    def search_box(self, image_shape: tuple[int, int]) -> np.ndarray:
        """A square around the predicted position, growing with every frame lost."""
        h, w = image_shape
        guesses = np.array(self.motion.search_span(self.lost_for + 1))
        guesses[:, 0] = guesses[:, 0].clip(0.0, float(w))
        guesses[:, 1] = guesses[:, 1].clip(0.0, float(h))
        (x0, y0), (x1, y1) = guesses.min(axis=0), guesses.max(axis=0)
        # the last mask may be a sliver (the object was going out of sight): use its usual size
        side = max(max(self.stats.size), self.typical_size)
        growth = 1.0 + 2.0 * self.recipe.box_margin + 0.15 * min(self.lost_for, 20)
        half = 0.5 * side * growth
        return clip_box(np.array([x0 - half, y0 - half, x1 + half, y1 + half]), image_shape,
                        min_size=min(2 * half, 8.0))

    def search_prompt(self, image_shape: tuple[int, int], negatives: list[np.ndarray]) -> dict[str, Any]:
        """``decode`` arguments to look for a lost object: a box, and the others as negatives."""
        prompt: dict[str, Any] = {"box": self.search_box(image_shape), "multimask": False}
        if negatives:
            prompt["points"] = np.array(negatives)
            prompt["labels"] = np.zeros(len(negatives), dtype=np.int64)
        return prompt


def negatives_for(
    region: np.ndarray, own_mask: np.ndarray | None, points: dict[int, np.ndarray], own_id: int
) -> list[np.ndarray]:
    """The other objects' points that fall inside ``region`` but not on ``own_mask``."""
    x0, y0, x1, y1 = region
    out = []
    for obj_id, (x, y) in points.items():
        if obj_id == own_id or not (x0 <= x <= x1 and y0 <= y <= y1):
            continue
        if own_mask is not None and own_mask[min(int(y), own_mask.shape[0] - 1), min(int(x), own_mask.shape[1] - 1)]:
            continue  # ambiguous: it may be this object's own pixel
        out.append(np.array([x, y], dtype=float))
    return out
