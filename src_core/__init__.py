"""napari-sam's engine: Segment Anything without a GUI.

Importing this package is cheap; torch and the model load on first use of a name.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> submodule that defines it
_EXPORTS = {
    "build_sam": "src_core.model.build",
    "build_sam_from_config": "src_core.model.build",
    "sam_model_registry": "src_core.model.build",
    "MODEL_CONFIGS": "src_core.model.build",
    "SamConfig": "src_core.model.build",
    "Sam": "src_core.model.sam",
    "SamPredictor": "src_core.predictor",
    "CHECKPOINTS": "src_core.checkpoints",
    "CheckpointInfo": "src_core.checkpoints",
    "cache_dir": "src_core.checkpoints",
    "download_checkpoint": "src_core.checkpoints",
    "load_state_dict": "src_core.checkpoints",
    "resolve_device": "src_core.device",
    "EmbeddingCache": "src_core.embedding_cache",
    "VideoFrames": "src_core.video",
    "Prompt": "src_core.prompts",
    "ObjectSegmenter": "src_core.interactive",
    "SamAutomaticMaskGenerator": "src_core.automatic",
    "masks_to_label_image": "src_core.automatic",
    "build_sam2": "src_core.model.sam2.build",
    "SAM2ImagePredictor": "src_core.sam2_predictor",
    "SAM2_CHECKPOINTS": "src_core.checkpoints",
    "SAM2VideoPredictor": "src_core.sam2_video",
    "build_sam2_video_predictor": "src_core.sam2_video",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'src_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
