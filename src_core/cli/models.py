"""``napari-sam models`` and ``napari-sam download``: the registry, the cache, downloads."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .. import checkpoints
from .common import ENGINE_ERRORS, ProgressBar, UsageError, check_model_name, status

__all__ = ["add_model_parsers"]


def add_model_parsers(subparsers: Any) -> None:
    """Add ``models`` and ``download`` to ``napari-sam``'s subparsers."""
    models = subparsers.add_parser(
        "models", help="list the known models and the checkpoint cache",
        description="List the known SAM models, their download size, whether they are "
        f"cached, and the cache folder ({checkpoints._CACHE_ENV_VAR} overrides it).",
    )
    models.set_defaults(func=_cmd_models)

    download = subparsers.add_parser(
        "download", help="download a model's official weights into the cache",
        description="Download, verify (size and sha256) and cache a model's official "
        "weights; an interrupted download resumes. Prints the file's path.",
    )
    download.add_argument("model", metavar="MODEL",
                          help="vit_b, vit_l, vit_h, or sam2.1_hiera_tiny/small/base_plus/large")
    download.add_argument("--url", default=None, help=argparse.SUPPRESS)  # mirrors, tests
    download.set_defaults(func=_cmd_download)


def _cmd_models(args: argparse.Namespace) -> int:
    rows = [("model", "size", "cached", "path")]
    for name, info in {**checkpoints.CHECKPOINTS, **checkpoints.SAM2_CHECKPOINTS}.items():
        path = checkpoints.checkpoint_path(info)
        part = path.with_name(path.name + ".part")
        if checkpoints.cached_checkpoint(info) is not None:
            cached = "yes"
        elif part.is_file():
            done = part.stat().st_size
            cached = f"partial {100 * done // info.size}%" if info.size else f"partial {done / 1e6:.0f} MB"
        else:
            cached = "no"
        size = f"{info.size / 1e6:.0f} MB" if info.size else "size not published"
        rows.append((name, size, cached, str(path)))
    try:
        embedded = checkpoints.embedded_checkpoint()
        rows.append((checkpoints.EMBEDDED_MODEL, f"{embedded.stat().st_size / 1e6:.0f} MB", "built-in", str(embedded)))
    except FileNotFoundError:
        pass
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    env = checkpoints._CACHE_ENV_VAR
    source = f"set by {env}" if os.environ.get(env) else f"set {env} to use another folder"
    print(f"\ncache folder: {checkpoints.cache_dir()} ({source})")
    print(f"default model: {checkpoints.default_model_type()}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    name = check_model_name(args.model, sam2=True)
    if checkpoints.cached_checkpoint(name) is not None:
        status(f"{name} is already cached; verifying its checksum...")
    bar = ProgressBar(name, "B")
    try:
        path = checkpoints.download_checkpoint(name, url=args.url, progress=bar)
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()
    print(path)
    return 0
