"""Frames read one at a time from whatever holds them: arrays, videos, lazy stacks."""

from __future__ import annotations

from typing import Any

import numpy as np


class FrameReadError(RuntimeError):
    """A frame could not be read (truncated or damaged video, failing storage).

    Attributes
    ----------
    frame : int
        The frame that failed.
    """

    def __init__(self, message: str, frame: int) -> None:
        super().__init__(message)
        self.frame = frame


class FrameReader:
    """Lazy access to the frames of a ``(T, H, W)`` or ``(T, H, W, C)`` array-like.

    Anything with ``len()`` and integer indexing works: a numpy array or memmap,
    :class:`~src_core.video.VideoFrames`, a dask or zarr array, a synthetic
    scene. Only the frame asked for is read and converted to numpy.

    Parameters
    ----------
    frames : array-like
        The frames.
    what : str
        "frame" or "slice", for messages.
    """

    def __init__(self, frames: Any, what: str = "frame") -> None:
        if isinstance(frames, (str, bytes)) or not hasattr(frames, "__getitem__"):
            raise ValueError(
                f"frames must be an array-like of frames (numpy array, VideoFrames, dask/zarr array), "
                f"got {type(frames).__name__}; open a video file with src_core.video.VideoFrames(path)"
            )
        try:
            n = len(frames)
        except TypeError:
            raise ValueError(f"frames must have a length, got {type(frames).__name__}") from None
        shape = getattr(frames, "shape", None)
        if shape is not None and len(shape) not in (3, 4):
            raise ValueError(
                f"frames must be (T, H, W) or (T, H, W, C), got shape {tuple(shape)}; "
                "a single 2D image has nothing to propagate to"
            )
        if n == 0:
            raise ValueError("there are no frames to track in (the video or stack is empty)")
        self.frames = frames
        self.what = what
        self._n = int(n)
        self._image_shape: tuple[int, int] | None = (
            (int(shape[1]), int(shape[2])) if shape is not None else None
        )

    def __len__(self) -> int:
        return self._n

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) of the frames (reads frame 0 if the source has no ``shape``)."""
        if self._image_shape is None:
            self._image_shape = self.read(0).shape[:2]
        return self._image_shape

    def read(self, index: int) -> np.ndarray:
        """Frame ``index`` as a numpy array; FrameReadError when it cannot be read."""
        try:
            frame = np.asarray(self.frames[index])
        except (OSError, RuntimeError, ValueError, IndexError, EOFError) as err:
            raise FrameReadError(f"could not read {self.what} {index}: {err}", index) from err
        if frame.ndim not in (2, 3):
            raise FrameReadError(
                f"{self.what} {index} has shape {frame.shape}; expected (H, W) or (H, W, C)", index
            )
        if self._image_shape is not None and frame.shape[:2] != self._image_shape:
            raise FrameReadError(
                f"{self.what} {index} is {frame.shape[1]}x{frame.shape[0]} pixels, the others are "
                f"{self._image_shape[1]}x{self._image_shape[0]}",
                index,
            )
        self._image_shape = frame.shape[:2]
        return frame
