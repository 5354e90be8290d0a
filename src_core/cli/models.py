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
        description="List the known SAM models by group (Meta's SAM, micro-sam's microscopy "
        "fine-tunes, small and fast, built-in, SAM 2.1), their download size, whether they are "
        f"cached, what each is for, and the cache folder ({checkpoints._CACHE_ENV_VAR} overrides it).",
    )
    models.set_defaults(func=_cmd_models)

    download = subparsers.add_parser(
        "download", help="download a model's published weights into the cache",
        description="Download, verify (size and the published sha256 or xxh128, where "
        "published) and cache a model's weights; an interrupted download resumes. Prints "
        "the file's path.",
    )
    download.add_argument("model", metavar="MODEL",
                          help="a name that 'napari-sam models' lists: vit_b, vit_l, vit_h, vit_t, "
                          "vit_b_lm and the other microscopy models, sam2.1_hiera_tiny, ...")
    download.add_argument("--url", default=None, help=argparse.SUPPRESS)  # mirrors, tests
    download.set_defaults(func=_cmd_download)


def _cached_state(info: checkpoints.CheckpointInfo) -> str:
    """"yes", "no" or "partial N%" for one registry entry's file in the cache."""
    path = checkpoints.checkpoint_path(info)
    part = path.with_name(path.name + ".part")
    if checkpoints.cached_checkpoint(info) is not None:
        return "yes"
    if part.is_file():
        done = part.stat().st_size
        return f"partial {100 * done // info.size}%" if info.size else f"partial {done / 1e6:.0f} MB"
    return "no"


def _cmd_models(args: argparse.Namespace) -> int:
    header = ("model", "size", "cached", "what it is for", "path")
    groups = []
    for group in checkpoints.model_groups(video=True):
        rows = []
        for name, summary in group.models:
            if name == checkpoints.EMBEDDED_MODEL:
                try:
                    embedded = checkpoints.embedded_checkpoint()
                except FileNotFoundError:
                    continue
                rows.append((name, f"{embedded.stat().st_size / 1e6:.0f} MB", "built-in", summary, str(embedded)))
                continue
            info = checkpoints.checkpoint_info(name)
            estimate = checkpoints.size_estimate(info)
            size = (f"{info.size / 1e6:.0f} MB" if info.size else
                    f"about {estimate / 1e6:.0f} MB" if estimate else "size not published")
            path = str(checkpoints.checkpoint_path(info))
            rows.append((name, size, _cached_state(info), summary, path))
        groups.append((group.title, rows))
    widths = [max(len(row[i]) for _, rows in groups for row in [header, *rows]) for i in range(4)]
    print("  ".join(cell.ljust(w) for cell, w in zip(header[:4], widths)) + "  " + header[4])
    for title, rows in groups:
        print(f"\n-- {title} --")
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row[:4], widths)) + "  " + row[4])
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
