"""Shared helpers for the benchmarks: machine description, timing, the reference."""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def use_reference() -> None:
    """Make Meta's reference importable (it needs torchvision; tests ship a stand-in)."""
    import importlib.util

    if importlib.util.find_spec("torchvision") is None:
        sys.path.insert(0, str(ROOT / "tests" / "_torchvision_standin"))
    sys.path.insert(0, str(ROOT / "tests"))


def machine() -> str:
    cpu = platform.processor() or "cpu"
    flags = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        found = [f for f in ("amx_bf16", "avx512_bf16", "avx512f") if f in text]
        flags = ",".join(found)
    except OSError:
        pass
    return (
        f"{cpu} [{flags}], {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )


def best_time(fn, repeats: int, warmup: int = 1) -> float:
    """Best wall time of ``repeats`` calls after ``warmup`` calls, in seconds."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


class Timed:
    """Adds up the time spent in calls: ``timer(fn, *args)`` calls ``fn`` and counts it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.calls = 0

    def __call__(self, fn, *args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start
            self.calls += 1
