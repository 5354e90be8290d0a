"""Choosing where and in which precision the model runs."""

from __future__ import annotations

import sys
from functools import lru_cache
from pathlib import Path

import torch

_DTYPE_NAMES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return ``device``, or the best available one (cuda > mps > cpu) when None/"auto"."""
    if device is None or (isinstance(device, str) and device == "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: expected 'auto', 'cpu', 'cuda' or 'mps'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but no CUDA GPU is available; use 'cpu' or 'auto'")
    return resolved


@lru_cache(maxsize=1)
def _cpu_flags() -> str:
    cpuinfo = Path("/proc/cpuinfo")
    if sys.platform.startswith("linux") and cpuinfo.exists():
        return cpuinfo.read_text(errors="ignore")
    return ""


def _torch_cpu_check(name: str) -> bool:
    checker = getattr(torch.cpu, name, None)
    return bool(checker()) if checker is not None else False


def cpu_supports_bfloat16() -> bool:
    """True when the CPU has native bfloat16 matrix instructions (AMX or AVX512-BF16)."""
    flags = _cpu_flags()
    if flags:
        return "amx_bf16" in flags or "avx512_bf16" in flags
    if sys.platform == "darwin":
        return False  # Apple silicon runs through MPS; Intel Macs lack AMX
    return _torch_cpu_check("_is_avx512_bf16_supported")


def cpu_has_amx() -> bool:
    """True when the CPU has AMX tiles for bfloat16 (Intel Sapphire Rapids and later)."""
    flags = _cpu_flags()
    if flags:
        return "amx_bf16" in flags
    if sys.platform == "darwin":
        return False
    return _torch_cpu_check("_is_amx_tile_supported")


def cpu_kind() -> str:
    """The CPU's bfloat16 class, as the benchmarks report it: "amx", "avx512-bf16" or "plain"."""
    if cpu_has_amx():
        return "amx"
    return "avx512-bf16" if cpu_supports_bfloat16() else "plain"


def bfloat16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 runs faster than float32 on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return cpu_supports_bfloat16()
    return False


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """Map None/"float32" -> float32, "bfloat16" -> bfloat16, "auto" -> the fastest accurate one.

    "auto" picks bfloat16 where the hardware runs it natively (CUDA with bf16, CPUs with
    AMX/AVX512-BF16) and float32 elsewhere.
    """
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float32, torch.bfloat16):
            raise ValueError(f"unsupported dtype {dtype}: expected float32 or bfloat16")
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if bfloat16_is_fast(device) else torch.float32
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"unknown dtype {dtype!r}: expected 'auto', 'float32' or 'bfloat16'")
    return _DTYPE_NAMES[dtype]
