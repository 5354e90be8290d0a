"""The assembled Segment Anything model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .tiny_vit import TinyViT


class Sam(nn.Module):
    """Image encoder + prompt encoder + mask decoder, with SAM's pre/post-processing.

    The image encoder is SAM's ViT or MobileSAM's TinyViT: both map the padded,
    normalized image to a (B, 256, 64, 64) embedding (at 1024 px) and take the
    same ``should_stop`` check.

    The image encoder may run in a lower precision (``encoder_dtype``); its output,
    the prompt encoder and the mask decoder stay in float32.
    """

    mask_threshold: float = 0.0
    image_format: str = "RGB"
    # identity of the loaded weights (set by build_sam), for caches of their outputs;
    # None when unknown (random weights, an in-memory state dict): nothing is cached
    weights_id: str | None = None

    def __init__(
        self,
        image_encoder: ImageEncoderViT | TinyViT,
        prompt_encoder: PromptEncoder,
        mask_decoder: MaskDecoder,
        pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375),
    ) -> None:
        super().__init__()
        self.image_encoder = image_encoder
        self.prompt_encoder = prompt_encoder
        self.mask_decoder = mask_decoder
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    @property
    def encoder_dtype(self) -> torch.dtype:
        """Precision the image encoder computes in."""
        return next(self.image_encoder.parameters()).dtype

    def set_encoder_dtype(self, dtype: torch.dtype) -> "Sam":
        """Run the image encoder in ``dtype`` (float32 or bfloat16); returns self."""
        self.image_encoder.to(dtype)
        return self

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize (B, 3, h, w) pixel values (0-255) and pad to the square input."""
        x = (x - self.pixel_mean) / self.pixel_std
        h, w = x.shape[-2:]
        size = self.image_encoder.img_size
        return F.pad(x, (0, size - w, 0, size - h))

    def encode_image(
        self, padded: torch.Tensor, should_stop: Callable[[], bool] | None = None
    ) -> torch.Tensor:
        """Run the image encoder on preprocessed input; returns float32 embeddings.

        ``should_stop`` is asked between encoder blocks (see ``ImageEncoderViT.forward``).
        """
        return self.image_encoder(padded.to(self.encoder_dtype), should_stop).float()

    def postprocess_masks(
        self,
        masks: torch.Tensor,
        input_size: tuple[int, ...],
        original_size: tuple[int, ...],
    ) -> torch.Tensor:
        """Upscale low-resolution logits, drop the padding, resize to the original image."""
        size = self.image_encoder.img_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        if tuple(masks.shape[-2:]) != tuple(original_size):
            masks = F.interpolate(masks, tuple(original_size), mode="bilinear", align_corners=False)
        return masks

    @torch.no_grad()
    def forward(
        self, batched_input: list[dict[str, Any]], multimask_output: bool
    ) -> list[dict[str, torch.Tensor]]:
        """End-to-end prediction with the same inputs and outputs as Meta's ``Sam.forward``.

        Each input dict has 'image' (3 x h x w, resized, 0-255), 'original_size', and
        optionally 'point_coords', 'point_labels', 'boxes', 'mask_inputs' in the
        resized frame.
        """
        images = torch.stack([self.preprocess(rec["image"]) for rec in batched_input], dim=0)
        embeddings = self.encode_image(images)
        outputs = []
        for record, embedding in zip(batched_input, embeddings):
            points = None
            if "point_coords" in record:
                points = (record["point_coords"], record["point_labels"])
            sparse, dense = self.prompt_encoder(
                points=points, boxes=record.get("boxes"), masks=record.get("mask_inputs")
            )
            low_res, iou = self.mask_decoder(
                image_embeddings=embedding.unsqueeze(0),
                image_pe=self.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
            masks = self.postprocess_masks(
                low_res, record["image"].shape[-2:], record["original_size"]
            )
            outputs.append(
                {
                    "masks": masks > self.mask_threshold,
                    "iou_predictions": iou,
                    "low_res_logits": low_res,
                }
            )
        return outputs
