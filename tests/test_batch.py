"""``napari-sam label`` and src_core.batch: datasets labelled on Dask, resumable, per-image failures.

Everything runs for real with the small vit_tiny geometry and random weights
(256-px input), on 64-96 px images with a 4x4 point grid. Random weights give
few confident masks, so the quality filters are off where masks are needed.
"""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from src_core import batch
from src_core.automatic import masks_to_label_image
from src_core.batch_inputs import VideoReaders
from src_core.cli import main

mask_utils = pytest.importorskip("pycocotools.mask")

FAST = ["--points-per-side", "4", "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
        "--device", "cpu", "--dtype", "float32"]


@pytest.fixture
def checkpoint(vit_tiny_random_checkpoint) -> Path:
    return vit_tiny_random_checkpoint


def rng_image(shape, dtype=np.uint8, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = {np.uint8: 255, np.uint16: 60000}.get(dtype, 1.0)
    image = (rng.random(shape) * top * 0.3).astype(dtype)
    image[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = top  # an object
    return image


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three images of different sizes, dtypes and channels, and a file that is no image."""
    data = tmp_path / "data"
    data.mkdir()
    iio.imwrite(data / "a.png", rng_image((64, 80, 3)))
    tifffile.imwrite(data / "b.tif", rng_image((96, 72), np.uint16, 1))
    tifffile.imwrite(data / "c.tif", rng_image((48, 64), np.float32, 2))
    (data / "notes.txt").write_text("not an image")
    return data


def label(capsys, checkpoint, *argv) -> tuple[int, str, str]:
    code = main(["label", *map(str, argv), "--checkpoint", str(checkpoint), *FAST])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("napari-sam: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in last, last


def outputs(out: Path) -> list[str]:
    return sorted(p.name for p in out.iterdir())


def check_pair(out: Path, key: str, shape: tuple[int, int], store: str | None = None) -> dict:
    """The JSON of ``key``, after checking it against its label image and pycocotools.

    ``store``: the planes of a stack (frames of a video) have their labels in their
    file's zarr store, at the plane's index, not in a TIFF each.
    """
    doc = json.loads((out / f"{key}.json").read_text())
    image = doc["image"]
    if store is None:
        labels = tifffile.imread(out / f"{key}.tif")
        assert labels.dtype == np.uint16 and labels.shape == shape
        assert image["labels"] == f"{key}.tif"
    else:
        import zarr

        labels = zarr.open_array(out / store, mode="r")[image["labels_index"]]  # any zarr reader
        assert labels.dtype == np.uint32 and labels.shape == shape
        assert image["labels"] == store and not (out / f"{key}.tif").exists()
    assert (image["height"], image["width"]) == shape
    assert {"image_id", "file_name", "source", "labels", "model"} <= set(image)
    assert image["model"] == "vit_tiny"
    masks = []
    for k, ann in enumerate(doc["annotations"], 1):
        assert ann["id"] == k
        assert set(ann) == {"id", "segmentation", "area", "bbox", "predicted_iou",
                            "stability_score", "point_coords", "crop_box"}
        rle = ann["segmentation"]
        assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)
        assert ann["area"] == mask.sum() == mask_utils.area(
            {"size": rle["size"], "counts": rle["counts"].encode()})
        if mask.any():
            x, y, w, h = mask_utils.toBbox({"size": rle["size"], "counts": rle["counts"].encode()})
            assert ann["bbox"][:2] == [x, y] and abs(ann["bbox"][2] - w) <= 1
        assert mask[labels == k].all()  # label k lies inside annotation k
        masks.append(mask)
    # the label image is exactly the annotations painted in document order
    expected = masks_to_label_image([{"segmentation": m} for m in masks], shape)
    np.testing.assert_array_equal(labels, expected)
    return doc


# --------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------


def test_folder_of_mixed_images_json_and_rle(capsys, checkpoint, folder, tmp_path):
    out = tmp_path / "out" / "nested"  # created, parents too
    code, stdout, err = label(capsys, checkpoint, folder, "-o", out, "--box-nms-thresh", "1")
    assert code == 0, err
    assert "done 3" in stdout and "skipped 0, failed 0" in stdout
    assert "labelling" in err and "3/3" in err  # the progress bar
    assert outputs(out) == ["a.json", "a.tif", "b.json", "b.tif", "c.json", "c.tif"]
    docs = {key: check_pair(out, key, shape)
            for key, shape in [("a", (64, 80)), ("b", (96, 72)), ("c", (48, 64))]}
    assert [d["image"]["image_id"] for d in docs.values()] == [0, 1, 2]
    assert docs["b"]["image"]["file_name"] == "b.tif"
    assert docs["b"]["image"]["source"] == str((folder / "b.tif").resolve())
    # no NMS: many overlapping masks, so the painting order was really exercised
    assert sum(len(d["annotations"]) for d in docs.values()) > 10


def test_glob_and_name_clashes(capsys, checkpoint, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    iio.imwrite(data / "x.png", rng_image((64, 64, 3)))
    tifffile.imwrite(data / "x.tif", rng_image((64, 64)))
    iio.imwrite(data / "sub" / "y.png", rng_image((64, 64, 3)))
    code, _, err = label(capsys, checkpoint, f"{data}/*.png", "-o", tmp_path / "o1")
    assert code == 0, err
    assert outputs(tmp_path / "o1") == ["x.json", "x.tif"]
    code, _, err = label(capsys, checkpoint, f"{data}/**/*.png", "-o", tmp_path / "o2")
    assert code == 0, err
    assert outputs(tmp_path / "o2") == ["x.json", "x.tif", "y.json", "y.tif"]
    # x.png and x.tif would both write x.tif: they keep their suffix in the name
    keys = [item.key for item in batch.list_images(data)]
    assert keys == ["x_png", "x_tif"]


def test_tiff_stack_planes_and_rgb_tiff(capsys, checkpoint, tmp_path):
    stack = tmp_path / "stack.tif"
    planes = np.stack([rng_image((64, 72), np.uint16, s) for s in range(3)])
    tifffile.imwrite(stack, planes, photometric="minisblack")
    tifffile.imwrite(tmp_path / "rgb.tif", rng_image((64, 64, 3)))  # one RGB image
    out = tmp_path / "out"
    code, stdout, err = label(capsys, checkpoint, stack, "-o", out)
    assert code == 0, err
    assert "done 3" in stdout
    for i in range(3):
        doc = check_pair(out, f"stack_{i:04d}", (64, 72), store="stack.zarr")
        assert doc["image"]["plane"] == i and doc["image"]["file_name"] == "stack.tif"
        assert doc["image"]["image_id"] == i
    import zarr

    # resuming: a plane whose JSON is missing is redone into the same store, the others are skipped
    (out / "stack_0001.json").unlink()
    before = np.asarray(zarr.open_array(out / "stack.zarr", mode="r")[:])
    code, stdout, err = label(capsys, checkpoint, stack, "-o", out)
    assert code == 0 and "done 1" in stdout and "skipped 2" in stdout, stdout + err
    check_pair(out, "stack_0001", (64, 72), store="stack.zarr")
    np.testing.assert_array_equal(zarr.open_array(out / "stack.zarr", mode="r")[:], before)
    items = batch.list_images(tmp_path / "rgb.tif")
    assert [(i.key, i.kind, i.index) for i in items] == [("rgb", "image", None)]
    assert batch.read_image(batch.list_images(stack)[2]).shape == (64, 72)


def test_video_frames(capsys, checkpoint, tmp_path):
    from src_core.video import write_video

    video = write_video(tmp_path / "clip.mp4", [rng_image((64, 64, 3), seed=s) for s in range(3)],
                        fps=5)
    out = tmp_path / "out"
    code, stdout, err = label(capsys, checkpoint, video, "-o", out)
    assert code == 0, err
    assert "done 3" in stdout
    for i in range(3):
        doc = check_pair(out, f"clip_{i:04d}", (64, 64), store="clip.zarr")
        assert doc["image"]["frame"] == i
    # a process keeps the video open: frames after the first cost one decode each
    videos = VideoReaders()
    items = batch.list_images(video)
    frames = [batch.read_image(item, videos) for item in items]
    assert len(videos._open) == 1
    np.testing.assert_array_equal(frames[2], batch.read_image(items[2]))


# --------------------------------------------------------------------------
# Resuming, atomic writes, failures of single images
# --------------------------------------------------------------------------


def test_resume_skips_finished_and_redoes_incomplete(capsys, checkpoint, folder, tmp_path):
    out = tmp_path / "out"
    assert label(capsys, checkpoint, folder, "-o", out)[0] == 0
    kept = (out / "a.json").stat().st_mtime_ns
    (out / "b.json").unlink()  # one output of the pair missing
    (out / "c.tif").write_bytes(b"II*\x00 truncated")  # an invalid output
    code, stdout, err = label(capsys, checkpoint, folder, "-o", out)
    assert code == 0, err
    assert "done 2" in stdout and "skipped 1" in stdout
    assert (out / "a.json").stat().st_mtime_ns == kept
    check_pair(out, "b", (96, 72))
    check_pair(out, "c", (48, 64))
    code, stdout, _ = label(capsys, checkpoint, folder, "-o", out)
    assert code == 0 and "done 0" in stdout and "skipped 3" in stdout
    code, stdout, _ = label(capsys, checkpoint, folder, "-o", out, "--overwrite")
    assert code == 0 and "done 3" in stdout and "skipped 0" in stdout
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("broken", ["tif", "json"])
def test_a_failed_write_leaves_nothing(capsys, checkpoint, folder, tmp_path, monkeypatch, broken):
    real = batch._write_atomic

    def failing(path, write):
        if path.name == f"b.{broken}":
            def half(f):
                f.write(b"half a file")
                raise OSError(28, "No space left on device")

            return real(path, half)
        return real(path, write)

    monkeypatch.setattr(batch, "_write_atomic", failing)
    out = tmp_path / "out"
    code, stdout, err = label(capsys, checkpoint, folder, "-o", out)
    assert code == 1
    assert "failed b: [Errno 28] No space left on device" in stdout
    assert outputs(out) == ["a.json", "a.tif", "c.json", "c.tif"]  # no b.*, no temporary files


def test_bad_images_are_reported_and_the_others_finish(capsys, checkpoint, folder, tmp_path):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (folder / "broken.tif").write_bytes(b"garbage, not a TIFF")
    (folder / "empty.jpg").write_bytes(b"")
    out = tmp_path / "out"
    code, stdout, err = label(capsys, checkpoint, folder, "-o", out)
    assert code == 1
    assert "done 3" in stdout and "failed 3" in stdout
    for line in ("failed broken_png: cannot read broken.png", "failed broken_tif: cannot read "
                 "broken.tif as a TIFF", "failed empty: cannot read empty.jpg"):
        assert line in stdout, stdout
    last = err.strip().splitlines()[-1]
    assert last.startswith("napari-sam: error: 3 of 6 images failed")
    assert outputs(out) == ["a.json", "a.tif", "b.json", "b.tif", "c.json", "c.tif"]


# --------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written
# --------------------------------------------------------------------------


def closed_port_address() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    "case, fragments",
    [
        ("missing", ["does not exist"]),
        ("empty_folder", ["holds no image or video files"]),
        ("glob_nothing", ["matches no image or video files"]),
        ("output_is_file", ["is a file; give a folder"]),
        ("output_is_input", ["holds input images"]),
        ("corrupt_single", ["cannot read one.png"]),
        ("corrupt_stack", ["cannot read stack.tif as a TIFF"]),
        ("corrupt_video", ["cannot read clip.mp4 as a video"]),
        ("no_scheduler", ["cannot reach the Dask scheduler", "Timed out"]),
        ("bad_address", ["cannot reach the Dask scheduler at 'nonsense'"]),
        ("workers_and_scheduler", ["--workers sets threads on this machine"]),
        ("points", ["--points-per-side must be at least 1, got 0"]),
        ("model", ["unknown model 'vit_x'"]),
        ("missing_checkpoint", ["checkpoint", "does not exist"]),
        ("garbage_checkpoint", ["junk.pth"]),
    ],
)
def test_bad_input(capsys, checkpoint, folder, tmp_path, case, fragments):
    source, out, extra, ckpt = folder, tmp_path / "out", [], ["--checkpoint", str(checkpoint)]
    if case == "missing":
        source = tmp_path / "nope"
    elif case == "empty_folder":
        source = tmp_path / "empty"
        source.mkdir()
        (source / "readme.txt").write_text("hi")
    elif case == "glob_nothing":
        source = f"{folder}/*.jpeg"
    elif case == "output_is_file":
        out = folder / "notes.txt"
    elif case == "output_is_input":
        out = folder
    elif case in ("corrupt_single", "corrupt_stack", "corrupt_video"):
        name = {"corrupt_single": "one.png", "corrupt_stack": "stack.tif",
                "corrupt_video": "clip.mp4"}[case]
        source = tmp_path / name
        source.write_bytes(b"\x00\x01 definitely not an image" * 10)
    elif case == "no_scheduler":
        extra = ["--scheduler", closed_port_address(), "--connect-timeout", "0.5"]
    elif case == "bad_address":
        extra = ["--scheduler", "nonsense"]
    elif case == "workers_and_scheduler":
        extra = ["--scheduler", closed_port_address(), "--workers", "2"]
    elif case == "points":
        extra = ["--points-per-side", "0"]
    elif case == "model":
        extra = ["--model", "vit_x"]
    elif case == "missing_checkpoint":
        ckpt = ["--checkpoint", str(tmp_path / "nope.pth")]
    elif case == "garbage_checkpoint":
        (tmp_path / "junk.pth").write_bytes(b"not torch")
        ckpt = ["--checkpoint", str(tmp_path / "junk.pth")]
    start = time.monotonic()
    code = main(["label", str(source), "-o", str(out), *FAST, *ckpt, *extra])
    _, err = capsys.readouterr()
    assert_user_error(code, err, *fragments)
    assert time.monotonic() - start < 20
    if case != "output_is_file":
        assert not out.exists() or outputs(out) == outputs(folder)  # nothing written


# --------------------------------------------------------------------------
# Engine: the model once per process, progress
# --------------------------------------------------------------------------


def test_local_threads_load_the_model_once(checkpoint, folder, tmp_path):
    spec = batch.ModelSpec("vit_tiny", str(checkpoint), "cpu", "float32")
    settings = batch.GeneratorSettings(points_per_side=4)
    models = batch.ModelCache()
    seen = []
    summary = batch.run_batch(folder, tmp_path / "out", spec, settings, workers=2, models=models,
                              progress=lambda r, n, total: seen.append((r.key, n, total)))
    assert [r.key for r in summary.done] and not summary.failed
    assert sorted(k for k, _, _ in seen) == ["a", "b", "c"]
    assert [(n, total) for _, n, total in seen] == [(1, 3), (2, 3), (3, 3)]
    assert (models.loads, models.calls) == (1, 4)  # one load up front, one call per image
    batch.run_batch(folder, tmp_path / "out", spec, settings, overwrite=True, models=models)
    assert models.loads == 1  # same spec, same cache: no reload


# --------------------------------------------------------------------------
# dask.distributed
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        yield cluster


def test_distributed_cluster_loads_the_model_once_per_worker(capsys, checkpoint, tmp_path,
                                                             cluster):
    from distributed import Client

    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        iio.imwrite(data / f"img{i}.png", rng_image((64, 64 + 8 * i, 3), seed=i))
    out = tmp_path / "out"
    code, stdout, err = label(capsys, checkpoint, data, "-o", out, "--scheduler",
                              cluster.scheduler_address)
    assert code == 0, err
    assert "done 6" in stdout
    for i in range(6):
        check_pair(out, f"img{i}", (64, 64 + 8 * i))
    with Client(cluster) as client:
        counts = client.run(lambda dask_worker: (
            dask_worker.plugins[batch.PLUGIN_NAME].models.loads,
            dask_worker.plugins[batch.PLUGIN_NAME].models.calls))
    assert len(counts) == 2
    assert sum(calls for _, calls in counts.values()) == 6
    for loads, calls in counts.values():
        assert loads == (1 if calls else 0)  # once per worker process, not per task

    # a checkpoint the workers cannot load stops the batch with one clear line
    (tmp_path / "junk.pth").write_bytes(b"not torch")
    code = main(["label", str(data), "-o", str(tmp_path / "out2"), *FAST, "--checkpoint",
                 str(tmp_path / "junk.pth"), "--scheduler", cluster.scheduler_address])
    _, err = capsys.readouterr()
    assert_user_error(code, err, "batch stopped: cannot load the model", "junk.pth")
    assert not list((tmp_path / "out2").iterdir())


def test_scheduler_without_workers(capsys, checkpoint, folder, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=0, processes=False, dashboard_address=None) as empty:
        code, _, err = label(capsys, checkpoint, folder, "-o", tmp_path / "out", "--scheduler",
                             empty.scheduler_address, "--connect-timeout", "0.5")
    assert_user_error(code, err, "has no workers", "dask worker")
    assert not (tmp_path / "out").exists()


def test_should_stop_cancels_between_images_and_keeps_what_is_done(checkpoint, folder, tmp_path):
    from src_core.jobs import Cancelled

    out = tmp_path / "out"
    spec = batch.ModelSpec("auto", str(checkpoint), "cpu", "float32")
    settings = batch.GeneratorSettings(points_per_side=4)
    finished = []
    with pytest.raises(Cancelled, match="batch labeling was cancelled"):
        batch.run_batch(folder, out, spec, settings, workers=1,
                        progress=lambda result, done, total: finished.append(result.key),
                        should_stop=lambda: len(finished) >= 1)
    done = [key for key in "abc" if batch.outputs_complete(out, key)]
    assert 1 <= len(done) < 3  # stopped after an image, which is kept
    summary = batch.run_batch(folder, out, spec, settings, workers=1)
    assert sorted(r.key for r in summary.skipped) == done  # and skipped when the batch runs again
