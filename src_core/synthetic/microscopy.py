"""Synthetic microscopy-like images with exact instance labels.

Every generator is deterministic for a given ``seed``, runs in well under a
second at its default size and returns ``(image, labels)``: the image a
scientist would see (blurred objects, uneven background, shot and read noise)
and the exact instance label image it was drawn from (0 = background, objects
numbered 1..N). They serve as napari sample data, test fixtures and training
smoke data. Pure numpy/scipy/scikit-image: no napari, Qt or torch.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike
from scipy import ndimage as ndi

__all__ = [
    "MULTICHANNEL_NAMES",
    "make_cells_multichannel",
    "make_nuclei_2d",
    "make_nuclei_3d",
]

#: Channel order of :func:`make_cells_multichannel`.
MULTICHANNEL_NAMES = ("nuclei", "membrane", "cytoplasm")

# Fraction of objects placed deliberately against an existing one, so that
# every image has touching neighbours (the hard case for instance masks).
_TOUCH_PROBABILITY = 0.3


def make_nuclei_2d(
    shape: tuple[int, int] = (512, 512),
    n: int = 40,
    seed: int = 0,
    dtype: DTypeLike = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescence-like 2D image of blurred elliptical nuclei.

    Parameters
    ----------
    shape : tuple of int
        (Y, X) size of the image.
    n : int
        Number of nuclei wanted. Fewer are placed only when ``shape`` is too
        small to hold them; the default size always holds the default ``n``.
    seed : int
        Seed of the random generator; the same seed gives the same arrays.
    dtype : numpy dtype
        Image dtype. Integer types are filled as a camera would fill them
        (clipped to the type's range); float types get the same counts as floats.

    Returns
    -------
    image : ndarray of ``dtype``, shape ``shape``
    labels : ndarray of int32, shape ``shape``
        Instance labels 1..N, each nucleus one connected region.
    """
    if len(shape) != 2:
        raise ValueError(f"make_nuclei_2d expects a (Y, X) shape, got {shape!r}")
    rng = np.random.default_rng(seed)
    scale = min(shape) / 512
    labels = _place_ellipsoids(
        shape, n, rng, radius_range=(9 * scale, 20 * scale), z_ratio=None
    )
    signal = _object_signal(labels, rng, brightness_range=(0.3, 1.0), texture=0.15)
    signal = ndi.gaussian_filter(signal, sigma=1.2 * max(scale, 0.5))
    image = _to_camera(signal + _uneven_background(shape, rng), rng, dtype)
    return image, labels


def make_nuclei_3d(
    shape: tuple[int, int, int] = (32, 256, 256),
    n: int = 25,
    seed: int = 0,
    dtype: DTypeLike = np.uint16,
    z_spacing: float = 3.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Fluorescence-like 3D stack of blurred ellipsoidal nuclei.

    Parameters
    ----------
    shape : tuple of int
        (Z, Y, X) size of the stack.
    n : int
        Number of nuclei wanted (fewer only if ``shape`` cannot hold them).
    seed : int
        Seed of the random generator.
    dtype : numpy dtype
        Image dtype (see :func:`make_nuclei_2d`).
    z_spacing : float
        Distance between slices in units of the XY pixel size. Nuclei are round
        in physical space, so they span about ``1 / z_spacing`` as many slices
        as pixels across. Display with ``scale=(z_spacing, 1, 1)``.

    Returns
    -------
    image : ndarray of ``dtype``, shape ``shape``
    labels : ndarray of int32, shape ``shape``
        Instance labels 1..N, each nucleus one connected region.
    """
    if len(shape) != 3:
        raise ValueError(f"make_nuclei_3d expects a (Z, Y, X) shape, got {shape!r}")
    if z_spacing <= 0:
        raise ValueError(f"z_spacing must be positive, got {z_spacing}")
    rng = np.random.default_rng(seed)
    scale = min(shape[1:]) / 256
    labels = _place_ellipsoids(
        shape, n, rng, radius_range=(10 * scale, 18 * scale), z_ratio=1 / z_spacing
    )
    signal = _object_signal(labels, rng, brightness_range=(0.3, 1.0), texture=0.1)
    signal = ndi.gaussian_filter(signal, sigma=(0.6, 1.2, 1.2))
    background = _uneven_background(shape[1:], rng)[np.newaxis]
    # Out-of-focus haze: a deeper slice collects a little less light.
    depth = np.linspace(1.0, 0.8, shape[0], dtype=np.float32)[:, None, None]
    image = _to_camera((signal + background) * depth, rng, dtype)
    return image, labels


def make_cells_multichannel(
    shape: tuple[int, int] = (384, 384),
    n: int = 18,
    seed: int = 0,
    dtype: DTypeLike = np.uint16,
) -> tuple[np.ndarray, np.ndarray]:
    """Three-channel (C, Y, X) image of cells: nuclei, membranes, cytoplasm.

    Channels follow :data:`MULTICHANNEL_NAMES`: a nuclear stain, a membrane
    stain (bright rings at cell borders) and a cytoplasmic stain (a diffuse blob
    filling each cell around its nucleus), each with its own background, gain
    and noise, as in a real multi-channel acquisition.

    Parameters
    ----------
    shape : tuple of int
        (Y, X) size of each channel.
    n : int
        Number of cells wanted (fewer only if ``shape`` cannot hold them).
    seed : int
        Seed of the random generator.
    dtype : numpy dtype
        Image dtype (see :func:`make_nuclei_2d`).

    Returns
    -------
    image : ndarray of ``dtype``, shape ``(3, *shape)``
    labels : ndarray of int32, shape ``shape``
        Cell instance labels 1..N (the whole cell, nucleus included); cell k
        contains nucleus k.
    """
    from skimage.segmentation import expand_labels, find_boundaries

    if len(shape) != 2:
        raise ValueError(
            f"make_cells_multichannel expects a (Y, X) shape, got {shape!r}"
        )
    rng = np.random.default_rng(seed)
    scale = min(shape) / 384
    nuclei = _place_ellipsoids(
        shape,
        n,
        rng,
        radius_range=(9 * scale, 14 * scale),
        z_ratio=None,
        min_gap=2.6,  # room for cytoplasm between neighbouring nuclei
    )
    cells = expand_labels(nuclei, distance=max(3, round(16 * scale))).astype(np.int32)

    nuclear = _object_signal(nuclei, rng, brightness_range=(0.4, 1.0), texture=0.15)
    nuclear = ndi.gaussian_filter(nuclear, 1.2)

    rings = find_boundaries(cells, mode="inner").astype(np.float32)
    membrane = ndi.gaussian_filter(rings * _per_object(cells, rng, (0.5, 1.0)), 1.0)
    membrane *= 2.5  # thin rings lose most of their peak to the blur

    cytoplasm_mask = ((cells > 0) & (nuclei == 0)).astype(np.float32)
    cytoplasm = ndi.gaussian_filter(
        cytoplasm_mask * _per_object(cells, rng, (0.2, 0.6)), 3.0
    )

    channels = []
    for signal, gain in zip((nuclear, membrane, cytoplasm), (1.0, 0.7, 0.5)):
        background = 0.5 * _uneven_background(shape, rng)
        channels.append(_to_camera(gain * signal + background, rng, dtype))
    return np.stack(channels), cells


def _ellipsoid_mask(semi_axes: np.ndarray, angle: float) -> np.ndarray:
    """Boolean ellipse/ellipsoid in its bounding box, rotated in the YX plane."""
    half = np.ceil(semi_axes.max()).astype(int)
    extents = [np.ceil(semi_axes[0]).astype(int)] * (len(semi_axes) == 3)
    extents += [half, half]
    grids = np.ogrid[tuple(slice(-e, e + 1) for e in extents)]
    y, x = grids[-2], grids[-1]
    cos, sin = np.cos(angle), np.sin(angle)
    u = y * cos + x * sin
    v = -y * sin + x * cos
    inside = (u / semi_axes[-2]) ** 2 + (v / semi_axes[-1]) ** 2
    if len(semi_axes) == 3:
        inside = inside + (grids[0] / semi_axes[0]) ** 2
    return inside <= 1.0


def _place_ellipsoids(
    shape: tuple[int, ...],
    n: int,
    rng: np.random.Generator,
    radius_range: tuple[float, float],
    z_ratio: float | None,
    min_gap: float = 1.4,
) -> np.ndarray:
    """Rasterise up to ``n`` non-overlapping ellipses (2D) or ellipsoids (3D).

    ``min_gap`` is the smallest allowed centre distance in units of the mean
    radius of the pair; below 2 neighbours may touch. Objects never overlap in
    the labels: a candidate keeps only free pixels (so it is flattened against
    its neighbour, as crowded nuclei are) and is rejected unless those are at
    least 80% of it and form one connected region.
    """
    ndim = len(shape)
    labels = np.zeros(shape, dtype=np.int32)
    centres: list[np.ndarray] = []
    radii: list[float] = []
    # Distances are measured in physical units: a slice step is 1 / z_ratio px.
    physical = np.ones(ndim) if z_ratio is None else np.array([1 / z_ratio, 1, 1])
    tries = 0
    while len(centres) < n and tries < 200 * max(n, 1):
        tries += 1
        radius = rng.uniform(*radius_range)
        yx = np.array([radius, radius * rng.uniform(0.6, 1.0)])
        semi = (
            yx
            if z_ratio is None
            else np.r_[radius * z_ratio * rng.uniform(0.8, 1.1), yx]
        )
        semi = np.maximum(semi, 1.0)
        angle = rng.uniform(0, np.pi)
        centre = _candidate_centre(shape, semi, centres, radii, radius, physical, rng)
        if centre is None:
            continue
        if centres:
            dist = np.linalg.norm((np.array(centres) - centre) * physical, axis=1)
            if np.any(dist < min_gap * 0.5 * (np.array(radii) + radius)):
                continue
        mask = _ellipsoid_mask(semi, angle)
        region, mask = _clip(labels, centre, mask)
        free = mask & (region == 0)
        if free.sum() < 0.8 * mask.sum() or ndi.label(free)[1] != 1:
            continue
        region[free] = len(centres) + 1
        centres.append(centre)
        radii.append(radius)
    return labels


def _candidate_centre(shape, semi, centres, radii, radius, physical, rng):
    """A random centre inside the image, sometimes right next to an object."""
    margin = np.ceil(semi).astype(int) + 1
    margin[-2:] = int(np.ceil(semi[-2:].max())) + 1  # any rotation fits
    high = np.array(shape) - margin
    if np.any(high <= margin):
        return None
    if centres and rng.random() < _TOUCH_PROBABILITY:
        k = rng.integers(len(centres))
        direction = rng.standard_normal(len(shape))
        if len(shape) == 3:
            direction[0] *= 0.3  # mostly side by side within a slice
        direction /= np.linalg.norm(direction) + 1e-12
        step = (radii[k] + radius) * rng.uniform(0.75, 0.95)
        centre = np.round(centres[k] + direction * step / physical).astype(int)
        if np.any(centre < margin) or np.any(centre >= high):
            return None
        return centre
    return np.array([rng.integers(lo, hi) for lo, hi in zip(margin, high)])


def _clip(labels: np.ndarray, centre: np.ndarray, mask: np.ndarray):
    """View of ``labels`` under ``mask`` centred at ``centre``, both clipped."""
    half = np.array(mask.shape) // 2
    start = centre - half
    stop = start + mask.shape
    lo = np.maximum(start, 0)
    hi = np.minimum(stop, labels.shape)
    region = labels[tuple(slice(a, b) for a, b in zip(lo, hi))]
    mask = mask[tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))]
    return region, mask


def _per_object(
    labels: np.ndarray, rng: np.random.Generator, value_range
) -> np.ndarray:
    """Image with one random value per object (0 on background)."""
    lut = np.zeros(labels.max() + 1, dtype=np.float32)
    lut[1:] = rng.uniform(*value_range, size=labels.max())
    return lut[labels]


def _object_signal(labels, rng, brightness_range, texture):
    """Per-object brightness with a smooth chromatin-like texture."""
    signal = _per_object(labels, rng, brightness_range)
    grain = ndi.gaussian_filter(
        rng.standard_normal(labels.shape).astype(np.float32), 2.0
    )
    grain /= grain.std() + 1e-12
    return signal * (1 + texture * grain)


def _uneven_background(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Smooth illumination: a tilt plus one broad bright patch."""
    y, x = np.ogrid[0 : 1 : shape[0] * 1j, 0 : 1 : shape[1] * 1j]
    tilt = rng.uniform(-1, 1, size=2) * 0.04
    cy, cx = rng.uniform(0.2, 0.8, size=2)
    patch = 0.05 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / 0.15)
    return (0.08 + tilt[0] * y + tilt[1] * x + patch).astype(np.float32)


def _to_camera(
    expected: np.ndarray, rng: np.random.Generator, dtype: DTypeLike
) -> np.ndarray:
    """Turn relative intensity (about 0..1) into noisy camera counts of ``dtype``.

    Shot noise is Poisson, read noise Gaussian; integer types are clipped to
    their range. A 16-bit camera gets ~3000 counts at the brightest object over
    an offset of 100, like a real 12-bit sensor read into uint16.
    """
    dtype = np.dtype(dtype)
    if dtype.kind in "ui":
        info = np.iinfo(dtype)
        peak = min(3000.0, 0.75 * float(info.max))
        offset = min(100.0, 0.05 * float(info.max))
    elif dtype.kind == "f":
        info, peak, offset = None, 3000.0, 100.0
    else:
        raise ValueError(f"dtype must be an integer or float type, got {dtype}")
    mean = np.clip(expected, 0, None) * peak + offset
    counts = rng.poisson(mean).astype(np.float32)
    counts += rng.normal(0.0, peak / 600, size=counts.shape).astype(np.float32)
    if info is not None:
        return np.clip(np.rint(counts), info.min, info.max).astype(dtype)
    return counts.astype(dtype)
