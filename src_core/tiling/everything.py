"""Segment everything in an image larger than the model input: per tile, then merged.

:func:`generate_tiled` runs a mask generator (e.g.
:class:`~src_core.automatic.SamAutomaticMaskGenerator`) on each uint8 RGB tile of
a :class:`~src_core.tiling.grid.TileGrid`, moves its records into full-image
coordinates and merges them:

* a mask is *whole* in its tile when its box stays more than ``edge_tolerance``
  pixels from every interior tile side, and *cut* otherwise;
* whole masks seen by several tiles (objects in an overlap) are duplicates:
  greedy non-maximum suppression across tiles keeps the copy lying farthest
  from its tile's interior sides, i.e. the one the model saw with most context;
* a cut mask lying mostly (a fraction ``merge_iou`` of it or more) inside a kept
  whole mask is a fragment of that object seen from a neighbour, and is dropped
  (an object can fall apart into several fragments inside one tile when the
  pixels joining them lie outside it, so IoU would miss the small fragments);
* the remaining cut masks are objects larger than the overlap: pieces from
  overlapping tiles that agree inside the overlap (IoU >= ``merge_iou`` there) are
  the same object and are united.

Objects up to about ``overlap - 2 * edge_tolerance`` pixels across therefore come
out once and whole without any union; larger ones are united from their pieces.

Memory: masks are kept as bounding-box crops with an offset, never as full-image
arrays. Records carry them as uncompressed RLEs in the full-image frame (size
proportional to the object, readable by :mod:`src_core.rle`) or, with
``output_mode="crop"``, as the crop itself plus ``"offset"`` (row, column).
:func:`write_label_image` paints records into a caller's array, which may be a
``np.memmap`` or zarr array as large as the image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..automatic.regions import bbox_crop
from ..rle import crop_to_rle, decode_segmentation, rle_to_crop
from .grid import Tile, TileGrid
from .predictor import check_tile_size, model_input_size
from .source import TiledImage

__all__ = ["generate_tiled", "record_crop", "write_label_image"]

OUTPUT_MODES = ("uncompressed_rle", "crop")
Record = dict[str, Any]
Box = tuple[int, int, int, int]  # x0, y0, x1, y1, exclusive


@dataclass
class _Piece:
    """One mask in full-image pixels, with where it came from."""

    crop: np.ndarray
    origin: tuple[int, int]  # (row, column)
    tile: Tile
    predicted_iou: float
    stability_score: float
    point: list[float]
    crop_box: Box
    cut: bool = False
    centrality: float = math.inf

    @property
    def box(self) -> Box:
        y0, x0 = self.origin
        return x0, y0, x0 + self.crop.shape[1], y0 + self.crop.shape[0]

    @property
    def area(self) -> int:
        return int(np.count_nonzero(self.crop))


def generate_tiled(
    generator: Any,
    image: object,
    tile_size: int | None = None,
    overlap: int | None = None,
    *,
    channel_axis: int | None = None,
    channels: Sequence[int] | None = None,
    contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
    percentiles: Sequence[float] = (0.5, 99.5),
    nms_thresh: float = 0.7,
    merge_iou: float = 0.5,
    edge_tolerance: int = 20,
    output_mode: str = "uncompressed_rle",
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[Record]:
    """Masks for everything in a large image, generated tile by tile.

    Parameters
    ----------
    generator : SamAutomaticMaskGenerator or callable
        Has ``generate(rgb)``, or is called as ``generator(rgb)``, with an (h, w, 3)
        uint8 tile; returns records like Meta's (``segmentation`` as a binary mask,
        uncompressed or COCO RLE; ``predicted_iou``, ``point_coords``,
        ``stability_score``, ``crop_box``). ``output_mode="uncompressed_rle"`` on
        the generator saves memory.
    image : array-like
        (Y, X) or (Y, X, C)/(C, Y, X), read lazily (numpy, memmap, zarr, dask).
    tile_size, overlap : int, optional
        Tile side and minimum overlap in image pixels (default: the model input
        size, and a quarter of it). The overlap should exceed the typical object
        size plus ``2 * edge_tolerance``.
    channel_axis, channels, contrast_limits, percentiles
        Contrast and channels, one setting for all tiles; see
        :class:`~src_core.tiling.source.TiledImage`.
    nms_thresh : float
        Box IoU above which whole masks from different tiles are duplicates.
    merge_iou : float
        A cut mask is a fragment of a kept whole mask when at least this fraction
        of it lies inside, and two cut masks of overlapping tiles are one object
        when their IoU inside the overlap is at least this.
    edge_tolerance : int
        A mask within this many pixels of an interior tile side is cut.
    output_mode : {"uncompressed_rle", "crop"}
        Form of each record's ``segmentation`` (see the module notes).
    progress : callable, optional
        ``progress(done_tiles, total_tiles)``: once with 0, then after each tile.
    should_stop : callable, optional
        Asked before each tile (and passed to the generator's ``generate`` when it
        takes it); True raises :class:`~src_core.jobs.Cancelled`.

    Returns
    -------
    list of dict
        Records with ``segmentation``, ``area``, ``bbox`` (XYWH as Meta's: width
        and height are last minus first pixel), ``predicted_iou``,
        ``point_coords``, ``stability_score``, ``crop_box`` (XYWH of the tile, or of
        the union of tiles for a united mask) in full-image pixels, and ``offset``
        in ``"crop"`` mode. Whole masks in tile order, then united ones.
    """
    from ..automatic.generator import SamAutomaticMaskGenerator
    from ..jobs import check_stop

    if output_mode not in OUTPUT_MODES:
        raise ValueError(f"output_mode must be one of {OUTPUT_MODES}, got {output_mode!r}")
    if not (0.0 < float(merge_iou) <= 1.0):
        raise ValueError(f"merge_iou must be in (0, 1], got {merge_iou}")
    if not (hasattr(generator, "generate") or callable(generator)):
        raise ValueError(
            f"generator must have generate(rgb) or be callable with an RGB tile, got {type(generator).__name__}"
        )
    tile_size, overlap = check_tile_size(tile_size, overlap, model_input_size(generator))
    source = TiledImage(
        image, channel_axis=channel_axis, channels=channels, contrast_limits=contrast_limits, percentiles=percentiles
    )
    grid = TileGrid(source.shape, tile_size, overlap)
    takes_stop = isinstance(generator, SamAutomaticMaskGenerator)
    pieces: list[_Piece] = []
    if progress is not None:
        progress(0, len(grid))
    for done, tile in enumerate(grid, start=1):
        check_stop(should_stop, "mask generation")
        rgb = source.read_rgb(tile)
        if takes_stop:
            records = generator.generate(rgb, should_stop=should_stop)
        elif hasattr(generator, "generate"):
            records = generator.generate(rgb)
        else:
            records = generator(rgb)
        for record in records:
            piece = _piece(record, tile, grid.shape, int(edge_tolerance))
            if piece is not None:
                pieces.append(piece)
        if progress is not None:
            progress(done, len(grid))
    neighbours = {tile.index: [n.index for n in grid.neighbours(tile)] for tile in grid}
    whole = _suppress_duplicates([p for p in pieces if not p.cut], neighbours, float(nms_thresh))
    kept_by_tile: dict[tuple, list[_Piece]] = {}
    for piece in whole:
        kept_by_tile.setdefault(piece.tile.index, []).append(piece)
    cut = [p for p in pieces if p.cut and not _matches_kept(p, kept_by_tile, neighbours, float(merge_iou))]
    merged = _unite(cut, neighbours, float(merge_iou))
    return [_record(p, grid.shape, output_mode) for p in whole + merged]


def record_crop(record: Record) -> tuple[np.ndarray, tuple[int, int]]:
    """A record's mask as its bounding-box crop and (row, column) offset, in any form.

    Works for the records of :func:`generate_tiled` (RLE or ``"crop"`` mode) and of
    :class:`~src_core.automatic.SamAutomaticMaskGenerator` (binary mask, RLEs).
    """
    segmentation = record["segmentation"]
    if "offset" in record and not isinstance(segmentation, dict):
        crop = np.asarray(segmentation, dtype=bool)
        return crop, (int(record["offset"][0]), int(record["offset"][1]))
    if isinstance(segmentation, dict) and not isinstance(segmentation.get("counts"), (str, bytes)):
        return rle_to_crop(segmentation)
    return bbox_crop(decode_segmentation(segmentation))


def write_label_image(records: Sequence[Record], out: Any, order: str = "area") -> Any:
    """Paint records into ``out`` as labels ``1..N`` (record ``i`` gets ``i + 1``); returns ``out``.

    Only mask pixels are written, so ``out`` should start as zeros. It may be any
    array with numpy slicing (numpy, ``np.memmap``, zarr), as large as the image:
    each mask is written through its bounding box only.

    Parameters
    ----------
    records : sequence of dict
        From :func:`generate_tiled` or a mask generator.
    out : array-like
        (H, W) integer array of the image's size, e.g.
        ``np.lib.format.open_memmap(path, "w+", np.uint32, shape)``.
    order : {"area", "predicted_iou"}
        Where masks overlap, the one painted last wins: ``"area"`` paints larger
        masks first (small objects stay visible inside large ones),
        ``"predicted_iou"`` the best scored last.

    Raises
    ------
    ValueError
        If ``out`` is not a 2D integer array, cannot hold ``len(records)`` labels,
        or a mask does not fit in it.
    """
    if order not in ("area", "predicted_iou"):
        raise ValueError(f"order must be 'area' or 'predicted_iou', got {order!r}")
    shape = tuple(getattr(out, "shape", ()))
    dtype = np.dtype(getattr(out, "dtype", np.float64))
    if len(shape) != 2 or dtype.kind not in "iu":
        raise ValueError(
            f"out must be a 2D integer array (e.g. np.zeros((H, W), np.uint32)), got shape {shape} dtype {dtype}"
        )
    if len(records) > np.iinfo(dtype).max:
        raise ValueError(f"{len(records)} masks do not fit in {dtype} labels; use np.uint32 for out")
    crops = [record_crop(r) for r in records]
    if order == "area":
        keys = [-int(np.count_nonzero(crop)) for crop, _ in crops]
    else:
        keys = [float(r["predicted_iou"]) for r in records]
    for index in sorted(range(len(records)), key=lambda i: keys[i]):
        crop, (y0, x0) = crops[index]
        if crop.size == 0:
            continue
        if y0 < 0 or x0 < 0 or y0 + crop.shape[0] > shape[0] or x0 + crop.shape[1] > shape[1]:
            raise ValueError(
                f"mask {index} ({crop.shape[0]}x{crop.shape[1]} at row {y0}, column {x0}) does not fit "
                f"in out of shape {shape}: out must have the image's size"
            )
        region = (slice(y0, y0 + crop.shape[0]), slice(x0, x0 + crop.shape[1]))
        pixels = np.array(out[region])
        pixels[crop] = index + 1
        out[region] = pixels
    return out


# -- merging ------------------------------------------------------------------------------


def _piece(record: Record, tile: Tile, image_shape: tuple[int, int], tolerance: int) -> _Piece | None:
    crop, (r0, c0) = record_crop(record)
    if crop.size == 0 or not crop.any():
        return None
    h, w = crop.shape
    th, tw = tile.shape
    top, bottom, left, right = tile.interior_sides(image_shape)
    distances = [d for d, interior in ((r0, top), (th - r0 - h, bottom), (c0, left), (tw - c0 - w, right)) if interior]
    centrality = float(min(distances, default=math.inf))
    point = [float(v) for v in np.asarray(record.get("point_coords", [[c0, r0]]), dtype=np.float64).reshape(-1)[:2]]
    bx, by, bw, bh = record.get("crop_box", [0, 0, tw, th])
    return _Piece(
        crop=crop,
        origin=(r0 + tile.y0, c0 + tile.x0),
        tile=tile,
        predicted_iou=float(record.get("predicted_iou", 1.0)),
        stability_score=float(record.get("stability_score", 1.0)),
        point=[point[0] + tile.x0, point[1] + tile.y0],
        crop_box=(bx + tile.x0, by + tile.y0, bx + bw + tile.x0, by + bh + tile.y0),
        cut=centrality <= tolerance,
        centrality=centrality,
    )


def _suppress_duplicates(pieces: list[_Piece], neighbours: dict, threshold: float) -> list[_Piece]:
    """Greedy NMS across tiles (never within one): the most central copy of an object wins."""
    by_tile: dict[tuple, list[int]] = {}
    for i, piece in enumerate(pieces):
        by_tile.setdefault(piece.tile.index, []).append(i)
    boxes = np.array([p.box for p in pieces], dtype=np.int64).reshape(-1, 4)
    tile_members = {t: np.asarray(members) for t, members in by_tile.items()}
    tile_boxes = {t: boxes[members] for t, members in tile_members.items()}
    order = sorted(range(len(pieces)), key=lambda i: (-pieces[i].centrality, -pieces[i].predicted_iou, i))
    keep = np.zeros(len(pieces), dtype=bool)
    for i in order:
        piece = pieces[i]
        duplicate = False
        for n in neighbours[piece.tile.index]:
            if n not in tile_members:
                continue
            kept = keep[tile_members[n]]
            if kept.any() and (_box_iou(piece.box, tile_boxes[n][kept]) > threshold).any():
                duplicate = True
                break
        keep[i] = not duplicate
    return [p for p, k in zip(pieces, keep) if k]


def _matches_kept(piece: _Piece, kept_by_tile: dict, neighbours: dict, threshold: float) -> bool:
    """Whether a cut piece lies mostly inside one of the kept whole masks of a neighbouring tile."""
    need = threshold * piece.area
    for n in neighbours[piece.tile.index]:
        for other in kept_by_tile.get(n, ()):
            shared = _intersect(piece.box, other.box)
            if shared is not None and np.count_nonzero(_in_frame(piece, shared) & _in_frame(other, shared)) >= need:
                return True
    return False


def _unite(pieces: list[_Piece], neighbours: dict, threshold: float) -> list[_Piece]:
    """Union the cut pieces that agree inside the overlap of their tiles."""
    parent = list(range(len(pieces)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    by_tile: dict[tuple, list[int]] = {}
    for i, piece in enumerate(pieces):
        by_tile.setdefault(piece.tile.index, []).append(i)
    for i, piece in enumerate(pieces):
        for n in neighbours[piece.tile.index]:
            if n < piece.tile.index:  # each pair of tiles once
                continue
            for j in by_tile.get(n, []):
                other = pieces[j]
                overlap = _intersect(piece.tile.box, other.tile.box)
                shared = _intersect(piece.box, other.box)
                if overlap is None or shared is None or _intersect(overlap, shared) is None:
                    continue
                if _mask_iou(piece, other, overlap) >= threshold:
                    parent[find(j)] = find(i)
    groups: dict[int, list[_Piece]] = {}
    for i, piece in enumerate(pieces):
        groups.setdefault(find(i), []).append(piece)
    return [members[0] if len(members) == 1 else _union(members) for members in groups.values()]


def _union(members: list[_Piece]) -> _Piece:
    boxes = np.array([p.box for p in members])
    x0, y0 = boxes[:, :2].min(axis=0)
    x1, y1 = boxes[:, 2:].max(axis=0)
    crop = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    for p in members:
        py, px = p.origin[0] - y0, p.origin[1] - x0
        crop[py : py + p.crop.shape[0], px : px + p.crop.shape[1]] |= p.crop
    areas = np.array([p.area for p in members], dtype=np.float64)
    crop_boxes = np.array([p.crop_box for p in members])
    largest = members[int(np.argmax(areas))]
    return _Piece(
        crop=crop,
        origin=(int(y0), int(x0)),
        tile=largest.tile,
        predicted_iou=float(np.average([p.predicted_iou for p in members], weights=areas)),
        stability_score=float(min(p.stability_score for p in members)),
        point=largest.point,
        crop_box=(*crop_boxes[:, :2].min(axis=0).tolist(), *crop_boxes[:, 2:].max(axis=0).tolist()),
        cut=True,
        centrality=0.0,
    )


def _record(piece: _Piece, image_shape: tuple[int, int], output_mode: str) -> Record:
    crop, (r0, c0) = bbox_crop(piece.crop)  # a union may not fill its box's edges
    r0, c0 = r0 + piece.origin[0], c0 + piece.origin[1]
    h, w = crop.shape
    cx0, cy0, cx1, cy1 = (int(v) for v in piece.crop_box)
    record: Record = {
        "segmentation": crop_to_rle(crop, (r0, c0), image_shape) if output_mode == "uncompressed_rle" else crop,
        "area": int(np.count_nonzero(crop)),
        "bbox": [c0, r0, w - 1, h - 1],
        "predicted_iou": piece.predicted_iou,
        "point_coords": [list(piece.point)],
        "stability_score": piece.stability_score,
        "crop_box": [cx0, cy0, cx1 - cx0, cy1 - cy0],
    }
    if output_mode == "crop":
        record["offset"] = [r0, c0]
    return record


# -- boxes and masks ----------------------------------------------------------------------


def _intersect(a: Box, b: Box) -> Box | None:
    x0, y0, x1, y1 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    return (x0, y0, x1, y1) if x1 > x0 and y1 > y0 else None


def _box_iou(box: Box, boxes: np.ndarray) -> np.ndarray:
    wh = np.clip(np.minimum(boxes[:, 2:], box[2:]) - np.maximum(boxes[:, :2], box[:2]), 0, None)
    inter = wh[:, 0] * wh[:, 1]
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1)


def _in_frame(piece: _Piece, frame: Box) -> np.ndarray:
    """The piece's pixels inside ``frame`` (x0, y0, x1, y1), as a frame-sized mask."""
    x0, y0, x1, y1 = frame
    out = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    part = _intersect(piece.box, frame)
    if part is not None:
        px0, py0, px1, py1 = part
        oy, ox = piece.origin
        out[py0 - y0 : py1 - y0, px0 - x0 : px1 - x0] = piece.crop[py0 - oy : py1 - oy, px0 - ox : px1 - ox]
    return out


def _mask_iou(a: _Piece, b: _Piece, frame: Box) -> float:
    """IoU of two pieces counting only their pixels inside ``frame``."""
    boxes = np.array([a.box, b.box])
    span = (*boxes[:, :2].min(axis=0).tolist(), *boxes[:, 2:].max(axis=0).tolist())
    frame = _intersect(frame, span)
    if frame is None:
        return 0.0
    ma, mb = _in_frame(a, frame), _in_frame(b, frame)
    union = np.count_nonzero(ma | mb)
    return np.count_nonzero(ma & mb) / union if union else 0.0
