"""Point grids, image crops, boxes and non-maximum suppression for automatic masks.

Box conventions follow Meta's reference: XYXY boxes whose x1, y1 are the last
pixel *inside* the mask (so a one-pixel mask has a zero-area box), XYWH records.
"""

from __future__ import annotations

import math
from itertools import product

import numpy as np
import torch

__all__ = [
    "batched_nms",
    "box_area",
    "box_iou",
    "build_all_layer_point_grids",
    "build_point_grid",
    "generate_crop_boxes",
    "is_box_near_crop_edge",
    "masks_to_boxes",
    "nms",
]


def build_point_grid(n_per_side: int) -> np.ndarray:
    """(n*n, 2) x, y points of a regular grid in [0, 1], cell centres, x varying fastest."""
    offset = 1 / (2 * n_per_side)
    side = np.linspace(offset, 1 - offset, n_per_side)
    xs = np.tile(side[None, :], (n_per_side, 1))
    ys = np.tile(side[:, None], (1, n_per_side))
    return np.stack([xs, ys], axis=-1).reshape(-1, 2)


def build_all_layer_point_grids(
    n_per_side: int, n_layers: int, scale_per_layer: int
) -> list[np.ndarray]:
    """One grid per crop layer; layer i has ``int(n / scale**i)`` points per side."""
    return [
        build_point_grid(int(n_per_side / (scale_per_layer**i))) for i in range(n_layers + 1)
    ]


def generate_crop_boxes(
    image_size: tuple[int, int], n_layers: int, overlap_ratio: float
) -> tuple[list[list[int]], list[int]]:
    """Crop boxes (x0, y0, x1, y1) and their layer: the whole image, then (2**i)**2 per layer.

    Crops of a layer overlap by ``overlap_ratio`` of the short side (scaled down with
    the number of crops); the arithmetic, rounding included, is the reference's.
    """
    height, width = image_size
    short_side = min(height, width)
    boxes, layers = [[0, 0, width, height]], [0]

    def crop_length(length: int, n_crops: int, overlap: int) -> int:
        return int(math.ceil((overlap * (n_crops - 1) + length) / n_crops))

    for layer in range(n_layers):
        per_side = 2 ** (layer + 1)
        overlap = int(overlap_ratio * short_side * (2 / per_side))
        crop_w = crop_length(width, per_side, overlap)
        crop_h = crop_length(height, per_side, overlap)
        xs = [int((crop_w - overlap) * i) for i in range(per_side)]
        ys = [int((crop_h - overlap) * i) for i in range(per_side)]
        for x0, y0 in product(xs, ys):
            boxes.append([x0, y0, min(x0 + crop_w, width), min(y0 + crop_h, height)])
            layers.append(layer + 1)
    return boxes, layers


def masks_to_boxes(masks: torch.Tensor) -> torch.Tensor:
    """(..., 4) int64 XYXY boxes (inclusive last pixel) of (..., H, W) boolean masks.

    Empty masks get [0, 0, 0, 0], as in the reference.
    """
    shape = masks.shape
    if masks.numel() == 0:
        return torch.zeros(*shape[:-2], 4, dtype=torch.int64, device=masks.device)
    masks = masks.reshape(-1, *shape[-2:])
    rows = masks.any(dim=-1)
    cols = masks.any(dim=-2)
    height, width = shape[-2:]
    top = rows.int().argmax(dim=-1)
    bottom = height - 1 - rows.flip(-1).int().argmax(dim=-1)
    left = cols.int().argmax(dim=-1)
    right = width - 1 - cols.flip(-1).int().argmax(dim=-1)
    boxes = torch.stack([left, top, right, bottom], dim=-1).long()
    boxes[~rows.any(dim=-1)] = 0
    return boxes.reshape(*shape[:-2], 4)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas (x1 - x0) * (y1 - y0) of (N, 4) XYXY boxes."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) IoU of XYXY boxes, inter / (area_a + area_b - inter) as torchvision does.

    Two zero-area boxes give NaN (0/0), which never exceeds a threshold, again as
    in torchvision's kernel.
    """
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a)[:, None] + box_area(b)[None, :] - inter)


def nms(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, block: int = 1024
) -> torch.Tensor:
    """Greedy non-maximum suppression; int64 indices of kept boxes by decreasing score.

    A box is dropped when its IoU with a kept, higher-scoring box is greater than
    ``iou_threshold``; equal scores keep their input order. The IoU matrix is built
    ``block`` rows at a time, so memory stays O(block * N).
    """
    if len(boxes) == 0:
        return torch.empty(0, dtype=torch.int64)
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order].float()
    count = len(order)
    keep = np.ones(count, dtype=bool)
    for start in range(0, count, block):
        stop = min(start + block, count)
        suppresses = (box_iou(ordered[start:stop], ordered[start:]) > iou_threshold).numpy()
        for i in range(start, stop):
            if keep[i]:
                row = suppresses[i - start]
                keep[i + 1 :] &= ~row[i + 1 - start :]
    return order[torch.from_numpy(keep)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, categories: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """:func:`nms` within each category: boxes of different categories never suppress."""
    keep = torch.zeros(len(boxes), dtype=torch.bool)
    for category in torch.unique(categories):
        members = torch.nonzero(categories == category).flatten()
        keep[members[nms(boxes[members], scores[members], iou_threshold)]] = True
    kept = torch.nonzero(keep).flatten()
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def is_box_near_crop_edge(
    boxes: torch.Tensor,
    crop_box: list[int],
    image_box: list[int],
    atol: float = 20.0,
) -> torch.Tensor:
    """True for crop-frame XYXY boxes within ``atol`` of a crop edge that is not an image edge."""
    crop = torch.as_tensor(crop_box, dtype=torch.float)
    image = torch.as_tensor(image_box, dtype=torch.float)
    offset = torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]])
    boxes = (boxes + offset).float()
    near_crop = torch.isclose(boxes, crop[None, :], atol=atol, rtol=0)
    near_image = torch.isclose(boxes, image[None, :], atol=atol, rtol=0)
    return (near_crop & ~near_image).any(dim=1)
