"""Labels of planes larger than the model input: ``napari-sam segment`` and batch labeling, tile by tile.

A plane whose long side exceeds 4x the model input (:func:`~src_core.tiling.tiling_plan`)
is prompted tile by tile (:class:`~src_core.tiling.TiledPredictor`) or segmented
everywhere tile by tile (:func:`~src_core.tiling.generate_tiled`). Memory stays
bounded: uncompressed TIFFs are memory-mapped (:func:`~src_core.tiling.open_image_lazily`),
only tiles are converted to RGB, masks are crops, and the label image is painted into
a memory-mapped file next to the output and written as a tiled TIFF. Nothing here
prints except :func:`segment_large`'s per-label lines, like ``segment``'s.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .plan import tiling_plan
from .predictor import TiledPredictor
from .source import TiledImage

__all__ = [
    "LARGE_PIXELS", "large_plane_shape", "label_memmap", "segment_large", "write_large_labels", "write_tiled_tiff",
]

# planes above this are validated lazily (never converted whole); below it the
# whole-image checks (a float copy of at most ~200 MB) stay as they were
LARGE_PIXELS = 4096 * 4096
TIFF_TILE = (256, 256)


def large_plane_shape(image: Any, channel_axis: int | None, channels: Sequence[int] | None) -> tuple[int, int] | None:
    """(height, width) of a plane too large to check whole (validated lazily), else None.

    Raises
    ------
    ValueError
        If the image or the channel settings do not fit (from :class:`TiledImage`).
    """
    shape = sorted(int(n) for n in image.shape)
    if len(shape) < 2 or shape[-1] * shape[-2] <= LARGE_PIXELS:  # the plane is at most this
        return None
    source = TiledImage(image, channel_axis=channel_axis, channels=channels, max_samples=1 << 16)
    return source.shape


def label_memmap(folder: Path, shape: tuple[int, int], dtype: Any) -> tuple[np.memmap, Path]:
    """A zeroed memory-mapped label image in a hidden temporary file of ``folder`` (delete it after)."""
    path = folder / f".napari-sam-labels.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    return np.memmap(path, dtype=dtype, mode="w+", shape=tuple(shape)), path


def write_tiled_tiff(path: Path, labels: Any) -> None:
    """Write ``labels`` (numpy or memmap) as a zlib-compressed tiled TIFF, atomically."""
    import tifffile

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            tifffile.imwrite(f, labels, compression="zlib", tile=TIFF_TILE)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def segment_large(
    predictor: Any,
    image: Any,
    plan: tuple[int, int],
    points: Sequence[Any],
    boxes: Sequence[Any],
    output: Path,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    multimask: bool = False,
    status: Callable[[str], None] = lambda message: None,
) -> list[tuple[int, int, float]]:
    """``segment`` on a large plane: one object for the points (and box), or one per box.

    ``predictor`` is SAM 1's or SAM 2.1's image predictor. Writes uint16 labels 1..K to ``output`` (a tiled TIFF); where objects overlap the
    higher predicted IoU wins. Returns (area, area before overlaps, predicted IoU)
    per label.
    """
    tiled = TiledPredictor(predictor, *plan)
    tiled.set_image(image, channel_axis=channel_axis, channels=channels)
    height, width = tiled.source.shape
    status(f"{width}x{height} px: segmenting in {plan[0]}-px tiles (overlap {plan[1]} px)...")
    results = []
    if points:
        coords = np.array([[p.x, p.y] for p in points], dtype=np.float64)
        labels = np.array([p.label for p in points], dtype=np.int64)
        box = np.array([boxes[0].x0, boxes[0].y0, boxes[0].x1, boxes[0].y1]) if boxes else None
        multi = multimask or (len(points) == 1 and not boxes)
        results.append(tiled.predict(coords, labels, box, multimask_output=multi))
    else:
        for b in boxes:
            results.append(tiled.predict(box=np.array([b.x0, b.y0, b.x1, b.y1]), multimask_output=multimask))
    order = sorted(range(len(results)), key=lambda k: results[k].score)  # the best scored last
    areas = write_large_labels(output, (height, width), results, order)
    return [(areas[k], r.area, r.score) for k, r in enumerate(results)]


def write_large_labels(output: Path, shape: tuple[int, int], masks: Sequence[Any], order: Sequence[int]) -> list[int]:
    """Paint ``masks[k]`` (crops with ``paste`` and ``box``) as label ``k + 1``, in
    ``order`` (later ones win where they overlap), into a memory-mapped image next to
    ``output``, and write it there as a tiled TIFF. Returns each label's visible area."""
    dtype = np.uint16 if len(masks) <= np.iinfo(np.uint16).max else np.uint32
    out, tmp = label_memmap(output.parent, shape, dtype)
    try:
        for k in order:
            masks[k].paste(out, k + 1)
        out.flush()
        areas = []
        for k, mask in enumerate(masks):
            x0, y0, x1, y1 = (int(v) for v in mask.box)
            areas.append(int(np.count_nonzero(out[y0:y1, x0:x1] == k + 1)))
        write_tiled_tiff(output, out)
    finally:
        del out
        tmp.unlink(missing_ok=True)
    return areas


def label_large_image(generator: Any, image: Any, model_size: int | None, folder: Path) -> tuple[list[dict], Any, Path] | None:
    """Segment everything in a large image for ``napari-sam label``, or None if it is not large.

    Returns the records (segmentation as COCO RLE, as the batch writes them), the label
    image as a memmap in ``folder`` (uint16, or uint32 past 65,535 masks; larger masks
    painted first) and that memmap's temporary path, which the caller deletes.
    """
    from ..rle import coco_encode_rle
    from .everything import generate_tiled, write_label_image

    shape = tuple(int(n) for n in image.shape)
    if max(shape[:2]) <= 4 * (model_size or 1024) and max(shape[-2:]) <= 4 * (model_size or 1024):
        return None
    source = TiledImage(image, max_samples=1 << 16)  # checks the image, finds its (height, width)
    plan = tiling_plan(source.shape, model_size)
    if plan is None:
        return None
    records = generate_tiled(generator, image, *plan, output_mode="uncompressed_rle")
    dtype = np.uint16 if len(records) < 2**16 else np.uint32
    out, tmp = label_memmap(folder, source.shape, dtype)
    write_label_image(records, out, order="area")
    out.flush()
    for record in records:
        record["segmentation"] = coco_encode_rle(record["segmentation"])
    return records, out, tmp
