"""Lazy, random access to the frames of a video file (:class:`VideoFrames`).

:class:`VideoFrames` looks like a read-only ``(T, H, W, 3)`` uint8 numpy array
but decodes frames on demand with the ffmpeg binary that ``imageio-ffmpeg``
ships, so a 10,000-frame video opens in a fraction of a second and memory
stays bounded by a small cache, whatever the video's length.

How frames are found
--------------------
Frame ``i`` is, by definition, the ``i``-th frame a plain sequential decode
of the first video stream yields (every decoded frame once: unlike
ffmpeg's default constant-rate output, used by ``imageio_ffmpeg.read_frames``,
no frame is duplicated or dropped to fill gaps in variable-rate video).

One ffmpeg process decodes to raw RGB on a pipe and stays positioned after
the last frame read, so playing forward costs one decode per frame. A
backward jump, or a forward jump of more than ``max_forward_skip`` frames,
restarts ffmpeg with input seeking (``-ss``). Seeking is only as exact as
the container allows, so every frame comes with its timestamp (ffmpeg's
``showinfo`` filter, with ``-copyts``; this is why the module runs ffmpeg
itself rather than through ``read_frames``, which hides them) and its index
is ``(pts - pts_of_frame_0) * frame_rate``. A seek that lands after the
wanted frame is retried from earlier (2 s, 10 s, then the start of the
file); one that lands before it decodes forward to it.

If timestamps turn out not to sit on the frame-rate grid (variable frame
rate, dropped frames, missing timestamps), the video switches for good to
counting frames from the start: still exact, but every backward jump then
decodes from the start of the file. This is noticed when the video is
opened if an mp4/mov's average frame rate differs from its nominal one or
the last second is irregular; otherwise only when reading crosses the
irregularity, and then ``shape[0]`` is recounted (it can change once).

How the frame count is found
----------------------------
ffmpeg's header gives the duration (to 10 ms) and frame rate but no frame
count, and ``duration * fps`` is only an estimate. When the video is opened,
the last second or so of the file is decoded (inside ffmpeg: no pixels are
transferred) and the count is taken from the last frame's timestamp, so
``shape[0]`` is exact without decoding the whole file. A truncated file
whose header promises more than it holds is probed further back, and
``shape[0]`` is the number of frames that can actually be decoded. Only
when the header has no duration is the whole file decoded (again inside
ffmpeg), and when timestamps are irregular the count is the number of
packets in the stream (a pass over the file that reads but does not
decode).

Memory
------
A decoded frame is ``H * W * 3`` bytes. Only the LRU cache (at most
``cache_size`` frames and ``cache_bytes`` bytes) and the frame being read
are held; ffmpeg runs in its own process.
"""


from __future__ import annotations

import collections
import operator
import os
import threading
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import numpy as np

from ._ffmpeg import _count_packets, _Cursor, _Decoder, _ffmpeg_exe, _Probe, _summarize, _Timing



__all__ = ["VideoFrames"]

PathLike = Union[str, "os.PathLike[str]"]


class VideoFrames:
    """A video file as a lazy, read-only ``(T, H, W, 3)`` uint8 array.

    Indexing decodes only the frames asked for: ``frames[i]`` is one
    ``(H, W, 3)`` frame; ``frames[a:b]``, ``frames[range(...)]`` and
    ``frames[[i, j]]`` stack frames; a tuple indexes inside the frames too
    (``frames[5, 10:20, :, 0]``); negative indices count from the end. The
    result is always a new, writable numpy array. See the module docstring
    for how frames are located and counted.

    Parameters
    ----------
    path : str or path-like
        A video file ffmpeg can read (mp4, avi, mov, mkv, ...).
    cache_size : int
        Most decoded frames kept (least recently used are dropped), so that
        going back and forth over a few frames does not decode them again.
    cache_bytes : int
        Most bytes the cache holds, whatever ``cache_size`` says.
    max_forward_skip : int
        A forward jump longer than this seeks instead of decoding through.
    back_prefetch : int
        A backward jump lands this many frames early (at most half the cache)
        and caches them, so that stepping backwards does not seek every frame.
    timeout : float
        Seconds to wait for ffmpeg to produce a frame before giving up.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    ValueError
        ffmpeg cannot read a video stream from the file, or it has no frames.
    """

    def __init__(self, path: PathLike, *, cache_size: int = 32,
                 cache_bytes: int = 512 * 2**20, max_forward_skip: int = 16,
                 back_prefetch: int = 8, timeout: float = 60.0):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"No video file at {self.path}.")
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder, not a video file.")
        if min(cache_size, cache_bytes, max_forward_skip, back_prefetch) < 0:
            raise ValueError("cache_size, cache_bytes, max_forward_skip and back_prefetch "
                             "must be >= 0.")
        self.cache_size = int(cache_size)
        self.back_prefetch = int(back_prefetch)
        self.cache_bytes = int(cache_bytes)
        self._timeout = float(timeout)
        self._exe = _ffmpeg_exe()
        self._lock = threading.RLock()
        self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
        self._closed = False
        self.frames_probed = 0
        self._counted_packets = False

        path_str = str(self.path)
        decoder = _Decoder(self._exe, path_str, None, self._timeout)
        try:
            first = decoder.read()
            if first is None:
                code = decoder.finish()
                if code == 0 and decoder.time_base is not None:
                    raise ValueError(f"{self.path} contains a video stream with no frames.")
                if any("matches no streams" in line for line in decoder.log):
                    raise ValueError(f"{self.path} has no video stream (ffmpeg found "
                                     "no video in it: audio only, or not a video).")
                raise ValueError(f"{self.path} could not be read as a video: ffmpeg says "
                                 f"{_summarize(decoder.log)}")
            pts0, pixels = first
            self._height, self._width = pixels.shape[:2]
            nominal, average = decoder.frame_rate, decoder.header_fps
            rate = nominal or average
            if nominal and average and abs(average / nominal - 1) > Fraction(5, 1000):
                # mp4/mov know the average rate. It differs from the nominal one
                # for variable frame rates, and for mislabelled ones (interlaced
                # "25 fps, 50 tbr"): try the average; the count's probe checks it.
                rate = average
            self._timing = _Timing(pts0, decoder.time_base, rate, decoder.start_s)
            self._cursor = _Cursor(self._exe, path_str, self._timing, max_forward_skip,
                                   self._timeout)
            self._cursor.adopt(decoder, next_index=1)
            self._n_frames = self._count_frames(decoder.duration_s)
            if not self._timing.exact:
                self._timing.frame_rate = nominal or average
            self._frame_rate = self._timing.frame_rate
        except BaseException:
            decoder.close()
            raise
        self._finalizer = weakref.finalize(self, self._cursor.close)
        self._remember(0, pixels)

    # -- metadata ---------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self._n_frames, self._height, self._width, 3)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 4

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        """Bytes the whole video would take decoded (it never is, unless asked)."""
        return self.size

    @property
    def fps(self) -> float:
        """Frames per second (0.0 if ffmpeg does not know)."""
        return float(self._frame_rate) if self._frame_rate else 0.0

    @property
    def frame_rate(self) -> Optional[Fraction]:
        """The exact frame rate, e.g. ``Fraction(30000, 1001)``, if known."""
        return self._frame_rate

    @property
    def exact_timestamps(self) -> bool:
        """True while frames are found by timestamp (fast seeking)."""
        return self._timing.exact

    @property
    def reader_starts(self) -> int:
        """How many times the random-access ffmpeg reader was (re)started."""
        return self._cursor.starts

    @property
    def frames_decoded(self) -> int:
        """Frames the random-access reader has received from ffmpeg."""
        return self._cursor.frames_decoded

    @property
    def closed(self) -> bool:
        return self._closed

    def __len__(self) -> int:
        return self._n_frames

    def __repr__(self) -> str:
        return (f"VideoFrames({str(self.path)!r}, shape={self.shape}, "
                f"fps={self.fps:.3f})")

    # -- frame count ------------------------------------------------------------

    def _count_frames(self, duration_s: Optional[Fraction]) -> int:
        path = str(self.path)
        if self._timing.exact:
            # Decode the file's last second or so; without a duration, all of it.
            margin = max(Fraction(1), 3 / self._timing.frame_rate)
            seek = (duration_s - margin) if duration_s else 0
            while True:
                probe = _Probe(self._exe, path, float(seek) if seek > 0 else None,
                               self._timing, self._timeout)
                self.frames_probed += probe.frames
                if probe.frames and probe.regular:
                    return probe.last_index + 1
                if probe.frames or seek <= 0:
                    break
                seek = seek / 2 if seek > 1 else 0  # the file holds less than it says
            self._timing.exact = False  # irregular timestamps: count frames instead
        self._counted_packets = True
        return max(_count_packets(self._exe, path, self._timeout), 1)

    def _check_count(self) -> None:
        """Recount once if reading found timestamps off the grid (shape[0] may shrink)."""
        with self._lock:
            if not self._timing.exact and not self._counted_packets:
                self._n_frames = self._count_frames(None)

    # -- frame access -----------------------------------------------------------

    def _frame(self, index: int) -> np.ndarray:
        """Frame ``index`` (0 <= index < len), read-only, from cache or ffmpeg."""
        with self._lock:
            if self._closed:
                raise ValueError(f"{self!r} is closed.")
            cached = self._cache.get(index)
            if cached is not None:
                self._cache.move_to_end(index)
                return cached
            # A backward jump seeks anyway; landing a few frames earlier and
            # caching them on the way makes stepping backwards cheap too.
            first = index
            position = self._cursor.position
            if position is None or index < position:
                first = max(0, index - min(self.back_prefetch, self.cache_size // 2))
                while first < index and first in self._cache:
                    first += 1
            try:
                for i in range(first, index + 1):
                    pixels = self._cursor.frame(i)
                    self._remember(i, pixels)
            finally:
                self._check_count()
            return pixels

    def _remember(self, index: int, pixels: np.ndarray) -> None:
        pixels.flags.writeable = False
        if self.cache_size == 0 or pixels.nbytes > self.cache_bytes:
            return
        self._cache[index] = pixels
        while (len(self._cache) > self.cache_size
               or len(self._cache) * pixels.nbytes > self.cache_bytes):
            self._cache.popitem(last=False)

    @property
    def cached_indices(self) -> list[int]:
        """Indices of the frames in the cache, least recently used first."""
        with self._lock:
            return list(self._cache)

    def _frame_index(self, key: Any) -> int:
        i = operator.index(key)
        n = self._n_frames
        if not -n <= i < n:
            raise IndexError(f"frame index {i} is out of range for a video of {n} frames.")
        return i + n if i < 0 else i

    def _frame_indices(self, key: Any) -> Union[int, list[int]]:
        """An int for one frame, or a list of frame indices."""
        if isinstance(key, (bool, np.bool_)):
            raise IndexError("a boolean is not a frame index.")
        if isinstance(key, slice):
            return list(range(*key.indices(self._n_frames)))
        if isinstance(key, (int, np.integer)):
            return self._frame_index(key)
        arr = np.asarray(key)
        if arr.dtype == bool:
            if arr.shape != (self._n_frames,):
                raise IndexError(f"a boolean frame mask must have {self._n_frames} "
                                 f"entries, got shape {arr.shape}.")
            return np.flatnonzero(arr).tolist()
        if arr.ndim > 1 or not (arr.size == 0 or np.issubdtype(arr.dtype, np.integer)):
            raise IndexError(f"cannot select frames with {key!r}: use an int, a slice, "
                             "a range or a 1-D list of ints.")
        if arr.ndim == 0:
            return self._frame_index(arr.item())
        return [self._frame_index(i) for i in arr.tolist()]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = _expand_key(key if isinstance(key, tuple) else (key,))
        first, rest = key[0], key[1:]
        selection = self._frame_indices(first)
        if all(_is_basic(k) for k in rest):
            if isinstance(selection, int):
                return np.array(self._frame(selection)[rest])
            if not selection:
                return np.empty((0, self._height, self._width, 3), np.uint8)[(slice(None),) + rest]
            return np.stack([self._frame(i)[rest] for i in selection])
        # Advanced indexing inside frames: index a stack of the selected frames
        # with the first index rewritten for the stack, exactly as numpy would.
        if isinstance(selection, int):
            wanted, new_first = [selection], 0
        elif isinstance(first, slice):
            wanted, new_first = selection, slice(None)
        else:
            wanted = sorted(set(selection))
            position = {i: p for p, i in enumerate(wanted)}
            new_first = np.array([position[i] for i in selection], dtype=np.intp)
        stack = (np.stack([self._frame(i) for i in wanted]) if wanted
                 else np.empty((0, self._height, self._width, 3), np.uint8))
        return np.array(stack[(new_first,) + rest])

    # -- streaming --------------------------------------------------------------

    def iter_frames(self, start: int = 0, stop: Optional[int] = None) -> Iterator[np.ndarray]:
        """Yield frames ``start`` to ``stop - 1`` in order, with a reader of their own.

        Streaming does not disturb random access (nor its cache), so a
        tracker can run through the video on a worker thread while napari's
        slider reads frames elsewhere. Each frame is a new writable array.
        """
        n = self._n_frames
        start, stop, _ = slice(start, stop).indices(n)
        if self._closed:
            raise ValueError(f"{self!r} is closed.")
        cursor = _Cursor(self._exe, str(self.path), self._timing, 0, self._timeout)
        cursor.size = (self._width, self._height)
        try:
            for index in range(start, stop):
                try:
                    pixels = cursor.frame(index)
                except IndexError:
                    self._check_count()
                    if index >= self._n_frames:  # the count was corrected: done
                        return
                    raise
                yield np.array(pixels)
        finally:
            cursor.close()
            self._check_count()

    def __iter__(self) -> Iterator[np.ndarray]:
        return self.iter_frames()

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        """Decode the WHOLE video into memory: only sensible for small videos."""
        if copy is False:
            raise ValueError("VideoFrames cannot be viewed as an array without a copy.")
        out = np.empty(self.shape, np.uint8)
        for index, frame in enumerate(self.iter_frames()):
            out[index] = frame
        return out if dtype is None else out.astype(dtype, copy=False)

    # -- lifetime ---------------------------------------------------------------

    def close(self) -> None:
        """Stop ffmpeg and drop the cache. Reading afterwards raises ValueError."""
        with self._lock:
            self._closed = True
            self._cursor.close()
            self._cache.clear()

    def __enter__(self) -> "VideoFrames":
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


def _is_basic(key: Any) -> bool:
    return isinstance(key, slice) or (
        isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)))


def _expand_key(key: tuple) -> tuple:
    """Replace an Ellipsis by full slices; reject newaxis and too many indices."""
    if any(k is None for k in key):
        raise IndexError("VideoFrames does not support np.newaxis in indices.")
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...').")
    if n_ellipsis:
        at = next(p for p, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (4 - (len(key) - 1))
        key = key[:at] + fill + key[at + 1:]
    if len(key) > 4:
        raise IndexError(f"too many indices for a 4-D video: {len(key)}.")
    if not key:
        key = (slice(None),)
    return key
