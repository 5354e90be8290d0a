"""Labels of a long video or stack on disk: a chunked, compressed zarr store written frame by frame.

A :class:`LabelStore` is a ``(T, H, W)`` integer array in a zarr folder (zarr
format 2, which every zarr reader opens, napari included): one chunk per frame
(tiles of at most 4096 x 4096 on very large frames), compressed with Blosc
zstd. Frames never written, and frames left empty, hold no file, so the store
grows with the frames actually tracked, and a frame where two animals cover
1% of the pixels compresses to a few kB. Its type is the smallest unsigned
integer that holds the ids; painting a larger id widens the store in place
(rewritten frame by frame) rather than wrapping around.

``np.asarray(open_labels("labels.zarr"))``, ``zarr.open_array("labels.zarr")``
or napari's File > Open (napari-sam's reader: a lazy Labels layer) read it; :func:`export_npy` and :func:`export_tiff`
convert it for tools that want a ``.npy`` file or a (compressed Big)TIFF.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

#: Largest tile of a frame stored as one chunk (a frame larger than this is several chunks).
MAX_CHUNK_SIDE = 4096
_UNSIGNED = (np.uint8, np.uint16, np.uint32, np.uint64)
#: The attribute that marks a zarr array as napari-sam labels.
MARK = "napari_sam"


def smallest_label_dtype(max_id: int) -> np.dtype:
    """The smallest unsigned integer type that holds ids up to ``max_id``."""
    if max_id < 0:
        raise ValueError(f"label ids are >= 0, got {max_id}")
    for dtype in _UNSIGNED:
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label id {max_id} does not fit in 64 bits")


def _compressor():
    from numcodecs import Blosc

    return Blosc(cname="zstd", clevel=5, shuffle=Blosc.BITSHUFFLE)


def _create(path: Path, shape: tuple[int, ...], dtype: np.dtype, overwrite: bool = True):
    import zarr

    array = zarr.create_array(store=str(path), shape=shape, chunks=_chunks(shape), dtype=dtype, fill_value=0,
                              zarr_format=2, compressors=_compressor(), overwrite=overwrite)
    array.attrs[MARK] = "labels"  # napari-sam's reader opens such a folder as a Labels layer
    return array


def _chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """One chunk per plane (tiles of at most MAX_CHUNK_SIDE on very large planes)."""
    return (*(1 for _ in shape[:-2]), *(min(s, MAX_CHUNK_SIDE) for s in shape[-2:]))


class LabelStore:
    """A ``(T, H, W)`` label array in a zarr folder, indexed by frame like an array.

    ``labels[t]`` reads frame ``t``; ``labels[t] = frame`` writes it (any
    integer frame; ids larger than the store's type widen it first).
    :attr:`array` is the zarr array itself, for napari's Labels layer (which
    reads only the frame shown and writes what is painted).

    Parameters
    ----------
    path : path
        The store's folder (``.zarr`` by convention).
    shape : tuple of int, optional
        ``(T, H, W)`` to create a new store (nothing is written yet); None
        opens an existing one.
    dtype : numpy dtype, optional
        Label type of a new store (default uint8: it widens as ids need).
    overwrite : bool
        Replace an existing store when ``shape`` is given; False raises
        FileExistsError, so a run cannot wipe earlier results by accident.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...] | None = None, dtype: Any = np.uint8,
                 *, overwrite: bool = False) -> None:
        import zarr

        self.path = Path(path)
        if shape is not None:
            shape = tuple(int(s) for s in shape)
            if len(shape) < 3 or min(shape) < 1:
                raise ValueError(f"a label store is (T, H, W) or (T, Z, H, W) with every size >= 1, got {shape}")
            if not np.issubdtype(np.dtype(dtype), np.integer):
                raise ValueError(f"labels must be an integer dtype, got {np.dtype(dtype)}")
            if self.path.exists():
                if not overwrite:
                    raise FileExistsError(f"{self.path} exists: open it (shape=None) to resume, or pass overwrite=True")
                _remove(self.path)
            self.array = _create(self.path, shape, np.dtype(dtype))
        else:
            if not (self.path / ".zarray").is_file() and not (self.path / "zarr.json").is_file():
                raise FileNotFoundError(f"No label store (zarr folder) at {self.path}.")
            self.array = zarr.open_array(str(self.path), mode="r+")
            if self.array.ndim < 3 or not np.issubdtype(self.array.dtype, np.integer):
                raise ValueError(f"{self.path} does not hold (T, H, W) integer labels "
                                 f"(shape {self.array.shape}, {self.array.dtype})")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        data = self.array[...]
        return data if dtype is None else data.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.array[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        value = np.asarray(value)
        if value.size and np.issubdtype(value.dtype, np.integer):
            top = int(value.max())
            if top > np.iinfo(self.dtype).max:
                self.widen(smallest_label_dtype(top))
            if int(value.min()) < 0:
                raise ValueError(f"label ids are >= 0, got {int(value.min())}")
        self.array[key] = value

    def frames_written(self) -> list[int]:
        """Frames with at least one chunk on disk (frames never written or left empty hold none)."""
        frames = set()
        for name in os.listdir(self.path):
            head = name.split(".", 1)[0]
            if head.isdigit():
                frames.add(int(head))
        return sorted(frames)

    def nbytes_on_disk(self) -> int:
        """Bytes the store takes on disk."""
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())

    def widen(self, dtype: Any) -> None:
        """Rewrite the store with a larger integer type (frame by frame; the old store is kept until done)."""
        dtype = np.dtype(dtype)
        if dtype.itemsize <= self.dtype.itemsize:
            return
        import zarr

        fresh = self.path.with_name(self.path.name + ".widening")
        _remove(fresh)
        new = _create(fresh, self.shape, dtype)
        for t in self.frames_written():
            new[t] = self.array[t]
        old = self.path.with_name(self.path.name + ".old")
        _remove(old)
        os.replace(self.path, old)
        os.replace(fresh, self.path)
        _remove(old)
        self.array = zarr.open_array(str(self.path), mode="r+")

    def flush(self) -> None:
        """Nothing to do: each write is complete on disk when it returns (kept for LabelFile's API)."""

    def close(self) -> None:
        """Nothing to release (kept for LabelFile's API)."""

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def ensure_store(path: str | os.PathLike, shape: tuple[int, ...], dtype: Any) -> LabelStore:
    """Open the store at ``path``, or create it (empty) when there is none.

    Safe when several processes call it at once for the same store (each frame a
    chunk of its own, they then write different files). A store of another shape
    is refused.
    """
    path = Path(path)
    try:
        store = LabelStore(path)
    except FileNotFoundError:
        try:
            _create(path, tuple(shape), np.dtype(dtype), overwrite=False)
        except Exception:  # noqa: BLE001 (zarr's "already exists" has no stable type): another process made it first
            pass
        store = LabelStore(path)
    if store.shape != tuple(shape):
        raise ValueError(f"{path} holds labels of shape {store.shape}, not {tuple(shape)}: "
                         "remove it (or choose another output folder)")
    return store


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def is_label_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr folder napari-sam wrote labels into (a :class:`LabelStore`)."""
    import json

    attrs = Path(path) / ".zattrs"
    try:
        return json.loads(attrs.read_text()).get(MARK) == "labels"
    except (OSError, ValueError, AttributeError):
        return False


def open_labels(path: str | os.PathLike) -> Any:
    """Open track labels for reading and writing, by what the path holds.

    A zarr folder (``labels.zarr``, what napari-sam writes) gives a
    :class:`LabelStore`; a ``.npy`` file (what napari-sam 0.1 wrote) a
    :class:`~src_core.propagate.labelfile.LabelFile`. Both index by frame and
    ``np.asarray`` reads them whole.
    """
    path = Path(path)
    if path.is_dir():
        return LabelStore(path)
    if path.suffix.lower() == ".npy":
        from .labelfile import LabelFile

        return LabelFile(path)
    if not path.exists():
        raise FileNotFoundError(f"No labels at {path}.")
    raise ValueError(f"{path}: expected a zarr folder (labels.zarr) or a .npy label file")


def _partial(path: Path) -> Path:
    return path.with_name(f".{path.name}.partial")


def export_tiff(labels: Any, path: str | os.PathLike, *, compression: str = "zlib") -> Path:
    """Write ``(T, H, W)`` labels as a compressed BigTIFF, one page per frame, one frame in memory at a time."""
    import tifffile

    path = Path(path)
    tmp = _partial(path)
    n = len(labels)
    dtype = np.dtype(labels.dtype)
    tifffile.imwrite(tmp, (np.asarray(labels[t], dtype) for t in range(n)), shape=tuple(labels.shape),
                     dtype=dtype, bigtiff=True, compression=compression, photometric="minisblack")
    os.replace(tmp, path)
    return path


def export_npy(labels: Any, path: str | os.PathLike) -> Path:
    """Write ``(T, H, W)`` labels as a ``.npy`` file frame by frame (for readers of napari-sam 0.1's labels.npy).

    The file holds every pixel (``T * H * W`` times the type's size): prefer the zarr store for long videos.
    """
    path = Path(path)
    tmp = _partial(path)
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=labels.dtype, shape=tuple(labels.shape))
    for t in range(len(labels)):
        frame = np.asarray(labels[t])
        if frame.any():
            out[t] = frame
    out.flush()
    del out
    os.replace(tmp, path)
    return path
