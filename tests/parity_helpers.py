"""Shared pieces of the parity tests against Meta's reference implementation."""

from __future__ import annotations

import numpy as np
import torch
from skimage import data, transform


def randomize_(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Give every zero-initialized parameter (position embeddings) random values.

    The reference initializes ``pos_embed`` and ``rel_pos_*`` to zero; parity on zeros
    would not exercise them.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "pos_embed" in name or "rel_pos" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def astronaut_image(height: int, width: int) -> np.ndarray:
    """A natural uint8 RGB image of the given size (scikit-image's astronaut, resized)."""
    astronaut = data.astronaut()
    resized = transform.resize(astronaut, (height, width), order=1, anti_aliasing=True)
    return (resized * 255).round().astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)
