"""``napari-sam track``, ``segment`` and ``label`` with a SAM 2.1 model, end to end.

A SAM 2.1 tiny checkpoint with random weights, as Meta saves its files, at the real
1024-px input (what is checked is plumbing: the model is picked from the file, the
run writes the same outputs as with SAM 1, it resumes, SAM 1 options are refused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from src_core.cli import main
from src_core.propagate import open_labels, read_table

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def sam2_file(tmp_path_factory) -> Path:
    from src_core.model.sam2.sam2_base import build_sam2_model

    torch.manual_seed(0)
    model = build_sam2_model("tiny")
    with torch.no_grad():  # objects present: random heads would say absent half the time
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    path = tmp_path_factory.mktemp("sam2") / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, path)
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    frames = np.zeros((3, 72, 96, 3), np.uint8)
    for t in range(3):
        frames[t, 20:44, 10 + 4 * t : 34 + 4 * t] = (230, 120, 40)
    path = tmp_path_factory.mktemp("clip") / "clip.npy"
    np.save(path, frames)
    return path


def test_track_with_sam2_checkpoint(sam2_file, clip, tmp_path, capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"frame": 1, "id": 7, "points": [[30, 32]], "labels": [1]}]))
    out = tmp_path / "out"
    args = ["track", str(clip), "--prompts", str(prompts), "-o", str(out), "--checkpoint", str(sam2_file),
            "--no-video"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "loading the sam2.1_hiera_tiny model" in err
    progress = json.loads((out / "progress.json").read_text())
    assert progress["settings"]["model"] == "sam2.1_hiera_tiny" and progress["complete"]
    table = read_table(out / "table.csv")
    assert sorted(set(table["frame"].tolist())) == list(range(3))
    assert set(table["id"].tolist()) == {7}
    labels = open_labels(out / "labels.zarr")
    assert set(np.unique(np.asarray(labels[1]))) <= {0, 7} and (np.asarray(labels[1]) == 7).any()
    # the same command again: the complete run is kept, not redone
    assert main(args) == 0
    assert "already holds this run" in capsys.readouterr().err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--divisions"], "--divisions needs the SAM 1 recipe"),
        (["--recipe", "box"], "--recipe is for SAM 1 models"),
    ],
)
def test_sam1_options_refused_with_sam2(sam2_file, clip, tmp_path, capsys, extra, message):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps([{"frame": 0, "id": 1, "points": [[30, 32]]}]))
    code = main(["track", str(clip), "--prompts", str(prompts), "-o", str(tmp_path / "o"),
                 "--model", "sam2.1_hiera_tiny", "--checkpoint", str(sam2_file), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and err.count("\n") == 1, err


@pytest.fixture(scope="module")
def plane(tmp_path_factory) -> Path:
    import tifffile

    image = np.zeros((90, 120, 3), np.uint8)
    image[20:60, 30:80] = (230, 120, 40)
    image[65:85, 90:115] = (40, 200, 90)
    path = tmp_path_factory.mktemp("plane") / "plane.tif"
    tifffile.imwrite(path, image)
    return path


def test_segment_with_sam2(sam2_file, plane, tmp_path, capsys):
    """A point and a box on one object, then two boxes (one object each, SAM 2.1's
    batched boxes); labels at the image's size."""
    import tifffile

    out = tmp_path / "one.tif"
    assert main(["segment", str(plane), "--point", "50,40", "--box", "28,18,82,62",
                 "--checkpoint", str(sam2_file), "-o", str(out)]) == 0
    err = capsys.readouterr().err
    assert "loading the sam2.1_hiera_tiny model" in err
    labels = tifffile.imread(out)
    assert labels.shape == (90, 120) and set(np.unique(labels)) <= {0, 1} and labels.any()

    out2 = tmp_path / "two.tif"
    assert main(["segment", str(plane), "--box", "28,18,82,62", "--box", "88,63,117,87",
                 "--model", "sam2.1_hiera_tiny", "--checkpoint", str(sam2_file), "-o", str(out2)]) == 0
    printed = capsys.readouterr().out
    assert "label 1:" in printed and "label 2:" in printed
    assert tifffile.imread(out2).shape == (90, 120)


def test_label_with_sam2(sam2_file, plane, tmp_path, capsys):
    """Segment everything over a folder with SAM 2.1's generator: the model is read
    from the file, every image gets its labels and COCO JSON naming the model."""
    import shutil

    import tifffile

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(plane, data / "a.tif")
    tifffile.imwrite(data / "b.tif", np.asarray(tifffile.imread(plane))[:60, :100, 0])
    out = tmp_path / "out"
    code = main(["label", str(data), "-o", str(out), "--checkpoint", str(sam2_file),
                 "--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                 "--device", "cpu", "--dtype", "float32"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "sam2.1_hiera_tiny.pt" in err  # the model named in the status line
    for key, shape in (("a", (90, 120)), ("b", (60, 100))):
        record = json.loads((out / f"{key}.json").read_text())
        assert record["image"]["model"] == "sam2.1_hiera_tiny"
        assert tifffile.imread(out / f"{key}.tif").shape == shape


@pytest.fixture(scope="module")
def wide_folder(tmp_path_factory) -> Path:
    """A folder with one 200 x 4200 plane (more than 4x SAM 2.1's 1024-px input), one
    bright object around x=3050, y=100."""
    import tifffile

    image = np.zeros((200, 4200), np.uint8)
    image[60:140, 3000:3100] = 220
    folder = tmp_path_factory.mktemp("wide")
    tifffile.imwrite(folder / "wide.tif", image)
    return folder


def test_segment_a_large_plane_with_sam2_tile_by_tile(sam2_file, wide_folder, tmp_path, capsys):
    """A plane more than 4x SAM 2.1's input (1024 px) is segmented tile by tile into a
    tiled TIFF, as with SAM 1: only the tiles the click reaches are embedded."""
    import tifffile

    plane = wide_folder / "wide.tif"
    out = tmp_path / "wide_labels.tif"
    code = main(["segment", str(plane), "--point", "3050,100", "--checkpoint", str(sam2_file),
                 "-o", str(out), "--device", "cpu", "--dtype", "bfloat16"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "segmenting in 1024-px tiles" in captured.err
    labels = tifffile.imread(out)
    assert labels.shape == (200, 4200) and labels.max() == 1 and labels[100, 3050] == 1
    assert "label 1:" in captured.out


def test_label_a_large_plane_with_sam2_tile_by_tile(sam2_file, wide_folder, tmp_path, capsys):
    """``label`` on a plane over 4x SAM 2.1's input: segment everything tile by tile."""
    import tifffile

    out = tmp_path / "out"
    code = main(["label", str(wide_folder), "-o", str(out), "--checkpoint", str(sam2_file),
                 "--points-per-side", "2", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
                 "--device", "cpu", "--dtype", "bfloat16"])
    err = capsys.readouterr().err
    assert code == 0, err
    record = json.loads((out / "wide.json").read_text())
    assert record["image"]["model"] == "sam2.1_hiera_tiny"
    with tifffile.TiffFile(out / "wide.tif") as tif:  # the large-image path writes a tiled TIFF
        assert tif.pages[0].shape == (200, 4200) and tif.pages[0].is_tiled


def test_a_sam2_file_is_read_once(sam2_file, plane, tmp_path, monkeypatch, capsys):
    """Choosing SAM 2.1 and its size from --checkpoint looks at the file memory-mapped;
    only the builder reads its tensors (a large checkpoint is not read twice)."""
    reads = []
    real_load = torch.load

    def counting_load(f, *args, **kwargs):
        if str(f) == str(sam2_file) and not kwargs.get("mmap"):
            reads.append(f)
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    assert main(["segment", str(plane), "--point", "50,40", "--checkpoint", str(sam2_file),
                 "-o", str(tmp_path / "o.tif"), "--dtype", "float32"]) == 0
    assert len(reads) == 1, capsys.readouterr().err
