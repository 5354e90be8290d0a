"""SAM's network: image encoder, prompt encoder, mask decoder, and their assembly."""

from .build import (
    MODEL_CONFIGS,
    SamConfig,
    build_sam,
    build_sam_from_config,
    infer_model_type,
    sam_model_registry,
)
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .transformer import TwoWayTransformer

__all__ = [
    "MODEL_CONFIGS",
    "ImageEncoderViT",
    "MaskDecoder",
    "PromptEncoder",
    "Sam",
    "SamConfig",
    "TwoWayTransformer",
    "build_sam",
    "build_sam_from_config",
    "infer_model_type",
    "sam_model_registry",
]
