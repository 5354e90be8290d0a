"""The on-disk embedding cache: exact round trips, keys, corruption, LRU, atomic writes."""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from src_core.embedding_cache import (
    FORMAT_VERSION,
    CachedEmbedding,
    EmbeddingCache,
    embed_with_cache,
    embedding_preprocessing,
    make_key,
)
from src_core.model.build import SamConfig, build_sam_from_config
from src_core.predictor import SamPredictor

TINY = SamConfig(64, 2, 2, (1,))  # real 64x64 embedding geometry, ~2 s per image on 2 cores
SMALL = SamConfig(64, 2, 2, (1,), image_size=256)  # 16x16 embedding, ~15 ms per image
POINT = dict(point_coords=np.array([[50.0, 40.0]]), point_labels=np.array([1]))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


@pytest.fixture(scope="module")
def tiny_model():
    torch.manual_seed(0)
    return build_sam_from_config(TINY)


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(1)
    return build_sam_from_config(SMALL)


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4000, (96, 128), dtype=np.uint16)


def spy_on_set_image(predictor: SamPredictor) -> list[dict]:
    """Record every set_image call of ``predictor`` (its signature stays visible)."""
    calls: list[dict] = []
    original = predictor.set_image

    @functools.wraps(original)
    def spy(*args, **kwargs):
        calls.append(kwargs)
        return original(*args, **kwargs)

    predictor.set_image = spy
    return calls


def random_embedding(seed: int = 0, shape=(1, 256, 16, 16)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def key_of(seed: int) -> str:
    return make_key(np.full((4, 4), seed, np.uint8), model_id="m", preprocessing={})


# -- round trip ------------------------------------------------------------------------


def test_round_trip_is_bit_exact(tmp_path):
    cache = EmbeddingCache(tmp_path)
    embedding = random_embedding()
    embedding.flat[:4] = [-0.0, np.float32(1e-45), np.finfo(np.float32).max, np.nan]
    key = key_of(1)
    path = cache.put(key, embedding, (96, 128), (192, 256))
    assert path == tmp_path / f"{key}.npz" and path.is_file()
    entry = cache.get(key)
    assert isinstance(entry, CachedEmbedding)
    assert entry.embedding.dtype == np.float32 and entry.embedding.shape == embedding.shape
    assert entry.embedding.tobytes() == embedding.tobytes()
    assert entry.original_size == (96, 128) and entry.input_size == (192, 256)
    assert all(type(v) is int for v in entry.original_size + entry.input_size)


def test_put_accepts_torch_tensors_and_stores_float32(tmp_path):
    cache = EmbeddingCache(tmp_path)
    tensor = torch.from_numpy(random_embedding())
    cache.put(key_of(1), tensor, (10, 20), (128, 256))
    assert np.array_equal(cache.get(key_of(1)).embedding, tensor.numpy())
    with np.load(cache.path(key_of(1))) as data:
        metadata = json.loads(data["metadata"].tobytes())
    assert metadata["format"] == FORMAT_VERSION and metadata["dtype"] == "float32"
    assert metadata["key"] == key_of(1) and metadata["shape"] == [1, 256, 16, 16]
    assert metadata["storage"] == "float32"


def test_bfloat16_encoder_output_is_stored_in_half_the_space_bit_exact(tmp_path):
    """float32 values with 16 zero low bits (a bfloat16 encoder's) keep only their upper halves."""
    cache = EmbeddingCache(tmp_path)
    full = torch.from_numpy(random_embedding())
    from_bf16 = full.to(torch.bfloat16).float()
    from_bf16.view(-1)[:3] = torch.tensor([-0.0, float("inf"), float("nan")])
    plain = cache.put(key_of(1), full, (10, 20), (128, 256)).stat().st_size
    packed = cache.put(key_of(2), from_bf16, (10, 20), (128, 256)).stat().st_size
    assert packed < 0.55 * plain
    assert cache.get(key_of(2)).embedding.tobytes() == from_bf16.numpy().tobytes()
    almost = from_bf16.clone()
    almost.view(torch.int32)[0, 5, 5, 5] |= 1  # one low bit set: no longer packable
    assert abs(cache.put(key_of(3), almost, (10, 20), (128, 256)).stat().st_size - plain) < 64
    assert cache.get(key_of(3)).embedding.tobytes() == almost.numpy().tobytes()


def test_cache_load_gives_identical_predictions(tmp_path, tiny_model, image):
    cache = EmbeddingCache(tmp_path)
    fresh = SamPredictor(tiny_model)
    calls = spy_on_set_image(fresh)
    assert embed_with_cache(fresh, image, cache, model_id="tiny") is False
    assert len(calls) == 1 and len(cache) == 1
    expected = fresh.predict(**POINT)

    reopened = SamPredictor(tiny_model)
    calls = spy_on_set_image(reopened)
    assert embed_with_cache(reopened, image, cache, model_id="tiny") is True
    assert calls == []
    assert torch.equal(reopened.get_image_embedding(), fresh.get_image_embedding())
    assert reopened.original_size == fresh.original_size and reopened.input_size == fresh.input_size
    for got, want in zip(reopened.predict(**POINT), expected):
        assert np.array_equal(got, want)


# -- keys --------------------------------------------------------------------------------


def test_key_depends_on_content_shape_dtype_and_model(image):
    base = make_key(image, model_id="vit_b-1", preprocessing={})
    assert len(base) == 64 and base == make_key(image.copy(), model_id="vit_b-1", preprocessing={})
    changed = image.copy()
    changed[50, 60] += 1
    assert make_key(changed, model_id="vit_b-1", preprocessing={}) != base
    assert make_key(image.reshape(128, 96), model_id="vit_b-1", preprocessing={}) != base
    assert make_key(image.view(np.int16), model_id="vit_b-1", preprocessing={}) != base
    assert make_key(image, model_id="vit_b-2", preprocessing={}) != base


def test_key_ignores_memory_layout(image):
    base = make_key(image, model_id="m", preprocessing={})
    assert make_key(np.asfortranarray(image), model_id="m", preprocessing={}) == base
    stack = np.stack([image * 0, image, image * 2], axis=-1)  # (H, W, Z): stack[..., 1] is strided
    assert not stack[..., 1].flags.c_contiguous
    assert make_key(stack[..., 1], model_id="m", preprocessing={}) == base
    big = np.zeros((3000, 3000), np.uint8)  # several hash blocks when strided
    assert make_key(big.T, model_id="m", preprocessing={}) == make_key(big.T.copy(), model_id="m", preprocessing={})


@pytest.mark.parametrize(
    "kwargs",
    [
        {"image_format": "BGR"},
        {"channel_axis": 0},
        {"channels": [0]},
        {"contrast_limits": (0, 3000)},
        {"percentiles": (1.0, 99.0)},
    ],
)
def test_key_depends_on_every_set_image_setting(small_model, image, kwargs):
    predictor = SamPredictor(small_model)
    default = make_key(image, model_id="m", preprocessing=embedding_preprocessing(predictor, {}))
    changed = make_key(image, model_id="m", preprocessing=embedding_preprocessing(predictor, kwargs))
    assert changed != default


def test_key_depends_on_encoder_dtype(image):
    torch.manual_seed(1)
    model = build_sam_from_config(SMALL)
    float32 = embedding_preprocessing(SamPredictor(model), {})
    bfloat16 = embedding_preprocessing(SamPredictor(model.set_encoder_dtype(torch.bfloat16)), {})
    assert float32["encoder_dtype"] == "torch.float32" and bfloat16["encoder_dtype"] == "torch.bfloat16"
    assert make_key(image, model_id="m", preprocessing=float32) != make_key(
        image, model_id="m", preprocessing=bfloat16
    )


def test_key_spells_equal_settings_one_way(small_model, image):
    predictor = SamPredictor(small_model)
    default = embedding_preprocessing(predictor, {})
    explicit = embedding_preprocessing(predictor, {"image_format": "RGB", "percentiles": [0.5, 99.5]})
    assert default == explicit
    ints = embedding_preprocessing(predictor, {"contrast_limits": (0, 255)})
    floats = embedding_preprocessing(predictor, {"contrast_limits": np.array([0.0, 255.0])})
    assert make_key(image, model_id="m", preprocessing=ints) == make_key(image, model_id="m", preprocessing=floats)
    a = make_key(image, model_id="m", preprocessing={"a": 1, "b": (2, 3)})
    assert a == make_key(image, model_id="m", preprocessing={"b": [2, 3], "a": np.int64(1)})


def test_make_key_rejects_what_it_cannot_digest(image):
    with pytest.raises(ValueError, match="numeric"):
        make_key(np.array(["a", "b"], dtype=object), model_id="m", preprocessing={})
    with pytest.raises(ValueError, match="model_id"):
        make_key(image, model_id="", preprocessing={})
    with pytest.raises(ValueError, match="preprocessing"):
        make_key(image, model_id="m", preprocessing={"f": object()})
    with pytest.raises(TypeError):
        embedding_preprocessing(SamPredictor(build_sam_from_config(SMALL)), {"gamma": 2})


# -- corrupt entries -------------------------------------------------------------------


def rewrite(path: Path, **changes) -> None:
    """Rewrite an entry with some arrays (or metadata fields) replaced."""
    with np.load(path) as data:
        arrays = {name: data[name] for name in data.files}
    metadata = json.loads(arrays["metadata"].tobytes())
    for name, value in changes.items():
        if name in arrays:
            arrays[name] = value
        else:
            metadata[name] = value
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), np.uint8)
    np.savez(path, **arrays)


def corrupt(path: Path, kind: str, other_key: str) -> None:
    raw = path.read_bytes()
    if kind == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "not a zip":
        path.write_bytes(b"this is not a zip archive" * 100)
    elif kind == "flipped byte":
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1 :])
    elif kind == "bad json":
        with np.load(path) as data:
            arrays = {name: data[name] for name in data.files}
        arrays["metadata"] = np.frombuffer(b"{not json", np.uint8)
        np.savez(path, **arrays)
    elif kind == "checksum mismatch":
        with np.load(path) as data:
            embedding = data["embedding"].copy()
        embedding.flat[7] += 1.0
        rewrite(path, embedding=embedding)
    elif kind == "wrong format version":
        rewrite(path, format=FORMAT_VERSION + 1)
    elif kind == "unknown storage":
        rewrite(path, storage="float16")
    elif kind == "key mismatch":
        rewrite(path, key=other_key)
    elif kind == "missing member":
        with np.load(path) as data:
            np.savez(path, embedding=data["embedding"], metadata=data["metadata"])
    elif kind == "pickled object":
        np.savez(path, embedding=np.array([{"x": 1}], dtype=object))
    else:
        raise AssertionError(kind)


@pytest.fixture(scope="module")
def small_entry(small_model, tmp_path_factory):
    """(key, file bytes, embedding) of the test image's entry, computed once."""
    image = np.random.default_rng(0).integers(0, 4000, (96, 128), dtype=np.uint16)
    cache = EmbeddingCache(tmp_path_factory.mktemp("entry"))
    predictor = SamPredictor(small_model)
    assert embed_with_cache(predictor, image, cache, model_id="small") is False
    (path,) = cache.root.glob("*.npz")
    return path.stem, path.read_bytes(), predictor.get_image_embedding().clone()


@pytest.mark.parametrize(
    "kind",
    [
        "truncated",
        "empty",
        "not a zip",
        "flipped byte",
        "bad json",
        "checksum mismatch",
        "wrong format version",
        "unknown storage",
        "key mismatch",
        "missing member",
        "pickled object",
    ],
)
def test_corrupt_entry_is_a_miss_then_recomputed(tmp_path, small_model, small_entry, image, kind):
    key, good_bytes, good = small_entry
    cache = EmbeddingCache(tmp_path)
    path = cache.path(key)
    path.write_bytes(good_bytes)
    assert torch.equal(torch.from_numpy(cache.get(key).embedding), good)
    corrupt(path, kind, other_key=key_of(5))

    assert cache.get(key) is None
    assert not path.exists()
    predictor = SamPredictor(small_model)
    calls = spy_on_set_image(predictor)
    assert embed_with_cache(predictor, image, cache, model_id="small") is False
    assert len(calls) == 1 and path.is_file()
    assert embed_with_cache(predictor, image, cache, model_id="small") is True
    assert len(calls) == 1
    assert torch.equal(predictor.get_image_embedding(), good)


def test_entry_of_another_geometry_is_recomputed(tmp_path, small_model, image):
    """A model_id reused for another model must not crash the decoder later."""
    cache = EmbeddingCache(tmp_path)
    predictor = SamPredictor(small_model)
    key = make_key(image, model_id="m", preprocessing=embedding_preprocessing(predictor, {}))
    cache.put(key, random_embedding(shape=(1, 256, 64, 64)), (96, 128), (768, 1024))
    calls = spy_on_set_image(predictor)
    assert embed_with_cache(predictor, image, cache, model_id="m") is False
    assert len(calls) == 1
    assert cache.get(key).embedding.shape == (1, 256, 16, 16)


# -- LRU eviction ------------------------------------------------------------------------


def set_mtime(path: Path, seconds: int) -> None:
    os.utime(path, ns=(seconds * 10**9, seconds * 10**9))


def test_least_recently_used_entries_are_evicted_first(tmp_path):
    probe = EmbeddingCache(tmp_path / "probe").put(key_of(0), random_embedding(), (8, 8), (256, 256))
    entry_bytes = probe.stat().st_size
    cache = EmbeddingCache(tmp_path / "lru", max_bytes=3 * entry_bytes + entry_bytes // 2)
    a, b, c, d, e = (key_of(i) for i in range(1, 6))
    for seed, key in enumerate((a, b, c)):
        cache.put(key, random_embedding(seed), (8, 8), (256, 256))
    set_mtime(cache.path(a), 1_000)
    set_mtime(cache.path(b), 3_000)
    set_mtime(cache.path(c), 2_000)
    assert cache.get(a) is not None  # a hit makes a the most recent
    cache.put(d, random_embedding(4), (8, 8), (256, 256))
    assert (a in cache, b in cache, c in cache, d in cache) == (True, True, False, True)
    cache.put(e, random_embedding(5), (8, 8), (256, 256))
    assert (a in cache, b in cache, d in cache, e in cache) == (True, False, True, True)
    assert len(cache) == 3 and cache.size_bytes() <= cache.max_bytes

    cache.max_bytes = entry_bytes + entry_bytes // 2
    assert cache.trim() > 0
    assert len(cache) == 1


def test_entry_larger_than_the_limit_is_not_kept(tmp_path):
    cache = EmbeddingCache(tmp_path, max_bytes=10**9)
    cache.put(key_of(1), random_embedding(), (8, 8), (256, 256))
    cache.max_bytes = 1000
    assert cache.put(key_of(2), random_embedding(2), (8, 8), (256, 256)) is None
    assert key_of(2) not in cache and key_of(1) in cache  # the others are left alone
    assert EmbeddingCache(tmp_path / "off", max_bytes=0).put(key_of(3), random_embedding(), (8, 8), (256, 256)) is None
    with pytest.raises(ValueError, match="max_bytes"):
        EmbeddingCache(tmp_path, max_bytes=-1)


def test_bookkeeping_and_clear(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    cache = EmbeddingCache()
    assert cache.root == tmp_path / "cache" / "embeddings"
    assert len(cache) == 0 and cache.size_bytes() == 0 and not cache.root.exists()
    assert cache.get(key_of(1)) is None and key_of(1) not in cache and "not a key" not in cache
    cache.put(key_of(1), random_embedding(), (8, 8), (256, 256))
    cache.put(key_of(2), random_embedding(), (8, 8), (256, 256))
    (cache.root / "notes.txt").write_text("not ours")
    stale = cache.root / ".tmp-crashed.part"
    stale.write_bytes(b"half")
    set_mtime(stale, 1_000)
    assert len(cache) == 2 and key_of(1) in cache
    assert cache.size_bytes() == sum(cache.path(k).stat().st_size for k in (key_of(1), key_of(2)))
    assert not stale.exists()  # a crashed writer's leftover is swept
    cache.clear()
    assert len(cache) == 0 and (cache.root / "notes.txt").exists()
    with pytest.raises(ValueError, match="hex"):
        cache.get("../../etc/passwd")
    with pytest.raises(ValueError, match=r"\(1, C, h, w\)"):
        cache.put(key_of(3), np.zeros((256, 16, 16), np.float32), (8, 8), (256, 256))
    with pytest.raises(ValueError, match="original_size"):
        cache.put(key_of(3), random_embedding(), (8,), (256, 256))


# -- failures while writing ----------------------------------------------------------------


def test_failure_during_write_leaves_nothing_behind(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    key = key_of(1)
    real_savez = np.savez

    def half_write_then_disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half an entry")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", half_write_then_disk_full)
    with pytest.raises(RuntimeError) as info:
        cache.put(key, random_embedding(), (8, 8), (256, 256))
    message = str(info.value)
    assert str(tmp_path) in message and "No space left" in message
    assert "NAPARI_SAM_CACHE" in message and "root=" in message
    assert os.listdir(tmp_path) == []

    monkeypatch.setattr(np, "savez", real_savez)
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError(5, "I/O error")))
    with pytest.raises(RuntimeError, match="I/O error"):
        cache.put(key, random_embedding(), (8, 8), (256, 256))
    assert os.listdir(tmp_path) == []


def test_interrupted_overwrite_keeps_the_old_entry(tmp_path, monkeypatch):
    cache = EmbeddingCache(tmp_path)
    key = key_of(1)
    cache.put(key, random_embedding(1), (8, 8), (256, 256))

    class Interrupted(Exception):
        pass

    def interrupted(file, **arrays):
        file.write(b"garbage")
        raise Interrupted

    monkeypatch.setattr(np, "savez", interrupted)
    with pytest.raises(Interrupted):
        cache.put(key, random_embedding(2), (8, 8), (256, 256))
    assert os.listdir(tmp_path) == [f"{key}.npz"]
    assert np.array_equal(cache.get(key).embedding, random_embedding(1))


def test_unwritable_root_raises_a_helpful_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("a file where the cache folder should go")
    cache = EmbeddingCache(blocker / "embeddings")
    with pytest.raises(RuntimeError) as info:
        cache.put(key_of(1), random_embedding(), (8, 8), (256, 256))
    assert str(blocker / "embeddings") in str(info.value) and "NAPARI_SAM_CACHE" in str(info.value)
    assert cache.get(key_of(1)) is None and len(cache) == 0


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_read_only_root_raises_a_helpful_error(tmp_path):
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o500)
    try:
        with pytest.raises(RuntimeError, match="ro"):
            EmbeddingCache(root).put(key_of(1), random_embedding(), (8, 8), (256, 256))
    finally:
        root.chmod(0o700)


def test_embed_with_cache_segments_even_when_storing_fails(tmp_path, small_model, image):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    cache = EmbeddingCache(blocker / "embeddings")
    predictor = SamPredictor(small_model)
    errors: list[RuntimeError] = []
    assert embed_with_cache(predictor, image, cache, model_id="m", on_store_error=errors.append) is False
    assert len(errors) == 1 and predictor.is_image_set
    predictor.reset_image()
    with pytest.raises(RuntimeError, match="embeddings"):
        embed_with_cache(predictor, image, cache, model_id="m")
    assert predictor.is_image_set  # the embedding is usable even though it was not stored


def test_embed_with_cache_passes_settings_and_keys_on_them(tmp_path, small_model, image):
    cache = EmbeddingCache(tmp_path)
    predictor = SamPredictor(small_model)
    calls = spy_on_set_image(predictor)
    assert embed_with_cache(predictor, image, None, model_id="m") is False
    assert len(calls) == 1 and len(cache) == 0
    assert embed_with_cache(predictor, image, cache, model_id="m", contrast_limits=(0, 2000)) is False
    assert calls[-1] == {"contrast_limits": (0, 2000)}
    assert embed_with_cache(predictor, image, cache, model_id="m", contrast_limits=(0.0, 2000.0)) is True
    assert embed_with_cache(predictor, image, cache, model_id="m", contrast_limits=(0, 3000)) is False
    assert embed_with_cache(predictor, image, cache, model_id="other", contrast_limits=(0, 2000)) is False
    assert len(calls) == 4 and len(cache) == 3


def test_concurrent_writers_and_readers_never_see_wrong_data(tmp_path):
    """Plugin workers may store and load at once; eviction may race with reads."""
    from concurrent.futures import ThreadPoolExecutor

    entry_bytes = EmbeddingCache(tmp_path / "probe").put(key_of(0), random_embedding(), (8, 8), (256, 256)).stat().st_size
    cache = EmbeddingCache(tmp_path / "shared", max_bytes=3 * entry_bytes)
    expected = {key_of(i): random_embedding(i) for i in range(6)}

    def work(step: int) -> None:
        key = key_of(step % 6)
        cache.put(key, expected[key], (8, 8), (256, 256))
        for other in expected:
            entry = cache.get(other)
            assert entry is None or np.array_equal(entry.embedding, expected[other])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(work, range(24)))
    assert 1 <= len(cache) <= 3
    assert not list(cache.root.glob(".tmp-*"))


def test_entry_held_open_elsewhere_is_kept_when_replacing_it_is_refused(tmp_path, monkeypatch):
    """What Windows does when another reader has the entry open: keep that entry, not an error."""
    cache = EmbeddingCache(tmp_path)
    cache.put(key_of(1), random_embedding(1), (8, 8), (256, 256))

    def refuse(*args):
        raise PermissionError(13, "The process cannot access the file")

    monkeypatch.setattr(os, "replace", refuse)
    assert cache.put(key_of(1), random_embedding(1), (8, 8), (256, 256)) == cache.path(key_of(1))
    assert os.listdir(tmp_path) == [f"{key_of(1)}.npz"]
    with pytest.raises(RuntimeError, match="cannot access"):
        cache.put(key_of(2), random_embedding(2), (8, 8), (256, 256))
    assert os.listdir(tmp_path) == [f"{key_of(1)}.npz"]


# -- SAM 2.1: the embedding with its high-resolution features --------------------------


@pytest.fixture(scope="module")
def sam2_tiny():
    from src_core.model.sam2.sam2_base import build_sam2_model

    torch.manual_seed(3)
    return build_sam2_model("tiny").eval()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_sam2_embedding_and_high_res_features_round_trip(tmp_path, sam2_tiny, image, dtype):
    """SAM 2.1's image predictor is cached with both high-resolution maps; reopening
    gives the same predictions bit for bit, in float32 and with the bfloat16 trunk."""
    import copy

    from src_core.embedding_cache import cache_model_id
    from src_core.sam2_predictor import SAM2ImagePredictor

    model = copy.deepcopy(sam2_tiny).set_compute_dtype(dtype)
    model.weights_id = "sam2.1_hiera_tiny-test"
    cache = EmbeddingCache(tmp_path)
    fresh = SAM2ImagePredictor(model)
    assert cache_model_id(fresh) == "sam2.1_hiera_tiny-test"
    assert embed_with_cache(fresh, image, cache, model_id="s2", contrast_limits=(0, 4000)) is False
    assert len(cache) == 1
    entry = cache.get(next(iter(p.stem for p in tmp_path.glob("*.npz"))))
    assert sorted(entry.extras) == ["high_res_0", "high_res_1"]
    assert entry.extras["high_res_0"].shape == (1, 32, 256, 256)
    expected = fresh.predict(**POINT)

    reopened = SAM2ImagePredictor(model)
    calls = spy_on_set_image(reopened)
    assert embed_with_cache(reopened, image, cache, model_id="s2", contrast_limits=(0, 4000)) is True
    assert calls == []
    assert reopened.original_size == fresh.original_size == image.shape
    for got, want in zip(reopened.predict(**POINT), expected):
        assert np.array_equal(got, want)


def test_sam2_needs_its_high_res_features(tmp_path, sam2_tiny, image):
    """An entry without the high-resolution features (a SAM 1-style entry under a reused
    model id) is computed again and replaced; set_embedding without them is refused."""
    from src_core.sam2_predictor import SAM2ImagePredictor

    predictor = SAM2ImagePredictor(sam2_tiny)
    cache = EmbeddingCache(tmp_path)
    preprocessing = embedding_preprocessing(predictor, {})
    key = make_key(image, model_id="s2", preprocessing=preprocessing)
    cache.put(key, random_embedding(shape=(1, 256, 64, 64)), image.shape, (1024, 1024))
    calls = spy_on_set_image(predictor)
    assert embed_with_cache(predictor, image, cache, model_id="s2") is False and len(calls) == 1
    assert sorted(cache.get(key).extras) == ["high_res_0", "high_res_1"]
    with pytest.raises(ValueError, match="high-resolution features"):
        predictor.set_embedding(torch.zeros(1, 256, 64, 64), (96, 128))
