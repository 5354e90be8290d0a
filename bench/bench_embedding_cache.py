"""Reopening an image: computing its embedding against loading it from the embedding cache.

Run: ``python bench/bench_embedding_cache.py [--size 1024] [--repeats 1] [--loads 10]``.
vit_b geometry with random weights (timings do not depend on the weights). Prints
absolute times, the reopen speed-up, the entry size on disk and the cost of the key.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import best_time, machine

from src_core.embedding_cache import EmbeddingCache, embed_with_cache, embedding_preprocessing, make_key
from src_core.model.build import MODEL_CONFIGS, build_sam_from_config
from src_core.predictor import SamPredictor


def drop_from_page_cache(path: Path) -> bool:
    """Ask the OS to forget a file's cached pages, so the next read goes to the disk."""
    if not hasattr(os, "posix_fadvise"):
        return False
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # only clean pages can be dropped
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    return True


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=1024, help="square test image side")
    parser.add_argument("--repeats", type=int, default=1, help="encoder runs after a warm-up (best kept)")
    parser.add_argument("--loads", type=int, default=10, help="cache loads per measurement")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = build_sam_from_config(MODEL_CONFIGS["vit_b"])
    predictor = SamPredictor(model)
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    load_avg = ", ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(f"machine: {machine()}; load average {load_avg}")
    print(f"model: vit_b (random weights), image {args.size}x{args.size} uint8 RGB")

    model_id = "vit_b-random"
    rows = {}
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        cache = EmbeddingCache(tmp)
        for dtype in (torch.float32, torch.bfloat16):
            model.set_encoder_dtype(dtype)
            name = str(dtype).removeprefix("torch.")
            compute = best_time(lambda: predictor.set_image(image), args.repeats)
            miss = timed(lambda: embed_with_cache(predictor, image, cache, model_id=model_id))
            preprocessing = embedding_preprocessing(predictor, {})
            key = make_key(image, model_id=model_id, preprocessing=preprocessing)
            path = cache.path(key)

            def hit() -> None:
                assert embed_with_cache(predictor, image, cache, model_id=model_id)

            cold, dropped = [], False
            for _ in range(args.loads):
                dropped = drop_from_page_cache(path)
                cold.append(timed(hit))
            embedding = cache.get(key).embedding
            rows[name] = dict(
                compute=compute,
                miss=miss,
                cold=statistics.median(cold),
                warm=best_time(hit, args.loads),
                dropped=dropped,
                entry_bytes=path.stat().st_size,
                key=best_time(lambda: make_key(image, model_id=model_id, preprocessing=preprocessing), args.loads),
                get=best_time(lambda: cache.get(key), args.loads),
                set=best_time(lambda: predictor.set_embedding(torch.from_numpy(embedding), (args.size,) * 2), args.loads),
                put=best_time(lambda: cache.put(key, embedding, (args.size,) * 2, (1024, 1024)), 3),
            )
            if name == "float32":
                compressed = Path(tmp) / "compressed.npz"
                compress = timed(lambda: np.savez_compressed(compressed, embedding=embedding))

                def load_compressed() -> None:
                    with np.load(compressed) as data:
                        data["embedding"]

                deflate = dict(
                    bytes=compressed.stat().st_size,
                    write=compress,
                    load=best_time(load_compressed, args.loads),
                    entry_bytes=path.stat().st_size,
                    get=rows[name]["get"],
                    put=rows[name]["put"],
                )

    print()
    print(f"{'encoder':9s} {'compute s':>10s} {'miss+store s':>13s} {'reopen cold ms':>15s} "
          f"{'reopen warm ms':>15s} {'entry MiB':>10s}")
    for name, r in rows.items():
        print(f"{name:9s} {r['compute']:10.3f} {r['miss']:13.3f} {r['cold'] * 1e3:15.1f} "
              f"{r['warm'] * 1e3:15.1f} {r['entry_bytes'] / 2**20:10.2f}")
    for name, r in rows.items():
        print(f"reopen is {r['compute'] / r['cold']:.0f}x faster than compute ({name} encoder, cold-ish load; "
              f"{r['compute'] / r['warm']:.0f}x warm)")
    print(f"cold-ish = entry dropped from the page cache before each load "
          f"({'posix_fadvise DONTNEED' if rows['float32']['dropped'] else 'not possible here: same as warm'}), "
          f"median of {args.loads}; warm = best of {args.loads}; reopen = key + get + set_embedding")
    print()
    for name, r in rows.items():
        print(f"{name} entry: {r['entry_bytes']} bytes, {2 * 1024**3 // r['entry_bytes']} fit in 2 GiB; warm "
              f"key {r['key'] * 1e3:.1f} ms ({args.size}x{args.size}x3 uint8), get {r['get'] * 1e3:.1f} ms, "
              f"set_embedding {r['set'] * 1e3:.2f} ms, put {r['put'] * 1e3:.1f} ms")
    print(f"deflate (np.savez_compressed) on the float32 entry: {deflate['bytes'] / deflate['entry_bytes']:.1%} "
          f"of the size, write {deflate['write'] * 1e3:.0f} ms (put {deflate['put'] * 1e3:.0f} ms), "
          f"load {deflate['load'] * 1e3:.1f} ms (get {deflate['get'] * 1e3:.1f} ms)")

    print()
    slice_ = np.random.default_rng(1).integers(0, 65535, (2048, 2048), dtype=np.uint16)
    settings = {"channel_axis": None, "contrast_limits": [0.0, 4000.0], "encoder_dtype": "torch.float32"}
    key_2048 = best_time(lambda: make_key(slice_, model_id="vit_b", preprocessing=settings), 10)
    stack = np.random.default_rng(2).integers(0, 65535, (2048, 2048, 8), dtype=np.uint16)  # (Y, X, Z)
    strided = stack[..., 3]  # a slice across the last axis: every pixel 16 bytes apart
    key_strided = best_time(lambda: make_key(strided, model_id="vit_b", preprocessing=settings), 5)
    blake = best_time(lambda: hashlib.blake2b(slice_).digest(), 10)
    print(f"key of a 2048x2048 uint16 slice (8 MiB): {key_2048 * 1e3:.1f} ms contiguous "
          f"({slice_.nbytes / key_2048 / 1e9:.2f} GB/s sha256), {key_strided * 1e3:.1f} ms as a strided view; "
          f"blake2b would take {blake * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
