"""Synthetic videos with exact ground truth, for measuring propagation.

A :class:`SyntheticScene` looks like a read-only ``(T, H, W)`` uint8 array and
renders each frame when it is indexed, so a 10,000-frame scene costs the
memory of its trajectories only. ``scene.labels(t)`` is the exact label image
of what is *visible* on frame ``t`` (an object hidden behind another object or
an occluder, or outside the frame, is absent), with ids that stay the same
over time; daughters of a division get new ids (``scene.parents``).

Every frame carries its own index in the least significant bits of its first
24 pixels (invisible under the noise), so :meth:`SyntheticScene.labels_for_image`
can tell which frame an image is: that is how the stand-in segmenter
(:mod:`~src_core.propagate.standin`) finds the ground truth behind the image it is given.

Scenes (:func:`make_scene`): ``"crossing"`` (two animals cross at a shallow
angle, one over the other, a third passes by), ``"turning"`` (circling and
zig-zagging), ``"occlusion"`` (an animal hidden for 9 frames under a static
occluder), ``"reentry"`` (an animal leaves the frame and comes back 10 frames
later), ``"crowd"`` (six animals wandering in a small arena, touching and
overlapping), ``"cells"`` (a fluorescence time-lapse in which a cell divides)
and ``"long"`` (animals wandering for any number of frames).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from ..propagate.prompts import ObjectPrompt

SCENES = ("crossing", "turning", "occlusion", "reentry", "crowd", "cells")
_STAMP_BITS = 16
_MAGIC = (1, 0, 1, 0, 0, 1, 0, 1)


@dataclass
class Body:
    """An object over time: the union of two elliptical lobes at ``+-sep/2`` along its heading.

    All arrays have one entry per frame of the scene; ``x`` is NaN where the
    body does not exist (before it is born or after it divides).
    """

    obj_id: int
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray
    a: np.ndarray  # semi-axis along the heading
    b: np.ndarray  # semi-axis across
    sep: np.ndarray
    intensity: float
    depth: int = 0


@dataclass
class Occluder:
    """A static rectangle drawn over everything (a stone, a feeder): hides what is under it."""

    x0: int
    y0: int
    x1: int
    y1: int
    intensity: float


@dataclass
class SyntheticScene:
    """A lazily rendered synthetic video with its ground truth.

    Index it like a ``(T, H, W)`` uint8 array (an int gives one frame, a slice
    a stack); see the module docstring.
    """

    name: str
    n_frames: int
    height: int
    width: int
    bodies: list[Body]
    occluders: list[Occluder] = field(default_factory=list)
    background: float = 170.0
    noise: float = 5.0
    seed: int = 0
    parents: dict[int, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.width < len(_MAGIC) + _STAMP_BITS or self.n_frames > 2**_STAMP_BITS:
            raise ValueError(f"a scene needs a width >= 24 and at most {2**_STAMP_BITS} frames")
        rng = np.random.default_rng(self.seed)
        yy, xx = np.mgrid[0 : self.height, 0 : self.width].astype(np.float32)
        gradient = 12.0 * (xx / self.width - 0.5) + 8.0 * (yy / self.height - 0.5)
        texture = ndi.gaussian_filter(rng.normal(0, 10.0, (self.height, self.width)), 3.0)
        self._backdrop = (self.background + gradient + texture).astype(np.float32)

    # -- array-like ---------------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n_frames, self.height, self.width)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        return 3

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, key):
        if isinstance(key, slice):
            return np.stack([self.render(t)[0] for t in range(*key.indices(self.n_frames))])
        t = int(key)
        if not -self.n_frames <= t < self.n_frames:
            raise IndexError(f"frame {t} is out of range for a scene of {self.n_frames} frames")
        return self.render(t % self.n_frames)[0]

    @property
    def obj_ids(self) -> list[int]:
        return [b.obj_id for b in self.bodies]

    # -- rendering ----------------------------------------------------------------------

    def labels(self, t: int) -> np.ndarray:
        """Exact (H, W) int32 labels of what is visible on frame ``t``."""
        return self.render(t)[1]

    def ground_truth(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """(T, H, W) labels of frames ``start`` to ``stop - 1`` (for short scenes)."""
        stop = self.n_frames if stop is None else stop
        return np.stack([self.labels(t) for t in range(start, stop)])

    def render(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(image, labels) of frame ``t``."""
        labels = np.zeros((self.height, self.width), np.int32)
        signal = self._backdrop.copy()
        for body in sorted(self.bodies, key=lambda b: b.depth):
            if np.isnan(body.x[t]):
                continue
            mask = self._body_mask(body, t)
            labels[mask] = body.obj_id
            signal[mask] = body.intensity
        for occ in self.occluders:
            labels[occ.y0 : occ.y1, occ.x0 : occ.x1] = 0
            signal[occ.y0 : occ.y1, occ.x0 : occ.x1] = occ.intensity
        rng = np.random.default_rng((self.seed, t))
        signal = ndi.gaussian_filter(signal, 0.7) + rng.normal(0, self.noise, signal.shape)
        image = np.clip(np.round(signal), 0, 255).astype(np.uint8)
        _stamp(image, t)
        return image, labels

    def _body_mask(self, body: Body, t: int) -> np.ndarray:
        mask = np.zeros((self.height, self.width), bool)
        c, s = np.cos(body.heading[t]), np.sin(body.heading[t])
        a, b = body.a[t], body.b[t]
        for side in (-0.5, 0.5) if body.sep[t] > 0 else (0.0,):
            cx, cy = body.x[t] + side * body.sep[t] * c, body.y[t] + side * body.sep[t] * s
            r = int(np.ceil(max(a, b))) + 1
            y0, y1 = max(int(cy) - r, 0), min(int(cy) + r + 2, self.height)
            x0, x1 = max(int(cx) - r, 0), min(int(cx) + r + 2, self.width)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1]
            dx, dy = xx - cx, yy - cy
            u, v = (dx * c + dy * s) / a, (-dx * s + dy * c) / b
            mask[y0:y1, x0:x1] |= u * u + v * v <= 1.0
        return mask

    # -- ground truth lookups -----------------------------------------------------------

    def frame_of(self, image: np.ndarray) -> int:
        """The frame index stamped into an image rendered by this scene."""
        t = read_stamp(image)
        if t is None or t >= self.n_frames:
            raise ValueError("this image was not rendered by this synthetic scene (no valid frame stamp)")
        return t

    def labels_for_image(self, image: np.ndarray) -> np.ndarray:
        """Ground-truth labels of the frame ``image`` is (see :meth:`frame_of`)."""
        return self.labels(self.frame_of(image))

    def prompts(self, frame: int = 0, kind: str = "mask", obj_ids=None) -> list[ObjectPrompt]:
        """Prompts made from the ground truth of ``frame``: "mask", "box" or "point" per object."""
        labels = self.labels(frame)
        out = []
        for obj_id in obj_ids if obj_ids is not None else np.unique(labels[labels > 0]):
            mask = labels == obj_id
            if not mask.any():
                continue
            ys, xs = np.nonzero(mask)
            if kind == "mask":
                out.append(ObjectPrompt(frame=frame, obj_id=int(obj_id), mask=mask))
            elif kind == "box":
                out.append(ObjectPrompt(frame=frame, obj_id=int(obj_id), box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]))
            elif kind == "point":
                dist = ndi.distance_transform_edt(mask)
                r, c = np.unravel_index(int(np.argmax(dist)), dist.shape)
                out.append(ObjectPrompt(frame=frame, obj_id=int(obj_id), points=[[c, r]], labels=[1]))
            else:
                raise ValueError(f"kind must be 'mask', 'box' or 'point', got {kind!r}")
        return out


def _stamp(image: np.ndarray, t: int) -> None:
    bits = list(_MAGIC) + [(t >> i) & 1 for i in range(_STAMP_BITS)]
    row = image[0, : len(bits)]
    image[0, : len(bits)] = (row & 0xFE) | np.array(bits, np.uint8)


def read_stamp(image: np.ndarray) -> int | None:
    """The frame index stamped into a synthetic frame, or None if there is none."""
    image = np.asarray(image)
    row = image[0, : len(_MAGIC) + _STAMP_BITS]
    if row.ndim == 2:  # (W, C): the stamp is in the first channel
        row = row[:, 0]
    if image.dtype != np.uint8 or len(row) < len(_MAGIC) + _STAMP_BITS:
        return None
    bits = row & 1
    if tuple(int(b) for b in bits[: len(_MAGIC)]) != _MAGIC:
        return None
    return int(sum(int(b) << i for i, b in enumerate(bits[len(_MAGIC) :])))


# -- trajectories ---------------------------------------------------------------------------


def _integrate(n: int, x0: float, y0: float, heading0: float, speed, turn) -> tuple[np.ndarray, ...]:
    """Positions and headings of something moving at ``speed`` and turning ``turn`` rad/frame."""
    speed = np.broadcast_to(np.asarray(speed, float), (n,))
    turn = np.broadcast_to(np.asarray(turn, float), (n,))
    heading = heading0 + np.concatenate([[0.0], np.cumsum(turn[:-1])])
    x = x0 + np.concatenate([[0.0], np.cumsum(speed[:-1] * np.cos(heading[:-1]))])
    y = y0 + np.concatenate([[0.0], np.cumsum(speed[:-1] * np.sin(heading[:-1]))])
    return x, y, heading


def _animal(obj_id, path, length=28.0, width=10.0, intensity=60.0, depth=0) -> Body:
    x, y, heading = path
    n = len(x)
    return Body(obj_id, x, y, heading, np.full(n, length / 2), np.full(n, width / 2), np.zeros(n), intensity, depth)


def _wander(n: int, rng: np.random.Generator, size: tuple[int, int], speed: float, margin: float):
    """A smooth random walk that turns back at the walls."""
    h, w = size
    turn = ndi.gaussian_filter1d(rng.normal(0, 0.25, n), 4.0)
    x, y = np.empty(n), np.empty(n)
    heading = np.empty(n)
    px, py, ph = rng.uniform(margin, w - margin), rng.uniform(margin, h - margin), rng.uniform(0, 2 * np.pi)
    for i in range(n):
        x[i], y[i], heading[i] = px, py, ph
        ph += turn[i]
        nx, ny = px + speed * np.cos(ph), py + speed * np.sin(ph)
        if not margin <= nx <= w - margin:
            ph = np.pi - ph
        if not margin <= ny <= h - margin:
            ph = -ph
        px, py = px + speed * np.cos(ph), py + speed * np.sin(ph)
    return x, y, heading


def make_scene(name: str, n_frames: int | None = None, size: int = 128, seed: int = 0) -> SyntheticScene:
    """A named test scene (see the module docstring); ``n_frames`` only for ``"long"``."""
    if name == "long":
        n = n_frames or 10_000
        rng = np.random.default_rng(seed)
        s = size / 64
        bodies = [
            _animal(i + 1, _wander(n, rng, (size, size), 1.0 * s, 10 * s), 14 * s, 5 * s, 50.0 + 20 * i)
            for i in range(2)
        ]
        return SyntheticScene("long", n, size, size, bodies, seed=seed)
    if n_frames is not None:
        raise ValueError("n_frames can only be chosen for the 'long' scene")
    k = size / 128  # everything scales with the frame
    if name == "crossing":
        n = 60
        bodies = [
            _animal(1, _integrate(n, 8 * k, 48 * k, 0.30, 1.9 * k, 0.0), 28 * k, 10 * k, 60.0, depth=0),
            _animal(2, _integrate(n, 8 * k, 84 * k, -0.30, 1.9 * k, 0.0), 28 * k, 10 * k, 72.0, depth=1),
            _animal(3, _integrate(n, 120 * k, 22 * k, np.pi + 0.05, 1.5 * k, 0.004), 26 * k, 9 * k, 55.0),
        ]
        return SyntheticScene(name, n, size, size, bodies, seed=seed)
    if name == "turning":
        n = 60
        bodies = [
            _animal(1, _integrate(n, 64 * k, 26 * k, 0.0, 2.4 * k, 0.075), 28 * k, 10 * k, 60.0),
            _animal(2, _integrate(n, 14 * k, 110 * k, -0.6, 1.8 * k, 0.09 * np.sin(np.arange(n) / 7.0)), 26 * k, 9 * k, 75.0),
        ]
        return SyntheticScene(name, n, size, size, bodies, seed=seed)
    if name == "occlusion":
        n = 60
        # 46 px wide at 2 px/frame: a 28 px animal is completely hidden for 9 frames
        occluder = Occluder(int(41 * k), int(50 * k), int(87 * k), int(78 * k), 120.0)
        bodies = [
            _animal(1, _integrate(n, 6 * k, 64 * k, 0.0, 2.0 * k, 0.0), 28 * k, 10 * k, 60.0),
            _animal(2, _integrate(n, 110 * k, 22 * k, np.pi, 1.2 * k, -0.01), 26 * k, 9 * k, 70.0),
            _animal(3, _integrate(n, 30 * k, 112 * k, 0.05, 1.5 * k, 0.0), 24 * k, 9 * k, 55.0),
        ]
        return SyntheticScene(name, n, size, size, bodies, [occluder], seed=seed)
    if name == "reentry":
        n = 70
        turn = np.zeros(n)
        turn[28:40] = np.pi / 12  # a U-turn outside the frame
        bodies = [
            _animal(1, _integrate(n, 60 * k, 54 * k, 0.0, 2.6 * k, turn), 28 * k, 10 * k, 60.0),
            _animal(2, _integrate(n, 20 * k, 108 * k, 0.0, 0.8 * k, 0.01), 26 * k, 9 * k, 72.0),
        ]
        return SyntheticScene(name, n, size, size, bodies, seed=seed)
    if name == "crowd":
        n = 80
        rng = np.random.default_rng(seed + 7)
        bodies = [
            _animal(i + 1, _wander(n, rng, (size, size), 1.6 * k, 16 * k), 24 * k, 9 * k, 50.0 + 8 * i, depth=i)
            for i in range(6)
        ]
        return SyntheticScene(name, n, size, size, bodies, seed=seed)
    if name == "cells":
        return _cells(size, seed)
    raise ValueError(f"unknown scene {name!r}; choose one of {', '.join(SCENES + ('long',))}")


def _cells(size: int, seed: int) -> SyntheticScene:
    """A fluorescence time-lapse: five drifting cells, cell 1 divides into 6 and 7 at frame 25."""
    n, t_div, grow = 50, 25, 6
    k = size / 128
    rng = np.random.default_rng(seed + 1)
    r = 10.0 * k
    centres = [(40, 44), (92, 36), (34, 96), (90, 92), (64, 66)]
    bodies = []
    for i, (cx, cy) in enumerate(centres):
        x, y, heading = _integrate(n, cx * k, cy * k, rng.uniform(0, 2 * np.pi), 0.35 * k, rng.normal(0, 0.05, n))
        radius = np.full(n, r * rng.uniform(0.9, 1.1))
        bodies.append(Body(i + 1, x, y, heading, radius, radius.copy(), np.zeros(n), 190.0 - 12 * i))
    mother = bodies[0]
    axis = 0.7  # division axis
    mother.heading[:] = axis
    lobe = 0.8 * mother.a[0]
    for j, t in enumerate(range(t_div - grow, t_div)):
        f = (j + 1) / grow
        mother.sep[t] = 1.7 * lobe * f
        mother.a[t] = mother.b[t] = mother.a[0] - (mother.a[0] - lobe) * f
    mother_x, mother_y = mother.x[t_div - 1], mother.y[t_div - 1]
    mother.x[t_div:] = np.nan
    for obj_id, side in ((6, -1.0), (7, 1.0)):
        offset = side * (0.85 * lobe + 0.45 * k * np.arange(n - t_div) + 0.5)
        x, y = np.full(n, np.nan), np.full(n, np.nan)
        x[t_div:] = mother_x + offset * np.cos(axis)
        y[t_div:] = mother_y + offset * np.sin(axis)
        bodies.append(Body(obj_id, x, y, np.full(n, axis), np.full(n, lobe), np.full(n, lobe), np.zeros(n), mother.intensity))
    return SyntheticScene("cells", n, size, size, bodies, background=25.0, noise=6.0, seed=seed,
                          parents={6: 1, 7: 1})
