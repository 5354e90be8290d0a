"""Geometry of overlapping tiles over a large image, and of windows re-centred on objects.

Coordinates are image pixels. A tile is the half-open rectangle
``[y0, y1) x [x0, x1)``; prompt and extent coordinates are continuous x, y as
SAM takes them (a pixel ``(row, col)`` spans ``[col, col + 1) x [row, row + 1)``).

A tile side is *interior* when it is not on the image border: an object cut
there is cut by the tiling, not by the image, and another tile (or a window
re-centred on the object) can see it whole.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

__all__ = ["Tile", "TileGrid", "tile_starts"]

Extent = tuple[float, float, float, float]  # x0, y0, x1, y1 in continuous image coordinates


@dataclass(frozen=True)
class Tile:
    """A rectangle of the image read as one model input.

    Attributes
    ----------
    y0, x0, y1, x1 : int
        The half-open pixel rectangle ``[y0, y1) x [x0, x1)`` in the full image.
    step : int
        Read every ``step``-th pixel (1 for grid tiles; more for overview windows of
        prompts or objects larger than a tile).
    index : (int, int) or None
        (row, column) in its :class:`TileGrid`; None for windows outside the grid.
    """

    y0: int
    x0: int
    y1: int
    x1: int
    step: int = 1
    index: tuple[int, int] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in full-image pixels."""
        return self.y1 - self.y0, self.x1 - self.x0

    @property
    def read_shape(self) -> tuple[int, int]:
        """(height, width) of the array read at ``step``."""
        return -(-(self.y1 - self.y0) // self.step), -(-(self.x1 - self.x0) // self.step)

    @property
    def box(self) -> tuple[int, int, int, int]:
        """x0, y0, x1, y1 (x1, y1 exclusive)."""
        return self.x0, self.y0, self.x1, self.y1

    def interior_sides(self, image_shape: Sequence[int]) -> tuple[bool, bool, bool, bool]:
        """Which of the (top, bottom, left, right) sides lie inside the image."""
        height, width = int(image_shape[0]), int(image_shape[1])
        return self.y0 > 0, self.y1 < height, self.x0 > 0, self.x1 < width

    def margin(self, extent: Extent, image_shape: Sequence[int]) -> float:
        """Distance from ``extent`` to the nearest interior side; negative if it sticks out.

        ``inf`` when the tile has no interior side (it is the whole image).
        """
        ex0, ey0, ex1, ey1 = extent
        top, bottom, left, right = self.interior_sides(image_shape)
        distances = [math.inf]
        if top:
            distances.append(ey0 - self.y0)
        if bottom:
            distances.append(self.y1 - ey1)
        if left:
            distances.append(ex0 - self.x0)
        if right:
            distances.append(self.x1 - ex1)
        return float(min(distances))


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` pixels covering ``length`` with at least ``overlap``.

    Tiles are spread evenly from 0 to ``length - tile``, so every tile has the full
    size and neighbours overlap by ``overlap`` or a little more. One tile (of the
    whole length) when ``length <= tile``.
    """
    if length <= tile:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    span = length - tile
    return [(i * span) // (count - 1) for i in range(count)]


class TileGrid:
    """Overlapping tiles covering an image of ``shape`` (height, width).

    Parameters
    ----------
    shape : (int, int)
        (height, width) of the image.
    tile_size : int
        Side of a tile in image pixels (tiles are smaller only where the image is).
    overlap : int
        Minimum overlap of neighbouring tiles in pixels, ``0 <= overlap < tile_size``.
        Objects smaller than about half the overlap are always seen whole, away
        from interior sides, by some tile.

    Raises
    ------
    ValueError
        If the shape is empty or the sizes are not integers with
        ``0 <= overlap < tile_size``.
    """

    def __init__(self, shape: Sequence[int], tile_size: int, overlap: int) -> None:
        try:
            height, width = (int(v) for v in shape)
        except (TypeError, ValueError):
            raise ValueError(f"shape must be the image's (height, width), got {shape!r}") from None
        if height < 1 or width < 1:
            raise ValueError(f"cannot tile an empty image of shape {(height, width)}")
        tile_size = _whole_number("tile_size", tile_size, minimum=2)
        overlap = _whole_number("overlap", overlap, minimum=0)
        if overlap >= tile_size:
            raise ValueError(
                f"overlap ({overlap}) must be smaller than tile_size ({tile_size}); "
                f"e.g. overlap={tile_size // 4}"
            )
        self.shape = (height, width)
        self.tile_size = tile_size
        self.overlap = overlap
        self.row_starts = tile_starts(height, tile_size, overlap)
        self.col_starts = tile_starts(width, tile_size, overlap)
        self.tiles = [
            Tile(y0, x0, min(y0 + tile_size, height), min(x0 + tile_size, width), 1, (r, c))
            for r, y0 in enumerate(self.row_starts)
            for c, x0 in enumerate(self.col_starts)
        ]

    def __repr__(self) -> str:
        return (
            f"TileGrid(shape={self.shape}, tile_size={self.tile_size}, overlap={self.overlap}: "
            f"{len(self.row_starts)}x{len(self.col_starts)} tiles)"
        )

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self.tiles)

    def __getitem__(self, index: int) -> Tile:
        return self.tiles[index]

    def tile_at(self, row: int, col: int) -> Tile:
        """The tile in grid row ``row`` and column ``col``."""
        return self.tiles[row * len(self.col_starts) + col]

    def neighbours(self, tile: Tile) -> list[Tile]:
        """The other grid tiles that overlap ``tile``."""
        rows = [r for r, s in enumerate(self.row_starts) if s < tile.y1 and tile.y0 < s + self.tile_size]
        cols = [c for c, s in enumerate(self.col_starts) if s < tile.x1 and tile.x0 < s + self.tile_size]
        found = [self.tile_at(r, c) for r in rows for c in cols]
        return [other for other in found if other != tile]

    def route(self, extent: Extent) -> tuple[Tile, float]:
        """The grid tile in which ``extent`` lies farthest from an interior side, and that distance.

        The distance is negative when no tile contains the extent. Ties go to the
        first tile in row-major order.
        """
        ex0, ey0, ex1, ey1 = extent
        # a tile's margin is the smaller of its row's and its column's: maximize each
        row_margins = [_axis_margin(s, self.tile_size, self.shape[0], ey0, ey1) for s in self.row_starts]
        col_margins = [_axis_margin(s, self.tile_size, self.shape[1], ex0, ex1) for s in self.col_starts]
        row, col = int(np.argmax(row_margins)), int(np.argmax(col_margins))
        return self.tile_at(row, col), float(min(row_margins[row], col_margins[col]))

    def window_around(self, extent: Extent, snap: int = 1) -> Tile:
        """A tile-sized window centred on ``extent`` (shifted to stay in the image).

        The window's origin is rounded to a multiple of ``snap`` pixels so that
        nearby requests give the same window (and reuse its embedding).
        """
        height, width = self.shape
        ex0, ey0, ex1, ey1 = extent
        y0 = _centred_start((ey0 + ey1) / 2, self.tile_size, height, snap)
        x0 = _centred_start((ex0 + ex1) / 2, self.tile_size, width, snap)
        return Tile(y0, x0, min(y0 + self.tile_size, height), min(x0 + self.tile_size, width))

    def overview(self, extent: Extent, context: float = 0.1) -> Tile:
        """A window around ``extent`` plus ``context`` of its size on each side, read at a step.

        The step is the smallest that keeps the read array within ``tile_size``
        pixels per side, so a prompt or object larger than a tile is seen whole at
        reduced resolution.
        """
        height, width = self.shape
        ex0, ey0, ex1, ey1 = extent
        pad = max(context * max(ex1 - ex0, ey1 - ey0), self.overlap / 2, 1.0)
        y0, y1 = max(0, math.floor(ey0 - pad)), min(height, math.ceil(ey1 + pad))
        x0, x1 = max(0, math.floor(ex0 - pad)), min(width, math.ceil(ex1 + pad))
        step = max(1, math.ceil(max(y1 - y0, x1 - x0) / self.tile_size))
        return Tile(y0, x0, y1, x1, step)


def _axis_margin(start: int, size: int, length: int, low: float, high: float) -> float:
    """Distance from [low, high] to the interior ends of the interval [start, start + size)."""
    end = min(start + size, length)
    margin = math.inf
    if start > 0:
        margin = low - start
    if end < length:
        margin = min(margin, end - high)
    return margin


def _centred_start(centre: float, size: int, length: int, snap: int) -> int:
    if length <= size:
        return 0
    start = int(round((centre - size / 2) / snap)) * snap
    return min(max(start, 0), length - size)


def _whole_number(name: str, value: object, minimum: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number of pixels, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum} pixels, got {value}")
    return int(value)
