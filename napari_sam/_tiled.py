"""Large planes in the dock widget: prompts go through a tiled predictor, masks are painted by their crops.

A plane is large when :func:`~src_core.tiling.tiling_plan` says so (its long side is
more than 4x the model input). Then nothing reads the plane whole: the engine reads
tiles from the layer's data (numpy, memmap, dask, zarr), embeds only the tiles that
prompts touch, and returns each object as a crop plus offset, which is painted into
the full-size "SAM preview" and "SAM labels" layers through its bounding box only.
No Qt here: the widget and the segment-everything panel call these in and around
their workers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from src_core.tiling import (
    TiledMask,
    TiledObjectSegmenter,
    TiledPredictor,
    model_input_size,
    tiling_plan,
)

from . import _layers as L

Region = tuple  # (plane, y0, y1, x0, x1)


def plan_for(image_layer, predictor) -> tuple[int, int] | None:
    """(tile_size, overlap) when the image's planes are large for ``predictor``'s model
    (SAM 1 or SAM 2.1), else None."""
    return tiling_plan(L.spatial_shape(image_layer)[-2:], model_input_size(predictor))


class StackedPlanes:
    """One plane of several same-size layers, as a lazy (Y, X, C) array: slicing reads only the slice."""

    def __init__(self, planes: Sequence[Any]) -> None:
        self.planes = list(planes)
        first = self.planes[0]
        self.shape = (*tuple(first.shape)[:2], len(self.planes))
        self.dtype = np.result_type(*[np.dtype(p.dtype) for p in self.planes])
        self.ndim = 3

    def __getitem__(self, index) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        spatial, channel = index[:2], index[2] if len(index) > 2 else slice(None)
        stacked = np.stack([np.asarray(p[spatial]) for p in self.planes], axis=-1).astype(self.dtype)
        return stacked[..., channel]


def lazy_plane(layers: Sequence[Any], plane: tuple) -> Any:
    """The plane of the image layer (and the ticked channel layers) without reading it."""
    planes = [layer.data[plane] if plane else layer.data for layer in layers]
    return planes[0] if len(planes) == 1 else StackedPlanes(planes)


def make_segmenter(predictor, plan: tuple[int, int], cache=None, model_id: str | None = None) -> TiledObjectSegmenter:
    """A tiled segmenter on ``predictor`` (the image is set later, in a worker)."""
    tile_size, overlap = plan
    tiled = TiledPredictor(
        predictor, tile_size, overlap, cache=cache if model_id else None, model_id=model_id
    )
    return TiledObjectSegmenter(tiled)


def _view(data, plane: tuple):
    return data[plane] if plane else data


def show_preview(preview_layer, tiled: TiledMask | None, plane: tuple, previous: Region | None) -> Region | None:
    """Paint ``tiled`` as label 1 on ``plane``, clearing only the box painted before; returns the box painted."""
    data = preview_layer.data
    if previous is not None:
        where, y0, y1, x0, x1 = previous
        _view(data, where)[y0:y1, x0:x1] = 0
    region = None
    if tiled is not None and tiled.mask.size:
        y0, x0 = tiled.offset
        h, w = tiled.mask.shape
        view = _view(data, plane)[y0 : y0 + h, x0 : x0 + w]
        view[tiled.mask] = 1
        region = (plane, y0, y0 + h, x0, x0 + w)
    preview_layer.refresh()
    return region


def commit_mask(labels_layer, tiled: TiledMask, plane: tuple, *, overwrite: bool = False) -> int:
    """Write ``tiled`` into ``labels_layer`` with a new id through napari's undo history; 0 if nothing new."""
    if tiled.mask.size == 0:
        return 0
    data = labels_layer.data
    y0, x0 = tiled.offset
    h, w = tiled.mask.shape
    current = np.asarray(_view(data, plane)[y0 : y0 + h, x0 : x0 + w])
    target = tiled.mask if overwrite else tiled.mask & (current == 0)
    if not target.any():
        return 0
    new_id = int(np.asarray(data).max()) + 1
    rows, cols = np.nonzero(target)
    index = tuple(np.full(rows.shape, p) for p in plane) + (rows + y0, cols + x0)
    with labels_layer.block_history():
        labels_layer.data_setitem(index, new_id)
    return new_id


def paint_records(
    labels_layer, records: Sequence[dict], prefix: tuple, *, overwrite: bool = False, undo_limit: int
) -> tuple[int, int, bool]:
    """Write tiled segment-everything records (``output_mode="crop"``) into ``labels_layer`` with new ids.

    Larger masks are painted first, so small objects stay visible inside large ones;
    existing labels are kept unless ``overwrite``. Memory follows the masks, not the
    plane. Returns the first and last id written ((0, 0) when nothing was) and whether
    it is one undo step (at most ``undo_limit`` pixels).
    """
    from src_core.tiling import record_crop

    crops = sorted((record_crop(r) for r in records), key=lambda c: -int(np.count_nonzero(c[0])))
    return paint_crops(labels_layer, crops, prefix, overwrite=overwrite, undo_limit=undo_limit)


def paint_crops(
    labels_layer, crops: Sequence[tuple[np.ndarray, tuple[int, int]]], prefix: tuple, *, overwrite: bool = False,
    undo_limit: int,
) -> tuple[int, int, bool]:
    """Write (crop, (row, column) offset) masks into ``labels_layer`` with new ids, in
    their order (a later one wins where two overlap); like :func:`paint_records`."""
    data = labels_layer.data
    view = _view(data, prefix)
    start = int(np.asarray(data).max()) + 1
    pieces, next_id = [], start
    for crop, (y0, x0) in crops:
        if crop.size == 0:
            continue
        h, w = crop.shape
        write = crop if overwrite else crop & (np.asarray(view[y0 : y0 + h, x0 : x0 + w]) == 0)
        rows, cols = np.nonzero(write)
        if len(rows):
            pieces.append((rows + y0, cols + x0, next_id))
            next_id += 1
    if not pieces:
        return 0, 0, True
    last = next_id - 1
    if last > np.iinfo(data.dtype).max:
        raise ValueError(f"'{labels_layer.name}' ({data.dtype}) has no room for {len(pieces)} more ids")
    total = sum(len(rows) for rows, _, _ in pieces)
    if total > undo_limit:
        for rows, cols, value in pieces:
            view[rows, cols] = value
        labels_layer.refresh()
        return start, last, False
    rows = np.concatenate([p[0] for p in pieces])
    cols = np.concatenate([p[1] for p in pieces])
    values = np.concatenate([np.full(len(p[0]), p[2], dtype=data.dtype) for p in pieces])
    index = tuple(np.full(len(rows), p) for p in prefix) + (rows, cols)
    with labels_layer.block_history():
        labels_layer.data_setitem(index, values)
    return start, last, True
