"""Prompt quality of a model, measured the way SAM's paper does.

For each ground-truth object: one positive click at the object's most interior
pixel (the most confident of the multimask outputs is kept; ``point_best`` is the
best of them, what a user gets by cycling to the right candidate), the object's tight
box, and a session of corrective clicks: starting from the single click, each
next click goes to the most interior pixel of the largest error region, positive
on a missed region and negative on a wrongly included one, with the previous
low-resolution logits as the mask prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi

__all__ = ["PromptScores", "evaluate_prompts", "interior_point", "next_click"]


@dataclass(frozen=True)
class PromptScores:
    """Mean IoU over the objects for each prompt kind; ``clicks[k]`` after k corrections."""

    point: float
    box: float
    clicks: tuple[float, ...]
    objects: int
    point_best: float = float("nan")

    def as_dict(self) -> dict[str, Any]:
        out = {"objects": self.objects, "point": self.point, "point_best": self.point_best, "box": self.box}
        out.update({f"{k}_corrections": v for k, v in enumerate(self.clicks) if k})
        return out


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def interior_point(region: np.ndarray) -> tuple[float, float]:
    """(x, y) of the pixel of ``region`` farthest from its border."""
    distance = ndi.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(distance.argmax()), distance.shape)
    return float(x), float(y)


def next_click(predicted: np.ndarray, truth: np.ndarray) -> tuple[tuple[float, float], int]:
    """The corrective click: most interior pixel of the largest error region, and its
    label (1 if the region was missed, 0 if it was wrongly included)."""
    error = predicted != truth
    if not error.any():
        return interior_point(truth), 1
    regions, n = ndi.label(error)
    largest = np.bincount(regions.ravel())[1:].argmax() + 1
    region = regions == largest
    x, y = interior_point(region)
    return (x, y), int(truth[int(y), int(x)])


def evaluate_prompts(
    predictor: Any,
    pairs: Any,
    corrections: int = 3,
    max_objects: int = 16,
    seed: int = 0,
) -> PromptScores:
    """Mean IoUs of ``predictor`` (a SamPredictor) on ``pairs`` of (image, labels).

    At most ``max_objects`` objects per image are used (chosen with ``seed``);
    objects of fewer than 16 pixels are skipped.
    """
    rng = np.random.default_rng(seed)
    point, point_best, box, clicks = [], [], [], [[] for _ in range(corrections + 1)]
    for index in range(len(pairs)):
        image, labels = pairs[index]
        ids, areas = np.unique(labels, return_counts=True)
        ids = ids[(ids != 0) & (areas >= 16)]
        if len(ids) == 0:
            continue
        if len(ids) > max_objects:
            ids = rng.choice(ids, max_objects, replace=False)
        predictor.set_image(image)
        for obj in ids:
            truth = labels == obj
            xy = np.array([interior_point(truth)])
            masks, scores, logits = predictor.predict(
                point_coords=xy, point_labels=np.array([1]), multimask_output=True
            )
            best = int(np.argmax(scores))
            point.append(_iou(masks[best], truth))
            point_best.append(max(_iou(m, truth) for m in masks))
            ys, xs = np.nonzero(truth)
            b = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], float)
            masks_b, _, _ = predictor.predict(box=b, multimask_output=False)
            box.append(_iou(masks_b[0], truth))
            coords, click_labels = xy, np.array([1])
            current, current_logits = masks[best], logits[best]
            clicks[0].append(point[-1])
            for k in range(1, corrections + 1):
                (x, y), label = next_click(current, truth)
                coords = np.vstack([coords, [[x, y]]])
                click_labels = np.append(click_labels, label)
                m, _, lg = predictor.predict(
                    point_coords=coords, point_labels=click_labels,
                    mask_input=current_logits[None], multimask_output=False,
                )
                current, current_logits = m[0], lg[0]
                clicks[k].append(_iou(current, truth))
    if not point:
        raise ValueError("no objects to evaluate on: the labels are empty")
    return PromptScores(
        point=float(np.mean(point)),
        box=float(np.mean(box)),
        clicks=tuple(float(np.mean(c)) for c in clicks),
        objects=len(point),
        point_best=float(np.mean(point_best)),
    )
