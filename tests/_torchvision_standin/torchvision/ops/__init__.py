"""Stand-in for ``torchvision.ops``: only ``boxes`` exists."""

from . import boxes
from .boxes import batched_nms, box_area

__all__ = ["boxes", "batched_nms", "box_area"]
