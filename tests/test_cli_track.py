"""``napari-sam track`` (src_core/cli/track.py).

End to end with a random-weights ``vit_tiny`` checkpoint (plumbing: files,
shapes, ids), and with the ground-truth stand-in segmenter swapped in for the
model (tracking quality through the CLI, resuming, the z-stack mode). Bad input
ends with one clear ``napari-sam: error:`` line and exit code 2; a frame that
cannot be read mid-run keeps the frames done (exit code 1).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from src_core.cli import track as cli_track
from src_core.cli import main
from src_core.propagate import TABLE_COLUMNS, evaluate, open_labels, read_table
from src_core.propagate.standin import StandInSegmenter, ground_truth_lookup
from src_core.synthetic.videos import make_scene

N_FRAMES = 24
OUTPUTS = ("table.csv", "trajectories.csv", "tracks.csv", "overlay.mp4", "progress.json")


@pytest.fixture(scope="module")
def scene():
    return make_scene("crossing", size=96)


@pytest.fixture(scope="module")
def video_npy(scene, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("video") / "crossing.npy"
    np.save(path, np.stack([np.asarray(scene[t]) for t in range(N_FRAMES)]))
    return path


def _write_prompts(path: Path, entries) -> Path:
    path.write_text(json.dumps(entries), encoding="utf-8")
    return path


@pytest.fixture
def box_prompts(scene, tmp_path) -> Path:
    """Boxes around every object on frame 10 (the middle: both directions have work)."""
    return _write_prompts(tmp_path / "prompts.json", [
        {"frame": p.frame, "id": p.obj_id, "box": p.box.tolist()} for p in scene.prompts(10, kind="box")
    ])


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    import torch

    from src_core.model.build import build_sam_from_config

    from tiny_geometry import TINY_256

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    torch.save(build_sam_from_config(TINY_256).state_dict(), path)
    return path


@pytest.fixture
def standin(monkeypatch, scene):
    """The model replaced by the ground-truth stand-in; returns the list of segmenters made."""
    made = []

    def make(args):
        seg = StandInSegmenter(scene.labels_for_image, mask_input_size=128)
        made.append(seg)
        return seg

    monkeypatch.setattr(cli_track, "_make_predictor", make)
    return made


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.startswith("napari-sam: error:")]
    assert len(lines) == 1, err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _labels(out: Path) -> np.ndarray:
    return np.asarray(open_labels(out / "labels.zarr"))


def _scores(scene, labels, lo=0, hi=N_FRAMES):
    return evaluate((scene.labels(t) for t in range(lo, hi)), (labels[t] for t in range(lo, hi)))


# --------------------------------------------------------------------------
# the real model (random weights): plumbing
# --------------------------------------------------------------------------


def test_track_real_model_writes_every_output(capsys, tiny_checkpoint, video_npy, box_prompts, tmp_path):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out,
                        "--checkpoint", tiny_checkpoint, "--device", "cpu", "--dtype", "float32", "--stop", 14,
                        "--tif", "--npy")
    assert code == 0, err
    assert "frame/s" in err or "frame" in err  # the progress bar is drawn on stderr
    for name in OUTPUTS + ("labels.tif", "labels.npy"):
        assert (out / name).is_file(), name
    labels = _labels(out)
    assert labels.shape == (N_FRAMES, 96, 96) and labels.dtype == np.uint8  # ids 1-3: the smallest type
    assert np.array_equal(_labels(out), labels)  # for readers of napari-sam 0.1
    import zarr

    assert np.array_equal(zarr.open_array(out / "labels.zarr", mode="r")[:], labels)  # any zarr reader
    assert set(np.unique(labels)) <= {0, 1, 2, 3}
    assert not labels[14:].any()  # outside --stop: untouched

    import tifffile

    with tifffile.TiffFile(out / "labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].compression != 1  # compressed BigTIFF
        assert np.array_equal(tif.asarray(), labels)
    with open(out / "table.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0].keys()) == TABLE_COLUMNS
    assert {(int(r["frame"]), int(r["id"])) for r in rows} == {(t, i) for t in range(14) for i in (1, 2, 3)}
    assert {r["status"] for r in rows if r["frame"] == "10"} == {"key"}
    for r in rows:  # the table agrees with the labels
        assert int(r["area"]) == int((labels[int(r["frame"])] == int(r["id"])).sum())
    with open(out / "trajectories.csv", newline="") as f:
        traj = list(csv.reader(f))
    assert traj[0] == ["frame", "x1", "y1", "x2", "y2", "x3", "y3"]
    tracks = np.loadtxt(out / "tracks.csv", delimiter=",", skiprows=1, ndmin=2)
    with open(out / "tracks.csv") as f:
        assert f.readline().strip() == "track_id,t,y,x"
    assert set(tracks[:, 0].astype(int)) <= {1, 2, 3} and set(tracks[:, 1].astype(int)) >= {10}

    from src_core.video import VideoFrames

    overlay = VideoFrames(out / "overlay.mp4")
    assert len(overlay) == 14 and overlay[0].shape == (96, 96, 3)
    progress = json.loads((out / "progress.json").read_text())
    assert progress["complete"] and progress["done"] == {"forward": "complete", "backward": "complete"}

    # the same command again: nothing to do
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out,
                        "--checkpoint", tiny_checkpoint, "--device", "cpu", "--stop", 14)
    assert code == 0 and "already holds" in err


# --------------------------------------------------------------------------
# the stand-in: tracking through the CLI, directions, resume, z
# --------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["forward", "backward", "both"])
def test_track_directions_with_standin(capsys, standin, scene, video_npy, box_prompts, tmp_path, direction):
    out = tmp_path / direction
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out,
                        "--direction", direction, "--no-video")
    assert code == 0, err
    labels = _labels(out)
    lo, hi = {"forward": (10, N_FRAMES), "backward": (0, 11), "both": (0, N_FRAMES)}[direction]
    scores = _scores(scene, labels, lo, hi)
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()
    untouched = [t for t in range(N_FRAMES) if not lo <= t < hi]
    assert not any(labels[t].any() for t in untouched)
    assert not (out / "overlay.mp4").exists()
    table = read_table(out / "table.csv")
    assert set(table["frame"].tolist()) == set(range(lo, hi))


def test_interrupted_run_resumes(capsys, standin, scene, video_npy, box_prompts, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real_predict = StandInSegmenter.predict
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):  # Ctrl-C in the middle of the forward pass
        calls["n"] += 1
        if calls["n"] == 25:
            raise KeyboardInterrupt
        return real_predict(self, *args, **kwargs)

    monkeypatch.setattr(StandInSegmenter, "predict", flaky)
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video")
    assert code == 130, err
    progress = json.loads((out / "progress.json").read_text())
    assert not progress["complete"]
    done = progress["done"]["forward"]
    assert isinstance(done, int) and 10 <= done < N_FRAMES - 1
    partial = read_table(out / "table.csv")
    assert set(partial["frame"].tolist()) == set(range(10, done + 1))  # what was done is kept
    kept = _labels(out)[10:done + 1].copy()

    monkeypatch.setattr(StandInSegmenter, "predict", real_predict)
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video")
    assert code == 0, err
    labels = _labels(out)
    assert np.array_equal(labels[10:done + 1], kept)  # the resumed run did not redo them
    assert json.loads((out / "progress.json").read_text())["complete"]
    scores = _scores(scene, labels)
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()
    table = read_table(out / "table.csv")
    assert len(table) == len({(f, i) for f, i in zip(table["frame"], table["id"])}) == 3 * N_FRAMES
    assert set(table[table["frame"] == 10]["status"]) == {"key"}


def test_unreadable_frame_keeps_partial_results(capsys, standin, scene, video_npy, box_prompts, tmp_path, monkeypatch):
    class Damaged:
        def __init__(self, frames):
            self.frames, self.shape, self.dtype = frames, frames.shape, frames.dtype

        def __len__(self):
            return len(self.frames)

        def __getitem__(self, t):
            if t == 16:
                raise OSError("moov atom damaged")
            return self.frames[t]

    monkeypatch.setattr(cli_track, "open_frames", lambda path: Damaged(np.load(path)))
    out = tmp_path / "out"
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out)
    assert code == 1, err
    assert "16" in err and "--stop 16" in err
    table = read_table(out / "table.csv")
    assert set(range(10, 16)) <= set(table["frame"].tolist()) and 16 not in set(table["frame"].tolist())
    labels = _labels(out)
    assert _scores(scene, labels, 10, 16).mean_j >= 0.9
    assert (out / "trajectories.csv").is_file() and (out / "tracks.csv").is_file()
    assert not json.loads((out / "progress.json").read_text())["complete"]


def test_z_stack_gives_a_3d_label_that_ends_with_the_object(capsys, monkeypatch, tmp_path):
    z, y, x = np.mgrid[:20, :64, :64]
    ball = (z - 9) ** 2 / 36 + ((y - 32) ** 2 + (x - 30) ** 2) / 200 <= 1  # slices 4..14
    gt = ball.astype(np.int32)
    rng = np.random.default_rng(0)
    stack = (rng.integers(0, 40, ball.shape) + 150 * ball).astype(np.uint8)
    np.save(tmp_path / "stack.npy", stack)
    lookup = ground_truth_lookup(list(stack), list(gt))
    monkeypatch.setattr(cli_track, "_make_predictor",
                        lambda args: StandInSegmenter(lookup, mask_input_size=128, failure_rate=0.0))
    prompts = _write_prompts(tmp_path / "p.json", [{"frame": 9, "id": 1, "points": [[30, 32]]}])
    code, _, err = _run(capsys, "track", tmp_path / "stack.npy", "--z", "--prompts", prompts,
                        "-o", tmp_path / "out", "--no-video")
    assert code == 0, err
    labels = _labels(tmp_path / "out")
    has = [t for t in range(20) if labels[t].any()]
    assert has == [t for t in range(20) if gt[t].sum() >= 10]  # the 1-pixel tips are below min_area
    inter = np.logical_and(labels > 0, gt > 0).sum()
    assert inter / np.logical_or(labels > 0, gt > 0).sum() >= 0.85


# --------------------------------------------------------------------------
# bad input: one clear line, exit code 2, nothing overwritten
# --------------------------------------------------------------------------


@pytest.mark.parametrize("entries, fragments", [
    ([{"frame": 3, "id": 1, "points": [[500, 20]]}], ["outside the 96x96 frame"]),
    ([{"frame": 30, "id": 1, "points": [[5, 5]]}], ["frame 30", "only 24 frames"]),
    ([{"frame": 3, "id": 1, "points": [[5, 5]]}, {"frame": 3, "id": 1, "box": [1, 1, 9, 9]}],
     ["id 1 is used twice on frame 3"]),
    ([], ["no prompts"]),
    ([{"frame": 3, "points": [[5, 5]]}], ['"frame" and "id"']),
])
def test_bad_prompts(capsys, standin, video_npy, tmp_path, entries, fragments):
    prompts = _write_prompts(tmp_path / "p.json", entries)
    code, _, err = _run(capsys, "track", video_npy, "--prompts", prompts, "-o", tmp_path / "out")
    _user_error(code, err, *fragments)
    assert not standin  # failed before a model was loaded
    assert not (tmp_path / "out").exists()


def test_empty_prompt_file(capsys, standin, video_npy, tmp_path):
    (tmp_path / "p.json").write_text("  \n")
    code, _, err = _run(capsys, "track", video_npy, "--prompts", tmp_path / "p.json", "-o", tmp_path / "out")
    _user_error(code, err, "is empty")


def test_bad_inputs(capsys, standin, video_npy, box_prompts, tmp_path):
    np.save(tmp_path / "one.npy", np.zeros((1, 32, 32), np.uint8))
    code, _, err = _run(capsys, "track", tmp_path / "one.npy", "--z", "--prompts", box_prompts, "-o", tmp_path / "o")
    _user_error(code, err, "single slice")
    code, _, err = _run(capsys, "track", tmp_path / "missing.mp4", "--prompts", box_prompts, "-o", tmp_path / "o")
    _user_error(code, err, "missing.mp4")
    (tmp_path / "junk.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    code, _, err = _run(capsys, "track", tmp_path / "junk.mp4", "--prompts", box_prompts, "-o", tmp_path / "o")
    _user_error(code, err, "junk.mp4")
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", tmp_path / "o",
                        "--start", 12, "--stop", 20)
    _user_error(code, err, "no prompt", "12 to 19")
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", tmp_path / "o", "--recipe", "magic")
    _user_error(code, err, "unknown prompt recipe")
    assert not standin


def test_truncated_video(capsys, standin, scene, box_prompts, tmp_path):
    from src_core.video import write_video

    rgb = [np.repeat(np.asarray(scene[t])[..., None], 3, axis=2) for t in range(N_FRAMES)]
    path = write_video(tmp_path / "v.mp4", iter(rgb), fps=10)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    code, _, err = _run(capsys, "track", path, "--prompts", box_prompts, "-o", tmp_path / "out", "--no-video")
    # depending on where ffmpeg stops: unreadable up front (2) or frames up to the damage kept (1)
    assert code in (1, 2), err
    assert "napari-sam: error:" in err and "Traceback" not in err
    if code == 1:
        assert read_table(tmp_path / "out" / "table.csv").size > 0


def test_output_of_another_run_is_not_overwritten(capsys, standin, video_npy, box_prompts, scene, tmp_path):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video",
                        "--direction", "forward", "--stop", 13)
    assert code == 0, err
    before = (out / "table.csv").read_bytes()
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video",
                        "--direction", "backward", "--stop", 13)
    _user_error(code, err, "another run", "--overwrite")
    assert (out / "table.csv").read_bytes() == before
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video",
                        "--direction", "backward", "--stop", 13, "--overwrite")
    assert code == 0, err
    assert set(read_table(out / "table.csv")["frame"].tolist()) == set(range(0, 11))


# --------------------------------------------------------------------------
# why an object was lost; the lenient setting; exports that fail
# --------------------------------------------------------------------------


class _Doubtful(StandInSegmenter):
    """The stand-in, but from frame 15 on it doubts every mask (predicted IoU halved)."""

    def set_image(self, image, *args, **kwargs):
        self.frame = next(t for t in range(N_FRAMES) if np.array_equal(self.frames[t], image))
        return super().set_image(image, *args, **kwargs)

    def predict(self, *args, **kwargs):
        masks, scores, logits = super().predict(*args, **kwargs)
        return masks, scores * (0.5 if self.frame >= 15 else 1.0), logits


@pytest.fixture
def doubtful(monkeypatch, scene, video_npy):
    def make(args):
        seg = _Doubtful(scene.labels_for_image, mask_input_size=128, failure_rate=0.0)
        seg.frames = np.load(video_npy)
        return seg

    monkeypatch.setattr(cli_track, "_make_predictor", make)


def test_the_table_says_why_an_object_was_lost(capsys, doubtful, video_npy, box_prompts, tmp_path):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video",
                        "--direction", "forward")
    assert code == 0, err
    table = read_table(out / "table.csv")
    lost = table[table["status"] == "lost"]
    assert set(lost["frame"].tolist()) == set(range(15, N_FRAMES))
    first = lost[lost["frame"] == 15]
    assert set(first["reason"]) == {"low-iou"}  # SAM's own doubt, with the value that failed
    assert np.all((first["value"] > 0.3) & (first["value"] < 0.6))
    with open(out / "table.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[-2:] == ["reason", "value"]
    assert not _labels(out)[15:].any()

    lenient = tmp_path / "lenient"
    code, _, err = _run(capsys, "track", video_npy, "--prompts", box_prompts, "-o", lenient, "--no-video",
                        "--direction", "forward", "--lenient")
    assert code == 0, err
    table = read_table(lenient / "table.csv")
    assert set(table["status"]) <= {"key", "tracked"}  # the doubted masks are kept
    labels = _labels(lenient)
    assert all(set(np.unique(labels[t])) == {0, 1, 2, 3} for t in range(15, N_FRAMES))


def test_a_failed_export_keeps_the_run_and_is_redone(capsys, standin, video_npy, box_prompts, tmp_path, monkeypatch):
    from src_core.propagate import run as run_module

    real = run_module.export_tiff

    def disk_full(labels, path, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run_module, "export_tiff", disk_full)
    out = tmp_path / "out"
    argv = ["track", video_npy, "--prompts", box_prompts, "-o", out, "--no-video", "--tif"]
    code, _, err = _run(capsys, *argv)
    assert code == 1, err
    errors = [line for line in err.splitlines() if line.startswith("napari-sam: error:")]
    assert len(errors) == 2 and "labels.tif" in errors[0] and "No space left" in errors[0]
    assert "--export-only" in errors[1] and "Traceback" not in err
    for name in ("table.csv", "tracks.csv", "trajectories.csv"):  # everything else is there
        assert (out / name).is_file(), name
    assert not (out / "labels.tif").exists() and not list(out.glob(".*partial"))
    progress = json.loads((out / "progress.json").read_text())
    assert progress["complete"] and "No space left" in progress["exports"]["labels.tif"]
    labels = _labels(out)

    monkeypatch.setattr(run_module, "export_tiff", real)
    code, _, err = _run(capsys, "track", "--export-only", "--tif", "--no-video", "-o", out, video_npy)
    assert code == 0, err
    import tifffile

    assert np.array_equal(tifffile.imread(out / "labels.tif"), labels)
    # the same command again: the run is complete and so are its exports
    code, _, err = _run(capsys, *argv)
    assert code == 0 and "already holds" in err, err


def test_export_only_without_a_run(capsys, video_npy, tmp_path):
    code, _, err = _run(capsys, "track", video_npy, "--export-only", "-o", tmp_path / "nothing")
    _user_error(code, err, "no tracking run")
