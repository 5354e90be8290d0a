"""A label video on disk, read and written one frame at a time, in constant memory.

A ``np.memmap`` of a long video keeps every page it touched mapped (counted in
the process's resident memory until the kernel writes it back);
:class:`LabelFile` reads and writes frames with plain file I/O instead. The
file is an ordinary ``.npy``: ``np.load(path, mmap_mode="r")`` opens it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np


class LabelFile:
    """A ``(T, H, W)`` integer ``.npy`` file, indexed by frame like an array.

    ``labels[t]`` reads frame ``t``; ``labels[t] = frame`` writes it. Only
    integer frame indices are supported (what propagation and its writers use).

    Parameters
    ----------
    path : path
        The ``.npy`` file.
    shape : tuple of int, optional
        ``(T, H, W)`` to create a new file (filled with zeros, sparse on disk);
        None opens an existing one.
    dtype : numpy dtype
        Label type of a new file (int32 by default; uint16 halves the size).
    overwrite : bool
        Replace an existing file when ``shape`` is given; False raises
        FileExistsError, so a run cannot wipe earlier results by accident.
    """

    def __init__(self, path: str | os.PathLike, shape: tuple[int, int, int] | None = None,
                 dtype: Any = np.int32, *, overwrite: bool = False) -> None:
        self.path = Path(path)
        if shape is not None:
            if len(shape) != 3 or min(shape) < 1:
                raise ValueError(f"a label file is (T, H, W) with every size >= 1, got {shape}")
            if self.path.exists() and not overwrite:
                raise FileExistsError(f"{self.path} exists: open it (shape=None) to resume, or pass overwrite=True")
            if not np.issubdtype(np.dtype(dtype), np.integer):
                raise ValueError(f"labels must be an integer dtype, got {np.dtype(dtype)}")
            created = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=tuple(shape))
            del created  # the header is written and the file sized (sparse): nothing is kept mapped
        elif not self.path.is_file():
            raise FileNotFoundError(f"No label file at {self.path}.")
        view = np.load(self.path, mmap_mode="r")
        self.shape: tuple[int, int, int] = tuple(view.shape)
        self.dtype = view.dtype
        self._offset = int(view.offset)
        self._fortran = bool(view.flags.f_contiguous and not view.flags.c_contiguous)
        del view
        if len(self.shape) != 3 or self._fortran:
            raise ValueError(f"{self.path} does not hold a C-ordered (T, H, W) array (shape {self.shape})")
        self._frame_bytes = self.shape[1] * self.shape[2] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDWR)

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return 3

    def _index(self, key: Any) -> int:
        if isinstance(key, (bool, np.bool_)) or not isinstance(key, (int, np.integer)):
            raise TypeError(f"LabelFile is indexed by one frame number, got {key!r}")
        t = int(key)
        if not -self.shape[0] <= t < self.shape[0]:
            raise IndexError(f"frame {t} is out of range for {self.shape[0]} frames")
        return t % self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        t = self._index(key)
        data = os.pread(self._fd, self._frame_bytes, self._offset + t * self._frame_bytes)
        return np.frombuffer(data, self.dtype).reshape(self.shape[1:]).copy()

    def __setitem__(self, key: Any, frame: np.ndarray) -> None:
        t = self._index(key)
        frame = np.asarray(frame)
        if frame.shape != self.shape[1:]:
            raise ValueError(f"frame of shape {frame.shape} does not fit labels of shape {self.shape}")
        data = np.ascontiguousarray(frame, dtype=self.dtype).tobytes()
        os.pwrite(self._fd, data, self._offset + t * self._frame_bytes)

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> LabelFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except (AttributeError, OSError):
            pass
