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
    return [(ShownFrames(frames, frames.path.name), {"name": frames.path.stem, "rgb": True, "metadata": metadata},
             "image")]


class ShownFrames:
    """A video as napari shows it: a frame that cannot be decoded (a truncated or damaged
    file) shows black, with one notification per frame, instead of a traceback and a
    stale picture. :attr:`source` is the video itself, for work that must stop on a
    damaged frame (tracking)."""

    def __init__(self, source: Any, name: str = "the video") -> None:
        self.source, self.name = source, name
        self.shape, self.dtype, self.ndim = tuple(source.shape), source.dtype, len(source.shape)
        self.unreadable: set[int] = set()

    def __len__(self) -> int:
        return self.shape[0]

    def close(self) -> None:
        """Close the video (its ffmpeg reader)."""
        self.source.close()

    def __getitem__(self, key: Any) -> Any:
        import numpy as np

        parts = key if isinstance(key, tuple) else (key,)
        first, rest = (parts[0], parts[1:]) if parts else (slice(None), ())
        if isinstance(first, slice):  # napari reads a frame as a one-frame slice too
            frames = range(len(self))[first]
            return np.stack([self._frame(t, rest) for t in frames]) if len(frames) else self.source[key]
        if isinstance(first, (int, np.integer)):
            return self._frame(int(first), rest)
        return self.source[key]

    def _frame(self, t: int, rest: tuple) -> Any:
        try:
            return self.source[(t, *rest)]
        except (IndexError, OSError, ValueError, RuntimeError) as exc:
            import numpy as np

            if not -len(self) <= t < len(self):
                raise
            t %= len(self)
            if t not in self.unreadable:
                self.unreadable.add(t)
                from napari.utils.notifications import show_warning

                show_warning(f"Frame {t} of {self.name} cannot be read ({' '.join(str(exc).split())[:200]}); "
                             "it is shown black.")
            return np.zeros(self.shape[1:], self.dtype)[rest]


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
