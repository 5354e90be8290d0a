"""The Track panel's layer contract: napari layers <-> tracking prompts and results, no Qt.

Layers (names are part of the contract, documented in README):

- "SAM track prompts" (Points, (T, Y, X) or (T, Z, Y, X)): clicks; feature ``obj_id``
  (the object, >= 1) and ``label`` (1 object, 0 background). Filled with the
  object's colour in "SAM tracks"; background points have a red border.
- "SAM track boxes" (Shapes, as the points): rectangles; feature ``obj_id``.
- "SAM tracks" (Labels, the image's shape without RGB): the tracked objects, label
  value = object id; backed by a zarr :class:`~src_core.propagate.LabelStore` on
  disk (uint16, one compressed chunk per plane), never a whole-video array in memory.
- "SAM trajectories" (Tracks): centroids per object over time (through time only).

The first axis is time (a video or a (T, Y, X[, C]) stack) or z (a volume): the
engine does not care, the panel only chooses the functions. A (T, Z, Y, X) stack
is tracked through one axis at a time, at the shown plane of the other
(:class:`TrackAxis`): through time at the shown z, or through z at the shown t.
"""

from __future__ import annotations

import atexit
import itertools
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src_core.prompts import box_from_corners_rc, rc_to_xy
from src_core.propagate import KEY, LabelStore, ObjectPrompt, TrackingWriter, prompts_from_labels, table_from_labels

from . import _layers as L

PROMPTS = "SAM track prompts"
BOXES = "SAM track boxes"
TRACKS = "SAM tracks"
TRAJECTORIES = "SAM trajectories"
BACKGROUND_BORDER = "red"
OBJECT_BORDER = "white"


@dataclass(frozen=True)
class TrackAxis:
    """The axis tracked through, and where on the other leading axis of a (T, Z, Y, X) stack.

    ``axis`` 0 is the first axis (time, or z of a (Z, Y, X) stack), 1 the z of a
    (T, Z, Y, X) stack; ``at`` is the index on the other leading axis (None for
    3D data). :meth:`take` gives the (n, H, W[, C]) array the engine runs on.
    """

    axis: int = 0
    at: int | None = None

    def take(self, array):
        """The tracked (n, Y, X[, C]) part of a (T, Y, X[, C]) or (T, Z, Y, X[, C]) array (a view).

        numpy arrays give a numpy view; others (the zarr store behind "SAM tracks",
        a dask or lazy video array) a :class:`FramesOf` that reads and writes one
        frame at a time.
        """
        if self.at is None:
            return array
        if isinstance(array, np.ndarray):
            return array[:, self.at] if self.axis == 0 else array[self.at]
        return FramesOf(array, self)

    def plane(self, frame: int) -> tuple[int, ...]:
        """The leading-axes index of ``frame`` (``(t,)`` or ``(t, z)``)."""
        if self.at is None:
            return (int(frame),)
        return (int(frame), self.at) if self.axis == 0 else (self.at, int(frame))

    def frame(self, plane: tuple[int, ...]) -> int | None:
        """The frame of a leading-axes index, None if it is not on this axis."""
        if self.at is None:
            return int(plane[0])
        if plane[1 - self.axis] != self.at:
            return None
        return int(plane[self.axis])


class FramesOf:
    """The frames along a :class:`TrackAxis` of a 4D array that is not numpy, one at a time."""

    def __init__(self, array, along: TrackAxis) -> None:
        self.array, self.along = array, along
        shape = tuple(array.shape)
        self.shape = (shape[along.axis], *shape[2:])
        self.dtype = array.dtype
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, frame) -> np.ndarray:
        return np.asarray(self.array[self.along.plane(frame)])

    def __setitem__(self, frame, value) -> None:
        self.array[self.along.plane(frame)] = value


class StackedFrames:
    """The frames of several same-shape (n, Y, X) arrays as one lazy (n, Y, X, C) stack:
    frame ``t`` reads frame ``t`` of each and stacks them as channels (the image layer
    and the ticked "+ channels" layers, tracked together)."""

    def __init__(self, arrays) -> None:
        self.arrays = list(arrays)
        first = tuple(self.arrays[0].shape)
        if any(tuple(a.shape) != first for a in self.arrays) or len(first) != 3:
            raise ValueError(f"channel stacks must all be (n, Y, X) of one shape, got "
                             f"{[tuple(a.shape) for a in self.arrays]}")
        self.shape = (*first, len(self.arrays))
        self.dtype = np.result_type(*[np.dtype(a.dtype) for a in self.arrays])
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"StackedFrames reads one frame at a time (an int), got {index!r}")
        return np.stack([np.asarray(a[int(index)]) for a in self.arrays], axis=-1).astype(self.dtype, copy=False)


def check_stack(image_layer) -> tuple[int, ...]:
    """``(n, H, W)`` or ``(T, Z, H, W)`` of an image that can be tracked through, else ValueError."""
    shape = L.spatial_shape(image_layer)
    if len(shape) not in (3, 4):
        raise ValueError(
            f"'{image_layer.name}' has spatial shape {shape}: tracking needs a video, a "
            "(T, Y, X) / (Z, Y, X) stack or a (T, Z, Y, X) stack (RGB or one channel), the tracked axis first"
        )
    return shape  # type: ignore[return-value]


def ensure_track_layers(viewer, image_layer) -> dict:
    """Create (or reuse, when they fit the image) the track layers except the Tracks one."""
    shape = check_stack(image_layer)
    ndim = len(shape)
    geometry = {"scale": tuple(image_layer.scale)[:ndim], "translate": tuple(image_layer.translate)[:ndim]}
    existing = {layer.name: layer for layer in viewer.layers}
    layers = {}
    labels = existing.get(TRACKS)
    if labels is None or tuple(labels.data.shape) != shape:
        labels = viewer.add_labels(track_store(shape).array, name=TRACKS, opacity=0.55, **geometry)
    layers[TRACKS] = labels
    size = max(3.0, 0.03 * max(shape[-2:]))
    points = existing.get(PROMPTS)
    if points is None or points.ndim != ndim or "obj_id" not in points.features:
        points = viewer.add_points(
            np.zeros((0, ndim)),
            name=PROMPTS,
            features={"obj_id": np.zeros(0, int), "label": np.zeros(0, int)},
            feature_defaults={"obj_id": 1, "label": 1},
            face_color=object_color(labels, 1),
            border_color=OBJECT_BORDER,
            border_width=0.15,
            size=size,
            **geometry,
        )
    layers[PROMPTS] = points
    boxes = existing.get(BOXES)
    if boxes is None or boxes.ndim != ndim or "obj_id" not in boxes.features:
        boxes = viewer.add_shapes(
            name=BOXES,
            ndim=ndim,
            features={"obj_id": np.zeros(0, int)},
            feature_defaults={"obj_id": 1},
            edge_color=object_color(labels, 1),
            face_color="transparent",
            edge_width=max(1.0, 0.008 * max(shape[-2:])),
            **geometry,
        )
    layers[BOXES] = boxes
    return layers


def track_store(shape: tuple[int, ...]) -> LabelStore:
    """An empty label store for "SAM tracks" in a temporary folder (removed when napari exits).

    The layer reads the frame shown and the engine writes frame by frame: a long
    video's labels never sit in memory (a chunk per plane, compressed, on disk).
    """
    folder = Path(tempfile.mkdtemp(prefix="napari-sam-tracks-"))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return LabelStore(folder / "labels.zarr", shape, np.uint16)


def object_color(labels_layer, obj_id: int) -> np.ndarray:
    """The RGBA colour object ``obj_id`` has in ``labels_layer``."""
    return np.asarray(labels_layer.get_color(int(obj_id)), dtype=float)


def _ids(layer) -> np.ndarray:
    if not len(layer.data):
        return np.zeros(0, int)
    return np.asarray(layer.features["obj_id"], dtype=float).astype(int)


def color_prompts(points_layer, boxes_layer, labels_layer) -> None:
    """Paint every prompt in its object's colour (background clicks get a red border)."""
    ids = _ids(points_layer)
    if len(ids):
        labels = np.asarray(points_layer.features["label"], dtype=int)
        points_layer.face_color = np.stack([object_color(labels_layer, i) for i in ids])
        points_layer.border_color = [OBJECT_BORDER if v == 1 else BACKGROUND_BORDER for v in labels]
    ids = _ids(boxes_layer)
    if len(ids):
        boxes_layer.edge_color = np.stack([object_color(labels_layer, i) for i in ids])


def largest_id(points_layer, boxes_layer, labels_layer) -> int:
    """The largest object id in use in the prompts and the tracks (0 if none)."""
    found = [0, int(np.asarray(labels_layer.data).max(initial=0))]
    for layer in (points_layer, boxes_layer):
        ids = _ids(layer)
        if len(ids):
            found.append(int(ids.max()))
    return max(found)


def collect_track_prompts(
    points_layer, boxes_layer, labels_layer, key_frames: Iterable[int] = (), along: TrackAxis = TrackAxis()
) -> list[ObjectPrompt]:
    """The objects prompted in the layers, one :class:`ObjectPrompt` per frame and object.

    Clicks and boxes of one object on one frame make one prompt (the last box drawn
    wins). On ``key_frames`` (frames the user corrected) every object in "SAM tracks"
    becomes a mask prompt, which replaces that object's clicks on that frame.
    In a (T, Z, Y, X) stack only the prompts on the tracked axis ``along`` count.
    Raises ValueError (from :class:`ObjectPrompt`) for an object without a positive
    click, box or mask.
    """
    grouped: dict[tuple[int, int], dict] = {}
    lead = points_layer.ndim - 2
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, points_layer.ndim)
    if len(data):
        ids = _ids(points_layer)
        labels = np.asarray(points_layer.features["label"], dtype=int)
        for row, obj_id, label in zip(data, ids, labels):
            frame = along.frame(tuple(int(round(v)) for v in row[:lead]))
            if frame is None:
                continue
            entry = grouped.setdefault((frame, int(obj_id)), {"points": [], "labels": []})
            entry["points"].append(rc_to_xy(row[lead:])[0])
            entry["labels"].append(int(label))
    for shape_type, corners, obj_id in zip(boxes_layer.shape_type, boxes_layer.data, _ids(boxes_layer)):
        if shape_type != "rectangle":
            continue
        corners = np.asarray(corners, dtype=float)
        frame = along.frame(tuple(int(round(v)) for v in corners[0, :lead]))
        if frame is None:
            continue
        entry = grouped.setdefault((frame, int(obj_id)), {"points": [], "labels": []})
        entry["box"] = box_from_corners_rc(corners[:, lead:])
    prompts = {}
    for (frame, obj_id), entry in grouped.items():
        prompts[frame, obj_id] = ObjectPrompt(
            frame=frame,
            obj_id=obj_id,
            points=np.reshape(entry["points"], (-1, 2)),
            labels=np.asarray(entry["labels"], int),
            box=entry.get("box"),
        )
    tracks = along.take(labels_layer.data)
    for frame in sorted(set(key_frames)):
        for p in prompts_from_labels(np.asarray(tracks[frame]), frame, key=True):
            prompts[frame, p.obj_id] = p
    return [prompts[k] for k in sorted(prompts)]


def combine_tables(*tables: np.ndarray) -> np.ndarray:
    """Tables (structured, as ``TrackingWriter.table``) in one, one row per frame and id: the last wins."""
    parts = [t for t in tables if len(t)]
    if not parts:
        return tables[0] if tables else TrackingWriter().table
    merged = np.concatenate(parts)
    key = merged["frame"] * (int(merged["id"].max()) + 1) + merged["id"]
    _, last = np.unique(key[::-1], return_index=True)
    kept = merged[len(merged) - 1 - last]
    return kept[np.lexsort((kept["id"], kept["frame"]))]


def changed_planes(event_value, lead_shape: tuple[int, ...]) -> set[tuple[int, ...]]:
    """The leading-axes indices (``(t,)`` or ``(t, z)``) a Labels ``paint`` event touched."""
    planes: set[tuple[int, ...]] = set()
    for indices, *_ in event_value:
        lead = list(indices[: len(lead_shape)])
        if any(isinstance(i, slice) for i in lead):  # whole axes: every index they cover
            ranges = [range(*i.indices(n)) if isinstance(i, slice) else np.unique(np.asarray(i))
                      for i, n in zip(lead, lead_shape)]
            planes.update(tuple(int(v) for v in combo) for combo in itertools.product(*ranges))
            continue
        stacked = np.stack([np.asarray(i).reshape(-1) for i in lead], axis=1)
        planes.update(tuple(int(v) for v in row) for row in np.unique(stacked, axis=0))
    return planes


def merge_key_frames(table: np.ndarray, labels, key_frames: Iterable[int]) -> np.ndarray:
    """``table`` with the rows of ``key_frames`` measured again from ``labels`` (status key).

    The user may have edited those frames after the last run: the labels are the truth.
    """
    keys = sorted(set(key_frames))
    if not keys:
        return table
    parts = [table[~np.isin(table["frame"], keys)]] if len(table) else []
    parts += [table_from_labels(labels, f, f + 1, status=KEY) for f in keys]
    parts = [p for p in parts if len(p)]
    if not parts:
        return table
    merged = np.concatenate(parts)
    return merged[np.lexsort((merged["id"], merged["frame"]))]
