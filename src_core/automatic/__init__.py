"""Segment everything: grid prompts, quality filters, NMS, RLE (a drop-in for Meta's generator).

``SamAutomaticMaskGenerator`` has the reference's parameters, defaults and records;
``SAM2AutomaticMaskGenerator`` is SAM 2's (``mask_generator_for(model)`` picks);
``masks_to_label_image`` turns its records into one non-overlapping label image;
``GeneratorSettings`` / ``DEFAULTS`` (:mod:`.settings`) are its parameters' one home.

Names load on first use (PEP 562), so reading the settings (the command line's
``--help``) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "DEFAULTS": "settings",
    "GeneratorSettings": "settings",
    "SamAutomaticMaskGenerator": "generator",
    "SAM2AutomaticMaskGenerator": "sam2_generator",
    "mask_generator_for": "sam2_generator",
    "batched_nms": "geometry",
    "box_iou": "geometry",
    "masks_to_boxes": "geometry",
    "nms": "geometry",
    "masks_to_label_image": "regions",
    "remove_small_regions": "regions",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
