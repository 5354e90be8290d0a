"""What a SAM 2 video session remembers: prompts and a bounded memory bank per object.

Meta's ``inference_state`` dict keeps every frame's output (memory features,
low-resolution masks) for the whole video, so it grows by about 0.8 MB per frame
and object at 1024 px. Here each object keeps its prompted (conditioning) frames
for good, and other frames' outputs only while the model can still read them: the
memory attention looks back ``num_maskmem - 1`` tracked frames (times the
temporal stride) and the object pointers ``max_obj_ptrs_in_encoder - 1`` frames,
so outputs farther than that from the frame just tracked are dropped
(:meth:`ObjectTrack.forget_far_from`). Memory stays flat however long the video.

The price: clicks added later on a frame whose neighbours were dropped see the
prompted frames' memory and nothing of the neighbours (Meta's would also see the
neighbours' memory). ``bounded=False`` keeps everything, as Meta does.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .source import VideoSource

__all__ = ["COND", "NON_COND", "ObjectTrack", "VideoState"]

COND = "cond_frame_outputs"
NON_COND = "non_cond_frame_outputs"
# frames_tracked codes: how a frame was last tracked
_UNTRACKED, _FORWARD, _REVERSE = 0, 1, 2


def _outputs() -> dict[str, dict[int, dict]]:
    return {COND: {}, NON_COND: {}}


@dataclass
class ObjectTrack:
    """One object's prompts and outputs (Meta's per-object slices of the state)."""

    obj_id: Hashable
    num_frames: int
    point_inputs: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    mask_inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    # track_step's ``output_dict``: conditioning frames and tracked frames
    outputs: dict[str, dict[int, dict]] = field(default_factory=_outputs)
    # outputs of frames just prompted, merged into ``outputs`` when propagation starts
    temp: dict[str, dict[int, dict]] = field(default_factory=_outputs)
    # one byte a frame: never tracked, last tracked forward, or in reverse
    tracked: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.tracked = np.zeros(self.num_frames, dtype=np.uint8)

    def was_tracked(self, frame_idx: int) -> bool:
        return bool(self.tracked[frame_idx])

    def tracked_in_reverse(self, frame_idx: int) -> bool:
        return int(self.tracked[frame_idx]) == _REVERSE

    def mark_tracked(self, frame_idx: int, reverse: bool) -> None:
        self.tracked[frame_idx] = _REVERSE if reverse else _FORWARD

    def unmark_tracked(self, frame_idx: int) -> None:
        self.tracked[frame_idx] = _UNTRACKED

    def latest_output(self, frame_idx: int, storage_key: str | None = None) -> dict | None:
        """The newest output on a frame: a just-prompted one (of ``storage_key``, or
        either kind), else a conditioning one, else a tracked one."""
        keys = (storage_key,) if storage_key else (COND, NON_COND)
        for key in keys:
            out = self.temp[key].get(frame_idx)
            if out is not None:
                return out
        out = self.outputs[COND].get(frame_idx)
        return out if out is not None else self.outputs[NON_COND].get(frame_idx)

    def forget_far_from(self, frame_idx: int, window: int) -> None:
        """Drop tracked (non-conditioning) outputs more than ``window`` frames away."""
        non_cond = self.outputs[NON_COND]
        for t in [t for t in non_cond if abs(t - frame_idx) > window]:
            del non_cond[t]

    def clear(self) -> None:
        self.point_inputs.clear()
        self.mask_inputs.clear()
        for store in (self.outputs, self.temp):
            store[COND].clear()
            store[NON_COND].clear()
        self.tracked[:] = _UNTRACKED


class VideoState:
    """A video session: its frames (read lazily), objects, and cached features.

    ``state["num_frames"]``, ``["video_height"]``, ``["video_width"]``, ``["obj_ids"]``,
    ``["device"]`` and ``["storage_device"]`` read as in Meta's ``inference_state``.
    """

    _KEYS = ("num_frames", "video_height", "video_width", "obj_ids", "device", "storage_device")

    def __init__(
        self,
        source: VideoSource,
        device: torch.device,
        storage_device: torch.device,
        bounded: bool,
    ) -> None:
        self.source = source
        self.num_frames = source.num_frames
        self.video_height, self.video_width = source.height, source.width
        self.device = device
        self.storage_device = storage_device
        self.bounded = bounded
        self.objects: dict[Hashable, ObjectTrack] = {}
        # the backbone output of the last frame encoded: (frame index, features)
        self.cached_features: tuple[int, Any] | None = None
        # the memories' spatial position encoding: the same for every frame and object
        self.maskmem_pos_enc: list[torch.Tensor] | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(f"{key!r}: a VideoState offers {', '.join(self._KEYS)}")
        return getattr(self, key)

    @property
    def obj_ids(self) -> list[Hashable]:
        return list(self.objects)

    def __iter__(self) -> Iterator[ObjectTrack]:
        return iter(self.objects.values())

    def object(self, obj_id: Hashable) -> ObjectTrack:
        """The object with this id, added if new (objects can join at any time)."""
        try:
            hash(obj_id)
        except TypeError:
            raise ValueError(f"object ids must be hashable (an int or a str), got {obj_id!r}") from None
        track = self.objects.get(obj_id)
        if track is None:
            for known in self.objects:
                if str(known) == str(obj_id):  # 1 and "1": ids read from a file as text
                    raise ValueError(
                        f"object id {obj_id!r} ({type(obj_id).__name__}) looks like object {known!r} "
                        f"({type(known).__name__}) already in the video: use one kind of id"
                    )
            track = self.objects[obj_id] = ObjectTrack(obj_id, self.num_frames)
        return track

    def memory_bytes(self) -> int:
        """Bytes held by the stored outputs (memory shared between them counted once)."""
        storages: dict[tuple[str, int], int] = {}
        for track in self:
            for store in (track.outputs, track.temp):
                for outs in store.values():
                    for out in outs.values():
                        for value in out.values():
                            for t in value if isinstance(value, list) else [value]:
                                if isinstance(t, torch.Tensor):
                                    storage = t.untyped_storage()
                                    storages[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return sum(storages.values())
