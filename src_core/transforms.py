"""Drop-in for the reference's ``ResizeLongestSide`` (numpy and torch variants)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import preprocess_shape, resize_longest_side, transform_boxes, transform_coords


class ResizeLongestSide:
    """Resize images to a longest side of ``target_length`` and map prompts along.

    Same methods and results as ``segment_anything.utils.transforms.ResizeLongestSide``.
    """

    def __init__(self, target_length: int) -> None:
        self.target_length = target_length

    def apply_image(self, image: np.ndarray) -> np.ndarray:
        """Resize an (H, W, 3) uint8 or float image."""
        return resize_longest_side(image, self.target_length)

    def apply_coords(self, coords: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return transform_coords(coords, original_size, self.target_length)

    def apply_boxes(self, boxes: np.ndarray, original_size: tuple[int, ...]) -> np.ndarray:
        return transform_boxes(boxes, original_size, self.target_length)

    def apply_image_torch(self, image: torch.Tensor) -> torch.Tensor:
        """Resize a (B, C, H, W) float tensor (antialiased bilinear)."""
        size = preprocess_shape(image.shape[-2], image.shape[-1], self.target_length)
        return F.interpolate(image, size, mode="bilinear", align_corners=False, antialias=True)

    def apply_coords_torch(
        self, coords: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        old_h, old_w = original_size
        new_h, new_w = preprocess_shape(old_h, old_w, self.target_length)
        scale = torch.tensor([new_w / old_w, new_h / old_h], device=coords.device)
        return coords.to(torch.float) * scale

    def apply_boxes_torch(
        self, boxes: torch.Tensor, original_size: tuple[int, ...]
    ) -> torch.Tensor:
        return self.apply_coords_torch(boxes.reshape(-1, 2, 2), original_size).reshape(-1, 4)

    @staticmethod
    def get_preprocess_shape(oldh: int, oldw: int, long_side_length: int) -> tuple[int, int]:
        return preprocess_shape(oldh, oldw, long_side_length)
