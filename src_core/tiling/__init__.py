"""Images larger than the model input, by overlapping tiles.

* :class:`TileGrid` / :class:`Tile`: the tile geometry;
* :class:`TiledImage`: lazy tile reads (numpy, memmap, zarr, dask) as uint8 RGB with
  one global contrast setting estimated from a subsample (no full-size float copy);
* :class:`TiledPredictor`: one object per prompt, in full-image pixels, returned as
  a :class:`TiledMask` (bounding-box crop + offset);
* :func:`generate_tiled`: segment everything tile by tile, duplicates across
  overlaps removed and objects cut by tile borders united;
  :func:`write_label_image` paints the result into a caller's (memmapped) array;
* :func:`tiling_plan`: which planes are tiled (the plugin and the CLI share it);
  :class:`TiledObjectSegmenter`: the interactive loop on a tiled predictor.
"""

from .everything import generate_tiled, record_crop, write_label_image
from .grid import Tile, TileGrid, tile_starts
from .interactive import TiledCandidates, TiledObjectSegmenter
from .plan import LARGE_FACTOR, open_image_lazily, tiling_plan
from .predictor import TiledMask, TiledPredictor, model_input_size
from .source import TiledImage, sample_contrast_limits

__all__ = [
    "LARGE_FACTOR",
    "TiledCandidates",
    "TiledObjectSegmenter",
    "model_input_size",
    "open_image_lazily",
    "tiling_plan",
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
