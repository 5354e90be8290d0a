"""Segment everything with SAM 2.1: a drop-in for ``sam2.SAM2AutomaticMaskGenerator``.

Meta's SAM 2 generator is its SAM 1 generator with these changes, which this one
makes on top of :class:`~.generator.SamAutomaticMaskGenerator` (same crops, point
grids, NMS and records):

- prompts go through :class:`~src_core.sam2_predictor.SAM2ImagePredictor` in
  normalized coordinates; ``multimask_output`` can be turned off;
- ``min_mask_region_area`` fills holes and removes specks in the low-resolution
  logits before upscaling (the predictor's ``max_hole_area`` and
  ``max_sprinkle_area``), instead of cleaning the final masks;
- ``mask_threshold`` is a parameter; the predicted-IoU default is 0.8;
- ``use_m2m`` refines every mask once with its own logits as the mask prompt
  before the filters.

As in the SAM 1 generator, only masks that pass the predicted-IoU filter are
upscaled (Meta's upscales every candidate), in chunks, so memory stays small on a
CPU. Meta's hole filling needs its CUDA extension and is skipped on a CPU; this one
runs everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .generator import _EMPTY, SamAutomaticMaskGenerator, _Masks
from .geometry import is_box_near_crop_edge
from .regions import bbox_crop

__all__ = ["SAM2AutomaticMaskGenerator", "mask_generator_for"]

_UPSCALE_CHUNK = 16  # masks upscaled at once (16 x 1024 x 1024 float32: 64 MB)


class SAM2AutomaticMaskGenerator(SamAutomaticMaskGenerator):
    """Masks for everything in an image with a SAM 2.1 model (Meta's parameters and
    defaults; see :class:`~.generator.SamAutomaticMaskGenerator` for the others).

    Parameters
    ----------
    model : Sam2Model
        From :func:`src_core.model.sam2.build.build_sam2`.
    mask_threshold : float
        Logits above it are the mask.
    use_m2m : bool
        Refine each mask once with its low-resolution logits as the mask prompt.
    multimask_output : bool
        Three masks per grid point (else one).
    """

    def __init__(
        self,
        model: Any,
        points_per_side: int | None = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.8,
        stability_score_thresh: float = 0.95,
        stability_score_offset: float = 1.0,
        mask_threshold: float = 0.0,
        box_nms_thresh: float = 0.7,
        crop_n_layers: int = 0,
        crop_nms_thresh: float = 0.7,
        crop_overlap_ratio: float = 512 / 1500,
        crop_n_points_downscale_factor: int = 1,
        point_grids: list[np.ndarray] | None = None,
        min_mask_region_area: int = 0,
        output_mode: str = "binary_mask",
        use_m2m: bool = False,
        multimask_output: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            model, points_per_side, points_per_batch, pred_iou_thresh, stability_score_thresh,
            stability_score_offset, box_nms_thresh, crop_n_layers, crop_nms_thresh,
            crop_overlap_ratio, crop_n_points_downscale_factor, point_grids,
            min_mask_region_area, output_mode,
        )  # fmt: skip
        self.mask_threshold = float(mask_threshold)
        self.predictor.mask_threshold = self.mask_threshold
        self.use_m2m = bool(use_m2m)
        self.multimask_output = bool(multimask_output)

    @staticmethod
    def _make_predictor(model: Any, min_mask_region_area: int) -> Any:
        from ..protocols import is_sam2_model
        from ..sam2_predictor import SAM2ImagePredictor

        if not is_sam2_model(model):
            raise ValueError("SAM2AutomaticMaskGenerator takes a SAM 2.1 model; for SAM 1 use SamAutomaticMaskGenerator")
        return SAM2ImagePredictor(
            model, max_hole_area=min_mask_region_area, max_sprinkle_area=min_mask_region_area
        )

    # -- per crop and batch -----------------------------------------------------------

    def _batch_processor(self, crop_box, crop_size, size):
        return lambda points: self._process_batch(points, crop_box, crop_size, size)

    def _decode_points(self, points: np.ndarray, crop_size, mask_input=None, multimask=None):
        predictor = self.predictor
        coords = torch.as_tensor(points, dtype=torch.float32, device=predictor.device)
        coords = predictor._scale(coords, True, crop_size)
        labels = torch.ones(len(coords), dtype=torch.int, device=coords.device)
        multimask = self.multimask_output if multimask is None else multimask
        return predictor._decode(coords[:, None, :], labels[:, None], mask_input=mask_input, multimask_output=multimask)

    def _process_batch(self, points, crop_box, crop_size, size) -> _Masks:
        low_res, iou_preds = self._decode_points(points, crop_size)
        per_point = iou_preds.shape[1]
        points = np.repeat(points, per_point, axis=0)
        low_res, iou_preds = low_res.flatten(0, 1), iou_preds.flatten(0, 1)
        if self.use_m2m:  # each mask once more, prompted with its own (clamped) logits
            refined, refined_ious = [], []
            for start in range(0, len(points), self.points_per_batch):
                chunk = slice(start, start + self.points_per_batch)
                prompt = torch.clamp(low_res[chunk], -32.0, 32.0)[:, None]
                r, q = self._decode_points(points[chunk], crop_size, mask_input=prompt, multimask=False)
                refined.append(r[:, 0])
                refined_ious.append(q[:, 0])
            low_res, iou_preds = torch.cat(refined), torch.cat(refined_ious)
        iou_preds = iou_preds.cpu()
        candidates = np.arange(len(iou_preds))
        if self.pred_iou_thresh > 0.0:
            candidates = candidates[(iou_preds > self.pred_iou_thresh).numpy()]
        threshold, offset = self.mask_threshold, self.stability_score_offset
        kept, crops, origins, boxes, stabilities = [], [], [], [], []
        for start in range(0, len(candidates), _UPSCALE_CHUNK):
            chunk = candidates[start : start + _UPSCALE_CHUNK]
            index = torch.from_numpy(chunk).to(low_res.device)
            logits = self.predictor._postprocess(low_res[index][:, None], crop_size)[:, 0]
            inter = (logits > threshold + offset).flatten(1).sum(1, dtype=torch.int32)
            union = (logits > threshold - offset).flatten(1).sum(1, dtype=torch.int32)
            stability = (inter.float() / union.float()).cpu().numpy()
            binary = (logits > threshold).cpu().numpy()
            for n, cand in enumerate(chunk.tolist()):
                if self.stability_score_thresh > 0.0 and not stability[n] >= self.stability_score_thresh:
                    continue
                crop, (r0, c0) = bbox_crop(binary[n])
                origin, box = (0, 0), [0, 0, 0, 0]
                if crop.size:
                    origin = (r0 + crop_box[1], c0 + crop_box[0])
                    h, w = crop.shape
                    box = [c0, r0, c0 + w - 1, r0 + h - 1]  # in the crop; moved below
                else:
                    crop = _EMPTY
                kept.append(cand)
                crops.append(crop)
                origins.append(origin)
                boxes.append(box)
                stabilities.append(stability[n])
        boxes_t = torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)
        kept_t = torch.tensor(kept, dtype=torch.int64)
        near_edge = is_box_near_crop_edge(boxes_t, crop_box, [0, 0, size[1], size[0]])
        offset_xy = torch.tensor([crop_box[0], crop_box[1], crop_box[0], crop_box[1]])
        masks = _Masks(
            crops,
            origins,
            boxes_t + offset_xy,
            iou_preds[kept_t],
            torch.tensor(np.asarray(stabilities, dtype=np.float32)),
            points[kept_t.numpy()],
            torch.zeros(len(kept), 4, dtype=torch.int64),
        )
        if near_edge.any():
            masks = masks.select(torch.nonzero(~near_edge).flatten())
        return masks

    def _clean_small_regions(self, masks: _Masks, size, nms_thresh: float) -> _Masks:
        return masks  # done on the low-resolution logits by the predictor


def mask_generator_for(model: Any, **settings: Any) -> SamAutomaticMaskGenerator:
    """The generator for ``model``: SAM 2.1's or SAM 1's, with the same settings
    (``min_mask_region_area`` and the others as each generator reads them)."""
    from ..protocols import is_sam2_model

    if is_sam2_model(model):
        return SAM2AutomaticMaskGenerator(model, **settings)
    return SamAutomaticMaskGenerator(model, **settings)
