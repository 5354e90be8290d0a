"""The images of a dataset for batch labelling: listing them, and reading one.

A dataset is a folder, a glob pattern, or one file; every TIFF stack in it is
one image per plane and every video one image per frame (see
:func:`list_images`). Listing is cheap (TIFF headers, video frame counts);
pixels are read by the task that labels the image (:func:`read_image`), so on
a cluster they are read by the worker, never sent through the client.
"""

from __future__ import annotations

import math
import os
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .video import VIDEO_SUFFIXES

__all__ = [
    "IMAGE_SUFFIXES", "ImageItem", "VIDEO_SUFFIXES", "VideoReaders", "list_images", "read_image",
]

TIFF_SUFFIXES = (".tif", ".tiff")
IMAGE_SUFFIXES = TIFF_SUFFIXES + (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".jp2")


@dataclass(frozen=True)
class ImageItem:
    """One image of a dataset: a whole file, one plane of a TIFF stack or one video frame.

    ``key`` names its outputs; ``problem`` says why a file found while listing
    a folder cannot be labelled (it is then reported, not run). The planes of a
    stack and the frames of a video share ``group`` (the file's key: their labels
    go into one store, ``group.zarr``, at ``index`` of ``count``).
    """

    key: str
    path: str
    kind: str = "image"  # "image", "plane" or "frame"
    index: int | None = None
    image_id: int = 0
    problem: str | None = None
    group: str | None = None
    count: int = 1


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _units(path: Path) -> list[tuple[str, int | None]]:
    """(kind, index) of the images in one file: its planes, its frames, or itself."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                plane_ndim = 3 if series.axes.endswith("S") else 2
                n = math.prod(series.shape[:-plane_ndim])
        except Exception as exc:  # tifffile raises many types for damaged files
            raise ValueError(f"cannot read {path.name} as a TIFF ({_one_line(exc)})") from exc
        return [("image", None)] if n == 1 else [("plane", i) for i in range(n)]
    if suffix in VIDEO_SUFFIXES:
        from .video import VideoFrames

        try:
            with VideoFrames(path, cache_size=0) as video:
                n = video.shape[0]
        except (ValueError, OSError, RuntimeError) as exc:
            raise ValueError(f"cannot read {path.name} as a video ({_one_line(exc)})") from exc
        return [("frame", i) for i in range(n)]
    return [("image", None)]


def _file_keys(files: list[Path]) -> list[str]:
    """Output names: file stems; only names that clash get their suffix, then their folders."""
    root = Path(os.path.commonpath([str(p.parent) for p in files]))
    namings = [
        lambda p: p.name.replace(".", "_"),
        lambda p: str(p.relative_to(root)).replace(os.sep, "_").replace(".", "_"),
    ]
    keys = [p.stem for p in files]
    for naming in namings:
        counts = Counter(keys)
        keys = [naming(p) if counts[k] > 1 else k for p, k in zip(files, keys)]
    counts = Counter(keys)
    return [f"{k}-{i}" if counts[k] > 1 else k for i, k in enumerate(keys)]


def list_images(source: str | os.PathLike) -> list[ImageItem]:
    """The images of a dataset, in order.

    Parameters
    ----------
    source : str or path-like
        A folder (its image and video files, not its subfolders or hidden
        files), a glob pattern (``**`` recurses), or one file: an image, a
        TIFF stack (every plane of the leading axes is an image; RGB samples
        stay together) or a video (every frame is an image). TIFF stacks and
        videos found in a folder or by a pattern are expanded the same way.

    Raises
    ------
    FileNotFoundError
        ``source`` does not exist and is no pattern.
    ValueError
        Nothing to label (empty folder, pattern matching no image), or
        ``source`` is one file that is not a readable image, stack or video.
    """
    text = os.fspath(source)
    path = Path(text).expanduser()
    known = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    single = path.is_file()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                       and p.suffix.lower() in known)
        if not files:
            raise ValueError(f"the folder {path} holds no image or video files "
                             f"(looked for {', '.join(known)})")
    elif single:
        if path.suffix.lower() not in known:
            raise ValueError(f"{path} is not an image, TIFF stack or video file "
                             f"(expected one of {', '.join(known)})")
        files = [path]
    elif any(c in text for c in "*?["):
        import glob

        files = [Path(p) for p in sorted(glob.glob(os.path.expanduser(text), recursive=True))]
        files = [p for p in files if p.is_file() and p.suffix.lower() in known]
        if not files:
            raise ValueError(f"the pattern {text!r} matches no image or video files")
    else:
        raise FileNotFoundError(f"input {path} does not exist; give a folder, a quoted glob "
                                "pattern, an image, a TIFF stack or a video")
    items: list[ImageItem] = []
    for file, key in zip(files, _file_keys(files)):
        try:
            units = _units(file)
            if single and units == [("image", None)] and file.suffix.lower() not in TIFF_SUFFIXES:
                read_image(ImageItem(key, str(file)))  # fail now, not in the batch
        except ValueError as exc:
            if single:
                raise
            units, problem = [("image", None)], _one_line(exc)
        else:
            problem = None
        width = max(4, len(str(len(units) - 1)))
        for kind, index in units:
            name = key if index is None else f"{key}_{index:0{width}d}"
            group = None if index is None else key
            items.append(ImageItem(name, str(file.resolve()), kind, index, len(items), problem, group, len(units)))
    return items


class VideoReaders:
    """Open videos by path, shared between threads, so that frames read one after
    another cost one decode each instead of opening (and probing) the file again.

    At most ``max_open`` stay open; a video dropped from here is closed once no
    thread reads from it any more (:class:`~src_core.video.VideoFrames` closes
    itself when collected).
    """

    def __init__(self, max_open: int = 4) -> None:
        self.max_open = int(max_open)
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Any] = OrderedDict()

    def get(self, path: str) -> Any:
        """The :class:`~src_core.video.VideoFrames` of ``path``."""
        from .video import VideoFrames

        with self._lock:
            if path in self._open:
                self._open.move_to_end(path)
                return self._open[path]
            video = VideoFrames(path, cache_size=0)
            self._open[path] = video
            while len(self._open) > self.max_open:
                self._open.popitem(last=False)
            return video

    def clear(self) -> None:
        with self._lock:
            self._open.clear()


def read_image(item: ImageItem, videos: VideoReaders | None = None) -> np.ndarray:
    """The pixels of one dataset image (any dtype and channels :func:`to_rgb` takes).

    ``videos`` keeps videos open between calls (else each frame opens its video).
    """
    path = Path(item.path)
    try:
        if item.kind == "frame":
            if videos is not None:
                return videos.get(item.path)[item.index]
            from .video import VideoFrames

            with VideoFrames(path, cache_size=0) as video:
                return video[item.index]
        if path.suffix.lower() in TIFF_SUFFIXES:
            if item.kind == "image":
                from .tiling import open_image_lazily

                return open_image_lazily(path)  # memory-mapped when uncompressed (large images)
            return _read_plane(path, int(item.index))
        import imageio.v3 as iio

        return iio.imread(path)
    except Exception as exc:  # readers raise many types for damaged files
        detail = _one_line(exc)
        if detail.startswith("Could not find a backend"):  # imageio's "pip install ..." advice
            detail = "damaged, or not in the format its extension says"
        what = {"frame": f"frame {item.index} of ", "plane": f"plane {item.index} of "}
        raise ValueError(f"cannot read {what.get(item.kind, '')}{path.name} ({detail})") from exc


def _read_plane(path: Path, index: int) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        plane_shape = series.shape[-3:] if series.axes.endswith("S") else series.shape[-2:]
        n = math.prod(series.shape[: len(series.shape) - len(plane_shape)])
        if len(series.pages) == n:  # one page per plane: read just that page
            return tif.asarray(key=index, series=0).reshape(plane_shape)
        return series.asarray().reshape((n, *plane_shape))[index]
