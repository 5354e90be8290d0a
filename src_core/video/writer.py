"""Writing frames to a video file with the ffmpeg that imageio-ffmpeg ships."""

from __future__ import annotations

import os
import subprocess
import uuid
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np

__all__ = ["write_video"]

PathLike = Union[str, "os.PathLike[str]"]


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
