"""``SAM2ImagePredictor``: SAM 2.1 on single images, a drop-in for Meta's.

The same methods, arguments, return values and preprocessing as Meta's
``sam2.sam2_image_predictor.SAM2ImagePredictor`` (which the parity tests compare
against), written with torch alone:

- the image (H, W, 3 uint8 RGB, or a PIL image) is scaled to [0, 1], resized to
  the model's square input with antialiased bilinear interpolation and normalized
  with the ImageNet mean and std;
- point and box coordinates are divided by the image's width and height
  (``normalize_coords``) and scaled to the model input;
- mask logits are upsampled bilinearly to the image size; the low-resolution logits
  returned are clamped to [-32, 32].

Beyond Meta's: images of other dtypes (16-bit, float), grayscale and multichannel
images go through :func:`src_core.preprocess.to_rgb` first (contrast limits or
percentiles to 0-255), as :class:`src_core.predictor.SamPredictor` does for SAM 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .preprocess import to_rgb

__all__ = ["SAM2ImagePredictor", "fill_small_regions"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _image_array(image: Any, **rgb_options: Any) -> np.ndarray:
    """An (H, W, 3) array: uint8 RGB as given, anything else through ``to_rgb``."""
    if not isinstance(image, np.ndarray):
        try:
            from PIL import Image
        except ImportError:  # pragma: no cover - pillow is a dependency
            Image = None
        if Image is not None and isinstance(image, Image.Image):
            # RGB as is (what Meta's predictor reads); gray, 16-bit, float and RGBA
            # through to_rgb below; palette and other colour modes as RGB
            if image.mode not in ("RGB", "RGBA", "L", "1", "I;16", "I", "F"):
                image = image.convert("RGB")
            image = np.asarray(image)
        else:
            raise TypeError(
                f"expected an image as a numpy array or PIL image, got {type(image).__name__}"
            )
    if image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3 and not any(
        v is not None for v in rgb_options.values()
    ):
        return image
    return to_rgb(image, **{k: v for k, v in rgb_options.items() if v is not None})


def fill_small_regions(
    logits: torch.Tensor, threshold: float, max_area: float, holes: bool, value: float | None = None
) -> torch.Tensor:
    """Meta's hole filling (``holes``) or sprinkle removal on (B, C, h, w) logits:
    8-connected regions of background (or foreground) of at most ``max_area`` pixels
    get the score ``value``, by default ``threshold + 10`` (or ``threshold - 10``; Meta's
    video predictor fills holes with 0.1). Not
    :func:`src_core.automatic.remove_small_regions`: SAM 1's rule differs (strictly
    smaller, and the largest island is always kept) and works on binary masks."""
    from scipy import ndimage

    regions = (logits <= threshold) if holes else (logits > threshold)
    flat = regions.reshape(-1, *regions.shape[-2:]).cpu().numpy()
    small = np.zeros_like(flat)
    structure = np.ones((3, 3), dtype=bool)
    for i, plane in enumerate(flat):
        labels, count = ndimage.label(plane, structure=structure)
        if count:
            areas = np.bincount(labels.ravel())
            small[i] = (labels > 0) & (areas[labels] <= max_area)
    small_t = torch.from_numpy(small).to(logits.device).reshape(logits.shape)
    if value is None:
        value = threshold + 10.0 if holes else threshold - 10.0
    return torch.where(small_t, torch.full_like(logits, value), logits)


class SAM2ImagePredictor:
    """Compute a SAM 2.1 image embedding once, then masks for any number of prompts.

    Parameters
    ----------
    sam_model : Sam2Model
        The model, e.g. from :func:`src_core.model.sam2.build.build_sam2`.
    mask_threshold : float
        Logits above it are foreground in the masks returned.
    max_hole_area : float
        When positive, background regions of the low-resolution masks of at most this
        many pixels are filled before upsampling.
    max_sprinkle_area : float
        When positive, foreground regions of at most this many pixels are removed.
    """

    def __init__(
        self,
        sam_model: Any,
        mask_threshold: float = 0.0,
        max_hole_area: float = 0.0,
        max_sprinkle_area: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self.model = sam_model
        self.mask_threshold = mask_threshold
        self.max_hole_area = max_hole_area
        self.max_sprinkle_area = max_sprinkle_area
        self.resolution = int(sam_model.image_size)
        side = self.resolution
        # stride-4, stride-8 and stride-16 maps (Meta fixes them at 1024 input)
        self._bb_feat_sizes = [(side // 4, side // 4), (side // 8, side // 8), (side // 16, side // 16)]
        self.reset_predictor()

    # ---- state ----------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return self.model.device

    def cancel(self) -> None:
        """For callers written for SAM 1's predictor: an embedding in progress cannot be
        interrupted here (it runs to its end), so this does nothing."""

    def reset_image(self) -> None:
        """SAM 1's name for :meth:`reset_predictor`."""
        self.reset_predictor()

    def reset_predictor(self) -> None:
        """Forget the image(s) and their embeddings."""
        self._is_image_set = False
        self._features: dict[str, Any] | None = None
        self._orig_hw: list[tuple[int, int]] | None = None
        self._is_batch = False

    # ---- images ---------------------------------------------------------------------

    def _to_input(self, rgb: np.ndarray) -> torch.Tensor:
        """(3, S, S) model input of an (H, W, 3) image (uint8, or float in 0-255)."""
        chw = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1))).contiguous()
        x = chw.to(torch.float32).div(255)
        size = [self.resolution, self.resolution]
        if list(x.shape[-2:]) != size:
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
        mean = torch.as_tensor(_MEAN, dtype=x.dtype)[:, None, None]
        std = torch.as_tensor(_STD, dtype=x.dtype)[:, None, None]
        return x.sub(mean).div(std)

    @torch.no_grad()
    def _embed(self, batch: torch.Tensor) -> None:
        model = self.model
        with model.compute_context():
            backbone_out = model.forward_image(batch.to(self.device))
        _, feats, _, _ = model._prepare_backbone_features(backbone_out)
        if model.config.directly_add_no_mem_embed:
            feats[-1] = feats[-1] + model.no_mem_embed
        n = batch.shape[0]
        maps = [
            f.permute(1, 2, 0).reshape(n, -1, *hw) for f, hw in zip(feats, self._bb_feat_sizes)
        ]
        self._features = {"image_embed": maps[-1], "high_res_feats": maps[:-1]}
        self._is_image_set = True

    def set_image(
        self,
        image: Any,
        image_format: str = "RGB",
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
        percentiles: Sequence[float] | None = None,
    ) -> None:
        """Compute the embedding of one image.

        Parameters
        ----------
        image : numpy.ndarray or PIL.Image.Image
            (H, W, 3) uint8 RGB (used as Meta's predictor uses it), or any image
            :func:`src_core.preprocess.to_rgb` accepts (grayscale, multichannel,
            16-bit, float), scaled to 0-255 first.
        image_format : str
            "RGB", or "BGR" for (H, W, 3) images in OpenCV's order (as SAM 1's
            ``SamPredictor.set_image`` takes it).
        channel_axis, channels, contrast_limits, percentiles
            See :func:`src_core.preprocess.to_rgb`.
        """
        if image_format not in ("RGB", "BGR"):
            raise ValueError(f"image_format must be 'RGB' or 'BGR', got {image_format!r}")
        self.reset_predictor()
        rgb = _image_array(image, channel_axis=channel_axis, channels=channels,
                           contrast_limits=contrast_limits, percentiles=percentiles)
        if image_format == "BGR":
            rgb = np.ascontiguousarray(rgb[..., ::-1])
        self._orig_hw = [(int(rgb.shape[0]), int(rgb.shape[1]))]
        self._embed(self._to_input(rgb)[None])

    def set_image_batch(self, image_list: list[Any]) -> None:
        """Compute the embeddings of several images, for :meth:`predict_batch`."""
        self.reset_predictor()
        if not isinstance(image_list, list):
            raise TypeError(f"image_list must be a list of images, got {type(image_list).__name__}")
        if not image_list:
            raise ValueError("image_list is empty")
        arrays = [_image_array(image) for image in image_list]
        self._orig_hw = [(int(a.shape[0]), int(a.shape[1])) for a in arrays]
        self._embed(torch.stack([self._to_input(a) for a in arrays]))
        self._is_batch = True

    def get_image_embedding(self) -> torch.Tensor:
        """The (B, C, h, w) embedding of the image(s) set (C=256, h=w=64 at 1024 input)."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) to generate an embedding.")
        return self._features["image_embed"]

    # ---- embeddings from elsewhere (the on-disk cache) --------------------------------

    @property
    def original_size(self) -> tuple[int, int]:
        """(height, width) of the single image set."""
        if not self._is_image_set or self._is_batch:
            raise RuntimeError("original_size is defined for one image set with .set_image(...)")
        return self._orig_hw[0]

    @property
    def input_size(self) -> tuple[int, int]:
        """The encoder's input: SAM 2.1 resizes every image to a square of ``resolution``."""
        return (self.resolution, self.resolution)

    def extra_features(self) -> dict[str, torch.Tensor]:
        """What SAM 2.1's decoder reads besides the embedding: the high-resolution
        features, as ``high_res_0`` (finest) and ``high_res_1``; a cache stores them
        with the embedding."""
        if not self._is_image_set or self._is_batch:
            raise RuntimeError("An image must be set with .set_image(...) first.")
        return {f"high_res_{i}": f for i, f in enumerate(self._features["high_res_feats"])}

    def set_embedding(
        self,
        embedding: torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int] | None = None,
        *,
        extra_features: dict[str, Any] | None = None,
    ) -> None:
        """Use a precomputed embedding and the :meth:`extra_features` that went with it
        (e.g. from a cache), as if :meth:`set_image` had computed them."""
        if input_size is not None and tuple(input_size) != self.input_size:
            raise ValueError(f"input_size {tuple(input_size)} is not this model's {self.input_size}")
        levels = len(self._bb_feat_sizes) - 1
        names = [f"high_res_{i}" for i in range(levels)]
        if extra_features is None or any(name not in extra_features for name in names):
            raise ValueError(f"SAM 2.1 needs the high-resolution features ({', '.join(names)}) with the embedding")
        self.reset_predictor()

        def tensor(value: Any, dtype: torch.dtype) -> torch.Tensor:
            return torch.as_tensor(value).to(self.device, dtype)

        # the dtypes set_image leaves: under bfloat16 autocast the high-resolution maps
        # come out of their convolutions in bfloat16 (a float32 copy would change how
        # the decoder rounds its sums with them)
        high_res_dtype = self.model.autocast_dtype or torch.float32
        self._features = {
            "image_embed": tensor(embedding, torch.float32),
            "high_res_feats": [tensor(extra_features[name], high_res_dtype) for name in names],
        }
        self._orig_hw = [(int(original_size[0]), int(original_size[1]))]
        self._is_image_set = True

    # ---- prompts --------------------------------------------------------------------

    def _scale(self, coords: torch.Tensor, normalize: bool, orig_hw: tuple[int, int]) -> torch.Tensor:
        if normalize:
            h, w = orig_hw
            coords = coords.clone()
            coords[..., 0] = coords[..., 0] / w
            coords[..., 1] = coords[..., 1] / h
        return coords * self.resolution

    def _prep_prompts(self, point_coords, point_labels, box, mask_logits, normalize_coords, img_idx=-1):
        coords = labels = boxes = mask_input = None
        orig_hw = self._orig_hw[img_idx]
        if point_coords is not None:
            if point_labels is None:
                raise ValueError("point_labels must be supplied if point_coords is supplied.")
            points = torch.as_tensor(point_coords, dtype=torch.float, device=self.device)
            coords = self._scale(points, normalize_coords, orig_hw)
            labels = torch.as_tensor(point_labels, dtype=torch.int, device=self.device)
            if coords.dim() == 2:
                coords, labels = coords[None], labels[None]
        if box is not None:
            box_t = torch.as_tensor(box, dtype=torch.float, device=self.device)
            boxes = self._scale(box_t.reshape(-1, 2, 2), normalize_coords, orig_hw)
        if mask_logits is not None:
            mask_input = torch.as_tensor(mask_logits, dtype=torch.float, device=self.device)
            if mask_input.dim() == 3:
                mask_input = mask_input[None]
        return mask_input, coords, labels, boxes

    def _postprocess(self, low_res: torch.Tensor, orig_hw: tuple[int, int]) -> torch.Tensor:
        masks = low_res.float()
        if self.max_hole_area > 0:
            masks = fill_small_regions(masks, self.mask_threshold, self.max_hole_area, holes=True)
        if self.max_sprinkle_area > 0:
            masks = fill_small_regions(masks, self.mask_threshold, self.max_sprinkle_area, holes=False)
        return F.interpolate(masks, orig_hw, mode="bilinear", align_corners=False)

    @torch.no_grad()
    def _decode(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw low-resolution logits (B, C, h, w) and predicted IoUs (B, C), float32, for
        prompts already in model-input coordinates (boxes as (B, 2, 2) corners)."""
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        points = None if point_coords is None else (point_coords, point_labels)
        if boxes is not None:
            corners = boxes.reshape(-1, 2, 2)
            corner_labels = torch.tensor([[2, 3]], dtype=torch.int, device=boxes.device)
            corner_labels = corner_labels.repeat(corners.shape[0], 1)
            if points is None:
                points = (corners, corner_labels)
            else:  # the box corners go first
                points = (torch.cat([corners, points[0]], dim=1), torch.cat([corner_labels, points[1]], dim=1))
        encoder = self.model.sam_prompt_encoder
        several = points is not None and points[0].shape[0] > 1
        high_res = [level[img_idx].unsqueeze(0) for level in self._features["high_res_feats"]]
        with self.model.compute_context():
            sparse, dense = encoder(points=points, boxes=None, masks=mask_input)
            low_res, iou_predictions, _, _ = self.model.sam_mask_decoder(
                image_embeddings=self._features["image_embed"][img_idx].unsqueeze(0),
                image_pe=encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=multimask_output,
                repeat_image=several,
                high_res_features=high_res,
            )
        return low_res.float(), iou_predictions.float()

    @torch.no_grad()
    def _predict(
        self,
        point_coords: torch.Tensor | None,
        point_labels: torch.Tensor | None,
        boxes: torch.Tensor | None = None,
        mask_input: torch.Tensor | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        img_idx: int = -1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks (B, C, H, W), scores (B, C) and clamped low-resolution logits for
        prompts already in model-input coordinates (boxes as (B, 2, 2) corners)."""
        low_res, iou_predictions = self._decode(
            point_coords, point_labels, boxes, mask_input, multimask_output, img_idx
        )
        masks = self._postprocess(low_res, self._orig_hw[img_idx])
        low_res = torch.clamp(low_res, -32.0, 32.0)
        if not return_logits:
            masks = masks > self.mask_threshold
        return masks, iou_predictions, low_res

    @staticmethod
    def _numpy(masks, ious, low_res) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(t.squeeze(0).float().detach().cpu().numpy() for t in (masks, ious, low_res))

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Masks for prompts on the image set with :meth:`set_image`.

        Parameters
        ----------
        point_coords : (N, 2) or (B, N, 2) array, optional
            Points as (x, y) in image pixels (or in [0, 1] with ``normalize_coords``
            False).
        point_labels : (N,) or (B, N) array, optional
            1 foreground, 0 background.
        box : (4,) or (B, 4) array, optional
            Boxes as x0, y0, x1, y1.
        mask_input : (1, 256, 256) or (B, 1, 256, 256) array, optional
            Low-resolution logits of an earlier call.
        multimask_output : bool
            Three candidate masks instead of one.
        return_logits : bool
            Logits instead of boolean masks.
        normalize_coords : bool
            Coordinates are in image pixels (divided by the width and height here).

        Returns
        -------
        masks : (C, H, W) or (B, C, H, W) array
            Boolean (float32 logits with ``return_logits``), at the image size.
        iou_predictions : (C,) or (B, C) array
        low_res_masks : (C, 256, 256) or (B, C, 256, 256) array
            Logits clamped to [-32, 32], to pass back as ``mask_input``.
        """
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image(...) before mask prediction.")
        mask_in, coords, labels, boxes = self._prep_prompts(
            point_coords, point_labels, box, mask_input, normalize_coords
        )
        return self._numpy(*self._predict(coords, labels, boxes, mask_in, multimask_output,
                                          return_logits=return_logits))

    def predict_batch(
        self,
        point_coords_batch: list[np.ndarray] | None = None,
        point_labels_batch: list[np.ndarray] | None = None,
        box_batch: list[np.ndarray] | None = None,
        mask_input_batch: list[np.ndarray] | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
        normalize_coords: bool = True,
    ) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        """:meth:`predict` for each image of :meth:`set_image_batch`, prompts one list
        entry per image; returns lists of masks, scores and low-resolution logits."""
        if not self._is_batch:
            raise RuntimeError("predict_batch needs images set with .set_image_batch(...)")
        if not self._is_image_set:
            raise RuntimeError("An image must be set with .set_image_batch(...) before mask prediction.")
        out: tuple[list, list, list] = ([], [], [])

        def pick(items, i):
            return items[i] if items is not None else None

        for i in range(len(self._features["image_embed"])):
            mask_in, coords, labels, boxes = self._prep_prompts(
                pick(point_coords_batch, i), pick(point_labels_batch, i), pick(box_batch, i),
                pick(mask_input_batch, i), normalize_coords, img_idx=i,
            )
            result = self._numpy(*self._predict(coords, labels, boxes, mask_in, multimask_output,
                                                return_logits=return_logits, img_idx=i))
            for store, value in zip(out, result):
                store.append(value)
        return out
