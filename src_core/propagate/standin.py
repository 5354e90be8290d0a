"""A deterministic stand-in for SamPredictor that "segments" the ground truth.

A measurement tool, not a model: it lets the propagation logic (prompt
recipes, QC, search, identity keeping) be measured independently of any
weights. :class:`StandInSegmenter` has ``SamPredictor``'s ``set_image`` and
``predict``; ``set_image`` looks up the ground-truth labels of the image (a
callable you give, e.g. :meth:`SyntheticScene.labels_for_image
<src_core.synthetic.videos.SyntheticScene.labels_for_image>`), and
``predict`` returns the ground-truth object the prompt points at, degraded:

* Which object: every visible object collects evidence from the prompt: +1 per
  positive click on it, up to +1 for a box (half the fraction of the object
  inside it, half the IoU of box and the object's bounding box), up to +1 for
  ``mask_input`` (IoU with the object). An object under a negative click is
  excluded. The most supported object wins; with a box alone (no clicks, no
  mask), other objects mostly inside the box are merged in, as SAM tends to
  do. Nothing supported: a small blob of background with a low score.
* Noise: a fraction ``boundary_noise`` of the pixels just inside and just
  outside the boundary are flipped; with probability ``failure_rate`` the
  answer is a wrong blob with a low predicted IoU (as SAM's bad answers usually are).
* Score: about 0.93 for a clean answer, lower for merged or weak answers.

Everything is seeded by the image, the prompt and ``seed``: the same call
gives the same answer, whatever was called before.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from .masks import logits_to_mask, mask_to_logits


class StandInSegmenter:
    """Ground truth behind SamPredictor's interface (see the module docstring).

    Parameters
    ----------
    ground_truth : callable
        ``image -> (H, W) int labels`` of that image.
    boundary_noise : float
        Fraction of boundary pixels flipped.
    failure_rate : float
        Probability that a call returns a wrong, low-scored blob.
    seed : int
        Changes every random choice.
    mask_input_size : int
        Side of the low-res logit grid (256 like SAM, 128 like ``vit_tiny``).
    """

    def __init__(
        self,
        ground_truth: Callable[[np.ndarray], np.ndarray],
        *,
        boundary_noise: float = 0.1,
        failure_rate: float = 0.02,
        seed: int = 0,
        mask_input_size: int = 256,
    ) -> None:
        self.ground_truth = ground_truth
        self.boundary_noise = float(boundary_noise)
        self.failure_rate = float(failure_rate)
        self.seed = int(seed)
        self.mask_input_size = (int(mask_input_size), int(mask_input_size))
        self.is_image_set = False
        self.set_image_calls = 0
        self.predict_calls = 0
        self._labels: np.ndarray | None = None

    def set_image(self, image: np.ndarray, image_format: str = "RGB", **kwargs: Any) -> None:
        labels = np.asarray(self.ground_truth(np.asarray(image)))
        self._labels = labels.astype(np.int64, copy=False)
        self.original_size = labels.shape
        self._image_key = zlib.crc32(np.ascontiguousarray(labels).view(np.uint8))
        counts = np.bincount(self._labels.ravel()) if self._labels.size and self._labels.min() >= 0 else None
        ids = np.flatnonzero(counts) if counts is not None else np.unique(labels)
        self._ids = ids[ids > 0]
        slices = ndi.find_objects(self._labels)
        self._objects = {int(i): slices[int(i) - 1] for i in self._ids}
        self.is_image_set = True
        self.set_image_calls += 1

    def reset_image(self) -> None:
        self.is_image_set = False
        self._labels = None

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Like ``SamPredictor.predict`` for one prompt: (C, H, W) masks, (C,) scores, (C, L, L) logits."""
        if not self.is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before masks can be predicted.")
        self.predict_calls += 1
        h, w = self.original_size
        points = np.zeros((0, 2)) if point_coords is None else np.asarray(point_coords, float).reshape(-1, 2)
        labels = np.zeros(0, int) if point_labels is None else np.asarray(point_labels).reshape(-1)
        if box is not None:
            box = np.asarray(box, float).reshape(4)
        prior = None if mask_input is None else logits_to_mask(np.asarray(mask_input), (h, w))
        rng = np.random.default_rng([self.seed, self._image_key, _prompt_key(points, labels, box, mask_input)])

        chosen, runner_up, evidence = self._choose(points, labels, box, prior)
        sharpness = 2.0
        if chosen and rng.random() >= self.failure_rate:
            mask = np.isin(self._labels, chosen)
            merged = len(chosen) > 1
            score = 0.93 - (0.12 if merged else 0.0) - (0.1 if evidence < 1.0 else 0.0)
            score += rng.normal(0.0, 0.015)
        else:
            mask = self._blob(points, labels, box, rng)
            score, sharpness = rng.uniform(0.25, 0.55), 0.6  # vague and unstable
        mask = self._noisy(mask, rng)
        masks = [mask]
        scores = [min(max(score, 0.0), 1.0)]
        if multimask_output:
            larger = mask | np.isin(self._labels, runner_up) if runner_up else _near(ndi.binary_dilation, mask, 2)
            masks += [larger, _near(ndi.binary_erosion, mask, 2)]
            scores += [scores[0] - 0.12, scores[0] - 0.2]
        grid = self.mask_input_size[0]
        low_res = np.concatenate([mask_to_logits(m, grid) for m in masks])
        if return_logits:
            out = np.stack([_signed_distance(m, sharpness) for m in masks]).astype(np.float32)
        else:
            out = np.stack(masks)
        return out, np.asarray(scores, np.float32), low_res

    def _choose(self, points, labels, box, prior) -> tuple[list[int], list[int], float]:
        """(objects returned, the runner-up, evidence of the winner) for a prompt."""
        h, w = self.original_size
        excluded = set()
        evidence = {int(i): 0.0 for i in self._ids}
        for (x, y), lab in zip(points, labels):
            obj = int(self._labels[min(int(y), h - 1), min(int(x), w - 1)])
            if obj == 0:
                continue
            if lab == 1:
                evidence[obj] += 1.0
            else:
                excluded.add(obj)
        inside: dict[int, float] = {}
        if box is not None:
            x0, y0, x1, y1 = box
            for obj, (rows, cols) in self._objects.items():
                bx0, by0, bx1, by1 = cols.start, rows.start, cols.stop, rows.stop
                ix = max(0.0, min(x1, bx1) - max(x0, bx0))
                iy = max(0.0, min(y1, by1) - max(y0, by0))
                if ix * iy == 0:
                    continue
                crop = self._labels[rows, cols] == obj
                yy, xx = np.nonzero(crop)
                xx, yy = xx + bx0 + 0.5, yy + by0 + 0.5
                frac = float(np.mean((xx >= x0) & (xx <= x1) & (yy >= y0) & (yy <= y1)))
                union = (x1 - x0) * (y1 - y0) + (bx1 - bx0) * (by1 - by0) - ix * iy
                inside[obj] = frac
                evidence[obj] += 0.5 * frac + 0.5 * ix * iy / union
        if prior is not None and prior.any():
            for obj, (rows, cols) in self._objects.items():
                obj_mask = self._labels == obj
                evidence[obj] += float(np.count_nonzero(obj_mask & prior)) / np.count_nonzero(obj_mask | prior)
        ranked = sorted(
            (o for o in evidence if o not in excluded and evidence[o] > 0.2), key=lambda o: -evidence[o]
        )
        if not ranked:
            return [], [], 0.0
        chosen = [ranked[0]]
        if box is not None and not len(points) and prior is None:
            chosen += [o for o in ranked[1:] if inside.get(o, 0.0) >= 0.6]
        runner_up = [o for o in ranked[1:2] if o not in chosen]
        return chosen, runner_up, evidence[ranked[0]]

    def _blob(self, points, labels, box, rng) -> np.ndarray:
        """A wrong answer: a disc of background near the prompt."""
        h, w = self.original_size
        positive = points[labels == 1] if len(points) else points
        if len(positive):
            cx, cy = positive[0]
        elif box is not None:
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        else:
            cx, cy = w / 2, h / 2
        cx, cy = cx + rng.normal(0, 4), cy + rng.normal(0, 4)
        radius = rng.uniform(3, 0.08 * max(h, w) + 4)
        yy, xx = np.ogrid[:h, :w]
        return (xx - cx) ** 2 + (yy - cy) ** 2 <= radius**2

    def _noisy(self, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.boundary_noise <= 0 or not mask.any():
            return mask
        inner = mask & ~_near(ndi.binary_erosion, mask, 1)
        outer = _near(ndi.binary_dilation, mask, 1) & ~mask
        flips = rng.random(mask.shape) < self.boundary_noise
        return (mask & ~(inner & flips)) | (outer & flips)


def _near(operation: Callable, mask: np.ndarray, iterations: int) -> np.ndarray:
    """A binary erosion or dilation of ``mask``, computed only around it (the same result)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return mask.copy()
    m = iterations + 1
    y0, y1 = max(rows[0] - m, 0), min(rows[-1] + m + 1, mask.shape[0])
    x0, x1 = max(cols[0] - m, 0), min(cols[-1] + m + 1, mask.shape[1])
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = operation(mask[y0:y1, x0:x1], iterations=iterations)
    return out


def _prompt_key(points, labels, box, mask_input) -> int:
    parts = [np.round(points, 1).tobytes(), np.asarray(labels, np.int64).tobytes()]
    if box is not None:
        parts.append(np.round(box, 1).tobytes())
    if mask_input is not None:
        parts.append(np.packbits(np.asarray(mask_input) > 0).tobytes())
    return zlib.crc32(b"|".join(parts))


def _signed_distance(mask: np.ndarray, sharpness: float, margin: int = 16) -> np.ndarray:
    """Logit-like values: ``sharpness`` times the distance to the boundary, positive inside.

    Computed in a window ``margin`` pixels around the mask (exact there: the
    window's border is background) and ``-sharpness * margin`` beyond it, so a
    small object on a large frame costs what the object costs.
    """
    if not mask.any():
        return np.full(mask.shape, -10.0)
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    y0, y1 = max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])
    x0, x1 = max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])
    window = mask[y0:y1, x0:x1]
    out = np.full(mask.shape, -float(margin))
    out[y0:y1, x0:x1] = np.maximum(
        ndi.distance_transform_edt(window) - ndi.distance_transform_edt(~window), -float(margin))
    return sharpness * out


def ground_truth_lookup(images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """A ``ground_truth`` callable for known images (e.g. the slices of a stack): by content."""
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    table = {_digest(np.asarray(im)): i for i, im in enumerate(images)}

    def lookup(image: np.ndarray) -> np.ndarray:
        index = table.get(_digest(np.asarray(image)))
        if index is None:
            raise ValueError("the stand-in segmenter has no ground truth for this image")
        return np.asarray(labels[index])

    return lookup


def _digest(image: np.ndarray) -> bytes:
    return hashlib.sha1(np.ascontiguousarray(image).view(np.uint8)).digest() + str(image.shape).encode()
