"""napari readers: video files as a lazy (T, Y, X, 3) image layer, label stores as a lazy Labels layer.

Frames are decoded on demand by :class:`src_core.video.VideoFrames`, so
opening a long video is quick and moving the time slider decodes only the
frames shown. A ``labels.zarr`` folder written by napari-sam (``napari-sam
track``, batch labeling of a stack) opens as a Labels layer backed by the
store: napari reads the plane shown, and painting writes into the store.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Optional, Union


LayerDataTuple = tuple[Any, dict[str, Any], str]
ReaderFunction = Callable[[Union[str, list[str]]], list[LayerDataTuple]]


def get_reader(path: Union[str, list[str]]) -> Optional[ReaderFunction]:
    """The video reader for one video path (``src_core.video.VIDEO_SUFFIXES``, any case), else None."""
    from src_core.video import VIDEO_SUFFIXES

    if not isinstance(path, (str, Path)):
        return None  # napari passes a list for a multi-file open: not ours
    if Path(path).suffix.lower() not in VIDEO_SUFFIXES:
        return None
    return read_video


def read_video(path: Union[str, list[str]]) -> list[LayerDataTuple]:
    """Open a video as one lazy RGB image layer; fps and path go in its metadata."""
    from src_core.video import VideoFrames

    frames = VideoFrames(Path(path))
    metadata = {"fps": frames.fps, "path": str(frames.path)}
    return [(frames, {"name": frames.path.stem, "rgb": True, "metadata": metadata}, "image")]


def get_labels_reader(path: Union[str, list[str]]) -> Optional[ReaderFunction]:
    """The Labels reader for a zarr folder napari-sam wrote labels into, else None (napari's own zarr reader)."""
    if not isinstance(path, (str, Path)):
        return None
    from src_core.propagate.labelstore import is_label_store

    return read_labels if is_label_store(path) else None


def read_labels(path: Union[str, list[str]]) -> list[LayerDataTuple]:
    """Open a napari-sam label store as one Labels layer on the store itself (nothing read up front)."""
    from src_core.propagate.labelstore import LabelStore

    path = Path(path)
    store = LabelStore(path)
    name = path.stem if path.stem != "labels" else f"{path.parent.name} labels"
    return [(store.array, {"name": name, "metadata": {"path": str(path)}}, "labels")]
