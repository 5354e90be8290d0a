"""Procedural scientific-looking scenes with exact instance labels, for training.

:func:`make_training_scene` draws one image of a randomly chosen kind:

``nuclei``
    Bright blurred ellipses on a dark background (fluorescence), some touching,
    some overlapping (the one drawn later hides the other), varied size and
    brightness, with internal texture.
``cells``
    Tightly packed cells that share borders (seeded growth, like a confluent
    monolayer): a bright membrane and a dimmer, textured cytoplasm, or a
    brightfield look with dark outlines.
``blobs``
    Irregular textured blobs on a textured background: the object differs from
    its surroundings by texture and mean, not by a clean edge.
``animals``
    Elongated, tapered bodies along smooth random curves (worms, larvae, mice
    seen from above) on a plain or textured arena, dark on light or light on dark.
``tissue`` (asked for by name only: a random kind is one of :data:`SCENE_KINDS`)
    Stained tissue in brightfield, the objects its nuclei: small, crowded,
    often elongated and locally aligned nuclei in haematoxylin, some of them
    DAB-positive, in tissue with cell membranes or stroma stained by DAB
    (immunohistochemistry) or eosin (H&E), with gaps of bare slide. The stains
    are painted as concentrations and turned into RGB with scikit-image's
    stain matrices (Beer-Lambert), then blurred and noised; uint8 or float32 RGB.

``zoom`` > 1 gives a close-up: the scene is painted ``zoom`` times larger and a
window of the requested size around one object is kept, so objects fill much of the
frame or run past its edges (a large animal, a cell imaged at high magnification),
with edges as sharp as in any other scene.

Every image but tissue then goes through an acquisition model: uneven illumination, blur,
shot and read noise, and one of three outputs: grayscale, colour (objects and
background tinted differently, or stained-tissue-like) or 16-bit with a random
dynamic range. Labels are exact: ``0`` background, ``1..N`` the visible part of
each object (an object hidden under another keeps only what is visible; objects
left with fewer than ``min_area`` pixels are dropped).

Pure numpy/scipy/scikit-image; deterministic for a given generator state.
"""

from __future__ import annotations

from functools import partial

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, segmentation

__all__ = ["ALL_KINDS", "SCENE_KINDS", "make_training_scene"]

#: the kinds a random scene is drawn from (and the held-out targets are measured on)
SCENE_KINDS = ("nuclei", "cells", "blobs", "animals")
#: every kind :func:`make_training_scene` paints; ``tissue`` only when asked for, so that the
#: scene streams of earlier training runs stay as they were
ALL_KINDS = SCENE_KINDS + ("tissue",)


def make_training_scene(
    rng: np.random.Generator,
    size: int | tuple[int, int] = 256,
    kind: str | None = None,
    min_area: int = 12,
    zoom: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One random scene.

    Parameters
    ----------
    rng : numpy.random.Generator
        Source of randomness; the same state gives the same scene.
    size : int or (int, int)
        Image shape (Y, X).
    kind : str, optional
        One of :data:`ALL_KINDS`; random among :data:`SCENE_KINDS` when None.
    min_area : int
        Objects whose visible part is smaller are removed from the labels.
    zoom : float
        1 for a whole scene; larger for a close-up (see the module docstring), at
        most 8.

    Returns
    -------
    image : ndarray
        (Y, X) float32 or uint16, or (Y, X, 3) float32 in [0, 1] (tissue: also uint8).
    labels : ndarray of int32, (Y, X)
        Instance labels 1..N of the visible objects.
    """
    shape = (size, size) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(shape) != 2 or min(shape) < 32:
        raise ValueError(f"scene size must be (Y, X) with both sides >= 32, got {size!r}")
    kind = kind if kind is not None else SCENE_KINDS[rng.integers(len(SCENE_KINDS))]
    if kind not in ALL_KINDS:
        raise ValueError(f"unknown scene kind {kind!r}: expected one of {ALL_KINDS}")
    if not 1.0 <= zoom <= 8.0:
        raise ValueError(f"zoom must be between 1 (a whole scene) and 8, got {zoom!r}")
    painter = {"nuclei": _nuclei, "cells": _cells, "blobs": _blobs, "animals": _animals, "tissue": _tissue}[kind]
    if zoom > 1.0:
        if kind == "animals":
            # bodies drawn as a chain of discs: close up, the thin tail's discs would
            # come apart into dots, so they are drawn at sub-disc spacing
            painter = partial(_animals, dense=True)
        signal, labels = painter(rng, tuple(int(round(n * zoom)) for n in shape))
        signal, labels = _window_on_object(rng, signal, labels, shape)
    else:
        signal, labels = painter(rng, shape)
    labels = _drop_small(labels, min_area)
    if kind == "tissue":
        return _acquire_brightfield(rng, signal), labels
    return _acquire(rng, signal, labels), labels


# --------------------------------------------------------------------------
# Scene kinds: each returns (ideal signal in [0, 1] (Y, X), labels)
# --------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, shape, sigma: float) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to zero mean, unit std.

    Wide filters are applied on a coarser grid and interpolated back: the same
    kind of field at a fraction of the cost (scene generation runs every step).
    """
    factor = int(max(1, min(sigma // 2, 8)))
    coarse = tuple(-(-int(n) // factor) + (factor > 1) for n in shape)
    field = ndi.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma / factor)
    if factor > 1:
        field = ndi.zoom(field, factor, order=1)[: shape[0], : shape[1]]
    return (field - field.mean()) / (field.std() + 1e-6)


def _nuclei(rng, shape):
    h, w = shape
    scale = min(h, w) / 256
    signal = np.zeros(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    n = int(rng.integers(4, 30))
    big = rng.random() < 0.3
    texture = _smooth_noise(rng, shape, 1.5)
    centers: list[tuple[float, float, float]] = []
    for i in range(1, n + 1):
        r_major = rng.uniform(8, 34 if big else 22) * scale
        r_minor = r_major * rng.uniform(0.5, 1.0)
        if centers and rng.random() < 0.4:
            # against a previous nucleus: touching or overlapping
            cy, cx, cr = centers[rng.integers(len(centers))]
            angle = rng.uniform(0, 2 * np.pi)
            dist = (cr + r_minor) * rng.uniform(0.75, 1.05)
            y, x = cy + dist * np.sin(angle), cx + dist * np.cos(angle)
        else:
            y, x = rng.uniform(0, h), rng.uniform(0, w)
        rr, cc = draw.ellipse(y, x, r_minor, r_major, shape=shape, rotation=rng.uniform(-np.pi, np.pi))
        if len(rr) == 0:
            continue
        centers.append((y, x, r_major))
        brightness = rng.uniform(0.3, 1.0)
        signal[rr, cc] = brightness * (1 + rng.uniform(0, 0.35) * texture[rr, cc])
        labels[rr, cc] = i
    return signal, labels


def _cells(rng, shape):
    h, w = shape
    scale = min(h, w) / 256
    spacing = rng.uniform(22, 48) * scale
    n = max(3, int(h * w / spacing**2 * rng.uniform(0.5, 1.0)))
    markers = np.zeros(shape, np.int32)
    ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
    markers[ys, xs] = np.arange(1, n + 1)
    # confluent or sparse: a foreground mask of merged discs around the seeds
    reach = spacing * rng.uniform(0.45, 0.9)
    # each pixel belongs to its nearest seed (a Voronoi tessellation, what a
    # watershed on the distance map gives) and to a cell only near enough to it
    distance, (iy, ix) = ndi.distance_transform_edt(markers == 0, return_indices=True)
    wobble = _smooth_noise(rng, shape, 6 * scale) * reach * 0.25
    foreground = distance + wobble < reach
    labels = np.where(foreground, markers[iy, ix], 0).astype(np.int32)
    boundary = segmentation.find_boundaries(labels, mode="inner")
    membrane_w = rng.uniform(0.5, 2.0) * scale
    membrane = ndi.gaussian_filter(boundary.astype(np.float32), membrane_w)
    membrane /= membrane.max() + 1e-6
    levels = rng.uniform(0.15, 0.6, n + 1).astype(np.float32)
    levels[0] = 0
    cytoplasm = levels[labels] * (1 + 0.3 * _smooth_noise(rng, shape, 2 * scale))
    if rng.random() < 0.35:
        # brightfield-like: grey field, dark outlines, cells slightly different from it
        signal = 0.6 + 0.25 * (cytoplasm - 0.3) * (labels > 0) - 0.5 * membrane
    else:
        signal = cytoplasm * (labels > 0) + rng.uniform(0.4, 1.0) * membrane
    return np.clip(signal, 0, None).astype(np.float32), labels


def _blobs(rng, shape):
    h, w = shape
    scale = min(h, w) / 256
    background_texture = _smooth_noise(rng, shape, rng.uniform(1, 4))
    signal = (0.4 + 0.12 * background_texture).astype(np.float32)
    labels = np.zeros(shape, np.int32)
    n = int(rng.integers(2, 10))
    for i in range(1, n + 1):
        radius = rng.uniform(12, 45) * scale
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        # work in the blob's window only
        half = int(np.ceil(radius * 1.8))
        y0, y1 = max(int(cy) - half, 0), min(int(cy) + half + 1, h)
        x0, x1 = max(int(cx) - half, 0), min(int(cx) + half + 1, w)
        if y1 - y0 < 4 or x1 - x0 < 4:
            continue
        window = (y1 - y0, x1 - x0)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        r = np.hypot(yy - cy, xx - cx)
        inside = r < radius * (1 + 0.35 * _smooth_noise(rng, window, radius / 2.5))
        inside = ndi.binary_opening(inside, iterations=2)
        if not inside.any():
            continue
        texture = _smooth_noise(rng, window, rng.uniform(0.7, 3))
        mean = 0.4 + rng.choice([-1, 1]) * rng.uniform(0.12, 0.45)
        view = signal[y0:y1, x0:x1]
        view[inside] = (mean + rng.uniform(0.05, 0.2) * texture)[inside]
        labels[y0:y1, x0:x1][inside] = i
    return np.clip(signal, 0, None).astype(np.float32), labels


def _animals(rng, shape, dense: bool = False):
    h, w = shape
    scale = min(h, w) / 256
    textured = rng.random() < 0.5
    background = 0.5 + (0.1 * _smooth_noise(rng, shape, rng.uniform(2, 8)) if textured else 0)
    dark_on_light = rng.random() < 0.6
    signal = np.asarray(background, np.float32) * np.ones(shape, np.float32)
    labels = np.zeros(shape, np.int32)
    n = int(rng.integers(1, 6))
    for i in range(1, n + 1):
        body = _body_mask(rng, shape, scale, dense)
        if not body.any():
            continue
        contrast = rng.uniform(0.2, 0.5) * (-1 if dark_on_light else 1)
        shading = 1 + 0.2 * _smooth_noise(rng, shape, 3 * scale)
        signal = np.where(body, 0.5 + contrast * shading, signal)
        labels[body] = i
    return np.clip(signal, 0, None).astype(np.float32), labels


def _tissue(rng, shape):
    """Stain concentrations (Y, X, 3: haematoxylin, eosin, DAB) and the nuclei's labels."""
    h, w = shape
    scale = min(h, w) / 256
    ihc = rng.random() < 0.6  # immunohistochemistry (DAB), else H&E (eosin)
    # tissue and bare slide: a smooth field thresholded, sometimes all tissue
    cover = _smooth_noise(rng, shape, 24 * scale) > rng.uniform(-2.5, 0.3)
    cover = ndi.gaussian_filter(cover.astype(np.float32), 1.5 * scale)
    # nuclei: ellipses aligned along a slowly turning direction, crowded or sparse,
    # a later one hiding what it overlaps of an earlier one
    spacing = rng.uniform(9, 24) * scale
    n = int(h * w / spacing**2 * rng.uniform(0.4, 0.9))
    flow = _smooth_noise(rng, shape, 30 * scale) * rng.uniform(0.5, 2.5)
    labels = np.zeros(shape, np.int32)
    chromatin = _smooth_noise(rng, shape, 0.8 * scale + 0.3)
    haem = np.zeros(shape, np.float32)
    dab_nuclear = np.zeros(shape, np.float32)
    positive = rng.uniform(0, 0.7) if ihc else 0.0
    r_lo, r_hi = sorted(rng.uniform(3.5, 12, 2) * scale)
    centres = rng.uniform(0, 1, (n, 2)) * (h, w)
    kept = 0
    for y, x in centres:
        if cover[min(int(y), h - 1), min(int(x), w - 1)] < 0.5:
            continue
        r_major = rng.uniform(r_lo, r_hi + 1.5 * scale)
        r_minor = r_major * rng.uniform(0.35, 1.0)
        angle = flow[min(int(y), h - 1), min(int(x), w - 1)] + rng.normal(0, 0.25)
        rr, cc = draw.ellipse(y, x, r_minor, r_major, shape=shape, rotation=angle)
        if len(rr) == 0:
            continue
        kept += 1
        labels[rr, cc] = kept
        haem[rr, cc] = rng.uniform(0.022, 0.07) * (1 + rng.uniform(0.1, 0.4) * chromatin[rr, cc])
        dab_nuclear[rr, cc] = rng.uniform(0.03, 0.14) if rng.random() < positive else 0.0
    nuclei = labels > 0
    # around the nuclei: cells (each pixel to its nearest nucleus) whose membranes
    # take DAB, or a fibrous stroma
    fibres = _smooth_noise(rng, shape, 1.2 * scale + 0.5)
    if ihc:
        if kept:
            _, (iy, ix) = ndi.distance_transform_edt(~nuclei, return_indices=True)
            membranes = segmentation.find_boundaries(labels[iy, ix], mode="thick").astype(np.float32)
            membranes = ndi.gaussian_filter(membranes, rng.uniform(0.6, 1.5) * scale)
        else:
            membranes = np.zeros(shape, np.float32)
        dab = cover * (rng.uniform(0.0, 0.05) * (1 + 0.5 * fibres) + rng.uniform(0.02, 0.2) * membranes)
        eosin = np.zeros(shape, np.float32)
    else:
        dab = np.zeros(shape, np.float32)
        eosin = cover * rng.uniform(0.01, 0.05) * (1 + 0.4 * fibres)
    background_haem = cover * rng.uniform(0.003, 0.016) * (1 + 0.4 * fibres)
    haem = np.where(nuclei, haem, background_haem)
    dab = np.where(nuclei, np.maximum(dab * 0.5, dab_nuclear), dab)
    stains = np.stack([haem, eosin, dab], axis=-1)
    return np.clip(stains, 0, None).astype(np.float32), labels


def _body_mask(rng, shape, scale, dense: bool = False) -> np.ndarray:
    """A tapered body along a smooth random curve (``dense``: its discs at most half
    the thinnest radius apart, however large the body)."""
    h, w = shape
    length = rng.uniform(40, 140) * scale
    width = rng.uniform(5, 18) * scale
    steps = 40
    heading = rng.uniform(0, 2 * np.pi)
    turn = np.cumsum(rng.normal(0, rng.uniform(0.02, 0.12), steps))
    angles = heading + turn
    step = length / steps
    y = np.concatenate([[rng.uniform(0.15, 0.85) * h], step * np.sin(angles)]).cumsum()
    x = np.concatenate([[rng.uniform(0.15, 0.85) * w], step * np.cos(angles)]).cumsum()
    t = np.linspace(0, 1, steps + 1)
    # widest a third of the way along, tapering to a thin tail
    profile = width * np.clip(np.sin(np.pi * np.clip(t * 1.2, 0, 1)) ** 0.6, 0.15, None)
    if dense:
        n = int(np.ceil(step / max(profile.min() / 4, 0.5))) * steps + 1
        fine = np.linspace(0, 1, n)
        y, x, profile = np.interp(fine, t, y), np.interp(fine, t, x), np.interp(fine, t, profile)
    mask = np.zeros(shape, bool)
    for yi, xi, ri in zip(y, x, profile):
        rr, cc = draw.disk((yi, xi), max(ri / 2, 1.0), shape=shape)
        mask[rr, cc] = True
    return mask


def _window_on_object(rng, signal: np.ndarray, labels: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """A ``shape`` window of a larger painted scene, around a random object's centre
    (shifted by up to a quarter of the window), kept inside the scene."""
    h, w = shape
    ids = np.unique(labels)
    ids = ids[ids != 0]
    if len(ids) == 0:
        cy, cx = labels.shape[0] / 2, labels.shape[1] / 2
    else:
        ys, xs = np.nonzero(labels == ids[rng.integers(len(ids))])
        cy, cx = ys.mean(), xs.mean()
    cy += rng.uniform(-0.25, 0.25) * h
    cx += rng.uniform(-0.25, 0.25) * w
    y0 = int(np.clip(round(cy - h / 2), 0, labels.shape[0] - h))
    x0 = int(np.clip(round(cx - w / 2), 0, labels.shape[1] - w))
    return (
        np.ascontiguousarray(signal[y0 : y0 + h, x0 : x0 + w]),
        np.ascontiguousarray(labels[y0 : y0 + h, x0 : x0 + w]),
    )


# --------------------------------------------------------------------------
# Acquisition: illumination, blur, noise, output type
# --------------------------------------------------------------------------


def _acquire(rng, signal: np.ndarray, labels: np.ndarray) -> np.ndarray:
    h, w = signal.shape
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    tilt = rng.uniform(-0.4, 0.4, 2)
    illumination = 1 + tilt[0] * (yy / h - 0.5) + tilt[1] * (xx / w - 0.5)
    illumination *= 1 + rng.uniform(0, 0.25) * _smooth_noise(rng, signal.shape, min(h, w) / 6)
    image = signal * illumination + rng.uniform(0, 0.15)
    image = ndi.gaussian_filter(image, rng.uniform(0, 1.8))
    photons = rng.uniform(20, 400)
    image = rng.poisson(np.clip(image, 0, None) * photons).astype(np.float32) / photons
    image += rng.normal(0, rng.uniform(0, 0.04), image.shape).astype(np.float32)
    choice = rng.random()
    if choice < 0.45:
        return image.astype(np.float32)
    if choice < 0.7:
        top = rng.uniform(500, 65000)
        counts = np.clip(image / max(float(image.max()), 1e-6) * top + rng.uniform(0, 300), 0, 65535)
        return counts.astype(np.uint16)
    return _colourize(rng, image, labels)


def _acquire_brightfield(rng, stains: np.ndarray) -> np.ndarray:
    """RGB of a stained slide: Beer-Lambert through scikit-image's H-E-DAB matrix,
    uneven and tinted illumination, blur, noise; uint8 (as scanners save it) or float32."""
    from skimage.color import combine_stains, rgb_from_hed

    h, w = stains.shape[:2]
    rgb = combine_stains(stains, rgb_from_hed).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    vignette = 1 - rng.uniform(0, 0.25) * (((yy / h - 0.5) ** 2 + (xx / w - 0.5) ** 2) * 2)
    white = rng.uniform(0.85, 1.0, 3).astype(np.float32)
    rgb = rgb * vignette[..., None] * white
    rgb = ndi.gaussian_filter(rgb, (*(rng.uniform(0, 1.2),) * 2, 0))
    rgb += rng.normal(0, rng.uniform(0.003, 0.03), rgb.shape).astype(np.float32)
    rgb = np.clip(rgb, 0, 1)
    if rng.random() < 0.6:
        return np.round(rgb * 255).astype(np.uint8)
    return rgb.astype(np.float32)


def _colourize(rng, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """RGB in [0, 1]: a tint of the grey image, objects possibly in their own colours,
    or inverted on white (stained tissue, brightfield)."""
    tint = rng.uniform(0.3, 1.0, 3).astype(np.float32)
    norm = image / max(float(np.percentile(image, 99.5)), 1e-6)
    rgb = norm[..., None] * tint
    if rng.random() < 0.5:
        object_tints = rng.uniform(0.2, 1.0, (int(labels.max()) + 1, 3)).astype(np.float32)
        object_tints[0] = tint
        rgb = norm[..., None] * object_tints[labels]
    if rng.random() < 0.3:
        rgb = 1 - rgb * rng.uniform(0.5, 1.0)
    return np.clip(rgb, 0, 1).astype(np.float32)


def _drop_small(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Relabel 1..N in order, dropping objects with fewer than ``min_area`` pixels."""
    areas = np.bincount(labels.ravel())
    keep = areas >= min_area
    keep[0] = False
    lut = np.zeros(len(areas), np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels]
