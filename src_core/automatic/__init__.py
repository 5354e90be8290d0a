"""Segment everything: grid prompts, quality filters, NMS, RLE (a drop-in for Meta's generator).

``SamAutomaticMaskGenerator`` has the reference's parameters, defaults and records;
``masks_to_label_image`` turns its records into one non-overlapping label image.
"""

from .generator import GenerationCancelled, SamAutomaticMaskGenerator
from .geometry import batched_nms, box_iou, masks_to_boxes, nms
from .regions import masks_to_label_image, remove_small_regions

__all__ = [
    "GenerationCancelled",
    "SamAutomaticMaskGenerator",
    "batched_nms",
    "box_iou",
    "masks_to_boxes",
    "masks_to_label_image",
    "nms",
    "remove_small_regions",
]
