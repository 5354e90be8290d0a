"""Published SAM checkpoints: registry, per-user cache, verified download, loading.

The registry holds Meta's SAM (:data:`CHECKPOINTS`), MobileSAM's small model
(:data:`SMALL_CHECKPOINTS`), micro-sam's microscopy fine-tunes
(:data:`MICROSCOPY_CHECKPOINTS`) and SAM 2.1 (:data:`SAM2_CHECKPOINTS`);
:func:`model_groups` is the one grouped list the plugin and the CLI show.

Checkpoints are large (40 MB to 2.5 GB), so downloads stream into
``<name>.part`` next to their final place, resume with an HTTP ``Range``
request when a previous attempt was cut off, and are verified (size and the
published checksum: sha256, or xxh128 for the files micro-sam publishes; the
checksum alone for a file whose size is not published, such as the CLIP weights
of :mod:`src_core.text`; the server's length alone for the SAM 2.1 and MobileSAM
files, whose publishers give neither, and which the model builders verify by
structure) before being renamed into place. The cache therefore never holds a
half-written file under a final name.

Loading uses ``torch.load(..., weights_only=True)``: a checkpoint is data, and
must never be able to run code when opened.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.client import HTTPException, HTTPResponse
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported when weights are loaded, not before
    import torch

__all__ = [
    "CHECKPOINTS",
    "EMBEDDED_MODEL",
    "MICROSCOPY_CHECKPOINTS",
    "SAM2_CHECKPOINTS",
    "SMALL_CHECKPOINTS",
    "CheckpointInfo",
    "ModelGroup",
    "cache_dir",
    "cached_checkpoint",
    "checkpoint_info",
    "checkpoint_path",
    "default_model_type",
    "download_checkpoint",
    "embedded_checkpoint",
    "file_digest",
    "identify_checkpoint",
    "load_state_dict",
    "local_file",
    "model_groups",
    "resolve_checkpoint",
    "sam_checkpoints",
    "sha256_file",
    "size_estimate",
]

ProgressCallback = Callable[[int, int], object]

_CACHE_ENV_VAR = "NAPARI_SAM_CACHE"
_USER_AGENT = "napari-sam checkpoint downloader"
_DEFAULT_CHUNK = 1 << 20


def _is_hex(value: str, length: int) -> bool:
    return len(value) == length and all(c in "0123456789abcdef" for c in value)


@dataclass(frozen=True)
class CheckpointInfo:
    """One downloadable checkpoint file.

    Parameters
    ----------
    name : str
        Model type the weights belong to, e.g. ``"vit_b"``.
    url : str
        Where the file is published.
    size : int or None
        Exact size of the file in bytes; None when it is not published (the
        file is then verified by its checksum alone, and the cache check of
        :func:`cached_checkpoint` is whether the file is there).
    sha256 : str or None
        Hex sha256 digest of the file; None when the publisher gives none (the
        file is then verified by ``xxh128`` where known, else accepted by its size
        where known, and the model builder verifies it by structure: its keys must
        load strictly).
    folder : str
        Subfolder of the cache root the file is kept in.
    family : str
        Model family the weights are for: ``"sam"`` (SAM 1's prompt encoder and mask
        decoder, with a ViT or TinyViT image encoder) or ``"sam2"`` (SAM 2.1).
    xxh128 : str or None
        Hex xxh128 digest of the file, as micro-sam publishes its models' checksums;
        verifies a download when there is no sha256, and names a file whatever it is
        called (:func:`identify_checkpoint`).
    file : str or None
        Name of the file in the cache when the URL's last part is not one (micro-sam's
        files are all called ``vit_b.pt`` or ``download``); default: the URL's.
    architecture : str or None
        The model type whose network the weights fit (``"vit_b"`` for micro-sam's
        ``vit_b_lm``); default: ``name``.
    group : str
        Where the model is listed: ``"meta"``, ``"microscopy"``, ``"small"`` or ``"video"``.
    summary : str
        One line on what the model is for.
    """

    name: str
    url: str
    size: int | None
    sha256: str | None
    folder: str = "checkpoints"
    family: str = "sam"
    xxh128: str | None = None
    file: str | None = None
    architecture: str | None = None
    group: str = "meta"
    summary: str = ""

    def __post_init__(self) -> None:
        if self.size is not None and (
            isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0
        ):
            raise ValueError(
                f"checkpoint {self.name!r}: size must be a positive number of "
                f"bytes (or None when unknown), got {self.size!r}"
            )
        for kind, length in (("sha256", 64), ("xxh128", 32)):
            digest = getattr(self, kind)
            if digest is not None and not _is_hex(str(digest).lower(), length):
                raise ValueError(
                    f"checkpoint {self.name!r}: {kind} must be {length} hex characters, "
                    f"got {digest!r}"
                )
        if self.family not in ("sam", "sam2"):
            raise ValueError(
                f"checkpoint {self.name!r}: family must be 'sam' or 'sam2', got {self.family!r}"
            )
        if self.group not in _GROUP_TITLES:
            raise ValueError(
                f"checkpoint {self.name!r}: group must be one of {sorted(_GROUP_TITLES)}, "
                f"got {self.group!r}"
            )
        if not self.filename:
            raise ValueError(
                f"checkpoint {self.name!r}: URL {self.url!r} does not end in a "
                "file name"
            )

    @property
    def filename(self) -> str:
        """The file's name in the cache: ``file``, else the end of the URL
        (e.g. ``sam_vit_b_01ec64.pth``)."""
        return self.file or PurePosixPath(urllib.parse.urlparse(self.url).path).name

    @property
    def model_type(self) -> str:
        """The network the weights fit (a key of ``src_core.model.build.MODEL_CONFIGS``)."""
        return self.architecture or self.name

    @property
    def checksum(self) -> tuple[str, str] | None:
        """``(kind, hex digest)`` a download is verified with: sha256 where published,
        else xxh128; None when the publisher gives neither."""
        if self.sha256 is not None:
            return "sha256", self.sha256.lower()
        if self.xxh128 is not None:
            return "xxh128", self.xxh128.lower()
        return None


#: Group key -> the title the plugin's model box and ``napari-sam models`` show.
_GROUP_TITLES = {
    "meta": "Meta's SAM",
    "microscopy": "microscopy fine-tunes (micro-sam)",
    "small": "small and fast",
    "builtin": "built-in",
    "video": "video (SAM 2.1)",
}


_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything/"

# The xxh128 digests of Meta's and micro-sam's files are those micro-sam 1.8.14 publishes
# (micro_sam/util.py, ``models()``); they verify micro-sam's downloads and name a file
# whatever it is called (identify_checkpoint).
CHECKPOINTS: Mapping[str, CheckpointInfo] = MappingProxyType(
    {
        "vit_h": CheckpointInfo(
            "vit_h",
            _BASE_URL + "sam_vit_h_4b8939.pth",
            2564550879,
            "a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
            xxh128="97698fac30bd929c2e6d8d8cc15933c2",
            summary="Meta's largest SAM: the most accurate, slow on a CPU",
        ),
        "vit_l": CheckpointInfo(
            "vit_l",
            _BASE_URL + "sam_vit_l_0b3195.pth",
            1249524607,
            "3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
            xxh128="a82beb3c660661e3dd38d999cc860e9a",
            summary="Meta's SAM, large: close to vit_h at half its cost",
        ),
        "vit_b": CheckpointInfo(
            "vit_b",
            _BASE_URL + "sam_vit_b_01ec64.pth",
            375042383,
            "ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
            xxh128="6923c33df3637b6a922d7682bfc9a86b",
            summary="Meta's SAM, base: general images, interactive on a CPU",
        ),
    }
)


#: MobileSAM (Zhang et al. 2023): SAM's prompt encoder and mask decoder after a
#: TinyViT-5M image encoder distilled from vit_h. Its authors publish no size or
#: checksum for ``mobile_sam.pt`` (micro-sam's xxh128 is of its own mirror on another
#: server), so a download is checked against the server's length and the file by
#: structure: its keys load strictly into ``vit_t``.
SMALL_CHECKPOINTS: Mapping[str, CheckpointInfo] = MappingProxyType(
    {
        "vit_t": CheckpointInfo(
            "vit_t",
            "https://github.com/ChaoningZhang/MobileSAM/raw/master/weights/mobile_sam.pt",
            None,
            None,
            group="small",
            summary="MobileSAM: SAM's decoder on a 5M-parameter TinyViT, several times faster than vit_b on a CPU",
        ),
    }
)


_BIOIMAGEIO = "https://uk1s3.embassy.ebi.ac.uk/public-datasets/bioimage.io/"
_GWDG = "https://owncloud.gwdg.de/index.php/s/"


def _microscopy(name: str, url: str, xxh128: str, summary: str) -> CheckpointInfo:
    return CheckpointInfo(
        name, url, None, None, xxh128=xxh128, file=f"{name}.pt", architecture=name[:5],
        group="microscopy", summary=summary,
    )


#: micro-sam's fine-tuned SAM models (Archit et al., Nature Methods 2025; PathoSAM;
#: MedicoSAM): the URLs and xxh128 digests micro-sam 1.8.14 publishes. Each file is
#: SAM's state dict (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``) of
#: the architecture its name starts with (vit_t is MobileSAM's); micro-sam's separate
#: ``*_decoder`` files (its automatic instance segmentation) are not listed yet.
MICROSCOPY_CHECKPOINTS: Mapping[str, CheckpointInfo] = MappingProxyType(
    {
        info.name: info
        for info in (
            _microscopy("vit_b_lm", _BIOIMAGEIO + "diplomatic-bug/1.2/files/vit_b.pt",
                        "fe9252a29f3f4ea53c15a06de471e186",
                        "light microscopy (cells, nuclei; fluorescence and label-free): micro-sam's default"),
            _microscopy("vit_l_lm", _BIOIMAGEIO + "idealistic-rat/1.2/files/vit_l.pt",
                        "017f20677997d628426dec80a8018f9d",
                        "light microscopy, larger: a little better than vit_b_lm, 3x slower"),
            _microscopy("vit_t_lm", _BIOIMAGEIO + "faithful-chicken/1.1/files/vit_t.pt",
                        "72ec5074774761a6e5c05a08942f981e",
                        "light microscopy on a CPU (MobileSAM's TinyViT encoder)"),
            _microscopy("vit_b_em_organelles", _BIOIMAGEIO + "noisy-ox/1.2/files/vit_b.pt",
                        "f3bf2ed83d691456bae2c3f9a05fb438",
                        "electron microscopy: mitochondria, nuclei and other organelles"),
            _microscopy("vit_l_em_organelles", _BIOIMAGEIO + "humorous-crab/1.2/files/vit_l.pt",
                        "810b084b6e51acdbf760a993d8619f2d",
                        "electron microscopy organelles, larger model"),
            _microscopy("vit_t_em_organelles", _BIOIMAGEIO + "greedy-whale/1/files/vit_t.pt",
                        "253474720c497cce605e57c9b1d18fd9",
                        "electron microscopy organelles on a CPU (TinyViT encoder)"),
            _microscopy("vit_b_histopathology", _GWDG + "sBB4H8CTmIoBZsQ/download",
                        "ffd1a2cd84570458b257bd95fdd8f974",
                        "histopathology: nuclei in H&E and other stained tissue (PathoSAM)"),
            _microscopy("vit_l_histopathology", _GWDG + "IZgnn1cpBq2PHod/download",
                        "b591833c89754271023e901281dee3f2",
                        "histopathology nuclei, larger model (PathoSAM)"),
            _microscopy("vit_h_histopathology", _GWDG + "L7AcvVz7DoWJ2RZ/download",
                        "bd1856dafc156a43fb3aa705f1a6e92e",
                        "histopathology nuclei, largest model (PathoSAM)"),
            _microscopy("vit_b_medical_imaging", _GWDG + "f5Ol4FrjPQWfjUF/download",
                        "40169f1e3c03a4b67bff58249c176d92",
                        "medical images: CT, MRI, ultrasound, X-ray, dermoscopy (MedicoSAM)"),
        )
    }
)


_SAM2_BASE_URL = "https://dl.fbaipublicfiles.com/segment_anything_2/092824/"

#: The official SAM 2.1 checkpoints (Meta, 2024-09-28), each ``{"model": state_dict}``.
#: Kept apart from the SAM 1 registries (:func:`sam_checkpoints`), which list the model
#: types that every SAM 1 code path (the CLI's ``--model``, the default model, the model
#: panel) accepts; :func:`checkpoint_info` and the download and cache functions know both.
#: Meta publishes neither the sizes nor checksums of these files (the README and
#: ``checkpoints/download_ckpts.sh`` give only the URLs), so size and sha256 are None:
#: a download is checked against the server's Content-Length, and the file is
#: verified by structure when loaded (``build_sam2`` loads its keys strictly).
SAM2_CHECKPOINTS: Mapping[str, CheckpointInfo] = MappingProxyType(
    {
        f"sam2.1_hiera_{size}": CheckpointInfo(
            f"sam2.1_hiera_{size}",
            f"{_SAM2_BASE_URL}sam2.1_hiera_{size}.pt",
            None,
            None,
            family="sam2",
            group="video",
            summary=f"SAM 2.1 {size.replace('_', ' ')}: clicks, boxes, segment everything, and video tracking with memory",
        )
        for size in ("tiny", "small", "base_plus", "large")
    }
)


def sam_checkpoints() -> dict[str, CheckpointInfo]:
    """Every SAM 1 family entry (Meta's, MobileSAM's, micro-sam's), in listing order.

    Looked up at each call, so that a registry swapped by a test is seen."""
    return {**CHECKPOINTS, **MICROSCOPY_CHECKPOINTS, **SMALL_CHECKPOINTS}


#: The model that ships inside the package (trained by napari-sam, see
#: scripts/train_embedded.py): used when no official checkpoint is cached.
EMBEDDED_MODEL = "vit_tiny"
_EMBEDDED_FILE = Path(__file__).resolve().parent / "weights" / "sam_vit_tiny.pth"
_EMBEDDED_SUMMARY = "napari-sam's own small model: offline, fast, rough (not Meta's SAM)"


def embedded_checkpoint() -> Path:
    """The packaged weights of :data:`EMBEDDED_MODEL` (float16, a few MB)."""
    if not _EMBEDDED_FILE.is_file():
        raise FileNotFoundError(
            f"the built-in {EMBEDDED_MODEL} weights are missing from the installation "
            f"({_EMBEDDED_FILE}); reinstall napari-sam, or use an official model "
            "(`napari-sam download vit_b`)"
        )
    return _EMBEDDED_FILE


def default_model_type(cache: str | os.PathLike | None = None) -> str:
    """The model to use when the user names none: the first published model found in
    the cache (Meta's vit_b, vit_l, vit_h, then micro-sam's in registry order, vit_b_lm
    first, then MobileSAM's vit_t), else the built-in :data:`EMBEDDED_MODEL`.

    vit_b comes first: on a CPU it is the one that answers a click interactively."""
    registry = sam_checkpoints()
    first = [name for name in ("vit_b", "vit_l", "vit_h") if name in registry]
    for name in first + [name for name in registry if name not in first]:
        if cached_checkpoint(name, cache) is not None:
            return name
    return EMBEDDED_MODEL


@dataclass(frozen=True)
class ModelGroup:
    """One group of models as the plugin's model box and ``napari-sam models`` list them:
    ``models`` holds ``(name, one line on what it is for)`` pairs."""

    key: str
    title: str
    models: tuple[tuple[str, str], ...]


def model_groups(*, video: bool = False) -> list[ModelGroup]:
    """The SAM 1 family's models by group: Meta's SAM, microscopy fine-tunes, small and
    fast, built-in; with ``video``, SAM 2.1 last (all but fine-tuning)."""
    entries = list(sam_checkpoints().values()) + (list(SAM2_CHECKPOINTS.values()) if video else [])
    groups = []
    for key, title in _GROUP_TITLES.items():
        models = [(info.name, info.summary) for info in entries if info.group == key]
        if key == "builtin":
            models.append((EMBEDDED_MODEL, _EMBEDDED_SUMMARY))
        if models:
            groups.append(ModelGroup(key, title, tuple(models)))
    return groups


def checkpoint_info(name_or_info: str | CheckpointInfo) -> CheckpointInfo:
    """Look up a registry entry by model type (a ``CheckpointInfo`` passes through).

    Raises
    ------
    ValueError
        If ``name_or_info`` is not a known model type.
    """
    if isinstance(name_or_info, CheckpointInfo):
        return name_or_info
    registry = {**sam_checkpoints(), **SAM2_CHECKPOINTS}
    try:
        return registry[name_or_info]
    except (KeyError, TypeError):
        known = ", ".join(repr(k) for k in registry)
        raise ValueError(
            f"unknown SAM model type {name_or_info!r}; expected one of {known}"
        ) from None


def size_estimate(name_or_info: str | CheckpointInfo) -> int | None:
    """Bytes the file has or, where its size is not published, about how many it will
    have: a SAM 1 file holds its network's weights in float32, so micro-sam's vit_b_lm
    is about the size of Meta's vit_b (MobileSAM's vit_t: about 40 MB). None for SAM 2.1."""
    info = checkpoint_info(name_or_info)
    if info.size is not None:
        return info.size
    if info.family != "sam":
        return None
    meta = CHECKPOINTS.get(info.model_type)
    return meta.size if meta is not None and meta.size is not None else _VIT_T_BYTES.get(info.model_type)


# MobileSAM's network in float32: 10.1 M parameters (TinyViT 6.1 M, prompt encoder and decoder 4.1 M)
_VIT_T_BYTES = {"vit_t": 40_500_000}


def identify_checkpoint(path: str | os.PathLike) -> CheckpointInfo | None:
    """The registry entry whose published xxh128 digest ``path`` has, or None.

    Names a published file whatever it is called (micro-sam's are all ``vit_b.pt``
    or ``download``). None too when the ``xxhash`` package is missing."""
    try:
        digest = file_digest(path, "xxh128")
    except ImportError:
        return None
    for info in {**sam_checkpoints(), **SAM2_CHECKPOINTS}.values():
        if info.xxh128 is not None and info.xxh128.lower() == digest:
            return info
    return None


def cache_dir() -> Path:
    """Per-user cache folder of napari-sam.

    ``$NAPARI_SAM_CACHE`` if set; otherwise ``%LOCALAPPDATA%\\napari-sam\\cache``
    on Windows and ``$XDG_CACHE_HOME/napari-sam`` (default
    ``~/.cache/napari-sam``) elsewhere. The folder is not created here.
    """
    override = os.environ.get(_CACHE_ENV_VAR)
    if override:
        return Path(override).expanduser()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA")
        base = Path(local) if local else Path.home() / "AppData" / "Local"
        return base / "napari-sam" / "cache"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "napari-sam"


def checkpoint_path(
    name_or_info: str | CheckpointInfo, cache: str | os.PathLike | None = None
) -> Path:
    """Where a checkpoint lives in the cache (whether or not it is there yet).

    Parameters
    ----------
    name_or_info : str or CheckpointInfo
        Registry name or an explicit entry.
    cache : path-like, optional
        Cache root to use instead of :func:`cache_dir`; checkpoints go in its
        ``checkpoints`` subfolder (or the entry's ``folder``).
    """
    info = checkpoint_info(name_or_info)
    root = Path(cache).expanduser() if cache is not None else cache_dir()
    return root / info.folder / info.filename


def cached_checkpoint(
    name: str | CheckpointInfo, cache: str | os.PathLike | None = None
) -> Path | None:
    """The cached checkpoint file if present with the expected size, else None.

    This is a cheap check (no hashing); :func:`download_checkpoint` verifies
    the sha256 before a file is ever put under its final name. An entry whose
    size is unknown is cached when its file is there.
    """
    info = checkpoint_info(name)
    path = checkpoint_path(info, cache)
    try:
        if path.is_file() and (info.size is None or path.stat().st_size == info.size):
            return path
    except OSError:
        pass
    return None


def _new_digest(kind: str) -> Any:
    """A fresh hash object: ``"sha256"`` (hashlib) or ``"xxh128"`` (the xxhash package)."""
    if kind == "sha256":
        return hashlib.sha256()
    if kind == "xxh128":
        import xxhash  # a dependency of napari-sam; imported when a file is checked

        return xxhash.xxh128()
    raise ValueError(f"unknown checksum kind {kind!r}: expected 'sha256' or 'xxh128'")


def file_digest(path: str | os.PathLike, kind: str = "sha256", chunk_size: int = _DEFAULT_CHUNK) -> str:
    """Hex digest of a file (``kind`` "sha256" or "xxh128"), read in chunks."""
    digest = _new_digest(kind)
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_file(path: str | os.PathLike, chunk_size: int = _DEFAULT_CHUNK) -> str:
    """Hex sha256 digest of a file, read in chunks."""
    return file_digest(path, "sha256", chunk_size)


def _manual_hint(url: str, dest: Path) -> str:
    return (
        f"You can download {url} yourself and save it as {dest}, or pass the "
        "path of a local checkpoint file instead (checkpoint=...)."
    )


def _parse_content_range(value: str | None) -> tuple[int, int | None] | None:
    """``bytes START-END/TOTAL`` -> (START, TOTAL or None); None if malformed."""
    if not value:
        return None
    unit, _, spec = value.strip().partition(" ")
    if unit.lower() != "bytes":
        return None
    span, _, total = spec.partition("/")
    start, _, _ = span.partition("-")
    try:
        return int(start), (None if total.strip() in ("", "*") else int(total))
    except ValueError:
        return None


def download_checkpoint(
    name_or_info: str | CheckpointInfo,
    *,
    cache: str | os.PathLike | None = None,
    url: str | None = None,
    progress: ProgressCallback | None = None,
    chunk_size: int = _DEFAULT_CHUNK,
    timeout: float = 30.0,
) -> Path:
    """Download a checkpoint into the cache, resuming and verifying it.

    Parameters
    ----------
    name_or_info : str or CheckpointInfo
        Registry name (``"vit_b"``, ``"vit_t"``, ``"vit_b_lm"``, ``"sam2.1_hiera_tiny"``, ...)
        or an entry.
    cache : path-like, optional
        Cache root instead of :func:`cache_dir`.
    url : str, optional
        Fetch from here instead of the entry's URL (mirrors, tests).
    progress : callable, optional
        ``progress(done_bytes, total_bytes)``, called as chunks arrive. An
        exception raised by it stops the download (the partial file is kept,
        so the next call resumes) and propagates: this is how to cancel.
    chunk_size : int
        Bytes read per chunk.
    timeout : float
        Seconds to wait for connecting and for each read.

    Returns
    -------
    Path
        The verified file in the cache.

    Raises
    ------
    ValueError
        Unknown model type.
    RuntimeError
        Network unreachable, HTTP error, interrupted download (call again to
        resume), or size/checksum mismatch.
    """
    info = checkpoint_info(name_or_info)
    source = url if url is not None else info.url
    dest = checkpoint_path(info, cache)
    part = dest.with_name(dest.name + ".part")
    kind, expected = info.checksum or ("sha256", None)

    if dest.is_file():
        size_ok = info.size is None or dest.stat().st_size == info.size
        if size_ok and (expected is None or file_digest(dest, kind) == expected):
            return dest
        dest.unlink()  # a corrupt file in our own cache: fetch it again

    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RuntimeError(
            f"cannot create the checkpoint cache folder {dest.parent}: {exc}. "
            f"Set {_CACHE_ENV_VAR} to a writable folder."
        ) from exc

    offset = part.stat().st_size if part.is_file() else 0
    if info.size is not None and offset > info.size:
        part.unlink()
        offset = 0
    if offset and expected is None and offset == info.size:
        os.replace(part, dest)  # no published checksum: every byte is all we can check
        return dest
    if offset and expected is not None and (offset == info.size or info.size is None):
        # A previous run got every byte but stopped before the rename (with an
        # unknown size, a part whose checksum matches is complete).
        if file_digest(part, kind) == expected:
            os.replace(part, dest)
            return dest
        if info.size is not None:
            part.unlink()
            offset = 0

    # Two attempts at most: the second one only when the server could not
    # honour our resume request (416 or a Content-Range we did not ask for).
    for _ in range(2):
        result = _fetch(info, source, dest, part, offset, progress, chunk_size, timeout)
        if result is not None:
            return result
        part.unlink(missing_ok=True)
        offset = 0
    raise RuntimeError(  # pragma: no cover - _fetch without Range always decides
        f"could not download {source}. " + _manual_hint(source, dest)
    )


def _fetch(
    info: CheckpointInfo,
    source: str,
    dest: Path,
    part: Path,
    offset: int,
    progress: ProgressCallback | None,
    chunk_size: int,
    timeout: float,
) -> Path | None:
    """One HTTP request. Returns the final path, or None to retry from zero."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(source, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:
            return None
        raise RuntimeError(
            f"downloading {source} failed: the server answered HTTP {exc.code} "
            f"{exc.reason}. " + _manual_hint(source, dest)
        ) from exc
    except (urllib.error.URLError, OSError, HTTPException, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(
            f"cannot download the {info.name} checkpoint from {source}: "
            f"{reason}. Check the network connection. " + _manual_hint(source, dest)
        ) from exc

    with response:
        status = getattr(response, "status", 200)
        if offset and status == 206:
            content_range = _parse_content_range(response.headers.get("Content-Range"))
            if content_range is None or content_range[0] != offset:
                return None
            if content_range[1] is not None and info.size is not None and content_range[1] != info.size:
                raise RuntimeError(
                    f"{source} is {content_range[1]} bytes but the {info.name} "
                    f"checkpoint is {info.size} bytes; the URL points at a "
                    "different file."
                )
            start = offset
        else:
            start = 0  # a full answer (200): start over

        length = response.headers.get("Content-Length")
        total = info.size
        if total is None and length is not None and length.isdigit():
            total = start + int(length)  # the size is not published: trust the server's
        if length is not None and length.isdigit() and start + int(length) != total:
            raise RuntimeError(
                f"{source} is {start + int(length)} bytes but the {info.name} "
                f"checkpoint is {info.size} bytes; the URL points at a "
                "different file."
            )

        kind, expected = info.checksum or ("sha256", None)
        digest = _new_digest(kind)
        if start:
            with open(part, "rb") as f:
                while chunk := f.read(chunk_size):
                    digest.update(chunk)
        done = _stream(response, part, start, digest, info, source, progress, chunk_size, total)

    if total is not None and done < total:
        raise RuntimeError(
            f"the download of {source} was interrupted after {done} of "
            f"{total} bytes. The partial file is kept at {part}; calling "
            "download again resumes where it stopped."
        )
    got = digest.hexdigest()
    if expected is not None and got != expected:
        part.unlink(missing_ok=True)
        raise RuntimeError(
            f"the file downloaded from {source} is corrupt: expected {kind} "
            f"{expected}, got {got}. It was deleted; try again, or "
            "download it yourself and pass its path."
        )
    os.replace(part, dest)
    return dest


def _stream(
    response: HTTPResponse,
    part: Path,
    start: int,
    digest: Any,
    info: CheckpointInfo,
    source: str,
    progress: ProgressCallback | None,
    chunk_size: int,
    total: int | None = None,
) -> int:
    """Copy the response body into ``part``; return the bytes the file now holds.

    ``total``: the bytes expected in all (``info.size``, or the server's length
    when the size is unknown; None when neither is known)."""
    done = start
    try:
        out = open(part, "ab" if start else "wb")
    except OSError as exc:
        raise RuntimeError(f"cannot write {part}: {exc}") from exc
    with out:
        while True:
            try:
                chunk = response.read(chunk_size)
            except (OSError, HTTPException):
                break  # connection dropped or timed out: keep what we have
            if not chunk:
                break
            if total is not None and done + len(chunk) > total:
                out.close()
                part.unlink(missing_ok=True)
                raise RuntimeError(
                    f"{source} sent more than the expected {total} bytes; "
                    "the URL points at a different file."
                )
            try:
                out.write(chunk)
            except OSError as exc:
                raise RuntimeError(
                    f"cannot write {part}: {exc}. Free some disk space or set "
                    f"{_CACHE_ENV_VAR} to another folder, then call again to resume."
                ) from exc
            digest.update(chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total if total is not None else 0)
    return done


def resolve_checkpoint(
    model_type: str,
    checkpoint: str | os.PathLike | None = None,
    *,
    download: bool = True,
    cache: str | os.PathLike | None = None,
    progress: ProgressCallback | None = None,
) -> Path:
    """Find the checkpoint file to load for ``model_type``.

    Parameters
    ----------
    model_type : str
        Registry name; only used when ``checkpoint`` is not given.
    checkpoint : path-like, optional
        A local checkpoint file; returned as is if it exists.
    download : bool
        Download the official checkpoint when it is not cached.
    cache : path-like, optional
        Cache root instead of :func:`cache_dir`.
    progress : callable, optional
        Passed to :func:`download_checkpoint`.

    Raises
    ------
    FileNotFoundError
        ``checkpoint`` is not an existing file, or the official file is not
        cached and ``download`` is False.
    """
    if checkpoint is not None:
        return local_file(checkpoint, "checkpoint", "Pass the path of a SAM checkpoint file "
                          f"(.pth), or leave it out to use the official {model_type} weights.")
    if model_type == EMBEDDED_MODEL:
        return embedded_checkpoint()
    info = checkpoint_info(model_type)
    found = cached_checkpoint(info, cache)
    if found is not None:
        return found
    if download:
        return download_checkpoint(info, cache=cache, progress=progress)
    dest = checkpoint_path(info, cache)
    raise FileNotFoundError(
        f"the {model_type} checkpoint is not in the cache and downloading is "
        f"off. Download {info.url} and save it as {dest}, allow downloading, "
        "or pass the path of a local checkpoint file."
    )


def local_file(path: str | os.PathLike, label: str, hint: str = "") -> Path:
    """``path`` (``~`` expanded) when it is an existing file, else FileNotFoundError:
    "``label`` PATH does not exist" (or "is a folder, not a file"), then ``hint``."""
    path = Path(path).expanduser()
    if path.is_file():
        return path
    what = "is a folder, not a file" if path.is_dir() else "does not exist"
    raise FileNotFoundError(f"{label} {path} {what}." + (f" {hint}" if hint else ""))


def holds_sam2(path: str | os.PathLike) -> bool:
    """Whether a checkpoint file holds a SAM 2 model, read without loading its tensors
    (memory-mapped), so that choosing the builder does not read a large file twice."""
    import torch

    try:
        loaded = torch.load(Path(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # not a zip-format file, damaged...: the builder says what is wrong
        return False
    tables = [loaded] + [v for v in loaded.values() if isinstance(v, dict)] if isinstance(loaded, dict) else []
    return any("image_encoder.trunk.pos_embed" in t for t in tables)


def load_state_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Load a checkpoint's weights on the CPU without running any pickled code.

    ``mmap=True`` maps the file instead of reading it: shapes and keys are there at
    once and a tensor's bytes are read only when used (to look inside a large file,
    e.g. to learn a model's size, before the builder loads it).

    Accepts a bare state dict or one nested under ``"model"`` or
    ``"state_dict"``; a ``"module."`` prefix on every key (DataParallel) is
    removed. Entries that are not tensors are dropped. micro-sam's layouts load
    as micro-sam reads them: ``{"model_state": ..., "decoder_state": ...}`` (its
    exports with the instance-segmentation decoder; the decoder is left out) and its
    training checkpoints, whose ``"model_state"`` keys start with ``"sam."``.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        Not a readable PyTorch checkpoint, holds Python objects other than
        plain weights, or holds no tensors.
    """
    path = local_file(path, "checkpoint")
    import torch

    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except MemoryError:
        raise
    except pickle.UnpicklingError as exc:
        # The weights-only unpickler names the class or function it refused
        # ("unsupported GLOBAL module.name"); garbage bytes fail differently.
        lines = [ln.strip() for ln in str(exc).splitlines()]
        refused = [ln for ln in lines if "global" in ln.lower()]
        if refused:
            raise ValueError(
                f"{path} is not a plain weights file: it contains Python objects "
                f"that would have to run code to be loaded ({refused[0]}), so it "
                "was refused. Use a checkpoint that holds only tensors (a state "
                "dict)."
            ) from exc
        raise _unreadable(path, exc) from exc
    except Exception as exc:  # torch raises many types for damaged files
        raise _unreadable(path, exc) from exc

    state = loaded
    if isinstance(state, Mapping) and isinstance(state.get("model_state"), Mapping):
        prefix = "sam."  # micro-sam's trainer wraps SAM as .sam; its loader drops the prefix
        state = {k[len(prefix):] if str(k).startswith(prefix) else k: v
                 for k, v in state["model_state"].items()}
    elif isinstance(state, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), Mapping):
                state = state[key]
                break
    if not isinstance(state, Mapping):
        raise ValueError(
            f"{path} holds a {type(loaded).__name__}, expected a dict of "
            "tensors (a state dict)."
        )
    tensors = {
        str(k): v for k, v in state.items() if isinstance(v, torch.Tensor)
    }
    if not tensors:
        raise ValueError(
            f"{path} contains no tensors; expected a SAM state dict mapping "
            "parameter names to tensors."
        )
    prefix = "module."
    if all(k.startswith(prefix) for k in tensors):
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors


def _unreadable(path: Path, exc: BaseException) -> ValueError:
    # torch's messages are paragraphs; keep the line that says what broke.
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    specific = [ln for ln in lines if "unsupported" in ln.lower()]
    detail = (specific or lines or ["no details"])[0][:200]
    reason = f"{type(exc).__name__}: {detail}"
    return ValueError(
        f"{path} is not a readable PyTorch checkpoint (corrupt, truncated, or "
        f"not a plain weights file) [{reason}]. Download or save it again."
    )
