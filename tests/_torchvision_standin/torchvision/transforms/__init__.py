"""Stand-in for ``torchvision.transforms``: only ``functional`` exists."""

from . import functional

__all__ = ["functional"]
