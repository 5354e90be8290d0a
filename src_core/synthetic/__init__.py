"""Synthetic images with ground truth, all in one place (offline sample data, tests, training, benchmarks).

* :mod:`.microscopy`: nuclei in 2D and 3D and a 16-bit three-channel cell image
  (the plugin's sample data; labels included);
* :mod:`.videos`: tracking scenes with ground truth per frame (animals crossing,
  turning, occluded, leaving and re-entering, a crowd, dividing cells):
  :func:`~.videos.make_scene`;
* :mod:`.training`: endless procedural training scenes (nuclei, cells, blobs,
  animals, stained tissue) for the built-in model: :func:`~.training.make_training_scene`.
"""

from .microscopy import (
    MULTICHANNEL_NAMES,
    make_cells_multichannel,
    make_nuclei_2d,
    make_nuclei_3d,
)

__all__ = ["MULTICHANNEL_NAMES", "make_cells_multichannel", "make_nuclei_2d", "make_nuclei_3d"]
