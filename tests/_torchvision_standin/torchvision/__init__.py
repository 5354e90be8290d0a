"""Minimal torchvision stand-in, for tests only.

Real torchvision cannot be installed in some test environments, but Meta's
reference ``segment_anything`` imports four of its functions. This package
implements exactly those with torchvision's semantics:

- ``torchvision.transforms.functional.to_pil_image``
- ``torchvision.transforms.functional.resize`` (PIL path)
- ``torchvision.ops.boxes.box_area``
- ``torchvision.ops.boxes.batched_nms``

``tests/conftest.py`` puts it on ``sys.path`` only when no real torchvision
is importable. Nothing outside ``tests/`` may depend on it.
"""

from . import ops, transforms

__version__ = "0.0.0+standin"
IS_STANDIN = True

__all__ = ["ops", "transforms", "IS_STANDIN"]
