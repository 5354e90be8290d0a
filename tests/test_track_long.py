"""A long, high-resolution video through ``napari-sam track`` to the end (issue 25).

1,150 frames of 1024 x 1024 with two animals: int32 labels for the whole video
would be 4.8 GB, past what a plain TIFF can hold. The stand-in segmenter
(ground truth, degraded) replaces the model: what is checked is that the run
ends with exit code 0, every output is there and readable, and the outputs
stay small (the labels store grows with what is painted, not with the video).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from src_core.cli import track as cli_track
from src_core.cli import main
from src_core.propagate import evaluate, open_labels, read_table
from src_core.propagate.standin import StandInSegmenter

N, SIDE = 1150, 1024
ANIMALS = ((100, 0.0), (200, 1.7))  # grey value, phase


def _centre(t: int, phase: float) -> tuple[int, int]:
    return int(512 + 350 * np.cos(t / 70 + 1.3 * phase)), int(512 + 300 * np.sin(t / 90 + phase))


def _truth(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    return (image == 100).astype(np.uint8) + 2 * (image == 200)


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """The video as a .npy file, sparse on disk (only the pages the animals touch are written)."""
    path = tmp_path_factory.mktemp("long") / "arena.npy"
    frames = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(N, SIDE, SIDE))
    yy, xx = np.mgrid[-20:21, -30:31]
    body = (yy / 20.0) ** 2 + (xx / 30.0) ** 2 <= 1
    for t in range(N):
        for value, phase in ANIMALS:
            x, y = _centre(t, phase)
            frames[t, y - 20:y + 21, x - 30:x + 31][body] = value
    frames.flush()
    del frames
    prompts = path.with_suffix(".json")
    prompts.write_text(json.dumps({"prompts": [
        {"frame": 0, "id": i + 1, "box": [x - 32, y - 22, x + 32, y + 22]}
        for i, (x, y) in enumerate(_centre(0, phase) for _, phase in ANIMALS)
    ]}))
    return path, prompts


@pytest.mark.slow
def test_a_long_1024px_video_tracks_to_the_end_with_small_outputs(capsys, monkeypatch, video, tmp_path):
    path, prompts = video
    monkeypatch.setattr(cli_track, "_make_predictor",
                        lambda args: StandInSegmenter(_truth, mask_input_size=128, failure_rate=0.0))
    out = tmp_path / "out"
    code = main(["track", str(path), "--prompts", str(prompts), "-o", str(out), "--no-video", "--tif"])
    err = capsys.readouterr().err
    assert code == 0, err[-2000:]
    assert N * SIDE * SIDE * 4 > 4 * 2**30  # what an int32 array of the whole video would take

    labels = open_labels(out / "labels.zarr")
    assert labels.shape == (N, SIDE, SIDE) and labels.dtype == np.uint8
    sizes = {f.name: f.stat().st_size for f in out.iterdir() if f.is_file()}
    sizes["labels.zarr"] = labels.nbytes_on_disk()
    total = sum(sizes.values())
    print(f"\noutputs of {N} frames of {SIDE}x{SIDE}: {total / 2**20:.2f} MiB in all; "
          + ", ".join(f"{k} {v / 2**20:.2f} MiB" for k, v in sorted(sizes.items())))
    assert total < 50 * 2**20, sizes  # the target for the whole output folder
    assert sizes["labels.zarr"] < 10 * 2**20, sizes

    import tifffile

    with tifffile.TiffFile(out / "labels.tif") as tif:
        assert tif.is_bigtiff and len(tif.pages) == N and tif.pages[0].compression != 1
        for t in (0, 577, N - 1):
            assert np.array_equal(tif.pages[t].asarray(), labels[t])
    table = read_table(out / "table.csv")
    assert len(table) == 2 * N and set(table["status"][table["frame"] > 0]) == {"tracked"}
    tracks = np.loadtxt(out / "tracks.csv", delimiter=",", skiprows=1)
    assert tracks.shape == (2 * N, 4)
    assert json.loads((out / "progress.json").read_text())["complete"]
    frames = np.load(path, mmap_mode="r")
    sample = range(0, N, 23)
    scores = evaluate((_truth(frames[t]) for t in sample), (labels[t] for t in sample))
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()
