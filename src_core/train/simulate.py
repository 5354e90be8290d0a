"""SAM's interactive training simulation: prompts sampled from ground truth, and
corrective clicks sampled from the error of the previous prediction.

All coordinates are (x, y) in the model input frame, as SAM's prompt encoder wants.
Functions are vectorized over the M masks of one image.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "sample_boxes",
    "sample_points",
    "corrective_points",
    "corrective_points_torch",
    "focal_dice_iou_loss",
    "mask_iou",
]


def sample_points(masks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One point per mask, uniform over the mask's pixels: (M, 1, 2) float32 x, y."""
    out = np.empty((len(masks), 1, 2), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        k = rng.integers(len(ys))
        out[i, 0] = (xs[k] + 0.5, ys[k] + 0.5)
    return out


def sample_boxes(masks: np.ndarray, rng: np.random.Generator, noise: float = 0.1, max_noise: float = 20.0) -> np.ndarray:
    """The masks' boxes (M, 4) x0, y0, x1, y1, each corner moved by Gaussian noise with
    standard deviation ``noise`` times the box side (at most ``max_noise`` pixels), as in
    SAM's training."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    y0, y1 = rows.argmax(1), rows.shape[1] - rows[:, ::-1].argmax(1)
    x0, x1 = cols.argmax(1), cols.shape[1] - cols[:, ::-1].argmax(1)
    boxes = np.stack([x0, y0, x1, y1], 1).astype(np.float32)
    sides = np.stack([x1 - x0, y1 - y0, x1 - x0, y1 - y0], 1).astype(np.float32)
    jitter = rng.normal(0, 1, boxes.shape) * np.minimum(noise * sides, max_noise)
    size = masks.shape[-1]
    return np.clip(boxes + jitter, 0, size).astype(np.float32)


def corrective_points(
    predicted: np.ndarray, truth: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One click per mask on the error of ``predicted``: (M, 1, 2) x, y and (M, 1) labels.

    The click is uniform over the error region: a positive click on a missed pixel
    or a negative click on a wrongly included one (SAM's training simulation). A
    perfect prediction gets a positive click inside the object.
    """
    coords = np.empty((len(truth), 1, 2), np.float32)
    labels = np.empty((len(truth), 1), np.float32)
    for i, (pred, gt) in enumerate(zip(predicted, truth)):
        error = pred != gt
        if not error.any():
            error = gt
        ys, xs = np.nonzero(error)
        k = rng.integers(len(ys))
        coords[i, 0] = (xs[k] + 0.5, ys[k] + 0.5)
        labels[i, 0] = float(gt[ys[k], xs[k]])
    return coords, labels


def corrective_points_torch(
    predicted: torch.Tensor, truth: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`corrective_points` in torch, on the device the (M, H, W) bool masks are on.

    The same rule (a click uniform over each mask's error region, positive on a missed
    pixel and negative on a wrongly included one; inside the object when the
    prediction is perfect), drawn as the arg-max of uniform random keys over the
    region, so the masks never leave a GPU. Returns (M, 1, 2) x, y and (M, 1) labels.
    """
    if predicted.shape != truth.shape or truth.ndim != 3:
        raise ValueError(f"predicted {tuple(predicted.shape)} and truth {tuple(truth.shape)} must be equal (M, H, W)")
    error = predicted != truth
    perfect = ~error.flatten(1).any(1)
    region = torch.where(perfect[:, None, None], truth, error)
    keys = torch.rand(region.shape, generator=generator, device=region.device)
    keys.masked_fill_(~region, -1.0)
    index = keys.flatten(1).argmax(1)
    width = truth.shape[-1]
    coords = torch.stack([index % width, index // width], -1).float().add_(0.5)[:, None]
    labels = truth.flatten(1).gather(1, index[:, None]).float()
    return coords, labels


def mask_iou(logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """IoU of ``logits > 0`` with ``truth`` over the last two axes."""
    pred = logits > 0
    inter = (pred & truth).flatten(-2).sum(-1).float()
    union = (pred | truth).flatten(-2).sum(-1).float()
    return inter / union.clamp(min=1)


def focal_dice_iou_loss(
    logits: torch.Tensor,
    truth: torch.Tensor,
    iou_pred: torch.Tensor,
    focal_weight: float = 20.0,
    dice_weight: float = 1.0,
    iou_weight: float = 1.0,
    gamma: float = 2.0,
    alpha: float = 0.25,
) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's loss for (M, K, S, S) mask logits against (M, S, S) truth.

    Focal and dice losses (20:1) per candidate mask; with several candidates (K > 1)
    only the best one per prompt is trained, as SAM does for ambiguous prompts.
    The IoU head is trained on every candidate with the mean squared error to the
    IoU it actually reaches.

    Returns the scalar loss and the (M, K) actual IoUs.
    """
    target = truth[:, None].expand_as(logits).float()
    prob = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = prob * target + (1 - prob) * (1 - target)
    weight = alpha * target + (1 - alpha) * (1 - target)
    focal = (weight * ce * (1 - p_t) ** gamma).flatten(-2).mean(-1)
    inter = (prob * target).flatten(-2).sum(-1)
    dice = 1 - (2 * inter + 1) / (prob.flatten(-2).sum(-1) + target.flatten(-2).sum(-1) + 1)
    mask_loss = focal_weight * focal + dice_weight * dice
    best = mask_loss.argmin(dim=1, keepdim=True)
    with torch.no_grad():
        actual = mask_iou(logits, truth[:, None].expand_as(logits))
    iou_loss = F.mse_loss(iou_pred.float(), actual, reduction="mean")
    return mask_loss.gather(1, best).mean() + iou_weight * iou_loss, actual
