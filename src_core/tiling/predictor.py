"""Prompting one object at a time in an image larger than the model input, tile by tile.

:class:`TiledPredictor` wraps a :class:`~src_core.predictor.SamPredictor` (or
anything with its ``set_image``/``predict``). ``set_image`` is cheap: it only
estimates the global contrast from a subsample. ``predict`` takes a prompt in
full-image pixels and

1. routes it to the grid tile in which the prompt (its foreground points and
   box) lies farthest from an interior tile side;
2. embeds that tile on demand; the last few embeddings are kept (LRU), and an
   optional :class:`~src_core.embedding_cache.EmbeddingCache` keeps them on disk;
3. if the mask reaches an interior side of the tile, the object was cut by the
   tiling: it predicts again in a tile-sized window centred on the mask (origins
   snapped to a coarse lattice, so these windows are reused too), and, for
   prompts or objects larger than a tile, in an *overview* window that reads
   every k-th pixel so that the whole object fits the model input.

The result is a :class:`TiledMask`: the mask's bounding-box crop and its offset,
never a full-image mask.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..automatic.regions import bbox_crop
from .grid import Extent, Tile, TileGrid
from .source import DEFAULT_MAX_SAMPLES, TiledImage

__all__ = ["TiledMask", "TiledPredictor", "model_input_size", "paste_crop"]


@dataclass(frozen=True)
class TiledMask:
    """One object's mask in a large image.

    Attributes
    ----------
    mask : numpy.ndarray
        (h, w) bool: the mask inside its bounding box ((0, 0) when empty).
    offset : (int, int)
        (row, column) of ``mask[0, 0]`` in the full image.
    score : float
        The model's predicted IoU of the chosen mask.
    window : Tile
        The tile or window the mask was predicted in (``window.step > 1``: read at
        reduced resolution, the mask is upsampled by nearest neighbour).
    low_res_logits : numpy.ndarray or None
        The chosen mask's low-resolution logits in ``window``'s frame; pass this
        result as ``previous`` to refine the same object with more points.
    """

    mask: np.ndarray
    offset: tuple[int, int]
    score: float
    window: Tile
    low_res_logits: np.ndarray | None = None

    @property
    def area(self) -> int:
        """Number of mask pixels."""
        return int(np.count_nonzero(self.mask))

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 of the mask's bounding box (x1, y1 exclusive)."""
        y0, x0 = self.offset
        return x0, y0, x0 + self.mask.shape[1], y0 + self.mask.shape[0]

    def paste(self, out: Any, value: int | bool = True) -> Any:
        """Set ``out[mask] = value`` in a caller's full-size array (numpy, memmap, zarr); returns it."""
        return paste_crop(out, self.mask, self.offset, value)


def paste_crop(out: Any, mask: np.ndarray, offset: tuple[int, int], value: int | bool = True) -> Any:
    """Set ``out[mask] = value`` for a bounding-box crop ``mask`` at (row, column)
    ``offset`` of a full-size array (numpy, memmap, zarr), reading and writing only
    that box; returns ``out``."""
    if mask.size == 0:
        return out
    y0, x0 = offset
    region = (slice(y0, y0 + mask.shape[0]), slice(x0, x0 + mask.shape[1]))
    pixels = np.array(out[region])
    pixels[mask] = value
    out[region] = pixels
    return out


def model_input_size(predictor_or_generator: object) -> int | None:
    """The image encoder's input size of a SAM 1 or SAM 2.1 model, predictor or
    generator, or None if it has none."""
    obj = getattr(predictor_or_generator, "predictor", predictor_or_generator)
    model = getattr(obj, "model", obj)
    size = getattr(getattr(model, "image_encoder", None), "img_size", None)
    if size is None:
        size = getattr(model, "image_size", None)  # SAM 2.1
    return int(size) if size is not None else None


def check_tile_size(tile_size: int | None, overlap: int | None, model_size: int | None) -> tuple[int, int]:
    """Defaults and checks shared by the tiled predictor and generator: (tile_size, overlap)."""
    if tile_size is None:
        tile_size = model_size if model_size is not None else 1024
    if overlap is None:
        overlap = int(tile_size) // 4 if isinstance(tile_size, (int, np.integer)) else 0
    grid = TileGrid((1, 1), tile_size, overlap)  # validates the numbers
    if model_size is not None and grid.tile_size < model_size:
        raise ValueError(
            f"tile_size={grid.tile_size} is smaller than the model's input ({model_size} pixels): "
            f"tiles would be upscaled. Use tile_size >= {model_size}."
        )
    return grid.tile_size, grid.overlap


class TiledPredictor:
    """SAM prompting for one object at a time in images of any size.

    Parameters
    ----------
    predictor : SamPredictor
        Embeds tiles and decodes prompts. Anything with ``set_image(rgb)`` and
        ``predict(point_coords, point_labels, box, mask_input, multimask_output)``
        works; embeddings are kept in memory when it also has
        ``get_image_embedding`` and ``set_embedding``.
    tile_size : int, optional
        Tile side in image pixels (default: the model's input size, 1024 if
        unknown). Larger tiles are downscaled to the model input: fewer tiles,
        less detail. Must be at least the model's input size.
    overlap : int, optional
        Minimum overlap of neighbouring tiles (default ``tile_size // 4``).
    max_cached_tiles : int
        Embeddings kept in memory (least recently used dropped first).
    cache : EmbeddingCache, optional
        Also keep tile embeddings on disk; needs ``model_id``.
    model_id : str, optional
        Names the weights, for ``cache`` keys.
    edge_tolerance : int
        A mask within this many (read) pixels of an interior window side counts as
        cut there.
    max_recentre : int
        How many more windows to try for an object cut by the first one.
    max_object_size : int, optional
        Re-centring follows an object up to this size in pixels (default
        ``4 * tile_size``); larger masks are returned as the last window saw them.
        A box prompt is always seen whole, whatever its size.

    Raises
    ------
    ValueError
        If the sizes do not fit (``overlap >= tile_size``, a tile smaller than the
        model input) or ``cache`` is given without ``model_id``.
    """

    def __init__(
        self,
        predictor: Any,
        tile_size: int | None = None,
        overlap: int | None = None,
        *,
        max_cached_tiles: int = 8,
        cache: Any = None,
        model_id: str | None = None,
        edge_tolerance: int = 2,
        max_recentre: int = 3,
        max_object_size: int | None = None,
    ) -> None:
        self.predictor = predictor
        self.tile_size, self.overlap = check_tile_size(tile_size, overlap, model_input_size(predictor))
        if cache is not None and not model_id:
            raise ValueError("an embedding cache needs model_id naming the weights (e.g. 'vit_b-<sha>')")
        if int(max_cached_tiles) < 1:
            raise ValueError(f"max_cached_tiles must be at least 1, got {max_cached_tiles}")
        self.max_cached_tiles = int(max_cached_tiles)
        self.cache = cache
        self.model_id = model_id
        self.edge_tolerance = max(0, int(edge_tolerance))
        self.max_recentre = max(0, int(max_recentre))
        self.max_object_size = int(max_object_size or 4 * self.tile_size)
        self.embeddings_computed = 0  # tiles encoded by the model
        self.embeddings_loaded = 0  # tiles read back from ``cache``
        self._keeps_embeddings = hasattr(predictor, "get_image_embedding") and hasattr(predictor, "set_embedding")
        self.reset_image()

    # -- image ------------------------------------------------------------------------

    def reset_image(self) -> None:
        """Forget the image and every tile embedding."""
        self.source: TiledImage | None = None
        self.grid: TileGrid | None = None
        self._embeddings: OrderedDict[tuple, tuple] = OrderedDict()
        self._current: tuple | None = None

    @property
    def is_image_set(self) -> bool:
        return self.source is not None

    def set_image(
        self,
        image: object,
        *,
        channel_axis: int | None = None,
        channels: Sequence[int] | None = None,
        contrast_limits: Sequence[float] | Sequence[Sequence[float]] | None = None,
        percentiles: Sequence[float] = (0.5, 99.5),
        max_samples: int = DEFAULT_MAX_SAMPLES,
    ) -> None:
        """Use ``image`` (any size, read lazily); no tile is embedded yet.

        Parameters
        ----------
        image : array-like
            (Y, X) or (Y, X, C)/(C, Y, X): numpy, memmap, zarr, dask, ...
        channel_axis, channels, contrast_limits, percentiles, max_samples
            See :class:`~src_core.tiling.source.TiledImage`.
        """
        source = TiledImage(
            image,
            channel_axis=channel_axis,
            channels=channels,
            contrast_limits=contrast_limits,
            percentiles=percentiles,
            max_samples=max_samples,
        )
        self.reset_image()
        self.source = source
        self.grid = TileGrid(source.shape, self.tile_size, self.overlap)

    def cancel(self) -> None:
        """Ask an embedding running in another thread to stop (if the predictor can)."""
        if hasattr(self.predictor, "cancel"):
            self.predictor.cancel()

    # -- prompts ----------------------------------------------------------------------

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        multimask_output: bool = True,
        previous: TiledMask | None = None,
    ) -> TiledMask:
        """The mask of one object from a prompt in full-image pixels (the best scored of
        :meth:`predict_candidates`).

        Parameters
        ----------
        point_coords : array, optional
            (N, 2) x, y points in full-image pixels.
        point_labels : array, optional
            (N,): 1 foreground, 0 background.
        box : array, optional
            (4,) x0, y0, x1, y1; clipped to the image.
        multimask_output : bool
            Let the model propose 3 masks and return the best scored one (right
            for a single click); False asks for one mask.
        previous : TiledMask, optional
            The last result for the same object: its window and logits are reused
            while the new prompt still fits that window.

        Returns
        -------
        TiledMask
        """
        return self.predict_candidates(point_coords, point_labels, box, multimask_output, previous)[0]

    def predict_candidates(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        multimask_output: bool = True,
        previous: TiledMask | None = None,
    ) -> tuple[TiledMask, ...]:
        """Like :meth:`predict`, but every mask SAM proposed, best scored first (three for
        a ``multimask_output`` prompt, else one). All come from the same window: the one
        the best mask fits in.
        """
        if self.source is None:
            raise ValueError("An image must be set with .set_image(...) before masks can be predicted.")
        coords, labels, box_xyxy = self._validated(point_coords, point_labels, box)
        extent = _extent(coords[labels == 1], box_xyxy)
        mask_input = None
        if previous is not None and _contains(previous.window, extent):
            window = previous.window
            if previous.low_res_logits is not None:
                mask_input, multimask_output = previous.low_res_logits[None], False
        else:
            window, margin = self.grid.route(extent)
            if margin < 0:
                window = self._window_for(extent)
        result = None
        for _ in range(self.max_recentre + 1):
            result, cut = self._predict_in(window, coords, labels, box_xyxy, multimask_output, mask_input)
            if not cut:
                break
            x0, y0, x1, y1 = result[0].box
            target = (min(extent[0], x0), min(extent[1], y0), max(extent[2], x1), max(extent[3], y1))
            if max(target[2] - target[0], target[3] - target[1]) > max(
                self.max_object_size, extent[2] - extent[0], extent[3] - extent[1]
            ):
                break
            following = self._window_for(target)
            if _key(following) == _key(window):
                break
            window, mask_input = following, None
        return result

    # -- internals --------------------------------------------------------------------

    def _window_for(self, extent: Extent) -> Tile:
        """A tile-sized window centred on ``extent`` if it fits with context, else an overview."""
        context = max(self.edge_tolerance + 1, self.overlap // 4)
        if max(extent[2] - extent[0], extent[3] - extent[1]) <= self.tile_size - 2 * context:
            return self.grid.window_around(extent, snap=max(1, self.overlap // 4))
        return self.grid.overview(extent)

    def _predict_in(
        self, window, coords, labels, box, multimask_output, mask_input
    ) -> tuple[tuple[TiledMask, ...], bool]:
        self._embed(window)
        origin = np.array([window.x0, window.y0], dtype=np.float64)
        kwargs: dict[str, Any] = {"multimask_output": multimask_output}
        # foreground points always lie in the window; background points outside it cannot matter
        x, y = coords[:, 0], coords[:, 1]
        keep = (x >= window.x0) & (x <= window.x1) & (y >= window.y0) & (y <= window.y1)
        if keep.any():
            kwargs["point_coords"] = (coords[keep] - origin) / window.step
            kwargs["point_labels"] = labels[keep]
        if box is not None:
            local = (np.asarray(box) - np.tile(origin, 2)) / window.step
            height, width = window.read_shape
            kwargs["box"] = np.clip(local, 0, [width, height, width, height])
        if mask_input is not None:
            kwargs["mask_input"] = mask_input
        masks, scores, logits = self.predictor.predict(**kwargs)
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        results, step = [], window.step
        for index in order:
            crop, (r0, c0) = bbox_crop(np.asarray(masks[index], dtype=bool))
            if step > 1 and crop.size:
                crop = np.repeat(np.repeat(crop, step, axis=0), step, axis=1)
                crop = crop[: window.y1 - (window.y0 + r0 * step), : window.x1 - (window.x0 + c0 * step)]
            offset = (window.y0 + r0 * step, window.x0 + c0 * step) if crop.size else (0, 0)
            low_res = np.asarray(logits[index]) if logits is not None else None
            results.append(TiledMask(np.ascontiguousarray(crop), offset, float(scores[index]), window, low_res))
        cut = self._is_cut(np.asarray(masks[order[0]], dtype=bool), window)
        return tuple(results), cut

    def _is_cut(self, mask: np.ndarray, window: Tile) -> bool:
        top, bottom, left, right = window.interior_sides(self.source.shape)
        band = self.edge_tolerance + 1
        return bool(
            (top and mask[:band].any())
            or (bottom and mask[-band:].any())
            or (left and mask[:, :band].any())
            or (right and mask[:, -band:].any())
        )

    def _embed(self, window: Tile) -> None:
        key = _key(window)
        if key == self._current:
            return
        stored = self._embeddings.get(key)
        if stored is not None:
            embedding, original_size, input_size, extras = stored
            if extras is None:
                self.predictor.set_embedding(embedding, original_size, input_size)
            else:  # SAM 2.1: the high-resolution features go with the embedding
                self.predictor.set_embedding(embedding, original_size, input_size, extra_features=extras)
            self._embeddings.move_to_end(key)
            self._current = key
            return
        self._current = None
        rgb = self.source.read_rgb(window)
        loaded = False
        if self.cache is not None:
            from ..embedding_cache import embed_with_cache

            loaded = embed_with_cache(self.predictor, rgb, self.cache, model_id=self.model_id)
        else:
            self.predictor.set_image(rgb)
        if loaded:
            self.embeddings_loaded += 1
        else:
            self.embeddings_computed += 1
        if self._keeps_embeddings:
            extras = self.predictor.extra_features() if hasattr(self.predictor, "extra_features") else None
            self._embeddings[key] = (
                self.predictor.get_image_embedding(),
                tuple(self.predictor.original_size),
                tuple(self.predictor.input_size),
                extras,
            )
            while len(self._embeddings) > self.max_cached_tiles:
                self._embeddings.popitem(last=False)
        self._current = key

    def _validated(self, point_coords, point_labels, box) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        height, width = self.source.shape
        coords = np.zeros((0, 2))
        labels = np.zeros(0, dtype=np.int64)
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        if point_coords is not None:
            coords = np.asarray(point_coords, dtype=np.float64)
            labels = np.asarray(point_labels).reshape(-1)
            if coords.ndim != 2 or coords.shape[1] != 2:
                raise ValueError(
                    f"point_coords must be (N, 2) x, y points of one object, got shape {coords.shape}"
                )
            if len(labels) != len(coords):
                raise ValueError(f"{len(coords)} points but {len(labels)} point_labels")
            if not np.isfinite(coords).all():
                raise ValueError("point_coords contain NaN or inf")
            outside = (coords[:, 0] < 0) | (coords[:, 0] > width) | (coords[:, 1] < 0) | (coords[:, 1] > height)
            if outside.any():
                x, y = coords[outside][0]
                raise ValueError(
                    f"point ({x:g}, {y:g}) lies outside the {width}x{height} image "
                    "(x must be in [0, width], y in [0, height])"
                )
            if not np.isin(labels, (0, 1)).all():
                raise ValueError("point_labels must be 1 (foreground) or 0 (background)")
            labels = labels.astype(np.int64)
        box_xyxy = None
        if box is not None:
            box_xyxy = np.asarray(box, dtype=np.float64).reshape(-1)
            if box_xyxy.shape != (4,) or not np.isfinite(box_xyxy).all():
                raise ValueError(f"box must be one finite x0, y0, x1, y1 box, got {box!r}")
            if box_xyxy[2] <= box_xyxy[0] or box_xyxy[3] <= box_xyxy[1]:
                raise ValueError("box must be x0, y0, x1, y1 with x1 > x0 and y1 > y0")
            box_xyxy = np.clip(box_xyxy, 0, [width, height, width, height])
            if box_xyxy[2] <= box_xyxy[0] or box_xyxy[3] <= box_xyxy[1]:
                raise ValueError(f"box {np.asarray(box).tolist()} lies outside the {width}x{height} image")
        if box_xyxy is None and not (labels == 1).any():
            raise ValueError(
                "a prompt needs a box or at least one foreground point (label 1) to say where the object is"
            )
        return coords, labels, box_xyxy


def _extent(points: np.ndarray, box: np.ndarray | None) -> Extent:
    """Bounding extent x0, y0, x1, y1 of points and a box."""
    xs, ys = list(points[:, 0]), list(points[:, 1])
    if box is not None:
        xs += [box[0], box[2]]
        ys += [box[1], box[3]]
    return float(min(xs)), float(min(ys)), float(max(xs)), float(max(ys))


def _key(window: Tile) -> tuple[int, int, int, int, int]:
    return window.y0, window.x0, window.y1, window.x1, window.step


def _contains(window: Tile, extent: Extent) -> bool:
    return (
        window.x0 <= extent[0] and extent[2] <= window.x1 and window.y0 <= extent[1] and extent[3] <= window.y1
    )
