"""Segment everything's settings: the one home of its defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["DEFAULTS", "GeneratorSettings"]


@dataclass(frozen=True)
class GeneratorSettings:
    """The segment-everything parameters and their defaults (Meta's), in one place.

    :class:`~src_core.automatic.SamAutomaticMaskGenerator`'s keyword defaults,
    batch labeling, ``napari-sam label`` / ``segment --text`` and the napari
    panels all read them from here.
    """

    points_per_side: int = 32
    points_per_batch: int = 64
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    stability_score_offset: float = 1.0
    box_nms_thresh: float = 0.7
    crop_n_layers: int = 0
    crop_nms_thresh: float = 0.7
    crop_overlap_ratio: float = 512 / 1500
    crop_n_points_downscale_factor: int = 1
    min_mask_region_area: int = 0

    def __post_init__(self) -> None:
        for name in ("points_per_side", "points_per_batch", "crop_n_points_downscale_factor"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("crop_n_layers", "min_mask_region_area"):
            if int(getattr(self, name)) < 0:
                raise ValueError(f"{name} must be 0 or more, got {getattr(self, name)}")
        for name in ("pred_iou_thresh", "stability_score_thresh", "stability_score_offset",
                     "box_nms_thresh", "crop_nms_thresh", "crop_overlap_ratio"):
            if not math.isfinite(float(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number, got {getattr(self, name)}")


#: The defaults, to read one value (``DEFAULTS.points_per_side``).
DEFAULTS = GeneratorSettings()
