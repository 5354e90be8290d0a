"""The ``napari-sam`` command: parsing, user errors, models/download, segment end to end.

Most end-to-end runs use a tiny encoder geometry registered as "vit_b" (same
prompt encoder and decoder, 2 narrow blocks), so the whole CLI path runs for
real in well under a second per image; one test runs the full-size vit_b.
"""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from src_core import checkpoints
from src_core.checkpoints import CheckpointInfo
from src_core.cli import main
from src_core.cli.common import UsageError, parse_box, parse_point
from src_core.cli.segment import _paint_labels

ROOT = Path(__file__).resolve().parents[1]
VIT_B_FILE = "sam_vit_b_01ec64.pth"


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("napari-sam: error: "), err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in last, last


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(root))
    return root


@pytest.fixture
def gray_tif(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    image = (rng.random((48, 64)) * 4000).astype(np.uint16)
    image[10:30, 20:40] += 30000  # a bright rectangle
    path = tmp_path / "gray.tif"
    tifffile.imwrite(path, image)
    return path


@pytest.fixture
def rgb_png(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    image = (rng.random((40, 50, 3)) * 80).astype(np.uint8)
    image[5:25, 10:30] = (230, 40, 40)
    path = tmp_path / "rgb.png"
    iio.imwrite(path, image)
    return path


def closed_port_url(name: str = VIT_B_FILE) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


# --------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------


def test_parse_point_and_box():
    assert parse_point("3,4.5") == parse_point("3,4.5,1")
    p = parse_point("3,4.5,0")
    assert (p.x, p.y, p.label) == (3.0, 4.5, 0)
    b = parse_box("1,2,30,40")
    assert (b.x0, b.y0, b.x1, b.y1) == (1, 2, 30, 40)
    for bad in ("a,b", "1", "1,2,3,4", "1,2,2", "1,nan", ""):
        with pytest.raises(UsageError, match="X,Y or X,Y,LABEL"):
            parse_point(bad)
    with pytest.raises(UsageError, match="X0,Y0,X1,Y1"):
        parse_box("1,2,3")
    with pytest.raises(UsageError, match="inverted"):
        parse_box("10,10,5,20")


def test_overlaps_go_to_the_higher_predicted_iou():
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :3, :3] = True
    masks[1, 1:, 1:] = True
    labels = _paint_labels(masks, np.array([0.9, 0.5]))
    assert labels.dtype == np.uint16
    assert labels[1, 1] == 1 and labels[3, 3] == 2 and labels[0, 0] == 1
    labels = _paint_labels(masks, np.array([0.5, 0.9]))
    assert labels[1, 1] == 2 and labels[0, 0] == 1


@pytest.mark.parametrize("command", ["segment", "models", "download", "label", "track", "train"])
def test_every_help_reads_as_plain_text(capsys, command):
    code, out, _ = run_cli(capsys, command, "--help")
    assert code == 0 and "usage: napari-sam " + command in out
    assert "``" not in out and ":mod:" not in out and ":class:" not in out  # no reStructuredText markup


def test_help_and_no_command(capsys):
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "segment" in out and "download" in out
    code, out, _ = run_cli(capsys, "segment", "--help")
    assert code == 0 and "--box" in out and "--slice" in out
    code, _, err = run_cli(capsys)
    assert_user_error(code, err, "choose a command")


# --------------------------------------------------------------------------
# User errors of segment: exit code 2, one line, no model needed
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, fragments",
    [
        (["--point", "a,b"], ["--point expects X,Y or X,Y,LABEL with LABEL 0 or 1, got 'a,b'"]),
        (["--point", "3,4,2"], ["LABEL 0 or 1", "'3,4,2'"]),
        (["--box", "1,2,3"], ["--box expects X0,Y0,X1,Y1"]),
        (["--box", "30,10,20,40"], ["inverted", "X1 > X0"]),
        (["--box", "1,1,9,9", "--box", "2,2,8,8", "--point", "5,5"], ["ambiguous"]),
        ([], ["needs a prompt"]),
        (["--point", "5,5,0"], ["background"]),
        (["--point", "500,20"], ["outside the 64x48 image"]),
        (["--point=-1,20"], ["outside"]),
        (["--point", "-5,20"], ["--point -5,20 lies outside the 64x48 image"]),  # not taken for an option
        (["--point", "64,20"], ["outside the 64x48 image", "0 to 63"]),  # one pixel past the last column
        (["--point", "10,48"], ["outside the 64x48 image", "0 to 47"]),
        (["--box", "-10,-10,-2,-2"], ["outside the 64x48 image"]),
        (["--box", "100,100,200,200"], ["outside the 64x48 image"]),
        (["--point", "5,5", "--model", "vit_x"], ["unknown model 'vit_x'", "vit_b"]),
        (["--point", "5,5", "--channels", "0,x"], ["--channels expects"]),
        (["--point", "5,5", "--channel-axis", "x"], ["--channel-axis", "invalid int"]),
        (["--point", "5,5", "--slice", "0"], ["--slice 0 needs a stack"]),
        (["--point", "5,5", "--checkpoint", "nope.pth", "--model", "vit_b"], ["nope.pth", "does not exist"]),
        (["--point", "5,5", "--device", "tpu9"], ["unknown device"]),
        (["--point", "5,5", "--bogus"], ["unrecognized arguments: --bogus"]),
    ],
)
def test_segment_user_errors(capsys, cache, gray_tif, tmp_path, extra, fragments):
    code, out, err = run_cli(capsys, "segment", gray_tif, "-o", tmp_path / "out.tif", *extra)
    assert_user_error(code, err, *fragments)
    assert out == ""
    assert not (tmp_path / "out.tif").exists()


def test_segment_bad_images(capsys, tmp_path):
    out = tmp_path / "out.tif"
    blank = tmp_path / "blank.tif"
    tifffile.imwrite(blank, np.zeros((256, 256), np.uint16))  # an all-zero 16-bit plane
    code, _, err = run_cli(capsys, "segment", blank, "--point", "100,100", "-o", out)
    assert_user_error(code, err, "blank.tif is blank", "every pixel is 0")
    assert not out.exists()
    code, _, err = run_cli(capsys, "segment", tmp_path / "missing.png", "--point", "1,1", "-o", out)
    assert_user_error(code, err, "missing.png", "does not exist")

    code, _, err = run_cli(capsys, "segment", tmp_path, "--point", "1,1", "-o", out)
    assert_user_error(code, err, "is a folder")

    for name in ("notes.png", "notes.tif"):
        (tmp_path / name).write_text("not an image\n")
        code, _, err = run_cli(capsys, "segment", tmp_path / name, "--point", "1,1", "-o", out)
        assert_user_error(code, err, f"cannot read {tmp_path / name} as an image")

    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.zeros((2, 5, 16, 16), np.uint16))
    code, _, err = run_cli(capsys, "segment", stack, "--point", "1,1", "-o", out)
    assert_user_error(code, err, "stack of shape (2, 5, 16, 16)", "--slice N")
    code, _, err = run_cli(capsys, "segment", stack, "--slice", "7", "--point", "1,1", "-o", out)
    assert_user_error(code, err, "--slice 7 is out of range", "0..1")

    zstack = tmp_path / "zstack.tif"
    tifffile.imwrite(zstack, np.zeros((9, 16, 16), np.uint16))
    code, _, err = run_cli(capsys, "segment", zstack, "--point", "1,1", "-o", out)
    assert_user_error(code, err, "channel", "--slice N")

    six = tmp_path / "six_channels.tif"
    tifffile.imwrite(six, np.zeros((16, 16, 6), np.uint16), photometric="minisblack")
    code, _, err = run_cli(capsys, "segment", six, "--point", "1,1", "-o", out)
    assert_user_error(code, err, "Cannot tell which axis holds channels", "--channel-axis N")
    code, _, err = run_cli(capsys, "segment", six, "--channel-axis", "-1", "--point", "1,1", "-o", out)
    assert_user_error(code, err, "6 channels", "--channels")
    code, _, err = run_cli(
        capsys, "segment", six, "--channel-axis", "2", "--channels", "0,9", "--point", "1,1", "-o", out
    )
    assert_user_error(code, err, "out of range")
    assert not out.exists()


def test_segment_bad_outputs(capsys, gray_tif, tmp_path):
    code, _, err = run_cli(capsys, "segment", gray_tif, "--point", "1,1", "-o", tmp_path / "nowhere" / "out.tif")
    assert_user_error(code, err, "nowhere", "does not exist")
    code, _, err = run_cli(capsys, "segment", gray_tif, "--point", "1,1", "-o", tmp_path)
    assert_user_error(code, err, "is a folder")
    code, _, err = run_cli(capsys, "segment", gray_tif, "--point", "1,1", "-o", tmp_path / "out.png")
    assert_user_error(code, err, ".tif or .tiff")


def test_segment_offline_without_cached_weights(capsys, cache, gray_tif, tmp_path, monkeypatch):
    url = closed_port_url()
    info = CheckpointInfo("vit_b", url, 1000, "0" * 64)
    monkeypatch.setattr(checkpoints, "CHECKPOINTS", {"vit_b": info})
    out = tmp_path / "out.tif"
    args = ["segment", gray_tif, "--model", "vit_b", "--box", "1,1,20,20", "--device", "cpu", "-o", out]
    code, _, err = run_cli(capsys, *args)
    assert_user_error(code, err, url, str(cache / "checkpoints" / VIT_B_FILE))
    code, _, err = run_cli(capsys, *args, "--no-download")
    assert_user_error(code, err, "not in the cache", url)
    assert not out.exists()


def test_segment_checkpoint_that_is_not_a_checkpoint(capsys, gray_tif, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00not a checkpoint" * 10)
    code, _, err = run_cli(
        capsys, "segment", gray_tif, "--box", "1,1,20,20", "--checkpoint", junk,
        "--device", "cpu", "-o", tmp_path / "out.tif",
    )
    assert_user_error(code, err, "junk.pth", "not a readable PyTorch checkpoint")


# --------------------------------------------------------------------------
# models and download (local HTTP server)
# --------------------------------------------------------------------------


def test_models_lists_registry_and_cache(capsys, cache):
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    for name in ("vit_b", "vit_l", "vit_h"):
        line = next(ln for ln in out.splitlines() if ln.startswith(name))
        assert " no " in line and str(cache / "checkpoints") in line
    assert "375 MB" in out and "2565 MB" in out
    assert str(cache) in out and "NAPARI_SAM_CACHE" in out
    for size in ("tiny", "small", "base_plus", "large"):  # SAM 2.1: Meta publishes no size or checksum
        line = next(ln for ln in out.splitlines() if ln.startswith(f"sam2.1_hiera_{size} "))
        assert "size not published" in line and " no " in line
    code, _, err = run_cli(capsys, "download", "sam2.1_hiera_huge")
    assert code == 2 and "sam2.1_hiera_tiny" in err  # the known names, SAM 2.1's included


def test_models_shows_cached_files(capsys, cache, monkeypatch):
    info = CheckpointInfo("vit_b", "http://127.0.0.1:9/" + VIT_B_FILE, 1234, "0" * 64)
    monkeypatch.setattr(checkpoints, "CHECKPOINTS", {"vit_b": info})
    path = cache / "checkpoints" / VIT_B_FILE
    path.parent.mkdir(parents=True)
    path.write_bytes(b"x" * 1234)
    code, out, _ = run_cli(capsys, "models")
    assert code == 0
    assert " yes " in next(ln for ln in out.splitlines() if ln.startswith("vit_b"))


class _BlobHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):
        pass

    def do_GET(self):
        blob = self.server.blob
        if not self.path.endswith(VIT_B_FILE):
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(blob)))
        self.end_headers()
        self.wfile.write(blob)


@pytest.fixture(scope="module")
def blob_server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BlobHandler)
    httpd.daemon_threads = True
    httpd.blob = os.urandom(200_000)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _blob_info(blob: bytes, url: str) -> CheckpointInfo:
    return CheckpointInfo("vit_b", url, len(blob), hashlib.sha256(blob).hexdigest())


def test_download_into_cache(capsys, cache, monkeypatch, blob_server):
    host, port = blob_server.server_address[:2]
    url = f"http://{host}:{port}/{VIT_B_FILE}"
    monkeypatch.setattr(checkpoints, "CHECKPOINTS", {"vit_b": _blob_info(blob_server.blob, url)})
    code, out, err = run_cli(capsys, "download", "vit_b")
    assert code == 0, err
    path = cache / "checkpoints" / VIT_B_FILE
    assert out.strip() == str(path)
    assert path.read_bytes() == blob_server.blob
    assert "vit_b" in err and "100%" in err  # the tqdm bar, on stderr

    code, out, _ = run_cli(capsys, "models")
    assert " yes " in next(ln for ln in out.splitlines() if ln.startswith("vit_b"))
    code, out, err = run_cli(capsys, "download", "vit_b")  # cached: verified, not fetched
    assert code == 0 and out.strip() == str(path) and "already cached" in err


def test_download_each_microscopy_and_small_model(capsys, cache, monkeypatch, blob_server):
    """`napari-sam download NAME` for micro-sam's models (xxh128-verified) and MobileSAM's
    vit_t (no published checksum), each into its own file; `models` then says cached."""
    import dataclasses

    import xxhash

    host, port = blob_server.server_address[:2]
    url = f"http://{host}:{port}/{VIT_B_FILE}"
    digest = xxhash.xxh128(blob_server.blob).hexdigest()
    microscopy = {name: dataclasses.replace(info, url=url, xxh128=digest)
                  for name, info in checkpoints.MICROSCOPY_CHECKPOINTS.items()}
    small = {name: dataclasses.replace(info, url=url) for name, info in checkpoints.SMALL_CHECKPOINTS.items()}
    monkeypatch.setattr(checkpoints, "MICROSCOPY_CHECKPOINTS", microscopy)
    monkeypatch.setattr(checkpoints, "SMALL_CHECKPOINTS", small)
    paths = set()
    for name in [*microscopy, *small]:
        code, out, err = run_cli(capsys, "download", name)
        assert code == 0, err
        path = Path(out.strip())
        assert path == checkpoints.checkpoint_path(name) and path.read_bytes() == blob_server.blob
        paths.add(path)
    assert len(paths) == len(microscopy) + len(small)
    code, out, _ = run_cli(capsys, "models")
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.strip() and not ln.startswith("--")}
    assert " yes " in lines["vit_b_lm"] and "about 375 MB" in lines["vit_b_lm"]
    assert " yes " in lines["vit_t"] and "about 40 MB" in lines["vit_t"]
    assert "light microscopy" in lines["vit_b_lm"] and "MobileSAM" in lines["vit_t"]
    assert "-- microscopy fine-tunes (micro-sam) --" in out and "-- small and fast --" in out
    assert "default model: vit_b_lm" in out  # no Meta model cached: micro-sam's default first

    # a damaged copy on the server is refused by its xxh128 (and not cached)
    bad = dict(microscopy, vit_l_lm=dataclasses.replace(microscopy["vit_l_lm"], xxh128="0" * 32))
    monkeypatch.setattr(checkpoints, "MICROSCOPY_CHECKPOINTS", bad)
    checkpoints.checkpoint_path("vit_l_lm").unlink()
    code, _, err = run_cli(capsys, "download", "vit_l_lm")
    assert_user_error(code, err, "corrupt", "expected xxh128")
    assert not checkpoints.checkpoint_path("vit_l_lm").exists()


def test_download_url_override_and_errors(capsys, cache, monkeypatch, blob_server):
    host, port = blob_server.server_address[:2]
    info = _blob_info(blob_server.blob, closed_port_url())
    monkeypatch.setattr(checkpoints, "CHECKPOINTS", {"vit_b": info})

    code, _, err = run_cli(capsys, "download", "vit_b")
    assert_user_error(code, err, info.url, "Check the network connection")

    code, _, err = run_cli(capsys, "download", "vit_b", "--url", f"http://{host}:{port}/other.pth")
    assert_user_error(code, err, "HTTP 404")

    code, out, err = run_cli(capsys, "download", "vit_b", "--url", f"http://{host}:{port}/{VIT_B_FILE}")
    assert code == 0, err
    assert Path(out.strip()).read_bytes() == blob_server.blob

    code, _, err = run_cli(capsys, "download", "vit_q")
    assert_user_error(code, err, "unknown model 'vit_q'")


# --------------------------------------------------------------------------
# segment end to end
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_vit_b_checkpoint(tmp_path_factory) -> Path:
    """Random weights for a 2-block, 64-wide encoder with SAM's real decoder."""
    import torch
    from src_core.model.build import build_sam_from_config

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny") / "tiny_vit_b.pth"
    torch.save(build_sam_from_config(_tiny_config()).state_dict(), path)
    return path


def _tiny_config():
    from src_core.model.build import SamConfig

    return SamConfig(encoder_embed_dim=64, encoder_depth=2, encoder_num_heads=2, encoder_global_attn_indexes=(1,))


@pytest.fixture
def tiny_vit_b(monkeypatch, tiny_vit_b_checkpoint) -> Path:
    """Make "vit_b" mean the tiny geometry inside the engine for this test."""
    from src_core.model import build

    monkeypatch.setattr(build, "MODEL_CONFIGS", {"vit_b": _tiny_config()})
    return tiny_vit_b_checkpoint


def _summary(out: str) -> list[str]:
    lines = out.strip().splitlines()
    for k, line in enumerate(lines, 1):
        assert line.startswith(f"label {k}: area ") and "predicted IoU" in line
    return lines


def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_segment_two_boxes_uint16(capsys, tiny_vit_b, gray_tif, tmp_path):
    out = tmp_path / "labels.tif"
    out.write_bytes(b"old")  # replaced atomically
    code, stdout, err = run_cli(
        capsys, "segment", gray_tif, "--box", "20,10,40,30", "--box", "0,0,30,25",
        "--checkpoint", tiny_vit_b, "--device", "cpu", "-o", out,  # model inferred from the file
    )
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint16 and labels.shape == (48, 64)
    assert set(np.unique(labels)) <= {0, 1, 2}
    lines = _summary(stdout)
    assert len(lines) == 2
    for k, line in enumerate(lines, 1):
        assert line.startswith(f"label {k}: area {int((labels == k).sum())} px")
    _no_temp_files(tmp_path)


def test_segment_points_box_multimask_and_slices(capsys, tiny_vit_b, rgb_png, tmp_path):
    ckpt = ["--checkpoint", tiny_vit_b, "--model", "vit_b", "--device", "cpu", "--dtype", "float32"]
    out = tmp_path / "rgb_labels.tiff"
    code, stdout, err = run_cli(capsys, "segment", rgb_png, "--point", "20,15", *ckpt, "-o", out)
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint16 and labels.shape == (40, 50)
    assert set(np.unique(labels)) <= {0, 1} and len(_summary(stdout)) == 1

    code, stdout, err = run_cli(
        capsys, "segment", rgb_png, "--point", "20,15", "--point", "45,35,0",
        "--box", "5,2,35,30", "--multimask", *ckpt, "-o", out,
    )
    assert code == 0, err
    assert set(np.unique(tifffile.imread(out))) <= {0, 1} and len(_summary(stdout)) == 1

    # a (Z, C, Y, X) 16-bit stack: plane 1, channels first, two of three channels
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.random.default_rng(2).integers(0, 4096, (2, 3, 24, 30), dtype=np.uint16))
    code, stdout, err = run_cli(
        capsys, "segment", stack, "--slice", "1", "--channel-axis", "0", "--channels", "0,2",
        "--box", "2,2,20,20", *ckpt, "-o", out,
    )
    assert code == 0, err
    assert tifffile.imread(out).shape == (24, 30)
    _no_temp_files(tmp_path)


def test_checkpoint_of_another_geometry_is_explained(capsys, tiny_vit_b_checkpoint, gray_tif, tmp_path):
    """With the real registry, the tiny checkpoint fits no model: say so either way."""
    args = ["segment", gray_tif, "--box", "1,1,20,20", "--checkpoint", tiny_vit_b_checkpoint,
            "--device", "cpu", "-o", tmp_path / "out.tif"]
    code, _, err = run_cli(capsys, *args)
    assert_user_error(code, err, "does not look like a vit_b, vit_l, vit_h, vit_t or vit_tiny", "--model")
    code, _, err = run_cli(capsys, *args, "--model", "vit_b")
    assert_user_error(code, err, "does not fit a 'vit_b' SAM model", "64 wide and 2 blocks deep")
    assert not (tmp_path / "out.tif").exists()


@pytest.mark.slow
def test_segment_full_size_vit_b(capsys, tmp_path_factory, gray_tif, tmp_path):
    """The real geometry end to end, once (the vit_b encoder takes ~20 s on 2 CPU cores)."""
    import torch
    from src_core.model.build import MODEL_CONFIGS, build_sam_from_config

    path = tmp_path_factory.mktemp("vit_b") / "random_vit_b.pth"
    torch.manual_seed(0)
    torch.save(build_sam_from_config(MODEL_CONFIGS["vit_b"]).state_dict(), path)
    out = tmp_path / "labels.tif"
    code, stdout, err = run_cli(
        capsys, "segment", gray_tif, "--box", "20,10,40,30", "--box", "5,5,60,40",
        "--checkpoint", path, "--model", "vit_b", "--device", "cpu", "--dtype", "float32",
        "-o", out,
    )
    path.unlink()
    assert code == 0, err
    labels = tifffile.imread(out)
    assert labels.dtype == np.uint16 and labels.shape == (48, 64)
    assert set(np.unique(labels)) <= {0, 1, 2} and len(_summary(stdout)) == 2


# --------------------------------------------------------------------------
# The console script
# --------------------------------------------------------------------------


def test_import_is_cheap():
    code = "import sys, src_core.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_console_script_help():
    script = shutil.which("napari-sam") or shutil.which("napari-sam", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the napari-sam console script is not installed")
    proc = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "segment" in proc.stdout and "models" in proc.stdout and "download" in proc.stdout
    proc = subprocess.run([script, "segment", "x.png", "--point", "a,b", "-o", "o.tif"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip().endswith("got 'a,b'")
    assert "Traceback" not in proc.stderr
