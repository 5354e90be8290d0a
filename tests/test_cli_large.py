"""``napari-sam segment`` and ``napari-sam label`` on planes past 4x the model input.

The vit_tiny blocks at a 256-px input (tests/tiny_geometry.py, random weights) make 1,024 px the
tiling threshold, so a few-hundred-kilobyte image runs the whole tiled path of
the command line: lazy reading, tile routing, a memory-mapped label image
written as a tiled TIFF, and the same user errors as small images.
"""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src_core.cli import main

FAST = ["--device", "cpu", "--dtype", "float32"]


@pytest.fixture
def checkpoint(vit_tiny_random_checkpoint) -> Path:
    return vit_tiny_random_checkpoint


@pytest.fixture
def wide_tif(tmp_path) -> Path:
    """A 16-bit 300 x 1400 plane (tiled: past 1,024 px) with a bright bar across a tile border."""
    rng = np.random.default_rng(3)
    image = (rng.random((300, 1400)) * 2000).astype(np.uint16)
    image[100:180, 150:330] += 40000  # across the border of the first two 256-px tiles
    path = tmp_path / "wide.tif"
    tifffile.imwrite(path, image)  # uncompressed: memory-mapped by the command
    return path


def _leftovers(folder: Path) -> list[str]:
    return [p.name for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial"))]


def test_segment_large_plane_writes_a_tiled_tiff(capsys, checkpoint, wide_tif, tmp_path):
    out = tmp_path / "out" / "labels.tif"
    out.parent.mkdir()
    code = main(["segment", str(wide_tif), "--box", "140,90,340,190", "--box", "1200,20,1390,120",
                 "--checkpoint", str(checkpoint), *FAST, "-o", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    with tifffile.TiffFile(out) as tif:
        assert tif.pages[0].is_tiled
        labels = tif.asarray()
    assert labels.shape == (300, 1400) and labels.dtype == np.uint16
    assert set(np.unique(labels)) <= {0, 1, 2}
    lines = stdout.strip().splitlines()
    assert len(lines) == 2
    for k, line in enumerate(lines, 1):
        assert line.startswith(f"label {k}: area {int((labels == k).sum())} px")
    # each object stays inside (a margin around) its own box: prompts went to the right tiles
    ys, xs = np.nonzero(labels == 2)
    assert xs.size == 0 or xs.min() >= 1000
    assert "wrote" in err and "1400x300" in err
    assert _leftovers(tmp_path) == []


def test_segment_large_plane_bad_prompts_write_nothing(capsys, checkpoint, wide_tif, tmp_path):
    out = tmp_path / "labels.tif"
    code = main(["segment", str(wide_tif), "--point", "1500,20", "--checkpoint", str(checkpoint),
                 *FAST, "-o", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and "outside" in err.lower() and "Traceback" not in err
    assert not out.exists() and _leftovers(tmp_path) == []


def test_segment_large_plane_memory_stays_below_a_float_copy(capsys, checkpoint, tmp_path):
    """A 4,200 x 4,200 uint16 plane (past the size checked whole): its float32 copy
    would be 71 MB, as RGB 212 MB."""
    path = tmp_path / "big.tif"
    image = np.zeros((4200, 4200), np.uint16)
    image[2000:2200, 2000:2200] = 5000
    tifffile.imwrite(path, image)
    del image
    out = tmp_path / "big_labels.tif"
    tracemalloc.start()
    try:
        code = main(["segment", str(path), "--point", "2100,2100", "--checkpoint", str(checkpoint),
                     *FAST, "-o", str(out)])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    _, err = capsys.readouterr()
    assert code == 0, err
    assert peak < 71e6, f"numpy peak {peak / 1e6:.1f} MB"
    assert tifffile.imread(out).shape == (4200, 4200)


def test_label_large_image_tile_by_tile(capsys, checkpoint, wide_tif, tmp_path):
    out = tmp_path / "labels"
    code = main(["label", str(wide_tif), "-o", str(out), "--checkpoint", str(checkpoint),
                 "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                 *FAST])
    _, err = capsys.readouterr()
    assert code == 0, err
    tifs = sorted(out.glob("*.tif"))
    jsons = sorted(out.glob("*.json"))
    assert len(tifs) == 1 and len(jsons) == 1
    with tifffile.TiffFile(tifs[0]) as tif:
        assert tif.pages[0].is_tiled  # large label images are written tiled
        labels = tif.asarray()
    assert labels.shape == (300, 1400)
    record = json.loads(jsons[0].read_text())
    assert record["image"]["height"] == 300 and record["image"]["width"] == 1400
    for ann in record["annotations"]:
        x, y, w, h = ann["bbox"]
        assert 0 <= x and x + w <= 1400 and 0 <= y and y + h <= 300  # full-image coordinates
    assert len(record["annotations"]) >= 1
    assert len(np.unique(labels)) - 1 <= len(record["annotations"])
    assert _leftovers(tmp_path) == []
