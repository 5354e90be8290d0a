"""On-disk cache of image embeddings, so a reopened image is not encoded again.

Encoding one image takes seconds on a CPU; loading its embedding back takes
milliseconds. :class:`EmbeddingCache` keeps one ``<key>.npz`` file per
embedding, where the key (:func:`make_key`) digests the image content, the
model and every preprocessing parameter that changes the embedding.

Entries are written to a temporary file in the cache folder and renamed into
place, so a crash never leaves half an entry under a final name; every entry
also carries a sha256 of its embedding, so a file damaged afterwards (power
loss, a full disk, another program) is detected, deleted and treated as a
miss: the cache never returns wrong data and never raises on a bad entry.
When the folder outgrows ``max_bytes``, least recently used entries go first.

Embeddings come back as exactly the float32 values stored. Deflate is off: on
a float32 vit_b embedding it saved 7% for 120 ms more per store and 17 ms more
per load. An encoder running in bfloat16 yields float32 values whose low 16
bits are all zero; those are stored as their upper halves (layout
``"float32-upper16"``), half the size and still bit-exact. Any other
embedding is stored as plain float32.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # torch loads with the model, not with this module
    import torch

    from .predictor import SamPredictor

__all__ = [
    "FORMAT_VERSION",
    "CachedEmbedding",
    "cache_model_id",
    "EmbeddingCache",
    "embed_with_cache",
    "embedding_preprocessing",
    "make_key",
]

FORMAT_VERSION = 1
"""Version of the entry layout; entries of another version are misses."""

_KEY_PATTERN = re.compile(r"[0-9a-f]{16,128}")
_SUFFIX = ".npz"
_TEMP_PREFIX = ".tmp-"
_TEMP_SUFFIX = ".part"
_STALE_TEMP_SECONDS = 24 * 3600  # a writer that crashed left it behind
_HASH_BLOCK_BYTES = 1 << 22
_FLOAT_SETTINGS = ("contrast_limits", "percentiles")  # (0, 255) and (0.0, 255.0) mean the same
_PLAIN, _UPPER16 = "float32", "float32-upper16"  # storage layouts of the embedding


@dataclass(frozen=True)
class CachedEmbedding:
    """An embedding loaded from the cache, ready for ``SamPredictor.set_embedding``.

    Parameters
    ----------
    embedding : numpy.ndarray
        (1, C, h, w) float32, bit for bit what was stored.
    original_size : tuple of int
        (height, width) of the image that was encoded.
    input_size : tuple of int
        (height, width) of that image after resizing for the encoder.
    extras : mapping of str to numpy.ndarray
        Other (1, C, h, w) float32 feature maps the predictor needs with the
        embedding (SAM 2.1: ``high_res_0``, ``high_res_1``); empty for SAM 1.
    """

    embedding: np.ndarray
    original_size: tuple[int, int]
    input_size: tuple[int, int]
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)


class _CorruptEntry(Exception):
    """An entry file that cannot be trusted."""


def make_key(image: np.ndarray, *, model_id: str, preprocessing: Mapping[str, object]) -> str:
    """Cache key of an image encoded by a model with given preprocessing.

    Parameters
    ----------
    image : numpy.ndarray
        The pixels exactly as given to ``set_image``; content, shape and dtype
        all count, memory layout does not (a strided view and its copy agree).
    model_id : str
        Names the weights, e.g. ``"vit_b-ec2df62732614e57"`` (model type and the
        start of the checkpoint's sha256). It must change whenever the weights do.
    preprocessing : mapping
        Every setting that changes the embedding, with JSON-like values
        (None, bool, int, float, str, sequences, str-keyed mappings).

    Returns
    -------
    str
        64 hex characters (sha256).

    Raises
    ------
    ValueError
        If the image is not numeric, ``model_id`` is empty or a preprocessing
        value cannot be written as JSON.
    """
    array = np.asarray(image)
    if array.dtype.kind not in "biufc":
        raise ValueError(f"make_key needs a numeric image, got dtype {array.dtype}")
    if not isinstance(model_id, str) or not model_id:
        raise ValueError(f"model_id must be a non-empty string naming the weights, got {model_id!r}")
    if not isinstance(preprocessing, Mapping):
        raise ValueError(f"preprocessing must be a mapping, got {type(preprocessing).__name__}")
    header = {
        "format": FORMAT_VERSION,
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "model_id": model_id,
        "preprocessing": _canonical(preprocessing, "preprocessing"),
    }
    header_bytes = _canonical_json(header).encode("utf-8")
    # sha256 runs in hardware (SHA-NI, ARMv8) on current CPUs: ~2 GB/s, twice blake2b
    digest = hashlib.sha256()
    digest.update(len(header_bytes).to_bytes(8, "little"))
    digest.update(header_bytes)
    _digest_array(digest, array)
    return digest.hexdigest()


def embedding_preprocessing(predictor: SamPredictor, set_image_kwargs: Mapping[str, Any]) -> dict[str, object]:
    """The settings of ``predictor.set_image(image, **set_image_kwargs)`` that shape the embedding.

    Every parameter of ``set_image`` but the image, with its default filled in,
    plus the encoder's precision and input size; contrast limits and
    percentiles as floats so that ``(0, 255)`` and ``(0.0, 255.0)`` agree.

    Raises
    ------
    TypeError
        If ``set_image`` does not take one of the keyword arguments.
    """
    signature = inspect.signature(predictor.set_image)
    bound = signature.bind(None, **set_image_kwargs)
    bound.apply_defaults()
    settings: dict[str, object] = {}
    for index, (name, value) in enumerate(bound.arguments.items()):
        if index == 0:  # the image
            continue
        if name in _FLOAT_SETTINGS and value is not None:
            try:
                value = np.asarray(value, dtype=np.float64).tolist()
            except (TypeError, ValueError):
                pass  # set_image explains what is wrong with it
        settings[name] = value
    settings["encoder_dtype"], settings["encoder_img_size"] = _encoder_settings(predictor.model)
    return settings


def _encoder_settings(model: Any) -> tuple[str, int]:
    """(precision, input side) of a SAM 1 or SAM 2.1 model's image encoder."""
    if hasattr(model, "encoder_dtype"):  # SAM 1
        return str(model.encoder_dtype), int(model.image_encoder.img_size)
    import torch

    return str(model.autocast_dtype or torch.float32), int(model.image_size)


def _embedding_shape(model: Any) -> tuple[int, int, int, int]:
    """The (1, C, h, w) embedding a SAM 1 or SAM 2.1 model gives."""
    encoder = getattr(model, "sam_prompt_encoder", None) or model.prompt_encoder
    return (1, int(encoder.embed_dim), *map(int, encoder.image_embedding_size))


class EmbeddingCache:
    """Image embeddings on disk, one ``.npz`` per image, least recently used evicted first.

    Parameters
    ----------
    root : path-like, optional
        Folder of the entries, created on the first :meth:`put`. Default:
        ``cache_dir() / "embeddings"`` (moved by ``$NAPARI_SAM_CACHE``). Only
        files named ``<hex key>.npz`` are ever counted or removed.
    max_bytes : int
        Size the folder's entries are trimmed to after each store (default
        2 GiB: about 500 float32 embeddings of 4 MiB, 1000 from a bfloat16
        encoder). 0 keeps nothing.

    Notes
    -----
    Safe to share between threads and processes: writes are atomic renames,
    and an entry removed by someone else is simply a miss.
    """

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int = 2 * 1024**3) -> None:
        if root is None:
            from .checkpoints import cache_dir

            root = cache_dir() / "embeddings"
        self._root = Path(root).expanduser()
        self.max_bytes = max_bytes

    @property
    def root(self) -> Path:
        """Folder of the entries."""
        return self._root

    @property
    def max_bytes(self) -> int:
        """Size limit of the entries; a lower value takes effect at the next put or :meth:`trim`."""
        return self._max_bytes

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"max_bytes must be a whole number of bytes >= 0, got {value!r}")
        self._max_bytes = int(value)

    def __repr__(self) -> str:
        return f"EmbeddingCache(root={str(self._root)!r}, max_bytes={self._max_bytes})"

    def path(self, key: str) -> Path:
        """Where the entry of ``key`` lives (whether or not it exists)."""
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            raise ValueError(
                f"cache keys are 16 to 128 lowercase hex characters, as made by make_key; got {key!r}"
            )
        return self._root / (key + _SUFFIX)

    def get(self, key: str) -> CachedEmbedding | None:
        """The embedding stored under ``key``, or None.

        A damaged or foreign entry is deleted and reported as a miss. A hit
        marks the entry as recently used.
        """
        path = self.path(key)
        try:
            file = open(path, "rb")
        except OSError:  # missing, or unreadable: a miss, and not ours to delete
            return None
        try:
            with file:
                entry = _read_entry(file, key)
        except MemoryError:  # says nothing about the file
            return None
        except Exception:  # noqa: BLE001 -- whatever fails to decode, the entry is unusable
            _remove_quietly(path)
            return None
        try:
            os.utime(path)
        except OSError:  # a read-only cache still serves hits
            pass
        return entry

    def put(
        self,
        key: str,
        embedding: np.ndarray | torch.Tensor,
        original_size: tuple[int, int],
        input_size: tuple[int, int],
        *,
        model_id: str | None = None,
        preprocessing: Mapping[str, object] | None = None,
        extras: Mapping[str, np.ndarray | torch.Tensor] | None = None,
    ) -> Path | None:
        """Store an embedding under ``key``, then evict old entries down to ``max_bytes``.

        Parameters
        ----------
        key : str
            From :func:`make_key`.
        embedding : numpy.ndarray or torch.Tensor
            (1, C, h, w), any device and floating dtype; stored as float32.
        original_size, input_size : tuple of int
            As ``SamPredictor.original_size`` and ``.input_size``.
        model_id, preprocessing : optional
            Recorded in the entry's metadata, for people inspecting the cache.
        extras : mapping, optional
            Named (1, C, h, w) feature maps stored with the embedding, each packed
            and checksummed like it (SAM 2.1's high-resolution features).

        Returns
        -------
        pathlib.Path or None
            The entry's file, or None when the entry alone is larger than
            ``max_bytes`` and was therefore not kept (other entries are then
            left alone).

        Raises
        ------
        ValueError
            If the embedding or sizes have the wrong shape.
        RuntimeError
            If the folder cannot be created or written (no permission, disk
            full). Nothing is left behind. Caching is optional: callers that
            segment anyway catch this and tell the user.
        """
        path = self.path(key)
        array = _embedding_array(embedding)
        storage, stored = _pack(array)
        extra_arrays, extra_meta = {}, {}
        for name, value in (extras or {}).items():
            if not re.fullmatch(r"[a-z0-9_]{1,32}", name):
                raise ValueError(f"extra feature names are short lowercase words, got {name!r}")
            extra = _embedding_array(value)
            extra_storage, extra_arrays[f"extra_{name}"] = _pack(extra)
            extra_meta[name] = {
                "shape": list(extra.shape), "storage": extra_storage,
                "sha256": hashlib.sha256(_bytes_view(extra)).hexdigest(),
            }
        sizes = {
            "original_size": _size_pair(original_size, "original_size"),
            "input_size": _size_pair(input_size, "input_size"),
        }
        metadata = {
            "format": FORMAT_VERSION,
            "key": key,
            "model_id": model_id,
            "preprocessing": None if preprocessing is None else _canonical(preprocessing, "preprocessing"),
            "shape": list(array.shape),
            "dtype": "float32",
            "storage": storage,
            "sha256": hashlib.sha256(_bytes_view(array)).hexdigest(),
            "extras": extra_meta,
            "created": time.time(),
        }
        try:
            self._root.mkdir(parents=True, exist_ok=True)
            handle, temp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=self._root)
        except OSError as error:
            raise RuntimeError(self._write_failure(error)) from error
        temp = Path(temp_name)
        committed = False
        try:
            with os.fdopen(handle, "wb") as file:
                np.savez(
                    file,
                    embedding=stored,
                    original_size=np.asarray(sizes["original_size"], dtype="<i8"),
                    input_size=np.asarray(sizes["input_size"], dtype="<i8"),
                    metadata=np.frombuffer(_canonical_json(metadata).encode("utf-8"), dtype=np.uint8),
                    **extra_arrays,
                )
            try:
                os.replace(temp, path)
                committed = True
            except PermissionError:
                # Windows will not replace a file that a reader holds open; that
                # file is an entry of this same key, so it can stay
                if not path.is_file():
                    raise
        except OSError as error:
            raise RuntimeError(self._write_failure(error)) from error
        finally:
            if not committed:
                _remove_quietly(temp)
        try:
            size = path.stat().st_size
        except OSError:  # evicted at once by another process: as good as not kept
            return None
        if size > self._max_bytes:
            _remove_quietly(path)
            return None
        self._evict(keep=path)
        return path

    def trim(self) -> int:
        """Evict least recently used entries until they fit ``max_bytes``; returns bytes freed."""
        return self._evict(keep=None)

    def clear(self) -> None:
        """Remove every entry (the folder itself stays)."""
        for _, _, _, path in self._entries():
            _remove_quietly(path)

    def size_bytes(self) -> int:
        """Total size of the entries on disk."""
        return sum(size for _, _, size, _ in self._entries())

    def __len__(self) -> int:
        return len(self._entries())

    def __contains__(self, key: object) -> bool:
        """Whether an entry file exists for ``key`` (not whether it is intact: see :meth:`get`)."""
        if not isinstance(key, str) or not _KEY_PATTERN.fullmatch(key):
            return False
        return self.path(key).is_file()

    # -- internals -------------------------------------------------------------------

    def _entries(self) -> list[tuple[int, str, int, Path]]:
        """(mtime_ns, name, size, path) of every entry; stale temporary files are removed."""
        found = []
        now = time.time()
        try:
            scan = list(os.scandir(self._root))
        except (FileNotFoundError, NotADirectoryError):  # nothing was ever stored there
            return []
        except OSError as error:
            raise RuntimeError(
                f"cannot read the embedding cache folder {self._root}: {error}. "
                "Choose another folder with EmbeddingCache(root=...) or $NAPARI_SAM_CACHE."
            ) from error
        for item in scan:
            name = item.name
            try:
                if name.endswith(_SUFFIX) and _KEY_PATTERN.fullmatch(name[: -len(_SUFFIX)]):
                    stat = item.stat(follow_symlinks=False)
                    if item.is_file(follow_symlinks=False):
                        found.append((stat.st_mtime_ns, name, stat.st_size, Path(item.path)))
                elif name.startswith(_TEMP_PREFIX) and name.endswith(_TEMP_SUFFIX):
                    if now - item.stat(follow_symlinks=False).st_mtime > _STALE_TEMP_SECONDS:
                        _remove_quietly(Path(item.path))
            except OSError:  # removed while we looked
                continue
        return found

    def _evict(self, keep: Path | None) -> int:
        entries = sorted(self._entries())
        total = sum(size for _, _, size, _ in entries)
        freed = 0
        for _, _, size, path in entries:
            if total <= self._max_bytes:
                break
            if path == keep:
                continue
            _remove_quietly(path)  # gone either way, even if another process beat us to it
            total -= size
            freed += size
        return freed

    def _write_failure(self, error: OSError) -> str:
        return (
            f"could not store an embedding in the cache folder {self._root}: {error}. "
            "Free disk space there, or choose another folder (EmbeddingCache(root=...) or "
            "the NAPARI_SAM_CACHE environment variable), or lower max_bytes. "
            "Segmentation works without the cache; only reopening is slower."
        )


def cache_model_id(predictor: Any) -> str | None:
    """The id under which ``predictor``'s embeddings are cached, or None when they are
    not: weights without an id (not from a file), or a predictor that cannot take an
    embedding back (no ``set_embedding``). SAM 2.1's image predictor is cached with
    its high-resolution features (``extra_features``)."""
    if not hasattr(predictor, "set_embedding"):
        return None
    return getattr(getattr(predictor, "model", None), "weights_id", None)


def embed_with_cache(
    predictor: SamPredictor,
    image: np.ndarray,
    cache: EmbeddingCache | None,
    *,
    model_id: str,
    on_store_error: Callable[[RuntimeError], object] | None = None,
    **set_image_kwargs: Any,
) -> bool:
    """Set ``predictor``'s image from the cache if possible, else encode it and store it.

    Parameters
    ----------
    predictor : SamPredictor
        Receives the embedding.
    image : array-like
        As for ``set_image``.
    cache : EmbeddingCache or None
        None encodes without caching.
    model_id : str
        Names the predictor's weights; see :func:`make_key`.
    on_store_error : callable, optional
        Called with the RuntimeError when storing fails (e.g. disk full), so
        segmentation goes on; when None that error is raised, with the
        predictor already holding the new embedding.
    **set_image_kwargs
        ``image_format``, ``channel_axis``, ``channels``, ``contrast_limits``,
        ``percentiles``: passed to ``set_image`` and part of the key.

    Returns
    -------
    bool
        True if the embedding came from the cache, False if it was computed.
    """
    array = np.asarray(image)  # a lazy (e.g. dask) slice is read once, not twice
    if cache is None:
        predictor.set_image(array, **set_image_kwargs)
        return False
    preprocessing = embedding_preprocessing(predictor, set_image_kwargs)
    key = make_key(array, model_id=model_id, preprocessing=preprocessing)
    cached = cache.get(key)
    wants_extras = hasattr(predictor, "extra_features")  # SAM 2.1: high-resolution features too
    if cached is not None and cached.embedding.shape == _embedding_shape(predictor.model):
        import torch

        embedding = torch.from_numpy(cached.embedding)
        try:
            if wants_extras:
                predictor.set_embedding(embedding, cached.original_size, cached.input_size,
                                        extra_features=dict(cached.extras))
            else:
                predictor.set_embedding(embedding, cached.original_size, cached.input_size)
            return True
        except ValueError:
            pass  # an entry without what this predictor needs: computed again below
    # a miss, or an embedding of another geometry stored under a reused model_id: recompute
    predictor.set_image(array, **set_image_kwargs)
    try:
        cache.put(
            key,
            predictor.get_image_embedding(),
            predictor.original_size,
            predictor.input_size,
            model_id=model_id,
            preprocessing=preprocessing,
            extras=predictor.extra_features() if wants_extras else None,
        )
    except RuntimeError as error:
        if on_store_error is None:
            raise
        on_store_error(error)
    return False


# -- helpers ------------------------------------------------------------------------------


def _read_entry(file: Any, key: str) -> CachedEmbedding:
    """Decode and verify one entry; raises on anything unexpected."""
    with np.load(file, allow_pickle=False) as data:
        missing = {"embedding", "original_size", "input_size", "metadata"} - set(data.files)
        if missing:
            raise _CorruptEntry(f"missing {sorted(missing)}")
        metadata = json.loads(data["metadata"].tobytes().decode("utf-8"))
        stored = data["embedding"]
        original_size = data["original_size"]
        input_size = data["input_size"]
        extra_meta = metadata.get("extras", {}) if isinstance(metadata, dict) else {}
        if not isinstance(extra_meta, dict) or any(f"extra_{name}" not in data.files for name in extra_meta):
            raise _CorruptEntry("extra features missing")
        extras_stored = {name: data[f"extra_{name}"] for name in extra_meta}
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT_VERSION:
        raise _CorruptEntry("other format version")
    if metadata.get("key") != key:
        raise _CorruptEntry("entry of another key")
    embedding = _unpack(stored, metadata.get("storage"))
    if (
        embedding.dtype != np.dtype("<f4")
        or embedding.ndim != 4
        or embedding.shape[0] != 1
        or list(embedding.shape) != metadata.get("shape")
    ):
        raise _CorruptEntry("embedding of unexpected shape or dtype")
    if hashlib.sha256(_bytes_view(embedding)).hexdigest() != metadata.get("sha256"):
        raise _CorruptEntry("checksum mismatch")
    extras = {}
    for name, meta in extra_meta.items():
        extra = _unpack(extras_stored[name], meta.get("storage"))
        if extra.ndim != 4 or list(extra.shape) != meta.get("shape"):
            raise _CorruptEntry(f"extra feature {name} of unexpected shape")
        if hashlib.sha256(_bytes_view(extra)).hexdigest() != meta.get("sha256"):
            raise _CorruptEntry(f"checksum mismatch in extra feature {name}")
        extras[name] = extra.astype(np.float32, copy=False)
    return CachedEmbedding(
        embedding=embedding.astype(np.float32, copy=False),
        original_size=_size_pair(original_size, "original_size"),
        input_size=_size_pair(input_size, "input_size"),
        extras=extras,
    )


def _embedding_array(embedding: np.ndarray | torch.Tensor) -> np.ndarray:
    if hasattr(embedding, "detach"):  # torch tensor: bfloat16 has no numpy dtype
        import torch

        embedding = embedding.detach().to("cpu", torch.float32).numpy()
    array = np.asarray(embedding)
    if array.dtype.kind != "f" or array.ndim != 4 or array.shape[0] != 1:
        raise ValueError(
            f"expected a (1, C, h, w) floating-point embedding, got {array.dtype} of shape {array.shape}"
        )
    return np.ascontiguousarray(array, dtype="<f4")


def _pack(array: np.ndarray) -> tuple[str, np.ndarray]:
    """Storage layout and stored array of a little-endian float32 embedding; lossless."""
    bits = array.view("<u4")
    if (bits & 0xFFFF).any():
        return _PLAIN, array
    return _UPPER16, (bits >> 16).astype("<u2")


def _unpack(stored: np.ndarray, storage: object) -> np.ndarray:
    """The little-endian float32 embedding of a stored array (checked by the caller's sha256)."""
    if storage == _PLAIN and stored.dtype == np.dtype("<f4"):
        return stored
    if storage == _UPPER16 and stored.dtype == np.dtype("<u2"):
        return (stored.astype("<u4") << 16).view("<f4")
    raise _CorruptEntry(f"unknown storage {storage!r} for {stored.dtype}")


def _size_pair(value: object, name: str) -> tuple[int, int]:
    pair = np.asarray(value)
    if pair.shape != (2,) or pair.dtype.kind not in "iuf" or not np.all(pair > 0) or not np.all(pair == np.round(pair)):
        raise ValueError(f"{name} must be (height, width) in whole pixels, got {value!r}")
    return int(pair[0]), int(pair[1])


def _bytes_view(array: np.ndarray) -> memoryview:
    return memoryview(np.ascontiguousarray(array).reshape(-1).view(np.uint8))


def _digest_array(digest: Any, array: np.ndarray) -> None:
    """Feed an array's bytes in C order, copying only one block at a time if it is strided."""
    if array.flags.c_contiguous:
        digest.update(_bytes_view(array))
        return
    row_bytes = max(1, array[:1].nbytes)
    rows = max(1, _HASH_BLOCK_BYTES // row_bytes)
    for start in range(0, array.shape[0], rows):
        digest.update(_bytes_view(array[start : start + rows]))


def _canonical(value: object, where: str) -> object:
    """JSON-ready copy of ``value`` with one spelling per meaning."""
    if isinstance(value, np.generic):
        value = value.item()
    if value is None or isinstance(value, (bool, str, int, float)):
        return value
    if isinstance(value, np.dtype):
        return value.str
    if isinstance(value, Mapping):
        result = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError(f"{where} keys must be strings, got {key!r}")
            result[key] = _canonical(item, f"{where}[{key!r}]")
        return result
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return [_canonical(item, f"{where}[{index}]") for index, item in enumerate(value)]
    raise ValueError(
        f"{where} must hold None, bool, int, float, str, sequences or str-keyed mappings "
        f"(it is part of the cache key), got {type(value).__name__}: {value!r}"
    )


def _canonical_json(value: object) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=True)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass
