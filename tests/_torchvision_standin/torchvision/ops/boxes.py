"""``box_area`` and ``batched_nms`` with torchvision's semantics, in plain torch."""

from __future__ import annotations

import numpy as np
import torch


def _upcast(t: torch.Tensor) -> torch.Tensor:
    # Like torchvision: avoid overflow in products of small dtypes.
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Area of (N, 4) boxes given as x0, y0, x1, y1."""
    boxes = _upcast(boxes)
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _pairwise_iou(boxes: torch.Tensor) -> torch.Tensor:
    # Same operation order as torchvision's CPU kernel: inter / (a_i + a_j - inter).
    area = box_area(boxes)
    top_left = torch.maximum(boxes[:, None, :2], boxes[None, :, :2])
    bottom_right = torch.minimum(boxes[:, None, 2:], boxes[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area[:, None] + area[None, :] - inter)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy NMS; returns kept indices (int64) by decreasing score.

    A box is dropped when its IoU with a higher-scoring kept box is greater
    than ``iou_threshold``.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    sorted_boxes = boxes[order]
    # suppresses[i, j]: earlier (higher-scoring) box i would suppress box j.
    # The IoU matrix is computed in one vectorized step; the greedy sweep is
    # inherently sequential, so it walks rows of that matrix (each row update
    # is vectorized), like torchvision's CPU kernel.
    suppresses = torch.triu(_pairwise_iou(sorted_boxes) > iou_threshold, diagonal=1)
    suppresses = suppresses.cpu().numpy()
    keep = np.ones(len(order), dtype=bool)
    for i in range(len(order)):
        if keep[i]:
            keep[i + 1 :] &= ~suppresses[i, i + 1 :]
    return order[torch.from_numpy(keep).to(order.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """Class-aware NMS: boxes with different ``idxs`` never suppress each other.

    Parameters
    ----------
    boxes : torch.Tensor
        (N, 4) boxes, x0, y0, x1, y1.
    scores : torch.Tensor
        (N,) scores.
    idxs : torch.Tensor
        (N,) category of each box.
    iou_threshold : float
        Boxes with IoU greater than this are suppressed.

    Returns
    -------
    torch.Tensor
        int64 indices of kept boxes, sorted by decreasing score.
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    # Shift each category far enough apart that boxes of different
    # categories cannot overlap.
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    return nms(boxes + offsets[:, None], scores, iou_threshold)
