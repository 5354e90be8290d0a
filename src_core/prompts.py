"""Prompt objects, and the one place napari's (row, col) becomes SAM's (x, y)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def rc_to_xy(rc: np.ndarray) -> np.ndarray:
    """(N, 2) (row, col) coordinates as napari gives them -> (N, 2) (x, y) for SAM."""
    rc = np.asarray(rc, dtype=np.float64).reshape(-1, 2)
    return rc[:, ::-1].copy()


def box_from_corners_rc(corners_rc: np.ndarray) -> np.ndarray:
    """Any (K, 2) (row, col) corners of an axis-aligned rectangle -> (x0, y0, x1, y1)."""
    xy = rc_to_xy(corners_rc)
    return np.concatenate([xy.min(axis=0), xy.max(axis=0)])


@dataclass(frozen=True)
class Prompt:
    """The prompts of one object on one 2D image, in image pixels.

    Attributes
    ----------
    points : (N, 2) float array of x, y
    labels : (N,) int array, 1 foreground, 0 background
    box : (4,) float array x0, y0, x1, y1, or None
    """

    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))
    box: np.ndarray | None = None

    def __post_init__(self) -> None:
        points = np.asarray(self.points, dtype=np.float64).reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(points) != len(labels):
            raise ValueError(f"{len(points)} points but {len(labels)} labels")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if self.box is not None:
            object.__setattr__(self, "box", np.asarray(self.box, dtype=np.float64).reshape(4))

    @property
    def is_empty(self) -> bool:
        return len(self.points) == 0 and self.box is None

    def extends(self, other: "Prompt") -> bool:
        """True when this prompt is ``other`` plus more points (same box)."""
        n = len(other.points)
        same_box = (self.box is None and other.box is None) or (
            self.box is not None and other.box is not None and np.array_equal(self.box, other.box)
        )
        return (
            same_box
            and len(self.points) > n
            and np.array_equal(self.points[:n], other.points)
            and np.array_equal(self.labels[:n], other.labels)
        )

    def predict_kwargs(self) -> dict:
        """Keyword arguments for :meth:`SamPredictor.predict`."""
        kwargs: dict = {}
        if len(self.points):
            kwargs["point_coords"] = self.points
            kwargs["point_labels"] = self.labels
        if self.box is not None:
            kwargs["box"] = self.box
        return kwargs
