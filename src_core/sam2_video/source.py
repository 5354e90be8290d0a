"""The frames of a video as SAM 2 input, read one at a time.

Meta's video predictor decodes every frame into one tensor before tracking starts
(1.8 GB for 50 frames of 854x480 at 1024 px input). Here a frame is read, resized
and normalized only when the model asks for it; nothing holds the whole video.

What a video can be: a folder of images (Meta's layout: ``00000.jpg``, ``00001.jpg``,
..., sorted by number; other image files and names also work, sorted naturally), a
video file (read lazily by :class:`~src_core.video.VideoFrames`), or any
``(T, H, W[, C])`` array-like (numpy, zarr, dask, ``VideoFrames``).

The model input is made as Meta makes it from JPEG frames: RGB uint8 resized to the
model's square with Pillow's default (bicubic) filter, scaled to [0, 1], normalized
with the ImageNet mean and std. Frames that are not uint8 RGB (16-bit, float,
grayscale, multichannel) go through :func:`src_core.preprocess.to_rgb` with one set
of contrast limits for the whole video (frame 0's percentiles unless given), so the
brightness the model sees does not flicker from frame to frame.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..propagate.frames import FrameReader, FrameReadError

__all__ = ["ImageFolderFrames", "VideoSource"]

_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)


def _natural_key(name: str) -> list:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


class ImageFolderFrames:
    """A folder of image files as a lazy ``(T, H, W, 3)`` array-like (one file a frame).

    Files are ordered by number when every stem is a number (Meta's ``<index>.jpg``),
    else naturally (``frame2`` before ``frame10``).
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        from ..batch_inputs import IMAGE_SUFFIXES

        self.folder = Path(folder)
        files = [p for p in self.folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        if not files:
            raise ValueError(
                f"no image files in {self.folder} (expected frames such as 00000.jpg, 00001.jpg, ...)"
            )
        if all(p.stem.isdigit() for p in files):
            files.sort(key=lambda p: int(p.stem))
        else:
            files.sort(key=lambda p: _natural_key(p.name))
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> np.ndarray:
        from PIL import Image

        path = self.files[index]
        with Image.open(path) as img:
            if img.mode in ("RGB", "L", "I;16", "I", "F"):
                return np.asarray(img)
            return np.asarray(img.convert("RGB"))


def _open(video: Any) -> Any:
    """The array-like behind a folder, a video file or an array."""
    if isinstance(video, (str, os.PathLike)):
        path = Path(video)
        if not path.exists():
            raise FileNotFoundError(f"no video or frame folder at {path}")
        if path.is_dir():
            return ImageFolderFrames(path)
        from ..video import VideoFrames

        return VideoFrames(path)
    return video


class VideoSource:
    """A video's frames, made into SAM 2 input on demand.

    Parameters
    ----------
    video : path or array-like
        A folder of frames, a video file, or a ``(T, H, W[, C])`` array-like.
    image_size : int
        The model's square input side.
    contrast_limits : (low, high) or per-channel pairs, optional
        Values mapped to 0 and 255 for frames that are not uint8 RGB; by default
        frame 0's 0.5 and 99.5 percentiles, kept for every frame.
    channels, channel_axis : optional
        Channels to show for multichannel frames, and the frames' channel axis
        (see :func:`~src_core.preprocess.to_rgb`).
    percentiles : (low, high)
        The percentiles of frame 0 that set the contrast when no limits are given.

    Raises
    ------
    FileNotFoundError, ValueError
        No such path; an empty folder or video; an array-like that is not a video.
    """

    def __init__(
        self,
        video: Any,
        image_size: int,
        *,
        contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
        channels: Sequence[int] | None = None,
        channel_axis: int | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
    ) -> None:
        self.reader = FrameReader(_open(video))
        self.image_size = int(image_size)
        self.channels = channels
        self.channel_axis = channel_axis
        self.percentiles = percentiles
        self.contrast_limits = contrast_limits
        self.height, self.width = (int(v) for v in self.reader.image_shape)

    def __len__(self) -> int:
        return len(self.reader)

    @property
    def num_frames(self) -> int:
        return len(self.reader)

    def check_index(self, frame_idx: Any) -> int:
        """``frame_idx`` as an int in range; a ValueError saying the video's length if not."""
        if isinstance(frame_idx, bool) or not isinstance(frame_idx, (int, np.integer)):
            raise TypeError(f"frame index must be an integer, got {frame_idx!r}")
        n = len(self)
        if not 0 <= int(frame_idx) < n:
            raise ValueError(
                f"frame {int(frame_idx)} is outside the video: it has {n} frames (0 to {n - 1})"
            )
        return int(frame_idx)

    def rgb(self, frame_idx: int) -> np.ndarray:
        """Frame ``frame_idx`` as (H, W, 3) uint8 RGB; FrameReadError if unreadable."""
        frame = self.reader.read(frame_idx)
        if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[-1] == 3 and self.channels is None:
            return frame
        from ..preprocess import to_rgb
        from ..tiling.source import TiledImage

        options = {"channels": self.channels, "channel_axis": self.channel_axis}
        try:
            if self.contrast_limits is None and frame.dtype not in (np.uint8, np.bool_):
                # one setting for the whole video, from the first frame
                first = frame if frame_idx == 0 else self.reader.read(0)
                self.contrast_limits = TiledImage(first, percentiles=self.percentiles, **options).contrast_limits
            rgb = to_rgb(frame, contrast_limits=self.contrast_limits, **options)
        except ValueError as err:
            raise FrameReadError(f"frame {frame_idx}: {err}", frame_idx) from err
        return rgb if rgb.dtype == np.uint8 else np.rint(rgb).astype(np.uint8)

    def model_input(self, frame_idx: int) -> torch.Tensor:
        """(3, S, S) float32 model input of a frame, normalized as Meta's loader does."""
        from PIL import Image

        rgb = self.rgb(frame_idx)
        size = (self.image_size, self.image_size)
        if rgb.shape[:2] != size:
            rgb = np.array(Image.fromarray(rgb).resize(size))  # Pillow's default: bicubic
        x = torch.from_numpy(np.array(rgb)).permute(2, 0, 1).to(torch.float64) / 255.0  # a writable copy
        x = x.to(torch.float32)
        mean = torch.tensor(_MEAN, dtype=torch.float32)[:, None, None]
        std = torch.tensor(_STD, dtype=torch.float32)[:, None, None]
        return (x - mean) / std

