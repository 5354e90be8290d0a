"""Where an object will be on the next frame: a smoothed-velocity motion model."""

from __future__ import annotations

import numpy as np


class MotionModel:
    """Constant velocity, smoothed exponentially, for one object.

    The velocity is the frame-to-frame displacement of the centroid, averaged as
    ``v = smoothing * latest + (1 - smoothing) * v``: 1 follows the last step
    only, small values trust the history. While the object is lost the
    prediction keeps moving but slows down by ``decay`` per frame, so a search
    does not run away with an old velocity.

    Parameters
    ----------
    smoothing : float
        Weight of the newest displacement, in (0, 1]. 0 disables motion (the
        object is predicted where it was last seen).
    decay : float
        Factor applied to the velocity for every frame the object stays lost.
    """

    def __init__(self, smoothing: float = 0.5, decay: float = 0.95) -> None:
        if not 0.0 <= smoothing <= 1.0:
            raise ValueError(f"smoothing must be in [0, 1], got {smoothing}")
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"decay must be in [0, 1], got {decay}")
        self.smoothing = float(smoothing)
        self.decay = float(decay)
        self.position: np.ndarray | None = None
        #: Where the whole object is thought to be: the centroid when it was seen
        #: whole, carried on by the velocity while only part of it was visible.
        self.body_position: np.ndarray | None = None
        self.velocity = np.zeros(2)
        self._seen = 0

    def reset(self, position: tuple[float, float]) -> None:
        """Start again at ``position`` (x, y) with no velocity (e.g. on a key frame)."""
        self.position = np.asarray(position, dtype=float)
        self.body_position = self.position.copy()
        self.velocity = np.zeros(2)
        self._seen = 1

    def observe(self, position: tuple[float, float], frames: int = 1, steady: bool = True) -> None:
        """The object was found at ``position`` (x, y), ``frames`` frames after the last time.

        ``steady=False`` (its visible area just changed a lot, e.g. it is going
        behind something) moves the position but keeps the velocity: the centroid
        of a part coming into or out of sight does not move like the object.
        """
        position = np.asarray(position, dtype=float)
        if self.position is None or self.smoothing == 0.0 or not steady:
            if self.body_position is None or self.smoothing == 0.0:
                self.body_position = position
            else:
                self.body_position = self.body_position + self.velocity * max(frames, 1)
            self.position = position
            self._seen += 1
            return
        step = (position - self.position) / max(frames, 1)
        # the first step is the best estimate there is: no averaging with zero
        weight = 1.0 if self._seen == 1 else self.smoothing
        self.velocity = weight * step + (1.0 - weight) * self.velocity
        self.position = position
        self.body_position = position
        self._seen += 1

    def displacement(self, frames: int = 1, lost: bool = False) -> np.ndarray:
        """Predicted (dx, dy) from the last position after ``frames`` frames.

        When ``lost``, every frame moves ``decay`` times less than the one before.
        """
        if self.smoothing == 0.0 or frames <= 0:
            return np.zeros(2)
        if not lost or self.decay == 1.0:
            return self.velocity * frames
        steps = (1.0 - self.decay**frames) / (1.0 - self.decay) if self.decay < 1.0 else frames
        return self.velocity * steps

    def search_span(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """Two guesses of where a lost object is after ``frames`` frames.

        The slowing prediction of :meth:`predict` (``lost=True``) from the last
        centroid seen, and the whole body carried on at constant velocity (an
        animal that went behind something comes out where it was heading).
        A search should cover both.
        """
        if self.position is None:
            raise RuntimeError("MotionModel.search_span needs an observed position first")
        body = self.body_position if self.body_position is not None else self.position
        return self.predict(frames, lost=True), body + self.velocity * max(frames, 0)

    def predict(self, frames: int = 1, lost: bool = False) -> np.ndarray:
        """Predicted (x, y) after ``frames`` frames (see :meth:`displacement`)."""
        if self.position is None:
            raise RuntimeError("MotionModel.predict needs an observed position first")
        return self.position + self.displacement(frames, lost)


def predicted_box(
    bbox: tuple[int, int, int, int],
    shift: np.ndarray,
    margin: float,
    image_shape: tuple[int, int],
    min_pad: float = 2.0,
) -> np.ndarray:
    """A previous bounding box moved by ``shift`` and enlarged, as a SAM box prompt.

    Parameters
    ----------
    bbox : tuple of int
        Inclusive ``(x0, y0, x1, y1)`` of the previous mask.
    shift : array
        (dx, dy) predicted displacement.
    margin : float
        Each side moves out by ``margin`` times the box's width (height), and at
        least ``min_pad`` pixels.
    image_shape : tuple of int
        (H, W); the box is clipped to the image.

    Returns
    -------
    numpy.ndarray
        ``(x0, y0, x1, y1)`` float, with ``x1 > x0`` and ``y1 > y0``.
    """
    x0, y0, x1, y1 = (float(v) for v in bbox)
    x1, y1 = x1 + 1.0, y1 + 1.0  # pixel edges
    pad_x = max(margin * (x1 - x0), min_pad)
    pad_y = max(margin * (y1 - y0), min_pad)
    dx, dy = float(shift[0]), float(shift[1])
    return clip_box(
        np.array([x0 + dx - pad_x, y0 + dy - pad_y, x1 + dx + pad_x, y1 + dy + pad_y]), image_shape
    )


def clip_box(box: np.ndarray, image_shape: tuple[int, int], min_size: float = 4.0) -> np.ndarray:
    """Clip ``(x0, y0, x1, y1)`` to the image, keeping at least ``min_size`` pixels per side."""
    h, w = image_shape
    x0, y0, x1, y1 = (float(v) for v in box)
    x0, x1 = _clip_interval(x0, x1, w, min_size)
    y0, y1 = _clip_interval(y0, y1, h, min_size)
    return np.array([x0, y0, x1, y1])


def _clip_interval(lo: float, hi: float, size: float, min_size: float) -> tuple[float, float]:
    lo, hi = max(lo, 0.0), min(hi, float(size))
    min_size = min(min_size, float(size))
    if hi - lo < min_size:  # pushed (partly) off the image: keep a sliver at the border
        centre = min(max((lo + hi) / 2, min_size / 2), size - min_size / 2)
        lo, hi = centre - min_size / 2, centre + min_size / 2
    return lo, hi
