"""Tests for src_core.checkpoints: registry, cache, download (local server), loading."""

from __future__ import annotations

import hashlib
import http.server
import os
import pickle
import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from src_core import checkpoints
from src_core.checkpoints import (
    CHECKPOINTS,
    CheckpointInfo,
    cache_dir,
    cached_checkpoint,
    checkpoint_path,
    download_checkpoint,
    load_state_dict,
    resolve_checkpoint,
    sha256_file,
)

BLOB_SIZE = 300_000
CHUNK = 16 * 1024


# --------------------------------------------------------------------------
# A tiny HTTP server that serves one blob and can misbehave on demand.
# --------------------------------------------------------------------------


@dataclass
class ServerState:
    blob: bytes
    mode: str = "ok"  # ok | truncate | wrong | ignore_range | stall | missing
    truncate_at: int = 0
    requests: list = field(default_factory=list)  # (path, Range header or None)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)


class BlobHandler(http.server.BaseHTTPRequestHandler):
    def log_message(self, format, *args):  # keep test output quiet
        pass

    def do_GET(self):
        state: ServerState = self.server.state
        range_header = self.headers.get("Range")
        with state.lock:
            state.requests.append((self.path, range_header))
        if state.mode == "stall":
            state.release.wait(5)
            return
        if state.mode == "missing":
            self.send_error(404, "Not Found")
            return

        body = state.blob
        if state.mode == "wrong":
            body = bytes(b ^ 0xFF for b in body[:16]) + body[16:]
        start = 0
        if range_header and state.mode != "ignore_range":
            start = int(range_header.removeprefix("bytes=").split("-")[0])
        payload = body[start:]

        if start:
            self.send_response(206)
            self.send_header(
                "Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}"
            )
        else:
            self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()

        if state.mode == "truncate":
            # Promise the whole body, send only part of it, then hang up.
            self.wfile.write(payload[: max(state.truncate_at - start, 0)])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class BlobServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture(scope="module")
def blob() -> bytes:
    return os.urandom(BLOB_SIZE)


@pytest.fixture(scope="module")
def running_server(blob):
    httpd = BlobServer(("127.0.0.1", 0), BlobHandler)
    httpd.state = ServerState(blob=blob)
    thread = threading.Thread(
        target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield httpd
    finally:
        httpd.state.release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server(running_server, blob):
    """The shared server with fresh, well-behaved state for each test."""
    running_server.state.release.set()  # free a handler left stalled
    running_server.state = ServerState(blob=blob)
    return running_server


def url_of(httpd, name="fake_ckpt.pth") -> str:
    host, port = httpd.server_address[:2]
    return f"http://{host}:{port}/{name}"


@pytest.fixture
def info(server, blob) -> CheckpointInfo:
    return CheckpointInfo(
        name="fake",
        url=url_of(server),
        size=len(blob),
        sha256=hashlib.sha256(blob).hexdigest(),
    )


def part_of(path: Path) -> Path:
    return path.with_name(path.name + ".part")


# --------------------------------------------------------------------------
# Registry and cache location
# --------------------------------------------------------------------------


def test_registry_contents():
    assert set(CHECKPOINTS) == {"vit_h", "vit_l", "vit_b"}
    assert CHECKPOINTS["vit_h"].size == 2564550879
    assert CHECKPOINTS["vit_l"].size == 1249524607
    assert CHECKPOINTS["vit_b"].size == 375042383
    assert CHECKPOINTS["vit_b"].filename == "sam_vit_b_01ec64.pth"
    assert CHECKPOINTS["vit_h"].sha256.startswith("a7bf3b02")
    for name, entry in CHECKPOINTS.items():
        assert entry.name == name
        assert len(entry.sha256) == 64
        assert entry.url.startswith("https://dl.fbaipublicfiles.com/segment_anything/")
        assert entry.url.endswith(entry.filename)
    with pytest.raises(TypeError):
        CHECKPOINTS["vit_x"] = CHECKPOINTS["vit_b"]  # type: ignore[index]


def test_checkpoint_info_is_validated():
    with pytest.raises(ValueError, match="sha256"):
        CheckpointInfo("x", "http://h/x.pth", 10, "abc")
    with pytest.raises(ValueError, match="size"):
        CheckpointInfo("x", "http://h/x.pth", 0, "0" * 64)
    assert CheckpointInfo("x", "http://h/x.pth", None, "0" * 64).size is None  # unknown: sha256 only


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(ValueError, match="vit_h.*vit_l.*vit_b"):
        download_checkpoint("vit_x", cache=tmp_path)
    with pytest.raises(ValueError, match="vit_b"):
        resolve_checkpoint("vit_x", cache=tmp_path, download=False)


def test_cache_dir_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    assert checkpoint_path("vit_b") == tmp_path / "mine" / "checkpoints" / (
        "sam_vit_b_01ec64.pth"
    )


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv("NAPARI_SAM_CACHE", raising=False)
    monkeypatch.setattr(checkpoints.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "napari-sam"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "napari-sam"
    monkeypatch.setattr(checkpoints.sys, "platform", "win32")
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    assert cache_dir() == tmp_path / "local" / "napari-sam" / "cache"
    package_dir = Path(checkpoints.__file__).resolve().parent
    assert package_dir not in cache_dir().resolve().parents


def test_cached_checkpoint_checks_size_only(tmp_path):
    assert cached_checkpoint("vit_b", cache=tmp_path) is None
    dest = checkpoint_path("vit_b", cache=tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"too short")
    assert cached_checkpoint("vit_b", cache=tmp_path) is None
    with open(dest, "wb") as f:  # sparse file of the right size, never hashed
        f.truncate(CHECKPOINTS["vit_b"].size)
    assert cached_checkpoint("vit_b", cache=tmp_path) == dest


def test_sha256_file(tmp_path, blob):
    path = tmp_path / "b.bin"
    path.write_bytes(blob)
    assert sha256_file(path, chunk_size=1000) == hashlib.sha256(blob).hexdigest()


# --------------------------------------------------------------------------
# Download
# --------------------------------------------------------------------------


def test_download_verifies_and_caches(server, info, tmp_path, blob):
    calls = []
    path = download_checkpoint(
        info, cache=tmp_path, progress=lambda d, t: calls.append((d, t)),
        chunk_size=CHUNK,
    )
    assert path == tmp_path / "checkpoints" / "fake_ckpt.pth"
    assert path.read_bytes() == blob
    assert not part_of(path).exists()
    assert [p for p in (tmp_path / "checkpoints").iterdir()] == [path]

    done = [d for d, _ in calls]
    assert len(calls) > 1
    assert all(t == len(blob) for _, t in calls)
    assert done == sorted(done) and len(set(done)) == len(done)
    assert done[-1] == len(blob)

    assert len(server.state.requests) == 1
    again = download_checkpoint(info, cache=tmp_path)
    assert again == path
    assert len(server.state.requests) == 1  # no network the second time
    assert cached_checkpoint(info, cache=tmp_path) == path


def test_unknown_size_is_verified_by_sha256_and_resumes(server, blob, tmp_path):
    """An entry without a published size (CLIP's): its own folder, sha256 only, resumable."""
    entry = CheckpointInfo("clip-like", url_of(server, "w.pt"), None, hashlib.sha256(blob).hexdigest(),
                           folder="clip")
    assert cached_checkpoint(entry, cache=tmp_path) is None
    server.state.mode = "truncate"
    server.state.truncate_at = 100_000
    with pytest.raises(RuntimeError, match=f"interrupted after 100000 of {len(blob)} bytes"):
        download_checkpoint(entry, cache=tmp_path, chunk_size=CHUNK)
    server.state.mode = "ok"
    calls = []
    path = download_checkpoint(entry, cache=tmp_path, chunk_size=CHUNK, progress=lambda d, t: calls.append((d, t)))
    assert path == tmp_path / "clip" / "w.pt" and path.read_bytes() == blob
    assert server.state.requests[-1][1] == "bytes=100000-"
    assert calls[-1] == (len(blob), len(blob))  # the total comes from the server
    assert cached_checkpoint(entry, cache=tmp_path) == path
    server.state.mode = "wrong"
    bad = CheckpointInfo("clip-like", url_of(server, "w2.pt"), None, hashlib.sha256(blob).hexdigest(), folder="clip")
    with pytest.raises(RuntimeError, match="corrupt"):
        download_checkpoint(bad, cache=tmp_path, chunk_size=CHUNK)
    assert not (tmp_path / "clip" / "w2.pt").exists() and not (tmp_path / "clip" / "w2.pt.part").exists()


def test_xxh128_entry_is_verified_resumed_and_rechecked(server, blob, tmp_path):
    """micro-sam's files: no size, an xxh128 digest; cached under the entry's own file name."""
    import xxhash

    digest = xxhash.xxh128(blob).hexdigest()
    entry = CheckpointInfo("vit_b_lm", url_of(server, "vit_b.pt"), None, None, xxh128=digest,
                           file="vit_b_lm.pt", architecture="vit_b", group="microscopy")
    assert entry.checksum == ("xxh128", digest)
    server.state.mode = "truncate"
    server.state.truncate_at = 120_000
    with pytest.raises(RuntimeError, match="interrupted"):
        download_checkpoint(entry, cache=tmp_path, chunk_size=CHUNK)
    server.state.mode = "ok"
    path = download_checkpoint(entry, cache=tmp_path, chunk_size=CHUNK)
    assert path == tmp_path / "checkpoints" / "vit_b_lm.pt" and path.read_bytes() == blob
    assert server.state.requests[-1][1] == "bytes=120000-"
    assert checkpoints.file_digest(path, "xxh128") == digest
    # a damaged file in the cache fails its xxh128 and is fetched again
    path.write_bytes(b"\0" + blob[1:])
    assert download_checkpoint(entry, cache=tmp_path, chunk_size=CHUNK).read_bytes() == blob
    server.state.mode = "wrong"
    bad = CheckpointInfo("vit_b_lm", url_of(server, "vit_b.pt"), None, None, xxh128=digest, file="other.pt")
    with pytest.raises(RuntimeError, match=f"expected xxh128 {digest}, got"):
        download_checkpoint(bad, cache=tmp_path, chunk_size=CHUNK)
    assert not (tmp_path / "checkpoints" / "other.pt").exists()


def test_download_url_override(server, blob, tmp_path):
    entry = CheckpointInfo(
        "fake", "https://example.invalid/models/real_name.pth", len(blob),
        hashlib.sha256(blob).hexdigest(),
    )
    path = download_checkpoint(entry, cache=tmp_path, url=url_of(server, "x.bin"))
    assert path.name == "real_name.pth"  # cached under the registry file name
    assert server.state.requests[0][0] == "/x.bin"


def test_wrong_hash_deletes_everything(server, info, tmp_path):
    server.state.mode = "wrong"
    with pytest.raises(RuntimeError) as excinfo:
        download_checkpoint(info, cache=tmp_path, chunk_size=CHUNK)
    message = str(excinfo.value)
    assert info.sha256 in message and "expected" in message and "got" in message
    dest = checkpoint_path(info, tmp_path)
    assert not dest.exists()
    assert not part_of(dest).exists()


def test_truncated_download_keeps_part(server, info, tmp_path):
    server.state.mode = "truncate"
    server.state.truncate_at = 100_000
    with pytest.raises(RuntimeError, match="interrupted") as excinfo:
        download_checkpoint(info, cache=tmp_path, chunk_size=CHUNK)
    assert "again" in str(excinfo.value)
    dest = checkpoint_path(info, tmp_path)
    assert not dest.exists()
    assert part_of(dest).stat().st_size == 100_000


def test_interrupted_then_resumed(server, info, tmp_path, blob):
    server.state.mode = "truncate"
    server.state.truncate_at = 123_457
    with pytest.raises(RuntimeError, match="interrupted"):
        download_checkpoint(info, cache=tmp_path, chunk_size=CHUNK)

    server.state.mode = "ok"
    calls = []
    path = download_checkpoint(
        info, cache=tmp_path, chunk_size=CHUNK,
        progress=lambda d, t: calls.append(d),
    )
    assert server.state.requests[-1][1] == "bytes=123457-"
    assert sha256_file(path) == info.sha256
    assert path.read_bytes() == blob
    assert not part_of(path).exists()
    assert calls[0] > 123_457 and calls[-1] == len(blob)


def test_server_ignoring_range_restarts(server, info, tmp_path, blob):
    server.state.mode = "truncate"
    server.state.truncate_at = 50_000
    with pytest.raises(RuntimeError, match="interrupted"):
        download_checkpoint(info, cache=tmp_path, chunk_size=CHUNK)

    server.state.mode = "ignore_range"
    path = download_checkpoint(info, cache=tmp_path, chunk_size=CHUNK)
    assert server.state.requests[-1][1] == "bytes=50000-"  # asked, got a 200
    assert path.read_bytes() == blob
    assert not part_of(path).exists()


def test_complete_part_is_finished_without_network(server, info, tmp_path, blob):
    dest = checkpoint_path(info, tmp_path)
    dest.parent.mkdir(parents=True)
    part_of(dest).write_bytes(blob)
    assert download_checkpoint(info, cache=tmp_path) == dest
    assert server.state.requests == []
    assert dest.read_bytes() == blob


def test_corrupt_cached_file_is_replaced(server, info, tmp_path, blob):
    dest = checkpoint_path(info, tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(bytes(len(blob)))  # right size, wrong bytes
    assert download_checkpoint(info, cache=tmp_path) == dest
    assert dest.read_bytes() == blob
    assert len(server.state.requests) == 1


def test_progress_exception_cancels_and_keeps_part(server, info, tmp_path, blob):
    class Cancelled(Exception):
        pass

    def cancel_after_first_chunk(done, total):
        raise Cancelled

    with pytest.raises(Cancelled):
        download_checkpoint(
            info, cache=tmp_path, chunk_size=CHUNK, progress=cancel_after_first_chunk
        )
    dest = checkpoint_path(info, tmp_path)
    assert part_of(dest).stat().st_size == CHUNK
    assert download_checkpoint(info, cache=tmp_path).read_bytes() == blob


def test_http_error_names_url_and_destination(server, info, tmp_path):
    server.state.mode = "missing"
    with pytest.raises(RuntimeError, match="404") as excinfo:
        download_checkpoint(info, cache=tmp_path)
    assert info.url in str(excinfo.value)
    assert str(checkpoint_path(info, tmp_path)) in str(excinfo.value)


def test_wrong_size_on_server_is_refused(server, blob, tmp_path):
    entry = CheckpointInfo(
        "fake", url_of(server), len(blob) + 1, hashlib.sha256(blob).hexdigest()
    )
    with pytest.raises(RuntimeError, match="different file"):
        download_checkpoint(entry, cache=tmp_path)
    assert not (tmp_path / "checkpoints" / "fake_ckpt.pth").exists()


def test_unreachable_server(blob, tmp_path):
    # A bound socket that never listens: connecting is refused at once, and no
    # other process can take the port while we hold it.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        url = f"http://127.0.0.1:{port}/fake_ckpt.pth"
        entry = CheckpointInfo("fake", url, len(blob), hashlib.sha256(blob).hexdigest())
        with pytest.raises(RuntimeError) as excinfo:
            download_checkpoint(entry, cache=tmp_path, timeout=2)
    message = str(excinfo.value)
    dest = tmp_path / "checkpoints" / "fake_ckpt.pth"
    assert url in message
    assert str(dest) in message
    assert "local checkpoint" in message
    assert not dest.exists() and not part_of(dest).exists()


def test_stalled_server_times_out(server, info, tmp_path):
    server.state.mode = "stall"
    with pytest.raises(RuntimeError) as excinfo:
        download_checkpoint(info, cache=tmp_path, timeout=0.2)
    assert info.url in str(excinfo.value)


# --------------------------------------------------------------------------
# resolve_checkpoint
# --------------------------------------------------------------------------


def test_resolve_local_path(tmp_path):
    local = tmp_path / "my.pth"
    local.write_bytes(b"x")
    assert resolve_checkpoint("vit_b", local, cache=tmp_path) == local
    assert resolve_checkpoint("vit_b", str(local), cache=tmp_path) == local


def test_resolve_missing_local_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        resolve_checkpoint("vit_b", tmp_path / "nope.pth", cache=tmp_path)
    with pytest.raises(FileNotFoundError, match="folder"):
        resolve_checkpoint("vit_b", tmp_path, cache=tmp_path)


def test_resolve_without_download(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        resolve_checkpoint("vit_b", download=False, cache=tmp_path)
    message = str(excinfo.value)
    assert CHECKPOINTS["vit_b"].url in message
    assert str(checkpoint_path("vit_b", tmp_path)) in message


def test_resolve_uses_cache_and_env_var(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    dest = checkpoint_path("vit_b")
    dest.parent.mkdir(parents=True)
    with open(dest, "wb") as f:
        f.truncate(CHECKPOINTS["vit_b"].size)
    assert resolve_checkpoint("vit_b", download=False) == dest


# --------------------------------------------------------------------------
# load_state_dict
# --------------------------------------------------------------------------


def _weights() -> dict[str, torch.Tensor]:
    return {"a.weight": torch.arange(6.0).reshape(2, 3), "a.bias": torch.ones(2)}


def _assert_weights(state):
    expected = _weights()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value)


@pytest.mark.parametrize(
    "wrap",
    [
        lambda w: w,
        lambda w: {"model": w, "epoch": 3},
        lambda w: {"state_dict": w, "optimizer": {"lr": 0.1}},
        lambda w: {f"module.{k}": v for k, v in w.items()},
        lambda w: {"model": {f"module.{k}": v for k, v in w.items()}},
        # micro-sam: an export with its decoder, and a training checkpoint (SAM under .sam)
        lambda w: {"model_state": w, "decoder_state": {"out_conv.weight": torch.ones(3, 64, 1, 1)}},
        lambda w: {"model_state": {f"sam.{k}": v for k, v in w.items()}, "optimizer_state": {}, "epoch": 2},
    ],
    ids=["bare", "model", "state_dict", "module_prefix", "nested_prefix", "microsam_export", "microsam_training"],
)
def test_load_state_dict_layouts(tmp_path, wrap):
    path = tmp_path / "w.pth"
    torch.save(wrap(_weights()), path)
    _assert_weights(load_state_dict(path))


def test_load_keeps_partial_module_prefix(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({"module.a": torch.ones(1), "b": torch.zeros(1)}, path)
    assert set(load_state_dict(path)) == {"module.a", "b"}


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "nope.pth")


def test_load_corrupt_file(tmp_path):
    path = tmp_path / "junk.pth"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint") as e:
        load_state_dict(path)
    assert str(path) in str(e.value)


def test_load_truncated_file(tmp_path):
    path = tmp_path / "cut.pth"
    torch.save(_weights(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint") as e:
        load_state_dict(path)
    assert str(path) in str(e.value)


def test_load_empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
        load_state_dict(path)


class _RunsCodeWhenUnpickled:
    """Unpickling this would create a folder: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def test_load_refuses_code_in_torch_file(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    torch.save({"w": torch.ones(1), "x": _RunsCodeWhenUnpickled(marker)}, path)
    with pytest.raises(ValueError, match="not a plain weights file"):
        load_state_dict(path)
    assert not marker.exists()


def test_load_refuses_custom_class_instance(tmp_path):
    path = tmp_path / "obj.pth"
    torch.save({"w": torch.ones(1), "cfg": _Config(3)}, path)
    with pytest.raises(ValueError, match="not a plain weights file"):
        load_state_dict(path)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_load_refuses_raw_pickle(tmp_path):
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"x": _RunsCodeWhenUnpickled(marker)}, f, protocol=2)
    with pytest.raises(ValueError):
        load_state_dict(path)
    assert not marker.exists()


@dataclass
class _Config:
    depth: int


def test_load_without_tensors(tmp_path):
    path = tmp_path / "none.pth"
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="no tensors"):
        load_state_dict(path)


def test_load_non_dict(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.ones(1)], path)
    with pytest.raises(ValueError, match="expected a dict"):
        load_state_dict(path)

