"""``napari-sam label``: segment everything in a whole dataset, on Dask.

``napari-sam label INPUT -o OUT [--model NAME] [--checkpoint FILE] [generator
options] [--scheduler ADDRESS | --workers N] [--overwrite]`` writes, for every
image of INPUT (a folder, a quoted glob, a TIFF stack or a video), ``KEY.tif``
(labels; a stack's planes or a video's frames: one ``FILE.zarr`` store) and ``KEY.json`` (SA-1B-style annotations with COCO RLEs) into OUT.
Finished images are skipped when the command runs again. The engine is
:mod:`src_core.batch`; this module parses, draws the progress bar and prints
the summary. Exit codes: 0 all done, 1 some images failed, 2 a usage error
(nothing written).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

from .common import (
    ENGINE_ERRORS,
    EXIT_PARTIAL,
    PROG,
    ProgressBar,
    UsageError,
    add_model_arguments,
    resolve_weights,
    status,
)

__all__ = ["add_label_parser"]


def add_label_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``label`` subcommand to ``napari-sam``'s subparsers; returns its parser."""
    p = subparsers.add_parser(
        "label",
        help="segment everything in a folder, glob, TIFF stack or video (on Dask)",
        description=(
            "Segment everything in every image of INPUT with SAM's automatic mask "
            "generator and write, per image, KEY.tif (labels: uint16, or uint32 past "
            "65535 masks; label k is annotation k; where masks overlap the smaller is "
            "on top; the planes of a TIFF stack and the frames of a video go into one "
            "zarr store per file, FILE.zarr, at the index their JSON names) and KEY.json (SA-1B style: image info and annotations with COCO RLE "
            "segmentations, bbox XYWH, area, predicted_iou, stability_score, "
            "point_coords, crop_box). KEY is the file's name without its extension, plus "
            "_NNNN for a plane of a TIFF stack or a video frame. Images whose outputs "
            "are complete are skipped, so an interrupted run resumes; an image that "
            "cannot be read is reported and the others go on. Runs on local threads, or "
            "on a dask.distributed cluster with --scheduler (INPUT, OUT and the "
            "checkpoint must then be at the same paths on the workers)."
        ),
    )
    p.add_argument("input", metavar="INPUT",
                   help="folder of images, quoted glob pattern ('data/**/*.png'), TIFF "
                   "stack (each plane one image) or video (each frame one image)")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="output folder (created if missing)")
    add_model_arguments(p)
    gen = p.add_argument_group("mask generator (defaults: Meta's)")
    for name, kind, text in [
        ("points_per_side", int, "grid points per image side"),
        ("points_per_batch", int, "prompts decoded together"),
        ("pred_iou_thresh", float, "keep masks whose predicted IoU is above this"),
        ("stability_score_thresh", float, "keep masks at least this stable"),
        ("stability_score_offset", float, "logit offset of the stability score"),
        ("box_nms_thresh", float, "box IoU above which duplicates are dropped"),
        ("crop_n_layers", int, "also run on 4, 16, ... crops (layers)"),
        ("crop_nms_thresh", float, "box IoU for duplicates between crops"),
        ("crop_overlap_ratio", float, "overlap of neighbouring crops"),
        ("crop_n_points_downscale_factor", int, "fewer points per side in deeper layers"),
        ("min_mask_region_area", int, "fill holes, drop islands smaller than this (px)"),
    ]:
        gen.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None,
                         metavar="N" if kind is int else "X", help=text)
    run = p.add_argument_group("where it runs")
    run.add_argument("--scheduler", default=None, metavar="ADDRESS",
                     help="dask.distributed scheduler, e.g. tcp://10.0.0.5:8786 (default: "
                     "threads on this machine)")
    run.add_argument("--workers", type=int, default=None, metavar="N",
                     help="threads on this machine (default 2; sharing one model)")
    run.add_argument("--connect-timeout", type=float, default=10.0, metavar="S",
                     help="seconds to wait for the scheduler and a worker (default 10)")
    p.add_argument("--overwrite", action="store_true",
                   help="redo images whose outputs already exist")
    p.set_defaults(func=_cmd_label)
    return p


def _settings(args: argparse.Namespace) -> Any:
    from ..automatic.settings import GeneratorSettings

    given = {f.name: getattr(args, f.name) for f in fields(GeneratorSettings)
             if getattr(args, f.name) is not None}
    try:
        return GeneratorSettings(**given)
    except ValueError as exc:
        message = str(exc)
        for name in given:  # the engine names fields; the user typed flags
            message = message.replace(name, "--" + name.replace("_", "-"))
        raise UsageError(message) from exc


def _model_spec(args: argparse.Namespace) -> Any:
    """The model to run; official weights are found (or downloaded) here, once."""
    from ..batch import ModelSpec

    model, path = resolve_weights(args)
    return ModelSpec(model, path, args.device, args.dtype)


def _bar() -> Any:
    """``progress(result, finished, total)`` for :func:`run_batch` on the command line's bar."""
    bar, failed = ProgressBar("labelling", "img"), []

    def progress(result: Any, finished: int, total: int) -> None:
        if result.status == "failed":
            failed.append(result.key)
        bar(finished, total, **({"failed": len(failed)} if failed else {}))

    progress.close = bar.close  # type: ignore[attr-defined]
    return progress


def _cmd_label(args: argparse.Namespace) -> int:
    if args.scheduler is not None and args.workers is not None:
        raise UsageError("--workers sets threads on this machine; with --scheduler the "
                         "cluster's workers run the batch (size the cluster instead)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if args.connect_timeout <= 0:
        raise UsageError(f"--connect-timeout must be positive, got {args.connect_timeout:g}")
    settings = _settings(args)
    spec = _model_spec(args)

    from ..batch import run_batch

    where = f"the cluster at {args.scheduler}" if args.scheduler else "this machine"
    model = spec.model_type if spec.model_type != "auto" else Path(spec.checkpoint).name
    status(f"labelling {args.input} with {model} on {where}...")
    bar = _bar()
    try:
        summary = run_batch(
            args.input, args.output, spec, settings, scheduler=args.scheduler,
            workers=args.workers or 2, overwrite=args.overwrite,
            connect_timeout=args.connect_timeout, progress=bar,
        )
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()

    done, skipped, failed = summary.done, summary.skipped, summary.failed
    pace = ""
    if done:
        pace = f" ({sum(r.seconds for r in done) / len(done):.2f} s per image)"
    print(f"done {len(done)}{pace}, skipped {len(skipped)}, failed {len(failed)}; "
          f"outputs in {summary.out_dir}")
    for result in sorted(failed, key=lambda r: r.key):
        print(f"failed {result.key}: {result.reason}")
    if failed:
        total = len(done) + len(skipped) + len(failed)
        print(f"{PROG}: error: {len(failed)} of {total} images failed (listed above); run "
              "the same command again to retry them", file=sys.stderr)
        return EXIT_PARTIAL
    return 0
