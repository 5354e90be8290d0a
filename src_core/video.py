"""Lazy, random access to the frames of a video file, and a video writer.

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
import queue
import re
import subprocess
import threading
import time
import uuid
import weakref
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Union

import numpy as np

__all__ = ["VideoFrames", "write_video"]

PathLike = Union[str, "os.PathLike[str]"]

_FRAME_RE = re.compile(r"\bn:\s*(\d+)\s+pts:\s*(-?\d+|NOPTS)\b.*?\bs:(\d+)x(\d+)")
_CONFIG_RE = re.compile(r"config in time_base:\s*(\d+)/(\d+),\s*frame_rate:\s*(\d+)/(\d+)")
_DURATION_RE = re.compile(r"Duration:\s*(\d+):(\d+):(\d+(?:\.\d+)?)")
_START_RE = re.compile(r"\bstart:\s*(-?\d+(?:\.\d+)?)")
_HEADER_FPS_RE = re.compile(r"Video:.*?\s(\d+(?:\.\d+)?) fps")
_STATS_FRAME_RE = re.compile(r"frame=\s*(\d+)")
_ERROR_WORDS = ("error", "invalid", "not found", "no such", "matches no", "could not",
                "failed", "unable", "truncat", "corrupt", "partial file")
# Earlier seek targets (seconds before the frame) tried when a seek overshoots.
_SEEK_BACKOFF_S = (0.0, 2.0, 10.0)


def _ffmpeg_exe() -> str:
    import imageio_ffmpeg  # deferred: importing src_core stays cheap

    return imageio_ffmpeg.get_ffmpeg_exe()


def _summarize(log: Iterable[str], fallback: bool = True) -> str:
    """The first lines of an ffmpeg log that say what went wrong (else its last lines)."""
    lines = [re.sub(r"^(\[[^]]*\] ?)+", "", ln.strip()) for ln in log if ln.strip()]
    errors = list(dict.fromkeys(
        ln for ln in lines if any(w in ln.lower() for w in _ERROR_WORDS)))
    if errors:
        return " | ".join(errors[:3])
    return " | ".join(lines[-3:]) if fallback and lines else ""


class _Decoder:
    """One ffmpeg process: the first video stream as raw RGB frames on a pipe.

    A thread drains stderr, where ``showinfo`` reports every frame's
    timestamp and size before the frame's pixels reach the pipe; the header
    (duration, start time, time base, frame rate) is parsed on the way.
    """

    def __init__(self, exe: str, path: str, seek_s: Optional[float], timeout: float,
                 size: Optional[tuple[int, int]] = None):
        cmd = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", "-copyts"]
        if seek_s is not None:
            cmd += ["-ss", f"{seek_s:.6f}"]
        filters = "showinfo=checksum=0"
        if size is not None:  # keep every frame (W, H), even if the stream changes size
            filters += f",scale={size[0]}:{size[1]}"
        cmd += ["-i", path, "-map", "0:v:0", "-vf", filters,
                "-fps_mode", "passthrough", "-pix_fmt", "rgb24", "-c:v", "rawvideo",
                "-f", "rawvideo", "-"]
        self.timeout = timeout
        self.size = size  # (width, height) of the frames on the pipe
        self.duration_s: Optional[Fraction] = None
        self.start_s: Optional[Fraction] = None
        self.time_base: Optional[Fraction] = None
        self.frame_rate: Optional[Fraction] = None
        self.header_fps: Optional[Fraction] = None
        self.log: collections.deque[str] = collections.deque(maxlen=40)
        self._records: queue.Queue = queue.Queue()
        self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE)
        self._thread = threading.Thread(target=self._drain_stderr, daemon=True,
                                        name="napari-sam-ffmpeg-log")
        self._thread.start()

    def _drain_stderr(self) -> None:
        try:
            for raw in iter(self._proc.stderr.readline, b""):
                line = raw.decode("utf-8", "replace").rstrip()
                m = _FRAME_RE.search(line)
                if m:
                    pts = None if m.group(2) == "NOPTS" else int(m.group(2))
                    self._records.put((pts, int(m.group(3)), int(m.group(4))))
                    continue
                _parse_header_line(self, line)
                if "Parsed_showinfo" not in line:
                    self.log.append(line)
        except (OSError, ValueError):  # pipe closed under us by close()
            pass
        finally:
            self._records.put(None)

    def read(self) -> Optional[tuple[Optional[int], np.ndarray]]:
        """The next frame as ``(pts, (H, W, 3) uint8 array)``, or None at the end."""
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                record = self._records.get(timeout=0.25)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"ffmpeg produced no frame in {self.timeout:.0f} s "
                        f"({_summarize(self.log)})") from None
        if record is None:
            self._records.put(None)  # stay at the end for later reads
            return None
        pts, width, height = record
        if self.size is None:
            self.size = (width, height)
        width, height = self.size
        size = width * height * 3
        buf = bytearray(size)
        view, got = memoryview(buf), 0
        while got < size:
            n = self._proc.stdout.readinto(view[got:])
            if not n:
                return None  # ffmpeg stopped mid-frame: treat as the end
            got += n
        return pts, np.frombuffer(buf, np.uint8).reshape(height, width, 3)

    def finish(self) -> int:
        """Wait for ffmpeg to exit (after the last frame) and return its exit code."""
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.close()
            code = -1
        self._thread.join(timeout=5)
        return code

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass
        for pipe in (self._proc.stdout, self._proc.stderr):
            try:
                pipe.close()
            except OSError:  # pragma: no cover
                pass
        self._thread.join(timeout=5)


def _parse_header_line(target: Any, line: str) -> None:
    """Store the header facts found in one ffmpeg log line on ``target``."""
    m = _CONFIG_RE.search(line)
    if m and target.time_base is None:
        target.time_base = Fraction(int(m.group(1)), int(m.group(2)))
        if int(m.group(3)) > 0 and int(m.group(4)) > 0:
            target.frame_rate = Fraction(int(m.group(3)), int(m.group(4)))
        return
    if "Duration:" in line and target.duration_s is None:
        m = _DURATION_RE.search(line)
        if m:
            h, mnt, s = m.groups()
            target.duration_s = int(h) * 3600 + int(mnt) * 60 + Fraction(s)
        m = _START_RE.search(line)
        if m:
            target.start_s = Fraction(m.group(1))
        return
    if target.header_fps is None and "Video:" in line:
        m = _HEADER_FPS_RE.search(line)
        if m:
            target.header_fps = _snap_rate(m.group(1))


def _snap_rate(text: str) -> Optional[Fraction]:
    """A rate ffmpeg printed rounded ("29.97") as the exact rate it stands for."""
    value = Fraction(text)
    if value <= 0:
        return None
    ntsc = Fraction(round(value * Fraction(1001, 1000)) * 1000, 1001)
    for exact in (Fraction(round(value)), ntsc):
        if exact > 0 and abs(exact - value) < Fraction(6, 1000):
            return exact
    return value


class _Timing:
    """Maps timestamps to frame indices; shared by all cursors of a video."""

    def __init__(self, pts0: Optional[int], time_base: Optional[Fraction],
                 frame_rate: Optional[Fraction], start_s: Optional[Fraction]):
        self.pts0 = pts0
        self.time_base = time_base
        self.frame_rate = frame_rate
        self.start_s = start_s or Fraction(0)
        # False: count frames from the start of the file instead.
        self.exact = None not in (pts0, time_base, frame_rate)

    def index_of(self, pts: int) -> int:
        position = (pts - self.pts0) * self.time_base * self.frame_rate
        return int(position + Fraction(1, 2)) if position >= 0 else -1

    def seek_seconds(self, index: int) -> float:
        """An ``-ss`` value (relative to the file's start) that lands on ``index``."""
        first = self.pts0 * self.time_base - self.start_s
        return float(first + (index - Fraction(1, 2)) / self.frame_rate)


class _Cursor:
    """A decoder positioned in the video, moved forward cheaply or by seeking."""

    def __init__(self, exe: str, path: str, timing: _Timing, max_forward_skip: int,
                 timeout: float):
        self._exe, self._path, self._timing = exe, path, timing
        self._max_forward_skip = max_forward_skip
        self._timeout = timeout
        self._decoder: Optional[_Decoder] = None
        self._next: Optional[int] = None  # index of the next frame; None: unknown
        self.size: Optional[tuple[int, int]] = None  # (width, height), once known
        self.starts = 0
        self.frames_decoded = 0

    def start(self, seek_s: Optional[float] = None) -> _Decoder:
        self.close()
        self._decoder = _Decoder(self._exe, self._path, seek_s, self._timeout, self.size)
        self._next = 0 if seek_s is None else None
        self.starts += 1
        return self._decoder

    @property
    def position(self) -> Optional[int]:
        """Index of the frame the next read yields, if known."""
        return self._next if self._decoder is not None else None

    def adopt(self, decoder: _Decoder, next_index: int) -> None:
        """Continue with a decoder started from the beginning, ``next_index`` frames in."""
        self.close()
        self._decoder, self._next = decoder, next_index
        self.size = decoder.size
        self.starts += 1
        self.frames_decoded += next_index

    def frame(self, index: int) -> np.ndarray:
        """Exactly frame ``index``; IndexError if the video ends before it."""
        attempt = 0
        far = self._timing.exact and index - (self._next or 0) > self._max_forward_skip
        if self._decoder is None or self._next is None or index < self._next or far:
            self._restart(index, attempt)  # (counting frames, only the start is a restart)
        while True:
            record = self._decoder.read()
            if record is None:
                if self._next is None:  # a seek went past the end: try earlier
                    attempt += 1
                    self._restart(index, attempt)
                    continue
                said = _summarize(self._decoder.log, fallback=False)
                raise IndexError(
                    f"frame {index} of {self._path} could not be decoded: the video "
                    f"ended after frame {self._next - 1}"
                    + (f" (ffmpeg: {said})" if said else ""))
            self.frames_decoded += 1
            pts, pixels = record
            timing = self._timing
            if timing.exact:
                found = -1 if pts is None else timing.index_of(pts)
                if self._next is None and found > index:  # landed after it
                    attempt += 1
                    self._restart(index, attempt)
                    continue
                if found < 0 or (self._next is not None and found != self._next):
                    timing.exact = False  # timestamps off the grid: count instead
                    self._restart(index, attempt)
                    continue
            else:
                found = self._next
            self._next = found + 1
            if found == index:
                return pixels

    def _restart(self, index: int, attempt: int) -> None:
        timing = self._timing
        if timing.exact and index > 0 and attempt < len(_SEEK_BACKOFF_S):
            seek_s = timing.seek_seconds(index) - _SEEK_BACKOFF_S[attempt]
            if seek_s > 0:
                self.start(seek_s)
                return
        self.start(None)

    def close(self) -> None:
        if self._decoder is not None:
            self._decoder.close()
            self._decoder = None
        self._next = None


class _Probe:
    """Decode (without transferring pixels) from ``seek_s`` to the end of the file."""

    def __init__(self, exe: str, path: str, seek_s: Optional[float], timing: _Timing,
                 timeout: float):
        cmd = [exe, "-hide_banner", "-nostdin", "-nostats", "-loglevel", "info", "-copyts"]
        if seek_s is not None:
            cmd += ["-ss", f"{seek_s:.6f}"]
        cmd += ["-i", path, "-map", "0:v:0", "-vf", "showinfo=checksum=0",
                "-fps_mode", "passthrough", "-f", "null", "-"]
        self.frames = 0
        self.last_index: Optional[int] = None
        self.regular = True  # every frame one step after the previous one
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            for raw in proc.stderr:
                m = _FRAME_RE.search(raw.decode("utf-8", "replace"))
                if not m:
                    continue
                self.frames += 1
                index = None if m.group(2) == "NOPTS" else timing.index_of(int(m.group(2)))
                if index is None or index < 0 or (
                        self.last_index is not None and index != self.last_index + 1):
                    self.regular = False
                self.last_index = index
        finally:
            timer.cancel()
            proc.stderr.close()
            proc.wait()


def _count_packets(exe: str, path: str, timeout: float) -> int:
    """Number of video packets (about one per frame), read without decoding."""
    cmd = [exe, "-hide_banner", "-nostdin", "-i", path, "-map", "0:v:0", "-c", "copy",
           "-f", "null", "-"]
    out = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, timeout=timeout).stderr
    counts = _STATS_FRAME_RE.findall(out.decode("utf-8", "replace"))
    return int(counts[-1]) if counts else 0


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


def write_video(path: PathLike, frames: Iterable[np.ndarray], fps: float = 30.0, *,
                codec: Optional[str] = None, quality: Optional[float] = None,
                pix_fmt_out: str = "yuv420p", output_params: Optional[list[str]] = None,
                ffmpeg_log_level: str = "warning") -> Path:
    """Write frames to a video file with ffmpeg (via ``imageio_ffmpeg.write_frames``).

    The file is written under a temporary name in the same folder and renamed
    to ``path`` only once ffmpeg has finished, so ``path`` never holds half a
    video.

    Parameters
    ----------
    path : str or path-like
        Output file; its extension picks the container (.mp4, .avi, .mkv...).
    frames : iterable of ndarray
        uint8 frames, all the same shape: (H, W) grey, (H, W, 3) RGB or
        (H, W, 4) RGBA. Consumed one at a time (a generator is fine).
    fps : float
        Frames per second.
    codec : str, optional
        ffmpeg encoder, e.g. "libx264" (the default), "mjpeg", "ffv1".
    quality : float, optional
        1 (worst) to 10 (best), imageio's scale; None leaves the codec's default.
    pix_fmt_out : str
        Pixel format stored in the file ("yuv420p" plays everywhere but needs
        an even width and height; "yuv444p" or "rgb24" keep more colour).
    output_params : list of str, optional
        Extra ffmpeg output arguments, e.g. ``["-crf", "0"]``.

    Returns
    -------
    Path
        ``path``.
    """
    import imageio_ffmpeg

    path = Path(path)
    if not path.parent.is_dir():
        raise FileNotFoundError(f"Cannot write {path}: folder {path.parent} does not exist.")
    iterator = iter(frames)
    first = next(iterator, None)
    if first is None:
        raise ValueError(f"Cannot write {path}: no frames were given.")
    first = np.asarray(first)
    if first.ndim == 2:
        pix_fmt_in: Optional[str] = "gray"
    elif first.ndim == 3:
        pix_fmt_in = {3: "rgb24", 4: "rgba"}.get(first.shape[2])
    else:
        pix_fmt_in = None
    if first.dtype != np.uint8 or pix_fmt_in is None:
        raise ValueError(f"Cannot write {path}: frames must be uint8 (H, W), (H, W, 3) or "
                         f"(H, W, 4); got {first.dtype} {first.shape}.")
    height, width = first.shape[:2]
    if pix_fmt_out in ("yuv420p", "yuvj420p", "nv12") and (height % 2 or width % 2):
        raise ValueError(f"Cannot write {path}: {pix_fmt_out} needs an even width and height, "
                         f"got {width}x{height}; pad the frames or use pix_fmt_out='yuv444p'.")
    if codec:
        _check_encoder(imageio_ffmpeg.get_ffmpeg_exe(), codec)
    tmp = path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")
    writer = imageio_ffmpeg.write_frames(
        str(tmp), (int(width), int(height)), pix_fmt_in=pix_fmt_in, pix_fmt_out=pix_fmt_out,
        fps=Fraction(fps).limit_denominator(1001) if not isinstance(fps, int) else fps,
        quality=quality, codec=codec, macro_block_size=1,
        ffmpeg_log_level=ffmpeg_log_level, output_params=list(output_params or []))
    try:
        writer.send(None)
        frame = first
        count = 0
        while frame is not None:
            frame = np.asarray(frame)
            if frame.shape != first.shape or frame.dtype != first.dtype:
                raise ValueError(f"Cannot write {path}: frame {count} is {frame.dtype} "
                                 f"{frame.shape}, the first was {first.dtype} {first.shape}.")
            writer.send(np.ascontiguousarray(frame))
            count += 1
            frame = next(iterator, None)
        writer.close()
    except (OSError, RuntimeError) as err:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write {path}: {err}") from err
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if not tmp.is_file() or tmp.stat().st_size == 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"ffmpeg could not write {path} (its messages are on stderr).")
    os.replace(tmp, path)
    return path


def _check_encoder(exe: str, codec: str) -> None:
    """ValueError unless this ffmpeg has an encoder called ``codec``."""
    out = subprocess.run([exe, "-hide_banner", "-h", f"encoder={codec}"],
                         stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    text = (out.stdout + out.stderr).decode("utf-8", "replace")
    if f"Encoder {codec} " not in text:
        raise ValueError(f"ffmpeg ({exe}) has no video encoder {codec!r}; try 'libx264', "
                         "'mjpeg' or 'ffv1'.")
