"""Images larger than the model input, by overlapping tiles.

* :class:`TileGrid` / :class:`Tile`: the tile geometry;
* :class:`TiledImage`: lazy tile reads (numpy, memmap, zarr, dask) as uint8 RGB with
  one global contrast setting estimated from a subsample (no full-size float copy);
* :class:`TiledPredictor`: one object per prompt, in full-image pixels, returned as
  a :class:`TiledMask` (bounding-box crop + offset);
* :func:`generate_tiled`: segment everything tile by tile, duplicates across
  overlaps removed and objects cut by tile borders united;
  :func:`write_label_image` paints the result into a caller's (memmapped) array.
"""

from .everything import generate_tiled, record_crop, write_label_image
from .grid import Tile, TileGrid, tile_starts
from .predictor import TiledMask, TiledPredictor
from .source import TiledImage, sample_contrast_limits

__all__ = [
    "Tile",
    "TileGrid",
    "TiledImage",
    "TiledMask",
    "TiledPredictor",
    "generate_tiled",
    "record_crop",
    "sample_contrast_limits",
    "tile_starts",
    "write_label_image",
]
