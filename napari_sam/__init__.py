"""napari-sam: Segment Anything in napari, with a GUI-free engine (``src_core``).

Importing this package is cheap: torch, napari and Qt are not imported until a
name that needs them is used. The headless API is re-exported from
``src_core``::

    from napari_sam import SamPredictor, build_sam, download_checkpoint
"""

from __future__ import annotations

from typing import Any

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("napari-sam")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

# Names served by src_core, imported on first use.
_ENGINE_EXPORTS = (
    "CHECKPOINTS",
    "SAM2ImagePredictor",
    "SAM2VideoPredictor",
    "SAM2_CHECKPOINTS",
    "SamPredictor",
    "build_sam",
    "build_sam2",
    "build_sam2_video_predictor",
    "download_checkpoint",
    "load_state_dict",
    "sam_model_registry",
)

__all__ = ["__version__", *_ENGINE_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _ENGINE_EXPORTS:
        import src_core

        value = getattr(src_core, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'napari_sam' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
