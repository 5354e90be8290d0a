"""Stand-in for ``torchvision.transforms``: ``functional``, and the three transforms
Meta's ``sam2.utils.transforms`` uses (``ToTensor``, ``Resize``, ``Normalize``) with
torchvision's tensor-path semantics (torchvision >= 0.17: antialiased resizing)."""

from . import functional
from ._presets import InterpolationMode, Normalize, Resize, ToTensor

__all__ = ["functional", "InterpolationMode", "Normalize", "Resize", "ToTensor"]
