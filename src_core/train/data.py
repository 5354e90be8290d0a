"""Training data: (image, instance labels) pairs from disk, memory or the scene generator,
turned into model-ready samples.

A *source* is anything with ``__len__`` and ``__getitem__`` returning
``(image, labels)``: image (Y, X) or (Y, X, C) of any numeric dtype, labels (Y, X)
integers with 0 as background. :func:`prepare_sample` normalizes the image the way
inference does (:func:`src_core.preprocess.to_rgb`), resizes it to the model's
input, optionally applies large-scale jitter, and picks the masks to train on.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..preprocess import resize_longest_side, to_rgb
from ..synthetic.training import make_training_scene

__all__ = [
    "ArrayPairs",
    "FolderPairs",
    "SceneBank",
    "SceneStream",
    "TrainingSample",
    "open_training_data",
    "prepare_sample",
]

_TIFF = (".tif", ".tiff")
_LABEL_SUFFIXES = ("_labels", "_label", "_masks", "_mask")


def _check_pair(image: np.ndarray, labels: np.ndarray, where: str) -> None:
    if image.ndim not in (2, 3):
        raise ValueError(f"{where}: image must be (Y, X) or (Y, X, C), got shape {image.shape}")
    if labels.ndim != 2 or labels.shape != image.shape[:2]:
        raise ValueError(
            f"{where}: labels must be a (Y, X) image the size of the image {image.shape[:2]}, "
            f"got shape {labels.shape}"
        )
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != np.bool_:
        raise ValueError(f"{where}: labels must be integers (instance ids), got {labels.dtype}")


class ArrayPairs:
    """Images and label images held in memory (e.g. napari layers).

    ``images`` and ``labels`` are one (Y, X[, C]) / (Y, X) pair, or stacks of them
    with a leading plane axis (every plane one sample).
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, channel_axis: bool = False) -> None:
        images, labels = np.asarray(images), np.asarray(labels)
        if labels.ndim == 2:
            images, labels = images[None], labels[None]
        if labels.ndim != 3 or images.shape[0] != labels.shape[0]:
            raise ValueError(
                f"labels {labels.shape} and images {images.shape} do not pair up: expected "
                "one (Y, X) label image per image, or stacks with the same number of planes"
            )
        for i in range(len(labels)):
            _check_pair(images[i], labels[i], f"plane {i}")
        if not any(labels[i].any() for i in range(len(labels))):
            raise ValueError("the labels contain no objects (all zero): nothing to train on")
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        return self.images[index], self.labels[index]


class FolderPairs:
    """Image and label TIFF pairs in a folder.

    Either ``images/`` and ``labels/`` subfolders with the same file names, or
    ``NAME.tif`` next to ``NAME_labels.tif`` (also ``_label``, ``_masks``, ``_mask``).
    Files are read when a sample is asked for.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        root = Path(folder)
        if not root.is_dir():
            raise FileNotFoundError(f"training data folder {root} does not exist")
        self.pairs = _find_pairs(root)
        if not self.pairs:
            raise ValueError(
                f"no image/label pairs in {root}: expected images/ and labels/ subfolders with "
                "the same TIFF names, or NAME.tif next to NAME_labels.tif"
            )

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        import tifffile

        image_path, label_path = self.pairs[index]
        try:
            image, labels = tifffile.imread(image_path), tifffile.imread(label_path)
        except Exception as exc:  # tifffile raises many types for a bad file
            raise ValueError(f"cannot read {image_path} / {label_path}: {exc}") from exc
        _check_pair(image, labels, str(image_path))
        return image, labels


def _find_pairs(root: Path) -> list[tuple[Path, Path]]:
    images_dir, labels_dir = root / "images", root / "labels"
    if images_dir.is_dir() and labels_dir.is_dir():
        pairs = []
        for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in _TIFF):
            label = labels_dir / image.name
            if not label.exists():
                raise ValueError(f"{image} has no label image {label}")
            pairs.append((image, label))
        return pairs
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in _TIFF)
    by_stem = {p.stem: p for p in files}
    pairs = []
    for path in files:
        for suffix in _LABEL_SUFFIXES:
            if path.stem.endswith(suffix) and path.stem[: -len(suffix)] in by_stem:
                pairs.append((by_stem[path.stem[: -len(suffix)]], path))
                break
    return sorted(pairs)


class SceneStream:
    """Endless procedural scenes (:mod:`src_core.synthetic.training`); sample ``i`` is the same for a given seed.

    ``closeups`` is the share of scenes that are close-ups (``make_training_scene(zoom=...)``,
    zoom drawn from ``zoom``); ``tissue`` the share that are stained tissue (the
    ``"tissue"`` kind, close-ups among them in the same share). 0, the default of
    both, leaves the stream as it always was.
    """

    def __init__(
        self,
        seed: int = 0,
        size: int = 256,
        length: int = 10**9,
        closeups: float = 0.0,
        zoom: tuple[float, float] = (2.0, 4.0),
        tissue: float = 0.0,
    ) -> None:
        if not 0.0 <= closeups <= 1.0:
            raise ValueError(f"closeups is a share of the scenes, 0 to 1; got {closeups}")
        if not 0.0 <= tissue <= 1.0:
            raise ValueError(f"tissue is a share of the scenes, 0 to 1; got {tissue}")
        if not 1.0 <= zoom[0] <= zoom[1] <= 8.0:
            raise ValueError(f"zoom must be (lo, hi) with 1 <= lo <= hi <= 8, got {zoom}")
        self.seed, self.size, self.length = seed, size, length
        self.closeups, self.zoom = closeups, (float(zoom[0]), float(zoom[1]))
        self.tissue = tissue

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        # the draws for tissue happen only when it is asked for: streams without it
        # are the scenes earlier training runs saw
        kind = "tissue" if self.tissue > 0 and rng.random() < self.tissue else None
        if self.closeups > 0 and rng.random() < self.closeups:
            return make_training_scene(rng, self.size, kind=kind, zoom=rng.uniform(*self.zoom))
        return make_training_scene(rng, self.size, kind=kind)


class SceneBank:
    """``count`` procedural scenes made once and kept in memory, each seen in its 8
    flips and rotations: item ``i`` is ``SceneStream(seed, size, closeups=closeups,
    tissue=tissue)[i // 8]`` under transform ``i % 8``.

    For long runs: ``workers`` processes make the scenes up front (6,000 256-px scenes
    in about 80 s on two cores) and the training loop only flips and indexes.
    """

    def __init__(
        self, seed: int, count: int, size: int = 256, workers: int = 1, closeups: float = 0.0,
        tissue: float = 0.0,
    ) -> None:
        if count < 1:
            raise ValueError(f"a scene bank needs at least one scene, got count={count}")
        stream = SceneStream(seed, size, closeups=closeups, tissue=tissue)
        if workers > 1:
            from multiprocessing import get_context

            with get_context("spawn").Pool(workers) as pool:
                self.scenes = pool.map(stream.__getitem__, range(count), chunksize=16)
        else:
            self.scenes = [stream[i] for i in range(count)]

    def __len__(self) -> int:
        return 8 * len(self.scenes)

    def __getitem__(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, labels = self.scenes[index // 8]
        turn, flip = index % 4, (index // 4) % 2
        image, labels = np.rot90(image, turn, axes=(0, 1)), np.rot90(labels, turn)
        if flip:
            image, labels = image[:, ::-1], labels[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(labels)


def open_training_data(
    path: str | os.PathLike, labels: str | os.PathLike | None = None
) -> FolderPairs | ArrayPairs:
    """A source from a folder of pairs, or from an image TIFF (stack) plus ``labels`` TIFF."""
    path = Path(path)
    if path.is_dir():
        if labels is not None:
            raise ValueError("--labels is for a TIFF stack; a folder holds its own label files")
        return FolderPairs(path)
    if not path.exists():
        raise FileNotFoundError(f"training data {path} does not exist")
    if labels is None:
        raise ValueError(f"{path} is a file: give its label stack too (--labels LABELS.tif)")
    import tifffile

    try:
        images, label_stack = tifffile.imread(path), tifffile.imread(labels)
    except Exception as exc:
        raise ValueError(f"cannot read {path} / {labels}: {exc}") from exc
    return ArrayPairs(images, label_stack)


@dataclass(frozen=True)
class TrainingSample:
    """One image ready for the model and the instance masks to learn on it.

    image : (3, S, S) float32, 0-255 RGB, resized and padded to the model input
    masks : (M, S, S) bool ground-truth masks in the same frame
    """

    image: np.ndarray
    masks: np.ndarray


def prepare_sample(
    image: np.ndarray,
    labels: np.ndarray,
    input_size: int,
    rng: np.random.Generator,
    max_masks: int = 64,
    max_area_fraction: float = 0.9,
    jitter: tuple[float, float] | None = None,
) -> TrainingSample | None:
    """Normalize, resize (and jitter) one pair; None when no usable mask remains.

    Masks covering more than ``max_area_fraction`` of the image are dropped (the
    seed's SA-1B filter); at most ``max_masks`` are kept, chosen at random.
    ``jitter=(lo, hi)`` rescales the image by a random factor in that range
    before cropping or padding it to the input (large-scale jitter).
    """
    _check_pair(np.asarray(image), np.asarray(labels), "sample")
    rgb = to_rgb(np.asarray(image)).astype(np.float32)
    labels = np.asarray(labels)
    ids, areas = np.unique(labels, return_counts=True)
    keep = (ids != 0) & (areas <= max_area_fraction * labels.size)
    ids = ids[keep]
    if len(ids) == 0:
        return None
    scale = 1.0 if jitter is None else rng.uniform(*jitter)
    long_side = max(8, int(round(input_size * scale)))
    resized = resize_longest_side(rgb, long_side)
    h, w = resized.shape[:2]
    rows = np.minimum((np.arange(h) + 0.5) * labels.shape[0] / h, labels.shape[0] - 1).astype(int)
    cols = np.minimum((np.arange(w) + 0.5) * labels.shape[1] / w, labels.shape[1] - 1).astype(int)
    small = labels[rows[:, None], cols[None, :]]
    y0 = int(rng.integers(0, h - input_size + 1)) if h > input_size else 0
    x0 = int(rng.integers(0, w - input_size + 1)) if w > input_size else 0
    resized = resized[y0 : y0 + input_size, x0 : x0 + input_size]
    small = small[y0 : y0 + input_size, x0 : x0 + input_size]
    canvas = np.zeros((input_size, input_size, 3), np.float32)
    canvas[: resized.shape[0], : resized.shape[1]] = resized
    label_canvas = np.zeros((input_size, input_size), labels.dtype)
    label_canvas[: small.shape[0], : small.shape[1]] = small
    # objects still at least 4 pixels big after resizing (and cropping)
    ids = ids[np.bincount(label_canvas.ravel(), minlength=int(ids.max()) + 1)[ids] >= 4]
    if len(ids) == 0:
        return None
    if len(ids) > max_masks:
        ids = rng.choice(ids, max_masks, replace=False)
    masks = label_canvas[None] == np.asarray(ids).reshape(-1, 1, 1)
    return TrainingSample(image=canvas.transpose(2, 0, 1).copy(), masks=masks)

