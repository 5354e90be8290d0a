"""Label whole datasets with "segment everything", on Dask.

For every image of a dataset (a folder, a glob pattern, a TIFF stack or a
video) :func:`run_batch` writes ``KEY.tif``, a label image (uint16, or uint32
beyond 65,535 masks; label ``k`` is annotation ``k``, where masks overlap the
smaller one is on top) and ``KEY.json``, SA-1B style. The planes of a stack
and the frames of a video write their labels into one store for the file,
``FILE.zarr`` (uint32, one compressed chunk per plane, the store the tracker
writes too: :class:`~src_core.propagate.labelstore.LabelStore`), at the
plane's index (``labels_index`` in its JSON), instead of a TIFF each::

    {"image": {"image_id", "file_name", "width", "height", "source", ...},
     "annotations": [{"id", "segmentation" (COCO RLE), "area", "bbox" (XYWH),
                      "predicted_iou", "stability_score", "point_coords",
                      "crop_box"}, ...]}

Where the work runs
-------------------
Without a scheduler address, on Dask's local *threaded* scheduler. Threads,
not processes, because the model is the expensive thing: threads share one
copy (vit_h is 2.5 GB; processes would load one each and pickle every image
and result across), torch releases the GIL while it computes, and the threads
overlap what torch does not parallelize (reading, RLE encoding, writing) with
the model's work, on the CPU or a GPU. With an address, on a
``dask.distributed`` cluster, where a :class:`ModelCachePlugin` on every
worker process loads the model once and keeps it for all of its tasks.

Resuming and failures
---------------------
An image whose two outputs exist and are valid is skipped (``overwrite``
redoes it). Files are written under a temporary name and renamed, so a
killed run leaves no half-written output (at most hidden ``.*.tmp`` files,
which are never mistaken for outputs). A problem with one image (unreadable,
corrupt, not an image) fails that image only; the reason is in the summary.
INPUT, OUT, the cluster and the model must be reachable under the same paths
from every worker (a shared file system). Listing and reading the images is
:mod:`src_core.batch_inputs`.
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from .automatic.settings import GeneratorSettings
from .jobs import Cancelled, ShouldStop, check_stop
from .batch_inputs import ImageItem, VideoReaders, _one_line, list_images, read_image

__all__ = [
    "BatchSummary", "GeneratorSettings", "ImageItem", "ImageResult", "LabelJob",
    "ModelCache", "ModelCachePlugin", "ModelSpec", "PLUGIN_NAME", "label_image",
    "list_images", "outputs_complete", "output_paths", "read_image", "run_batch",
]

PLUGIN_NAME = "napari-sam-models"
#: ``progress(result, finished, total)`` after every image (the per-item form of :data:`src_core.jobs.Progress`)
ImageProgress = Callable[["ImageResult", int, int], None]


# --------------------------------------------------------------------------
# What to run
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelSpec:
    """Which model to load; equal specs share one loaded model.

    ``checkpoint`` None means the official weights from the cache (download
    them first, e.g. ``napari-sam download vit_b``); ``model_type`` "auto"
    reads the type from ``checkpoint``.
    """

    model_type: str = "vit_b"
    checkpoint: str | None = None
    device: str = "auto"
    dtype: str = "auto"

    def build(self) -> Any:
        """Load the model in eval mode: a SAM 1 :class:`~src_core.model.sam.Sam`, or a
        SAM 2.1 model for a ``sam2.1_hiera_*`` type (or "auto" on a SAM 2 file)."""
        from .checkpoints import SAM2_CHECKPOINTS, holds_sam2
        from .model.build import build_sam
        from .model.sam2.build import build_sam2

        sam2 = self.model_type in SAM2_CHECKPOINTS or (
            self.model_type == "auto" and self.checkpoint is not None and holds_sam2(self.checkpoint)
        )
        if sam2:
            name = self.model_type if self.model_type != "auto" else _sam2_name(self.checkpoint)
            return build_sam2(name, self.checkpoint, self.device, self.dtype, download=False)
        return build_sam(self.model_type, self.checkpoint, self.device, self.dtype, download=False)


def _sam2_name(checkpoint: str) -> str:
    """The SAM 2.1 model a SAM 2 file holds (its size read from the weights)."""
    from .checkpoints import load_state_dict
    from .model.sam2.build import infer_sam2_size

    size = infer_sam2_size(load_state_dict(checkpoint, mmap=True))  # keys and shapes only
    if size is None:
        raise ValueError(f"{checkpoint} holds a SAM 2 model of an unknown size")
    return f"sam2.1_hiera_{size}"


@dataclass(frozen=True)
class LabelJob:
    """What every image's task needs besides the image: where to write, with what."""

    out_dir: str
    model: ModelSpec
    settings: GeneratorSettings = field(default_factory=GeneratorSettings)


@dataclass(frozen=True)
class ImageResult:
    """How one image went: status "done", "skipped" or "failed" (with a reason)."""

    key: str
    status: str
    reason: str = ""
    masks: int = 0
    seconds: float = 0.0
    fatal: bool = False  # the model or the settings failed, not this image


@dataclass
class BatchSummary:
    """Results of a batch, by status."""

    out_dir: Path
    done: list[ImageResult] = field(default_factory=list)
    skipped: list[ImageResult] = field(default_factory=list)
    failed: list[ImageResult] = field(default_factory=list)

    def add(self, result: ImageResult) -> None:
        getattr(self, result.status).append(result)


# --------------------------------------------------------------------------
# Outputs
# --------------------------------------------------------------------------


def output_paths(out_dir: str | os.PathLike, item: ImageItem | str) -> tuple[Path, Path]:
    """The labels and the JSON of an image: ``KEY.tif``, or for the planes of a stack and
    the frames of a video their file's store ``GROUP.zarr`` (one chunk per plane)."""
    out = Path(out_dir)
    key = item if isinstance(item, str) else item.key
    group = None if isinstance(item, str) else item.group
    return out / (f"{key}.tif" if group is None else f"{group}.zarr"), out / f"{key}.json"


def outputs_complete(out_dir: str | os.PathLike, item: ImageItem | str) -> bool:
    """Whether both outputs of an image exist and are valid (so the image can be skipped).

    A plane's or frame's labels are in its file's store: its JSON, written after them,
    says they are complete.
    """
    labels_path, json_path = output_paths(out_dir, item)
    if not (labels_path.exists() and json_path.is_file()):
        return False
    try:
        record = json.loads(json_path.read_text(encoding="utf-8"))
        image = record["image"]
        if not isinstance(record["annotations"], list) or image.get("labels") != labels_path.name:
            return False
        if labels_path.is_dir():
            from .propagate.labelstore import LabelStore

            shape = LabelStore(labels_path).shape
            return shape[1:] == (image["height"], image["width"]) and image.get("labels_index") == item.index
        import tifffile

        with tifffile.TiffFile(labels_path) as tif:
            page = tif.pages[0]
            return (tuple(page.shape) == (image["height"], image["width"])
                    and page.dtype in (np.uint16, np.uint32))
    except Exception:  # unreadable, truncated, not ours: redo it
        return False


def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write through ``write(file)`` to a temporary file in the same folder, then rename."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _write_outputs(item: ImageItem, job: LabelJob, model_type: str, records: list[dict],
                   labels: np.ndarray, tiled: bool = False) -> None:
    import tifffile

    labels_path, json_path = output_paths(job.out_dir, item)
    height, width = labels.shape
    image = {"image_id": item.image_id, "file_name": Path(item.path).name,
             "width": width, "height": height, "source": item.path}
    if item.kind != "image":
        image[item.kind] = item.index
    image.update(labels=labels_path.name, model=model_type)
    if item.group is not None:
        image["labels_index"] = item.index
    annotations = [{"id": k + 1, **r} for k, r in enumerate(records)]
    document = json.dumps({"image": image, "annotations": annotations}, default=_jsonable)
    if item.group is not None:  # the file's store, this plane: written before the JSON that says it is done
        from .propagate.labelstore import ensure_store

        ensure_store(labels_path, (item.count, height, width), np.uint32).array[item.index] = labels
        _write_atomic(json_path, lambda f: f.write(document.encode("utf-8")))
        return
    tiles = {"tile": (256, 256)} if tiled else {}  # large label images: a tiled TIFF
    _write_atomic(labels_path, lambda f: tifffile.imwrite(f, labels, compression="zlib", **tiles))
    try:
        _write_atomic(json_path, lambda f: f.write(document.encode("utf-8")))
    except BaseException:
        labels_path.unlink(missing_ok=True)  # never leave one output of a pair
        raise


# --------------------------------------------------------------------------
# One image, and the model per process
# --------------------------------------------------------------------------


class ModelCache:
    """Loaded models by :class:`ModelSpec` (the latest one only); safe to share between threads.

    ``loads`` counts models built, ``calls`` the requests.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._models: dict[ModelSpec, Any] = {}
        self.loads = 0
        self.calls = 0

    def get(self, spec: ModelSpec) -> Any:
        """The model of ``spec``, loaded on first use (other threads wait for it)."""
        with self._lock:
            self.calls += 1
            if spec not in self._models:
                self._models.clear()  # one model in memory at a time
                self._models[spec] = spec.build()
                self.loads += 1
            return self._models[spec]

    def clear(self) -> None:
        with self._lock:
            self._models.clear()


class ModelCachePlugin(WorkerPlugin):
    """Gives every dask.distributed worker process one :class:`ModelCache` (kept between
    runs) and its open videos."""

    idempotent = True  # registering it again (a later run) keeps the loaded model

    def setup(self, worker: Any) -> None:
        self.models = ModelCache()
        self.videos = VideoReaders()

    def teardown(self, worker: Any) -> None:
        self.models.clear()
        self.videos.clear()


def label_image(item: ImageItem, job: LabelJob, models: ModelCache,
                videos: VideoReaders | None = None) -> ImageResult:
    """Segment everything in one image and write its outputs; never raises for a bad image.

    ``models`` and ``videos`` are the calling process's caches.
    """
    if item.problem:
        return ImageResult(item.key, "failed", item.problem)
    from .automatic import mask_generator_for
    from .protocols import is_sam2_model

    try:
        sam = models.get(job.model)
    except Exception as exc:  # every image would fail the same way
        return ImageResult(item.key, "failed", f"cannot load the model: {_one_line(exc)}",
                           fatal=True)
    try:
        generator = mask_generator_for(sam, output_mode="coco_rle", **asdict(job.settings))
    except ValueError as exc:
        return ImageResult(item.key, "failed", f"bad generator settings: {_one_line(exc)}",
                           fatal=True)
    start = time.perf_counter()  # after the model is loaded: this is the image's own time
    try:
        from .automatic import masks_to_label_image
        from .preprocess import to_rgb
        from .tiling import model_input_size
        from .tiling.large import label_large_image

        image = read_image(item, videos)
        model_type = job.model.model_type
        if model_type == "auto":  # named from the loaded weights (no file read per image)
            from .model.build import infer_model_type
            from .model.sam2.build import infer_sam2_size

            if is_sam2_model(sam):
                size = infer_sam2_size(sam.state_dict())
                model_type = f"sam2.1_hiera_{size}" if size else "unknown"
            else:
                model_type = infer_model_type(sam.state_dict()) or "unknown"
        # large images (SAM 1 or SAM 2.1): tile by tile, labels painted into a memmap
        # (deleted once written)
        large = label_large_image(generator, image, model_input_size(sam), Path(job.out_dir))
        if large is not None:
            records, labels, labels_file = large
            try:
                _write_outputs(item, job, model_type, records, labels, tiled=True)
            finally:
                del labels
                labels_file.unlink(missing_ok=True)
            return ImageResult(item.key, "done", masks=len(records), seconds=time.perf_counter() - start)
        records = generator.generate(image)
        size = records[0]["segmentation"]["size"] if records else to_rgb(image).shape[:2]
        labels = masks_to_label_image(records, size)
        if len(records) < 2**16:
            labels = labels.astype(np.uint16)
        _write_outputs(item, job, model_type, records, labels)
    except Exception as exc:  # one bad image must not stop the batch
        reason = _one_line(exc)
        if not isinstance(exc, (ValueError, OSError)):
            reason = f"{type(exc).__name__}: {reason}"
        return ImageResult(item.key, "failed", reason, seconds=time.perf_counter() - start)
    return ImageResult(item.key, "done", masks=len(records), seconds=time.perf_counter() - start)


def _label_on_worker(item: ImageItem, job: LabelJob) -> ImageResult:
    from distributed import get_worker

    plugin = get_worker().plugins[PLUGIN_NAME]
    return label_image(item, job, plugin.models, plugin.videos)


# --------------------------------------------------------------------------
# The batch
# --------------------------------------------------------------------------


def _check_output(out_dir: str | os.PathLike, items: list[ImageItem]) -> Path:
    out = Path(os.path.abspath(Path(out_dir).expanduser()))
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output {out} is a file; give a folder (created if missing)")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot write into {out}: {existing} is not a writable folder")
    if any(Path(item.path).parent == out.resolve() for item in items):
        raise ValueError(f"the output folder {out} holds input images, whose labels would be "
                         "mistaken for inputs next time; choose another folder")
    return out


def run_batch(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: ModelSpec,
    settings: GeneratorSettings | None = None,
    *,
    scheduler: str | None = None,
    workers: int = 2,
    overwrite: bool = False,
    connect_timeout: float = 10.0,
    progress: ImageProgress | None = None,
    models: ModelCache | None = None,
    should_stop: ShouldStop | None = None,
) -> BatchSummary:
    """Label every image of ``source`` into ``out_dir`` (see the module docstring).

    Parameters
    ----------
    source : str or path-like
        A folder, a glob pattern, an image, a TIFF stack or a video (:func:`list_images`).
    out_dir : str or path-like
        Output folder, created if missing.
    model : ModelSpec
        The model, loaded once per process.
    settings : GeneratorSettings, optional
        Mask generator parameters (default: the reference's).
    scheduler : str, optional
        Address of a dask.distributed scheduler; None runs on local threads.
    workers : int
        Local threads (ignored with ``scheduler``: the cluster's workers run).
    overwrite : bool
        Redo images whose outputs are complete instead of skipping them.
    connect_timeout : float
        Seconds to wait for the scheduler, and for it to have a worker.
    progress : callable, optional
        ``progress(result, finished, total)`` after every image (skipped ones first).
    models : ModelCache, optional
        Cache for the local threads (e.g. to reuse a loaded model between calls).
    should_stop : callable, optional
        Asked after every image; True stops the batch with
        :class:`~src_core.jobs.Cancelled` (images done are kept, and skipped when the
        batch runs again).

    Returns
    -------
    BatchSummary
        The images done, skipped and failed (with reasons).

    Raises
    ------
    FileNotFoundError, ValueError
        Bad input, output folder, settings or model (before anything is written).
    RuntimeError
        The scheduler does not answer or has no workers, or the model cannot be
        loaded on a worker (the batch stops).
    """
    if int(workers) < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    items = list_images(source)
    out = _check_output(out_dir, items)
    job = LabelJob(str(out), model, settings or GeneratorSettings())
    summary = BatchSummary(out)
    state = {"finished": 0}

    def report(result: ImageResult) -> None:
        summary.add(result)
        state["finished"] += 1
        if progress is not None:
            progress(result, state["finished"], len(items))
        check_stop(should_stop, "batch labeling")

    todo = []
    for item in items:
        if not overwrite and outputs_complete(out, item):
            report(ImageResult(item.key, "skipped"))
        elif item.problem:
            report(ImageResult(item.key, "failed", item.problem))
        else:
            todo.append(item)
    if not todo:
        return summary
    if scheduler is None:
        models = models if models is not None else ModelCache()
        models.get(model)  # now: a bad checkpoint is an error before any output
        out.mkdir(parents=True, exist_ok=True)
        _run_local(todo, job, models, int(workers), report)
    else:
        _run_distributed(todo, job, scheduler, float(connect_timeout), report)
    return summary


class _Abort(Exception):
    """Raised from a progress hook to stop the local scheduler."""


def _run_local(todo: list[ImageItem], job: LabelJob, models: ModelCache, workers: int,
               report: Callable[[ImageResult], None]) -> None:
    import dask
    from dask.callbacks import Callback

    videos = VideoReaders()
    # dask runs independent tasks in reverse key order: counting down runs the dataset
    # in order, so that the frames of a video are decoded forward
    keys = [f"napari-sam-label-{len(todo) - i:09d}" for i in range(len(todo))]
    tasks = [dask.delayed(label_image, pure=False)(item, job, models, videos, dask_key_name=key)
             for key, item in zip(keys, todo)]
    keys = set(keys)
    fatal: list[ImageResult] = []

    def finished(key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
        if key in keys:  # runs in this thread, not in the workers'
            report(result)
            if result.fatal:
                fatal.append(result)
                raise _Abort

    try:
        with Callback(posttask=finished):
            dask.compute(*tasks, scheduler="threads", num_workers=workers)
    except _Abort:
        raise RuntimeError(f"batch stopped: {fatal[0].reason}") from None
    finally:
        videos.clear()


def _run_distributed(todo: list[ImageItem], job: LabelJob, address: str, timeout: float,
                     report: Callable[[ImageResult], None]) -> None:
    from distributed import Client, as_completed

    client, problem = None, ""
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except Exception as exc:  # OSError (no answer), ValueError (bad address), ...
        problem = _one_line(exc)
    if client is None:  # raised out here so that nothing keeps the failed client alive
        raise RuntimeError(
            f"cannot reach the Dask scheduler at {address!r} ({problem}); check the address "
            "(tcp://HOST:PORT) and that `dask scheduler` runs there")
    with client:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except (TimeoutError, OSError):
            raise RuntimeError(
                f"the Dask scheduler at {address} has no workers (waited {timeout:g} s); start "
                f"some with `dask worker {address}`") from None
        client.register_plugin(ModelCachePlugin(), name=PLUGIN_NAME)
        Path(job.out_dir).mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)
        keys = [f"napari-sam-label-{token}-{i}" for i in range(len(todo))]
        item_of = dict(zip(keys, todo))
        futures = client.map(_label_on_worker, todo, job=job, key=keys, pure=False)
        for future in as_completed(futures, loop=client.loop):
            try:
                result = future.result()
            except Exception as exc:  # e.g. the worker died (KilledWorker)
                result = ImageResult(item_of[future.key].key, "failed",
                                     f"the task failed on the cluster: {_one_line(exc)}")
            try:
                report(result)
            except Cancelled:
                client.cancel(futures)
                raise
            if result.fatal:
                client.cancel(futures)
                raise RuntimeError(f"batch stopped: {result.reason}")
