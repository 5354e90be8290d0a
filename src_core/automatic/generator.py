"""Segment everything: a drop-in for ``segment_anything.SamAutomaticMaskGenerator``.

Same parameters, defaults, records and order as the reference. What differs is
where the time goes:

* the predicted-IoU filter runs on the decoder's low-resolution output, before
  any mask is upscaled (it needs none), so rejected masks cost nothing more;
* each remaining mask is upscaled only inside the window where its logits can
  exceed the stability score's lower cutoff (see :mod:`.upsample`); stability,
  the binary mask and its box come from that window;
* masks are kept as bounding-box crops instead of full-image RLEs, and encoded
  (uncompressed RLE, COCO RLE or full binary mask) once, at the end, only for
  the masks that survive every filter;
* non-maximum suppression is a vectorized IoU matrix with a greedy sweep in
  torch/numpy; no torchvision, no OpenCV.

Long runs report progress per point batch and can be cancelled between batches
(and, through the predictor, inside an image encoding).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..jobs import Cancelled
from ..model.sam import Sam
from ..predictor import SamPredictor
from ..preprocess import to_rgb
from ..protocols import is_sam2_model
from ..rle import coco_encode_rle, crop_to_rle
from .geometry import (
    box_area,
    build_all_layer_point_grids,
    generate_crop_boxes,
    is_box_near_crop_edge,
    nms,
)
from .regions import bbox_crop, clean_mask_crop
from .settings import DEFAULTS
from .upsample import LogitUpsampler

__all__ = ["SamAutomaticMaskGenerator"]

OUTPUT_MODES = ("binary_mask", "uncompressed_rle", "coco_rle")
_EMPTY = np.zeros((0, 0), dtype=bool)
Progress = Callable[[int, int], None]


@dataclass
class _Masks:
    """Candidate masks, column-wise. Boxes and points are in full-image pixels."""

    crops: list[np.ndarray]  # each mask inside its bounding box
    origins: list[tuple[int, int]]  # (row, column) of each crop
    boxes: torch.Tensor  # (N, 4) int64 XYXY, last pixel inclusive
    iou_preds: torch.Tensor  # (N,) float32
    stability: torch.Tensor  # (N,) float32
    points: np.ndarray  # (N, 2) float64 x, y
    crop_boxes: torch.Tensor  # (N, 4) int64 XYXY of the image crop each came from

    def __len__(self) -> int:
        return len(self.crops)

    def select(self, index: torch.Tensor) -> "_Masks":
        idx = index.tolist()
        return _Masks(
            [self.crops[i] for i in idx],
            [self.origins[i] for i in idx],
            self.boxes[index],
            self.iou_preds[index],
            self.stability[index],
            self.points[np.asarray(idx, dtype=np.int64)],
            self.crop_boxes[index],
        )

    @staticmethod
    def concatenate(parts: list["_Masks"]) -> "_Masks":
        return _Masks(
            [c for p in parts for c in p.crops],
            [o for p in parts for o in p.origins],
            torch.cat([p.boxes for p in parts]) if parts else torch.zeros(0, 4, dtype=torch.int64),
            torch.cat([p.iou_preds for p in parts]) if parts else torch.zeros(0),
            torch.cat([p.stability for p in parts]) if parts else torch.zeros(0),
            np.concatenate([p.points for p in parts]) if parts else np.zeros((0, 2)),
            torch.cat([p.crop_boxes for p in parts]) if parts else torch.zeros(0, 4, dtype=torch.int64),
        )


class SamAutomaticMaskGenerator:
    """Generate masks for a whole image from a grid of point prompts.

    Parameters (and defaults) are the reference's; see its documentation for
    their meaning. ``min_mask_region_area`` uses scipy instead of OpenCV and
    ``output_mode="coco_rle"`` needs pycocotools.

    Parameters
    ----------
    model : Sam
        The SAM model (``src_core.build_sam(...)``).
    points_per_side : int or None
        Grid points per image side (``points_per_side**2`` prompts); exclusive
        with ``point_grids``.
    points_per_batch : int
        Prompts decoded together; progress is reported per batch.
    pred_iou_thresh : float
        Keep masks whose predicted IoU is greater than this.
    stability_score_thresh : float
        Keep masks whose stability score is at least this.
    stability_score_offset : float
        Logit offset of the stability score's two cutoffs.
    box_nms_thresh : float
        Box IoU above which duplicates of a crop are suppressed.
    crop_n_layers : int
        Also run on ``(2**i)**2`` crops for layers ``i = 1 .. crop_n_layers``.
    crop_nms_thresh : float
        Box IoU above which duplicates between crops are suppressed.
    crop_overlap_ratio : float
        Overlap of neighbouring crops, as a fraction of the image's short side.
    crop_n_points_downscale_factor : int
        Layer ``i`` uses ``points_per_side / factor**i`` points per side.
    point_grids : list of numpy.ndarray, optional
        Explicit (N, 2) grids in [0, 1], one per layer.
    min_mask_region_area : int
        If > 0, fill holes and remove islands smaller than this (pixels).
    output_mode : {"binary_mask", "uncompressed_rle", "coco_rle"}
        Form of each record's ``segmentation``.
    """

    def __init__(
        self,
        model: Sam,
        points_per_side: int | None = DEFAULTS.points_per_side,
        points_per_batch: int = DEFAULTS.points_per_batch,
        pred_iou_thresh: float = DEFAULTS.pred_iou_thresh,
        stability_score_thresh: float = DEFAULTS.stability_score_thresh,
        stability_score_offset: float = DEFAULTS.stability_score_offset,
        box_nms_thresh: float = DEFAULTS.box_nms_thresh,
        crop_n_layers: int = DEFAULTS.crop_n_layers,
        crop_nms_thresh: float = DEFAULTS.crop_nms_thresh,
        crop_overlap_ratio: float = DEFAULTS.crop_overlap_ratio,
        crop_n_points_downscale_factor: int = DEFAULTS.crop_n_points_downscale_factor,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = DEFAULTS.min_mask_region_area,
        output_mode: str = "binary_mask",
    ) -> None:
        if (points_per_side is None) == (point_grids is None):
            raise ValueError("give exactly one of points_per_side or point_grids")
        if int(crop_n_layers) < 0:
            raise ValueError(f"crop_n_layers must be 0 or more, got {crop_n_layers}")
        if points_per_side is not None:
            if int(points_per_side) < 1 or int(crop_n_points_downscale_factor) < 1:
                raise ValueError("points_per_side and crop_n_points_downscale_factor must be >= 1")
            per_layer = [
                int(int(points_per_side) / int(crop_n_points_downscale_factor) ** i)
                for i in range(int(crop_n_layers) + 1)
            ]
            if min(per_layer) < 1:
                raise ValueError(
                    f"points_per_side={points_per_side} leaves no points in the deepest crop layer "
                    f"after downscaling by {crop_n_points_downscale_factor} per layer"
                )
            grids = build_all_layer_point_grids(
                int(points_per_side), int(crop_n_layers), int(crop_n_points_downscale_factor)
            )
        else:
            grids = [np.asarray(g, dtype=np.float64).reshape(-1, 2) for g in point_grids]
            if len(grids) < int(crop_n_layers) + 1:
                raise ValueError(
                    f"point_grids has {len(grids)} grid(s) but crop_n_layers={crop_n_layers} "
                    f"needs {int(crop_n_layers) + 1} (one per layer)"
                )
        if output_mode not in OUTPUT_MODES:
            raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
        if output_mode == "coco_rle":
            try:
                import pycocotools.mask  # noqa: F401
            except ImportError as err:  # pragma: no cover - a dependency
                raise ImportError(
                    "output_mode='coco_rle' needs pycocotools (`pip install pycocotools`)"
                ) from err
        if int(points_per_batch) < 1:
            raise ValueError(f"points_per_batch must be >= 1, got {points_per_batch}")
        self.point_grids = grids
        self.predictor = self._make_predictor(model, int(min_mask_region_area))
        self.points_per_batch = int(points_per_batch)
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.stability_score_offset = stability_score_offset
        self.box_nms_thresh = box_nms_thresh
        self.crop_n_layers = int(crop_n_layers)
        self.crop_nms_thresh = crop_nms_thresh
        self.crop_overlap_ratio = crop_overlap_ratio
        self.crop_n_points_downscale_factor = crop_n_points_downscale_factor
        self.min_mask_region_area = min_mask_region_area
        self.output_mode = output_mode
        # True: the predictor keeps the last crop's embedding after ``generate`` (with
        # crop_n_layers 0, the whole image's), for a caller that prompts it next
        self.keep_embedding = False
        self._stop = threading.Event()

    # -- public -----------------------------------------------------------------------

    @staticmethod
    def _make_predictor(model: Sam, min_mask_region_area: int) -> SamPredictor:
        if is_sam2_model(model):
            raise ValueError(
                "SamAutomaticMaskGenerator takes a SAM 1 model; for SAM 2.1 use "
                "SAM2AutomaticMaskGenerator (or mask_generator_for(model))"
            )
        return SamPredictor(model)

    def cancel(self) -> None:
        """Ask a ``generate`` running in another thread to stop.

        It raises :class:`~src_core.jobs.Cancelled` after the current point batch (or
        within one encoder block while an image crop is being encoded).
        """
        self._stop.set()
        self.predictor.cancel()

    @torch.no_grad()
    def generate(
        self,
        image: np.ndarray,
        progress: Progress | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> list[dict[str, Any]]:
        """Masks for everything in ``image``.

        Parameters
        ----------
        image : numpy.ndarray
            (H, W, 3) uint8 RGB like the reference; grayscale, multichannel and
            other dtypes are converted once with :func:`src_core.preprocess.to_rgb`.
        progress : callable, optional
            ``progress(done, total)`` in point batches: once with 0 before the
            first batch, then after every batch.
        should_stop : callable, optional
            Asked before every crop and point batch; when it returns True,
            :class:`~src_core.jobs.Cancelled` is raised.

        Returns
        -------
        list of dict
            One record per mask, in the reference's order, with ``segmentation``
            (per ``output_mode``), ``area`` (int), ``bbox`` (XYWH),
            ``predicted_iou``, ``point_coords`` ([[x, y]]), ``stability_score``
            and ``crop_box`` (XYWH).
        """
        self._stop.clear()
        rgb = to_rgb(image)
        size = (int(rgb.shape[0]), int(rgb.shape[1]))
        crop_boxes, layers = generate_crop_boxes(size, self.crop_n_layers, self.crop_overlap_ratio)
        per_crop = [-(-len(self.point_grids[layer]) // self.points_per_batch) for layer in layers]
        state = {"done": 0, "total": sum(per_crop)}

        def stop_requested() -> None:
            if self._stop.is_set() or (should_stop is not None and should_stop()):
                raise Cancelled("mask generation was cancelled")

        def batch_done() -> None:
            state["done"] += 1
            if progress is not None:
                progress(state["done"], state["total"])

        if progress is not None:
            progress(0, state["total"])
        parts = []
        for crop_box, layer in zip(crop_boxes, layers):
            parts.append(self._process_crop(rgb, crop_box, layer, size, stop_requested, batch_done))
        masks = _Masks.concatenate(parts)
        if len(crop_boxes) > 1:
            # duplicates between crops: prefer masks from smaller crops
            scores = 1 / box_area(masks.crop_boxes)
            masks = masks.select(nms(masks.boxes.float(), scores, self.crop_nms_thresh))
        if self.min_mask_region_area > 0:
            masks = self._clean_small_regions(
                masks, size, max(self.box_nms_thresh, self.crop_nms_thresh)
            )
        return self._records(masks, size)

    # -- per crop and batch -----------------------------------------------------------

    def _process_crop(self, image, crop_box, layer, size, stop_requested, batch_done) -> _Masks:
        x0, y0, x1, y1 = crop_box
        cropped = image[y0:y1, x0:x1]
        crop_size = (int(cropped.shape[0]), int(cropped.shape[1]))
        stop_requested()
        try:
            self.predictor.set_image(cropped)
        except Cancelled as err:
            raise Cancelled("mask generation was cancelled") from err
        try:
            process = self._batch_processor(crop_box, crop_size, size)
            points = self.point_grids[layer] * np.array(crop_size, dtype=np.float64)[None, ::-1]
            parts = []
            for start in range(0, len(points), self.points_per_batch):
                stop_requested()
                parts.append(process(points[start : start + self.points_per_batch]))
                batch_done()
        finally:
            if not self.keep_embedding:
                self.predictor.reset_image()
        return self._finish_crop(parts, crop_box)

    def _batch_processor(self, crop_box, crop_size, size) -> Callable[[np.ndarray], _Masks]:
        """``process(points)`` for the crop just embedded: one point batch to masks."""
        model = self.predictor.model
        threshold = model.mask_threshold
        offset = self.stability_score_offset
        upsampler = LogitUpsampler(
            model.prompt_encoder.mask_input_size[0],
            model.image_encoder.img_size,
            self.predictor.input_size,
            crop_size,
            floor=min(threshold - offset, threshold, threshold + offset),
        )
        tokens = self._image_tokens()
        return lambda points: self._process_batch(points, tokens, upsampler, crop_box, size)

    def _finish_crop(self, parts: list[_Masks], crop_box) -> _Masks:
        """One crop's batches together, duplicates suppressed, points and crop box set."""
        masks = _Masks.concatenate(parts)
        # duplicates within this crop (NMS is translation-invariant: full-image boxes do)
        masks = masks.select(nms(masks.boxes.float(), masks.iou_preds, self.box_nms_thresh))
        masks.points = masks.points + np.array(crop_box[:2], dtype=np.float64)
        masks.crop_boxes = torch.tensor([crop_box] * len(masks), dtype=torch.int64).reshape(-1, 4)
        return masks

    def _image_tokens(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The decoder's image-side inputs for prompts without a mask, once per crop."""
        encoder = self.predictor.model.prompt_encoder
        features = self.predictor.features
        src = features + encoder.no_mask_embed.weight.reshape(1, -1, 1, 1)
        src = src.flatten(2).transpose(1, 2).contiguous()
        pos = encoder.get_dense_pe().flatten(2).transpose(1, 2).contiguous()
        return src, pos, src + pos

    def _decode(self, coords: torch.Tensor, tokens) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Low-resolution logits of the prompts that can yield a mask, and all IoU predictions.

        Returns ``(low_res, iou_preds, decoded)``: (B, 3) IoU predictions for all B
        prompts and (P, 3, 256, 256) logits for the P prompts listed in ``decoded``.
        The same numbers as ``predict_torch(multimask_output=True)`` without its
        ``postprocess_masks``. When ``pred_iou_thresh > 0`` the decoder's upscaling
        and mask projection (about 40% of its work) is skipped for prompts none of
        whose three masks can pass the IoU filter.
        """
        model = self.predictor.model
        decoder = model.mask_decoder
        labels = torch.ones(len(coords), 1, dtype=torch.int, device=coords.device)
        sparse, _ = model.prompt_encoder(points=(coords[:, None, :], labels), boxes=None, masks=None)
        src, pos, src_with_pos = tokens
        grid = tuple(self.predictor.features.shape[-2:])
        multimask = slice(1, None)
        everything = torch.arange(len(coords))
        staged = hasattr(decoder, "_upscale_and_project") and hasattr(decoder.transformer, "forward_tokens")
        if self.pred_iou_thresh <= 0.0 or not staged:
            low_res, iou_preds = decoder.predict_masks_from_tokens(
                src, pos, sparse, grid, multimask, src_with_pos=src_with_pos
            )
            return low_res, iou_preds, everything
        # predict_masks_from_tokens in two stages, with the IoU filter in between
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        prompt_tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(len(coords), -1, -1), sparse], dim=1
        )
        hs, image_tokens = decoder.transformer.forward_tokens(
            src, pos, prompt_tokens, keys_with_pe=src_with_pos
        )
        iou_preds = decoder.iou_prediction_head(hs[:, 0, :])[:, multimask]
        decoded = everything[(iou_preds > self.pred_iou_thresh).any(dim=1).cpu()]
        token_ids = range(decoder.num_mask_tokens)[multimask]
        if len(decoded) == 0:
            size = (0, len(token_ids), 4 * grid[0], 4 * grid[1])
            return iou_preds.new_zeros(size), iou_preds, decoded
        hs = hs[decoded.to(hs.device)]
        hyper_in = torch.stack(
            [decoder.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in token_ids], dim=1
        )
        low_res = decoder._upscale_and_project(image_tokens[decoded.to(hs.device)], hyper_in, *grid)
        return low_res, iou_preds, decoded

    def _process_batch(self, points, tokens, upsampler, crop_box, size) -> _Masks:
        predictor = self.predictor
        coords = predictor.transform.apply_coords(points, upsampler.original_size)
        coords = torch.as_tensor(coords, dtype=torch.float, device=predictor.device)
        low_res, iou_preds, decoded = self._decode(coords, tokens)
        per_point = iou_preds.shape[1]
        iou_preds = iou_preds.flatten(0, 1).float().cpu()
        candidates = np.arange(len(iou_preds))
        if self.pred_iou_thresh > 0.0:
            candidates = candidates[(iou_preds > self.pred_iou_thresh).numpy()]
        # only masks that passed the IoU filter leave the decoder's resolution
        row_of_prompt = np.full(len(points), -1)
        row_of_prompt[decoded.numpy()] = np.arange(len(decoded))
        rows_needed = row_of_prompt[candidates // per_point] * per_point + candidates % per_point
        selected = torch.from_numpy(rows_needed).to(low_res.device)
        low_res = low_res.flatten(0, 1)[selected].float().cpu().numpy()
        threshold = predictor.model.mask_threshold
        high = threshold + self.stability_score_offset
        low = threshold - self.stability_score_offset
        rows, cols = upsampler.active(low_res)
        crop_x0, crop_y0 = crop_box[0], crop_box[1]
        kept, crops, origins, boxes, stabilities = [], [], [], [], []
        for n, index in enumerate(candidates.tolist()):
            window = upsampler.window(low_res[n], rows[n], cols[n])
            if window is None:
                intersection = union = 0
            else:
                logits, (oy, ox) = window
                intersection = np.count_nonzero(logits > high)
                union = np.count_nonzero(logits > low)
            with np.errstate(invalid="ignore", divide="ignore"):
                stability = np.float32(intersection) / np.float32(union)
            if self.stability_score_thresh > 0.0 and not stability >= self.stability_score_thresh:
                continue
            crop, origin, box = _EMPTY, (0, 0), [0, 0, 0, 0]
            if window is not None:
                crop, (r0, c0) = bbox_crop(logits > threshold)
                if crop.size:
                    origin = (oy + r0 + crop_y0, ox + c0 + crop_x0)
                    h, w = crop.shape
                    box = [ox + c0, oy + r0, ox + c0 + w - 1, oy + r0 + h - 1]
            kept.append(index)
            crops.append(crop)
            origins.append(origin)
            boxes.append(box)
            stabilities.append(stability)
        boxes_t = torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)
        kept_t = torch.tensor(kept, dtype=torch.int64)
        # drop masks touching a crop edge that is not an image edge
        near_edge = is_box_near_crop_edge(boxes_t, crop_box, [0, 0, size[1], size[0]])
        offset = torch.tensor([crop_x0, crop_y0, crop_x0, crop_y0])
        masks = _Masks(
            crops,
            origins,
            boxes_t + offset,
            iou_preds[kept_t],
            torch.tensor(np.asarray(stabilities, dtype=np.float32)),
            np.repeat(points, per_point, axis=0)[kept_t.numpy()],
            torch.zeros(len(kept), 4, dtype=torch.int64),
        )
        if near_edge.any():
            masks = masks.select(torch.nonzero(~near_edge).flatten())
        return masks

    # -- after all crops --------------------------------------------------------------

    def _clean_small_regions(self, masks: _Masks, size, nms_thresh: float) -> _Masks:
        """Fill small holes and drop small islands, then suppress new duplicates.

        As in the reference: NMS prefers masks that needed no cleanup, and only
        masks that survive it take their cleaned shape and box.
        """
        if len(masks) == 0:
            return masks
        cleaned, scores, boxes = [], [], []
        for crop, origin in zip(masks.crops, masks.origins):
            crop, origin, changed = clean_mask_crop(crop, origin, size, self.min_mask_region_area)
            cleaned.append((crop, origin))
            scores.append(0.0 if changed else 1.0)
            h, w = crop.shape
            boxes.append([origin[1], origin[0], origin[1] + w - 1, origin[0] + h - 1] if h else [0] * 4)
        boxes_t = torch.tensor(boxes, dtype=torch.int64)
        keep = nms(boxes_t.float(), torch.tensor(scores), nms_thresh)
        for index in keep.tolist():
            if scores[index] == 0.0:
                masks.crops[index], masks.origins[index] = cleaned[index]
                masks.boxes[index] = boxes_t[index]
        return masks.select(keep)

    def _records(self, masks: _Masks, size) -> list[dict[str, Any]]:
        records = []
        for i in range(len(masks)):
            crop, origin = masks.crops[i], masks.origins[i]
            if self.output_mode == "binary_mask":
                segmentation = np.zeros(size, dtype=bool)
                h, w = crop.shape
                segmentation[origin[0] : origin[0] + h, origin[1] : origin[1] + w] = crop
            else:
                segmentation = crop_to_rle(crop, origin, size)
                if self.output_mode == "coco_rle":
                    segmentation = coco_encode_rle(segmentation)
            x0, y0, x1, y1 = masks.boxes[i].tolist()
            cx0, cy0, cx1, cy1 = masks.crop_boxes[i].tolist()
            records.append(
                {
                    "segmentation": segmentation,
                    "area": int(crop.sum()),
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "predicted_iou": float(masks.iou_preds[i]),
                    "point_coords": [masks.points[i].tolist()],
                    "stability_score": float(masks.stability[i]),
                    "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
                }
            )
        return records
