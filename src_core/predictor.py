"""Image -> embedding -> masks: a drop-in for ``segment_anything.SamPredictor``."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import numpy as np
import torch

from .model.sam import Sam
from .preprocess import image_to_tensor, to_rgb
from .transforms import ResizeLongestSide


def _to_numpy(tensor: torch.Tensor) -> np.ndarray:
    if tensor.dtype != torch.bool:
        tensor = tensor.float()
    return tensor.detach().cpu().numpy()


class ImageNotSetError(RuntimeError, ValueError):
    """Raised when masks are requested before an image was set.

    A RuntimeError like the reference's, and a ValueError like every other bad input.
    """


class SamPredictor:
    """Compute an image embedding once, then predict masks for many prompts quickly.

    Same methods, arguments and results as Meta's ``SamPredictor``; on top of that
    ``set_image`` takes grayscale, multichannel, 16-bit and float images, and
    ``predict`` takes batches of boxes or point sets.

    Parameters
    ----------
    sam_model : Sam
        The model, e.g. from :func:`src_core.build_sam`.
    """

    def __init__(self, sam_model: Sam) -> None:
        self.model = sam_model
        self.transform = ResizeLongestSide(sam_model.image_encoder.img_size)
        self._stop = threading.Event()
        self.reset_image()

    def cancel(self) -> None:
        """Ask a ``set_image`` running in another thread to stop.

        It raises :class:`~src_core.jobs.Cancelled` within one
        encoder block, and the predictor is left without an image.
        """
        self._stop.set()

    @property
    def device(self) -> torch.device:
        return self.model.device

    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.is_image_set = False
        self.features: torch.Tensor | None = None
        self.original_size: tuple[int, int] | None = None
        self.input_size: tuple[int, int] | None = None
        self._tokens: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def set_image(
        self,
        image: np.ndarray,
        image_format: str = "RGB",
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Sequence[float] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        """Compute the embedding of ``image``.

        Parameters
        ----------
        image : numpy.ndarray
            (H, W) grayscale, (H, W, 3) RGB, (H, W, 4) RGBA or multichannel, any real
            dtype. uint8 images are used as they are (identical to the reference);
            other dtypes are scaled to 0-255 by ``contrast_limits`` or, when those are
            not given, by ``percentiles`` of the finite values (NaN/inf are tolerated).
        image_format : {"RGB", "BGR"}
            Channel order of a 3-channel image.
        channel_axis, channels, contrast_limits, percentiles
            See :func:`src_core.preprocess.to_rgb`.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        rgb = to_rgb(
            image,
            channel_axis=channel_axis,
            channels=channels,
            contrast_limits=contrast_limits,
            percentiles=percentiles,
        )
        if image_format != self.model.image_format:
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        resized = self.transform.apply_image(rgb)
        tensor = image_to_tensor(resized, device=self.device)
        self.set_torch_image(tensor, rgb.shape[:2])

    @torch.no_grad()
    def set_torch_image(
        self, transformed_image: torch.Tensor, original_image_size: tuple[int, ...]
    ) -> None:
        """Compute the embedding of an already resized (1, 3, h, w) image (0-255 values)."""
        size = self.model.image_encoder.img_size
        shape = tuple(transformed_image.shape)
        if len(shape) != 4 or shape[1] != 3 or max(shape[2:]) != size:
            raise ValueError(
                f"set_torch_image expects a (B, 3, H, W) tensor whose longest side is {size}, "
                f"got shape {shape}; use set_image for unprocessed images"
            )
        self.reset_image()
        self._stop.clear()
        padded = self.model.preprocess(transformed_image.to(self.device).float())
        features = self.model.encode_image(padded, self._stop.is_set)
        self.original_size = (int(original_image_size[0]), int(original_image_size[1]))
        self.input_size = (int(shape[2]), int(shape[3]))
        self.features = features
        self.is_image_set = True

    def set_embedding(
        self,
        embedding: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
    ) -> None:
        """Use a precomputed (1, C, h, w) embedding, e.g. from a cache."""
        if input_size is None:
            input_size = self.transform.get_preprocess_shape(
                original_size[0], original_size[1], self.model.image_encoder.img_size
            )
        self.reset_image()
        self.features = embedding.to(self.device, torch.float32)
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.is_image_set = True

    def get_image_embedding(self) -> torch.Tensor:
        """The (1, 256, 64, 64) embedding of the current image."""
        self._require_image("an embedding can be returned")
        return self.features

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predict masks for prompts in original image pixels.

        Parameters
        ----------
        point_coords : array, optional
            (N, 2) x, y points, or (B, N, 2) for B prompts at once.
        point_labels : array, optional
            (N,) or (B, N): 1 foreground, 0 background.
        box : array, optional
            (4,) x0, y0, x1, y1, or (B, 4) for B boxes at once.
        mask_input : array, optional
            (1, 256, 256) low-resolution logits from a previous call, or (B, 1, 256, 256).
        multimask_output : bool
            Return 3 candidates instead of 1.
        return_logits : bool
            Return logits instead of boolean masks.

        Returns
        -------
        masks, iou_predictions, low_res_logits : numpy.ndarray
            (C, H, W), (C,), (C, 256, 256) for one prompt, with a leading B axis for
            batched prompts.
        """
        self._require_image("masks can be predicted")
        coords, labels, boxes, masks_in, batched = self._prompt_tensors(
            point_coords, point_labels, box, mask_input
        )
        masks, iou, low_res = self.predict_torch(
            coords, labels, boxes, masks_in, multimask_output, return_logits=return_logits
        )
        masks, iou, low_res = (_to_numpy(t) for t in (masks, iou, low_res))
        if not batched:
            return masks[0], iou[0], low_res[0]
        return masks, iou, low_res

    @torch.no_grad()
    def predict_torch(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict masks for batched prompts already in the resized input frame.

        Shapes as in the reference: (B, N, 2) points, (B, N) labels, (B, 4) boxes,
        (B, 1, 256, 256) masks. Returns (B, C, H, W) masks, (B, C) IoU predictions
        and (B, C, 256, 256) logits.
        """
        self._require_image("masks can be predicted")
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        decoder = self.model.mask_decoder
        if mask_input is None:
            # everything on the image side of the first decoder layer is then the same
            # for every prompt: computed once per image
            src, pos, src_with_pos = self._image_tokens()
            low_res, iou = decoder.predict_masks_from_tokens(
                src,
                pos,
                sparse,
                tuple(self.features.shape[-2:]),
                slice(1, None) if multimask_output else slice(0, 1),
                src_with_pos=src_with_pos,
            )
        else:
            low_res, iou = decoder(
                image_embeddings=self.features,
                image_pe=self.model.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
            )
        masks = self.model.postprocess_masks(low_res, self.input_size, self.original_size)
        if not return_logits:
            masks = masks > self.model.mask_threshold
        return masks, iou, low_res

    def _image_tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Channels-last embedding + no-mask prompt, positional encoding, and their sum."""
        if self._tokens is None:
            encoder = self.model.prompt_encoder
            src = self.features + encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
            src = src.flatten(2).transpose(1, 2).contiguous()
            pos = encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
            self._tokens = (src, pos, src + pos)
        return self._tokens

    # -- validation -------------------------------------------------------------------

    def _require_image(self, what: str) -> None:
        if not self.is_image_set:
            raise ImageNotSetError(
                f"An image must be set with .set_image(...) before {what}."
            )

    def _prompt_tensors(self, point_coords, point_labels, box, mask_input):
        """Validate numpy prompts and move them into the model's input frame."""
        height, width = self.original_size
        batch_sizes = []
        coords_t = labels_t = box_t = mask_t = None
        batched = False
        if point_coords is not None or point_labels is not None:
            if point_coords is None or point_labels is None:
                raise ValueError("point_coords and point_labels must be given together")
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels)
            if coords.ndim == 2:
                coords, labels = coords[None], labels.reshape(1, -1)
            elif coords.ndim == 3:
                batched = True
            if coords.ndim != 3 or coords.shape[-1] != 2 or coords.shape[1] == 0:
                raise ValueError(
                    f"point_coords must be (N, 2) x, y points or (B, N, 2), got shape {np.shape(point_coords)}"
                )
            if labels.shape != coords.shape[:2]:
                raise ValueError(
                    f"point_labels must have one label per point: {coords.shape[1]} points "
                    f"but labels of shape {np.shape(point_labels)}"
                )
            if not np.isfinite(coords).all():
                raise ValueError("point_coords contain NaN or inf")
            outside = (coords[..., 0] < 0) | (coords[..., 0] > width) | (coords[..., 1] < 0) | (coords[..., 1] > height)
            if outside.any():
                bad = coords[outside][0]
                raise ValueError(
                    f"point ({bad[0]:g}, {bad[1]:g}) lies outside the {width}x{height} image "
                    "(x must be in [0, width], y in [0, height])"
                )
            if not np.isin(labels, (0, 1)).all():
                raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
            coords = self.transform.apply_coords(coords, self.original_size)
            coords_t = torch.as_tensor(coords, dtype=torch.float, device=self.device)
            labels_t = torch.as_tensor(labels.astype(np.int64), dtype=torch.int, device=self.device)
            batch_sizes.append(coords.shape[0])
        if box is not None:
            boxes = np.asarray(box, dtype=np.float64)
            if boxes.ndim == 2:
                batched = True
            boxes = boxes.reshape(-1, 4) if boxes.size and boxes.shape[-1] == 4 and boxes.ndim <= 2 else None
            if boxes is None:
                raise ValueError(f"box must be (4,) x0, y0, x1, y1 or (B, 4), got shape {np.shape(box)}")
            if not np.isfinite(boxes).all():
                raise ValueError("box contains NaN or inf")
            if ((boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])).any():
                raise ValueError(
                    "box must be x0, y0, x1, y1 with x1 > x0 and y1 > y0 (it is inverted or has zero area)"
                )
            boxes = self.transform.apply_boxes(boxes, self.original_size)
            box_t = torch.as_tensor(boxes, dtype=torch.float, device=self.device)
            batch_sizes.append(boxes.shape[0])
        if mask_input is not None:
            masks = np.asarray(mask_input, dtype=np.float32)
            if masks.ndim == 3:
                masks = masks[None]
            expected = self.model.prompt_encoder.mask_input_size
            if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != tuple(expected):
                raise ValueError(
                    f"mask_input must be (1, {expected[0]}, {expected[1]}) low-resolution logits "
                    f"(or (B, 1, ...)), got shape {np.shape(mask_input)}"
                )
            mask_t = torch.as_tensor(masks, device=self.device)
            batch_sizes.append(masks.shape[0])
        if len(set(batch_sizes)) > 1:
            raise ValueError(f"batched prompts disagree on the batch size: {batch_sizes}")
        return coords_t, labels_t, box_t, mask_t, batched
