"""Sample data for the napari-sam plugin (File > Open Sample > napari-sam).

All offline: two images bundled with scikit-image and three synthetic
microscopy-like images from :mod:`src_core.synthetic` (seeded, so the same
every time). Each function returns a list of napari LayerData tuples.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from src_core import synthetic

LayerDataTuple = tuple[np.ndarray, dict[str, Any], str]

NUCLEI_3D_Z_SPACING = 3.0


def cell() -> list[LayerDataTuple]:
    """scikit-image's ``cell``: a 660x550 uint8 phase-contrast-like image."""
    from skimage import data

    return [(data.cell(), {"name": "cell"}, "image")]


def astronaut() -> list[LayerDataTuple]:
    """scikit-image's ``astronaut``: a 512x512 RGB uint8 photograph."""
    from skimage import data

    return [(data.astronaut(), {"name": "astronaut", "rgb": True}, "image")]


def nuclei_2d() -> list[LayerDataTuple]:
    """Synthetic 512x512 uint16 fluorescence image of 40 nuclei."""
    image, _ = synthetic.make_nuclei_2d()
    return [(image, {"name": "nuclei 2D", "colormap": "gray"}, "image")]


def nuclei_3d() -> list[LayerDataTuple]:
    """Synthetic 32x256x256 uint16 stack of nuclei, slices 3 pixels apart."""
    image, _ = synthetic.make_nuclei_3d(z_spacing=NUCLEI_3D_Z_SPACING)
    kwargs = {"name": "nuclei 3D", "scale": (NUCLEI_3D_Z_SPACING, 1.0, 1.0)}
    return [(image, kwargs, "image")]


def multichannel_16bit() -> list[LayerDataTuple]:
    """Synthetic (3, 384, 384) uint16 cells: nuclei, membrane and cytoplasm."""
    image, _ = synthetic.make_cells_multichannel()
    kwargs = {
        "name": list(synthetic.MULTICHANNEL_NAMES),
        "channel_axis": 0,
        "colormap": ["cyan", "magenta", "yellow"],
        "blending": "additive",
    }
    return [(image, kwargs, "image")]
