"""``SAM2VideoPredictor``: SAM 2.1's memory-based video tracking, a drop-in for Meta's.

The same methods, arguments and return values as Meta's
``sam2.sam2_video_predictor.SAM2VideoPredictor`` (the parity tests compare the two
frame by frame): ``init_state``, ``add_new_points_or_box``, ``add_new_mask``,
``propagate_in_video``, ``clear_all_prompts_in_frame``, ``remove_object`` and
``reset_state``. Each object is tracked on its own, with its own memory, as in
Meta's version 1.1.

Where it differs, on purpose:

- frames are read one at a time when the model needs them (:mod:`.source`), from a
  folder, a video file or any array-like; nothing holds the whole video;
- the memory bank is bounded (:mod:`.state`): resident memory does not grow with
  the video's length;
- it never prints; frame indices, prompts and masks are checked, with one-line
  errors naming what was expected.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..model.sam2.sam2_base import NO_OBJ_SCORE
from ..sam2_predictor import fill_small_regions
from .source import VideoSource
from .state import COND, NON_COND, ObjectTrack, VideoState

__all__ = ["SAM2VideoPredictor", "build_sam2_video_predictor"]

Result = tuple[int, list, torch.Tensor]  # frame index, object ids, (N, 1, H, W) logits


class SAM2VideoPredictor:
    """Track objects through a video from clicks, boxes or masks on any frames.

    Parameters
    ----------
    model : Sam2Model
        A SAM 2.1 model built for video (:func:`build_sam2_video_predictor`).
    fill_hole_area : int
        Holes (background regions) of at most this many pixels in the
        low-resolution masks are filled; 0 turns it off.
    non_overlap_masks : bool
        Where objects overlap in the returned masks, only the highest score stays.
    clear_non_cond_mem_around_input : bool
        After clicks on a tracked frame, forget the tracked memory of the frames
        around it (they may show the old mistake).
    add_all_frames_to_correct_as_cond : bool
        Frames corrected after tracking also become conditioning frames.
    bounded_memory : bool
        Keep only the outputs the model can still read (see :mod:`.state`); False
        keeps every frame's, as Meta's predictor does.
    """

    def __init__(
        self,
        model: Any,
        *,
        fill_hole_area: int = 8,
        non_overlap_masks: bool = False,
        clear_non_cond_mem_around_input: bool = False,
        add_all_frames_to_correct_as_cond: bool = False,
        bounded_memory: bool = True,
    ) -> None:
        self.model = model
        self.fill_hole_area = fill_hole_area
        self.non_overlap_masks = non_overlap_masks
        self.clear_non_cond_mem_around_input = clear_non_cond_mem_around_input
        self.add_all_frames_to_correct_as_cond = add_all_frames_to_correct_as_cond
        self.bounded_memory = bounded_memory

    @classmethod
    def for_model(cls, model: Any, **options: Any) -> SAM2VideoPredictor:
        """A video predictor sharing the weights of a model built for images.

        Meta's video predictor encodes the memory of a prompted frame from the
        binarized mask the user saw; a model built by ``build_sam2`` for the image
        predictor has that off, so a view of it with that setting on is used (same
        parameters, nothing copied).
        """
        if not model.config.binarize_mask_from_pts_for_mem_enc:
            view = copy.copy(model)  # shares parameters and submodules
            view.config = dataclasses.replace(model.config, binarize_mask_from_pts_for_mem_enc=True)
            model = view
        return cls(model, **options)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def memory_window(self) -> int:
        """How far back (in frames) the model reads tracked outputs: memories and pointers."""
        cfg = self.model.config
        memories = (self.model.num_maskmem - 1) * cfg.memory_temporal_stride_for_eval + 2
        return max(memories, cfg.max_obj_ptrs_in_encoder if cfg.use_obj_ptrs_in_encoder else 0)

    # ---- session ------------------------------------------------------------------

    @torch.inference_mode()
    def init_state(
        self,
        video_path: Any,
        offload_video_to_cpu: bool = False,
        offload_state_to_cpu: bool = False,
        async_loading_frames: bool = False,
        *,
        contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
        channels: Sequence[int] | None = None,
        channel_axis: int | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> VideoState:
        """Open a video: a frame folder, a video file or a (T, H, W[, C]) array-like.

        ``offload_video_to_cpu`` and ``async_loading_frames`` are accepted for Meta's
        callers and change nothing (frames are read lazily anyway). Frames that are not
        uint8 RGB are converted with one contrast setting for the whole video
        (``contrast_limits``, else ``percentiles`` of frame 0; see
        :class:`~.source.VideoSource`);
        ``offload_state_to_cpu`` keeps the memory bank in CPU memory. Unlike Meta's,
        no frame is encoded yet (a run may start anywhere in the video).
        """
        del offload_video_to_cpu, async_loading_frames
        if isinstance(video_path, (str, os.PathLike)) and not os.path.exists(video_path):
            raise FileNotFoundError(f"no video or frame folder at {video_path}")
        source = VideoSource(
            video_path, self.image_size, contrast_limits=contrast_limits, channels=channels,
            channel_axis=channel_axis, percentiles=percentiles,
        )  # fmt: skip
        device = self.device
        storage = torch.device("cpu") if offload_state_to_cpu else device
        return VideoState(source, device, storage, bounded=self.bounded_memory)

    @torch.inference_mode()
    def reset_state(self, inference_state: VideoState) -> None:
        """Forget every object, prompt and output (the video stays open)."""
        inference_state.objects.clear()

    # ---- prompts ------------------------------------------------------------------

    @torch.inference_mode()
    def add_new_points_or_box(
        self,
        inference_state: VideoState,
        frame_idx: int,
        obj_id: Hashable,
        points: Any = None,
        labels: Any = None,
        clear_old_points: bool = True,
        normalize_coords: bool = True,
        box: Any = None,
    ) -> Result:
        """Clicks (x, y; label 1 positive, 0 negative) and/or a box (x0, y0, x1, y1)
        for one object on one frame. Returns the frame, the object ids and every
        object's (N, 1, H, W) mask logits on that frame at the video's size."""
        state = inference_state
        frame_idx = state.source.check_index(frame_idx)
        if (points is None) != (labels is None):
            raise ValueError("points and labels must be given together")
        if points is None and box is None:
            raise ValueError("give points with labels, a box, or both")
        coords, point_labels = _points(points, labels)
        if box is not None:
            if not clear_old_points:
                raise ValueError(
                    "a box must come before any click: add it with clear_old_points=True"
                )
            corners = _as_float_tensor(box, "box").reshape(-1)
            if corners.numel() != 4:
                raise ValueError(f"box must be 4 numbers x0, y0, x1, y1, got {corners.numel()}")
            coords = torch.cat([corners.reshape(1, 2, 2), coords], dim=1)
            point_labels = torch.cat([torch.tensor([[2, 3]], dtype=torch.int32), point_labels], dim=1)
        if normalize_coords:
            coords = coords / torch.tensor([state.video_width, state.video_height])
        coords = (coords * self.image_size).to(state.device)
        point_labels = point_labels.to(state.device)

        track = state.object(obj_id)
        old = None if clear_old_points else track.point_inputs.get(frame_idx)
        if old is not None:
            coords = torch.cat([old["point_coords"], coords], dim=1)
            point_labels = torch.cat([old["point_labels"], point_labels], dim=1)
        point_inputs = {"point_coords": coords, "point_labels": point_labels}
        track.point_inputs[frame_idx] = point_inputs
        track.mask_inputs.pop(frame_idx, None)

        is_init, reverse, is_cond = self._frame_role(track, frame_idx)
        key = COND if is_cond else NON_COND
        # the frame's earlier logits refine the new clicks
        prev_logits = None
        prev = track.latest_output(frame_idx, key)
        if prev is not None and prev["pred_masks"] is not None:
            prev_logits = torch.clamp(prev["pred_masks"].to(state.device), -32.0, 32.0)
        out, _ = self._run_frame(
            state, track, frame_idx, is_init, point_inputs, None, reverse,
            run_mem_encoder=False, prev_logits=prev_logits,
        )  # fmt: skip
        track.temp[key][frame_idx] = out
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, is_cond)

    add_new_points = add_new_points_or_box  # Meta's older name

    @torch.inference_mode()
    def add_new_mask(
        self, inference_state: VideoState, frame_idx: int, obj_id: Hashable, mask: Any
    ) -> Result:
        """A (H, W) mask of one object on one frame (the video's size or the model's)."""
        state = inference_state
        frame_idx = state.source.check_index(frame_idx)
        mask_t = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
        if mask_t.dim() != 2:
            raise ValueError(f"mask must be 2D (H, W), got shape {tuple(mask_t.shape)}")
        video_hw = (state.video_height, state.video_width)
        model_hw = (self.image_size, self.image_size)
        if tuple(mask_t.shape) not in (video_hw, model_hw):
            raise ValueError(
                f"mask is {mask_t.shape[1]}x{mask_t.shape[0]} pixels, the video's frames are "
                f"{state.video_width}x{state.video_height}"
            )
        mask_in = mask_t.bool()[None, None].float().to(state.device)
        if tuple(mask_t.shape) != model_hw:
            mask_in = F.interpolate(
                mask_in, size=model_hw, mode="bilinear", align_corners=False, antialias=True
            )
            mask_in = (mask_in >= 0.5).float()
        track = state.object(obj_id)
        track.mask_inputs[frame_idx] = mask_in
        track.point_inputs.pop(frame_idx, None)
        is_init, reverse, is_cond = self._frame_role(track, frame_idx)
        out, _ = self._run_frame(
            state, track, frame_idx, is_init, None, mask_in, reverse, run_mem_encoder=False
        )
        key = COND if is_cond else NON_COND
        track.temp[key][frame_idx] = out
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, is_cond)

    @torch.inference_mode()
    def clear_all_prompts_in_frame(
        self, inference_state: VideoState, frame_idx: int, obj_id: Hashable, need_output: bool = True
    ) -> Result | None:
        """Remove one object's clicks or mask on one frame (its output stays, as tracked)."""
        state = inference_state
        frame_idx = state.source.check_index(frame_idx)
        track = state.object(obj_id)
        track.point_inputs.pop(frame_idx, None)
        track.mask_inputs.pop(frame_idx, None)
        track.temp[COND].pop(frame_idx, None)
        track.temp[NON_COND].pop(frame_idx, None)
        out = track.outputs[COND].pop(frame_idx, None)
        if out is not None:  # no longer prompted: kept as an ordinary tracked frame
            track.outputs[NON_COND][frame_idx] = out
            track.unmark_tracked(frame_idx)
        if not need_output:
            return None
        is_cond = any(frame_idx in t.temp[COND] for t in state)
        return frame_idx, state.obj_ids, self._frame_masks(state, frame_idx, is_cond)

    @torch.inference_mode()
    def remove_object(
        self, inference_state: VideoState, obj_id: Hashable, strict: bool = False, need_output: bool = True
    ) -> tuple[list, list[tuple[int, torch.Tensor]]]:
        """Forget one object. Returns the remaining ids and, if ``need_output``, the
        masks of the frames it was prompted on (other objects may show more there)."""
        state = inference_state
        track = state.objects.get(obj_id)
        if track is None:
            if strict:
                raise ValueError(f"no object with id {obj_id!r}; the objects are {state.obj_ids}")
            return state.obj_ids, []
        prompted = sorted(set(track.point_inputs) | set(track.mask_inputs))
        del state.objects[obj_id]
        updated = []
        if need_output and state.objects:
            for frame_idx in prompted:
                is_cond = any(frame_idx in t.temp[COND] for t in state)
                updated.append((frame_idx, self._frame_masks(state, frame_idx, is_cond)))
        return state.obj_ids, updated

    # ---- propagation --------------------------------------------------------------

    @torch.inference_mode()
    def propagate_in_video_preflight(self, inference_state: VideoState) -> None:
        """Encode the memories of just-prompted frames and merge them into the tracks."""
        state = inference_state
        if not state.objects:
            raise RuntimeError("no object has prompts yet: add points, a box or a mask first")
        for track in state:
            for key in (NON_COND, COND):
                for frame_idx, out in track.temp[key].items():
                    if out["maskmem_features"] is None:
                        high_res = F.interpolate(
                            out["pred_masks"].to(state.device),
                            size=(self.image_size, self.image_size),
                            mode="bilinear",
                            align_corners=False,
                        )
                        out["maskmem_features"], out["maskmem_pos_enc"] = self._encode_memory(
                            state, frame_idx, high_res, out["object_score_logits"]
                        )
                    track.outputs[key][frame_idx] = out
                    if self.clear_non_cond_mem_around_input:
                        self._clear_around(track, frame_idx)
                track.temp[key].clear()
            if not track.outputs[COND]:
                raise RuntimeError(
                    f"object {track.obj_id!r} has no prompts: add points, a box or a mask for it first"
                )
            for frame_idx in track.outputs[COND]:
                track.outputs[NON_COND].pop(frame_idx, None)

    @torch.inference_mode()
    def propagate_in_video(
        self,
        inference_state: VideoState,
        start_frame_idx: int | None = None,
        max_frame_num_to_track: int | None = None,
        reverse: bool = False,
        *,
        obj_ids: Sequence[Hashable] | None = None,
    ) -> Iterator[Result]:
        """Track every object frame by frame from ``start_frame_idx`` (default: the
        first prompted frame), forward or in ``reverse``, over at most
        ``max_frame_num_to_track`` frames after the start. Yields ``(frame index,
        object ids, (N, 1, H, W) mask logits at the video's size)``.

        ``obj_ids`` (not in Meta's) tracks only these objects, e.g. those prompted
        late in a backward pass; the others keep their outputs."""
        state = inference_state
        self.propagate_in_video_preflight(state)
        if start_frame_idx is None:
            start_frame_idx = min(t for track in state for t in track.outputs[COND])
        start = state.source.check_index(start_frame_idx)
        count = state.num_frames if max_frame_num_to_track is None else int(max_frame_num_to_track)
        if count < 0:
            raise ValueError(f"max_frame_num_to_track must be >= 0, got {max_frame_num_to_track}")
        if reverse:
            end = max(start - count, 0)
            order = range(start, end - 1, -1) if start > 0 else range(0)
        else:
            end = min(start + count, state.num_frames - 1)
            order = range(start, end + 1)
        if obj_ids is None:
            tracks = list(state)
        else:
            unknown = [i for i in obj_ids if i not in state.objects]
            if unknown:
                raise ValueError(f"no object with id {unknown[0]!r}; the objects are {state.obj_ids}")
            tracks = [state.objects[i] for i in obj_ids]
        ids = [t.obj_id for t in tracks]
        for frame_idx in order:
            masks = []
            for track in tracks:
                cond_out = track.outputs[COND].get(frame_idx)
                if cond_out is not None:
                    pred = cond_out["pred_masks"].to(state.device)
                    if self.clear_non_cond_mem_around_input:
                        self._clear_around(track, frame_idx)
                else:
                    out, pred = self._run_frame(
                        state, track, frame_idx, False, None, None, reverse, run_mem_encoder=True
                    )
                    track.outputs[NON_COND][frame_idx] = out
                track.mark_tracked(frame_idx, reverse)
                if state.bounded:
                    track.forget_far_from(frame_idx, self.memory_window)
                masks.append(pred)
            yield frame_idx, ids if obj_ids is not None else state.obj_ids, self._video_res(
                state, torch.cat(masks, dim=0)
            )

    def object_score_logits(self, inference_state: VideoState, frame_idx: int) -> dict[Hashable, float]:
        """Each object's occlusion-head logit on a frame it has an output for (not in
        Meta's): above 0, the model sees the object there."""
        scores = {}
        for track in inference_state:
            out = track.latest_output(frame_idx)
            if out is not None:
                scores[track.obj_id] = float(out["object_score_logits"].reshape(-1)[0])
        return scores

    # ---- internals ----------------------------------------------------------------

    def _frame_role(self, track: ObjectTrack, frame_idx: int) -> tuple[bool, bool, bool]:
        """(first prompt on an untracked frame, tracked in reverse, stored as conditioning)."""
        is_init = not track.was_tracked(frame_idx)
        reverse = False if is_init else track.tracked_in_reverse(frame_idx)
        return is_init, reverse, is_init or self.add_all_frames_to_correct_as_cond

    def _features(self, state: VideoState, frame_idx: int):
        """The model's features of one frame (the last frame's are cached)."""
        cached = state.cached_features
        if cached is not None and cached[0] == frame_idx:
            backbone_out = cached[1]
        else:
            image = state.source.model_input(frame_idx).to(state.device)[None]
            with self.model.compute_context():
                backbone_out = self.model.forward_image(image)
            state.cached_features = (frame_idx, backbone_out)
        _, feats, pos, sizes = self.model._prepare_backbone_features(backbone_out)
        return feats, pos, sizes

    def _pos_enc(self, state: VideoState, pos_enc: list[torch.Tensor] | None) -> list[torch.Tensor] | None:
        """The memories' position encoding, stored once per session."""
        if pos_enc is None:
            return None
        if state.maskmem_pos_enc is None:
            state.maskmem_pos_enc = [x[0:1].clone() for x in pos_enc]
        return [x.expand(pos_enc[0].shape[0], -1, -1, -1) for x in state.maskmem_pos_enc]

    def _encode_memory(self, state, frame_idx, high_res_masks, object_score_logits):
        feats, _, sizes = self._features(state, frame_idx)
        with self.model.compute_context():
            features, pos_enc = self.model._encode_new_memory(
                current_vision_feats=feats,
                feat_sizes=sizes,
                pred_masks_high_res=high_res_masks,
                object_score_logits=object_score_logits,
                is_mask_from_pts=True,  # frames the user prompted
            )
        features = features.to(torch.bfloat16).to(state.storage_device)
        return features, self._pos_enc(state, pos_enc)

    def _run_frame(
        self,
        state: VideoState,
        track: ObjectTrack,
        frame_idx: int,
        is_init: bool,
        point_inputs: Mapping[str, torch.Tensor] | None,
        mask_inputs: torch.Tensor | None,
        reverse: bool,
        run_mem_encoder: bool,
        prev_logits: torch.Tensor | None = None,
    ) -> tuple[dict, torch.Tensor]:
        """One object on one frame: its stored output and its (1, 1, h, w) logits."""
        feats, pos, sizes = self._features(state, frame_idx)
        with self.model.compute_context():
            out = self.model.track_step(
                frame_idx=frame_idx,
                is_init_cond_frame=is_init,
                current_vision_feats=feats,
                current_vision_pos_embeds=pos,
                feat_sizes=sizes,
                point_inputs=point_inputs,
                mask_inputs=mask_inputs,
                output_dict=track.outputs,
                num_frames=state.num_frames,
                track_in_reverse=reverse,
                run_mem_encoder=run_mem_encoder,
                prev_sam_mask_logits=prev_logits,
            )
        memory = out["maskmem_features"]
        if memory is not None:  # stored in bfloat16: half the memory, as Meta stores it
            memory = memory.to(torch.bfloat16).to(state.storage_device)
        pred = out["pred_masks"].float()
        if self.fill_hole_area > 0:
            pred = fill_small_regions(pred, 0.0, self.fill_hole_area, holes=True, value=0.1)
        stored = {
            "maskmem_features": memory,
            "maskmem_pos_enc": self._pos_enc(state, out["maskmem_pos_enc"]),
            "pred_masks": pred.to(state.storage_device),
            "obj_ptr": out["obj_ptr"],
            "object_score_logits": out["object_score_logits"].float(),
        }
        return stored, pred

    def _frame_masks(self, state: VideoState, frame_idx: int, is_cond: bool) -> torch.Tensor:
        """Every object's newest logits on one frame at the video's size (absent ones
        at the no-object score)."""
        key = COND if is_cond else NON_COND
        size = (state.video_height, state.video_width)
        masks = torch.full(
            (len(state.objects), 1, *size), NO_OBJ_SCORE, dtype=torch.float32, device=state.storage_device
        )
        for i, track in enumerate(state):
            out = track.latest_output(frame_idx, key)
            if out is None:
                continue
            obj_mask = out["pred_masks"]
            if tuple(obj_mask.shape[-2:]) != size:
                obj_mask = F.interpolate(obj_mask, size=size, mode="bilinear", align_corners=False)
            masks[i : i + 1] = obj_mask
        return self._video_res(state, masks)

    def _video_res(self, state: VideoState, masks: torch.Tensor) -> torch.Tensor:
        masks = masks.to(state.device)
        size = (state.video_height, state.video_width)
        if tuple(masks.shape[-2:]) != size:
            masks = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
        if self.non_overlap_masks:
            masks = self.model._apply_non_overlapping_constraints(masks)
        return masks

    def _clear_around(self, track: ObjectTrack, frame_idx: int) -> None:
        """Forget the tracked memory near a prompted frame (it may hold the old mistake)."""
        reach = self.model.config.memory_temporal_stride_for_eval * self.model.num_maskmem
        for t in range(frame_idx - reach, frame_idx + reach + 1):
            track.outputs[NON_COND].pop(t, None)


def _as_float_tensor(value: Any, what: str) -> torch.Tensor:
    try:
        return torch.as_tensor(np.asarray(value, dtype=np.float32) if not isinstance(value, torch.Tensor) else value).float()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be numbers, got {value!r}") from err


def _points(points: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, N, 2) float coordinates and (1, N) int labels (N may be 0)."""
    if points is None:
        return torch.zeros(1, 0, 2), torch.zeros(1, 0, dtype=torch.int32)
    coords = _as_float_tensor(points, "points")
    if coords.dim() == 2:
        coords = coords[None]
    if coords.dim() != 3 or coords.shape[0] != 1 or coords.shape[-1] != 2:
        raise ValueError(f"points must be (N, 2) x, y pairs, got shape {tuple(coords.shape)}")
    lab = _as_float_tensor(labels, "labels")
    if lab.dim() == 1:
        lab = lab[None]
    if lab.dim() != 2 or lab.shape != coords.shape[:2]:
        raise ValueError(f"{coords.shape[1]} points need {coords.shape[1]} labels, got shape {tuple(lab.shape)}")
    if not torch.isin(lab, torch.tensor([-1.0, 0.0, 1.0, 2.0, 3.0])).all():
        raise ValueError("point labels must be 1 (object) or 0 (background)")
    if not torch.isfinite(coords).all():
        raise ValueError("points must be finite numbers")
    return coords, lab.to(torch.int32)


def build_sam2_video_predictor(
    model_type: str = "sam2.1_hiera_large",
    checkpoint: Any = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    download: bool = True,
    *,
    progress: Any = None,
    apply_postprocessing: bool = True,
    **predictor_options: Any,
) -> SAM2VideoPredictor:
    """A SAM 2.1 video predictor with weights, as Meta's ``build_sam2_video_predictor``
    makes it: an unstable single mask falls back to the best multimask output, the
    memory of prompted frames holds the binarized mask the user saw, and small holes
    are filled (``apply_postprocessing``).

    ``model_type``, ``checkpoint``, ``device``, ``dtype``, ``download`` and
    ``progress`` are :func:`~src_core.model.sam2.build.build_sam2`'s; other keywords
    go to :class:`SAM2VideoPredictor` (e.g. ``bounded_memory=False``).
    """
    from ..model.sam2.build import build_sam2

    overrides: dict[str, Any] = {}
    if apply_postprocessing:
        overrides["binarize_mask_from_pts_for_mem_enc"] = True
        predictor_options.setdefault("fill_hole_area", 8)
    else:
        overrides.update(
            dynamic_multimask_via_stability=False,
            dynamic_multimask_stability_delta=0.05,
            dynamic_multimask_stability_thresh=0.98,
        )
        predictor_options.setdefault("fill_hole_area", 0)
    model = build_sam2(
        model_type, checkpoint, device, dtype, download, progress=progress, **overrides
    )
    return SAM2VideoPredictor(model, **predictor_options)
