"""The ffmpeg plumbing of :mod:`src_core.video`: decoder processes, header and
``showinfo`` parsing, timestamps to frame indices, probes that count frames.

See :mod:`src_core.video.frames` for how frames are found and counted.
"""

from __future__ import annotations

import collections
import queue
import re
import subprocess
import threading
import time
from fractions import Fraction
from typing import Any, Iterable, Optional

import numpy as np

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
