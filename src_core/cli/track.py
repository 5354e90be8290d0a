"""``napari-sam track``: carry prompted objects through a video or a stack.

``napari-sam track VIDEO_OR_STACK --prompts prompts.json -o OUT/`` writes into
OUT, as frames are done: ``labels.zarr`` (T, H, W labels, one compressed chunk
per frame: napari opens it lazily; ``src_core.propagate.open_labels`` reads
it), ``table.csv`` (one row per frame and object, with the reason when an
object is lost), ``tracks.csv`` (napari Tracks data: track_id, t, y, x) and
``progress.json``; after the tracking, ``trajectories.csv`` (wide: frame, x1,
y1, x2, y2, ...), ``overlay.mp4`` and, when asked for, ``labels.tif``
(compressed BigTIFF, ``--tif``) and ``labels.npy`` (``--npy``). An export that
fails says so and keeps the rest: ``--export-only`` (or the same command
again) writes it again. Running the same command again resumes an interrupted
run from the last frame done. The engine is :mod:`src_core.propagate`
(:class:`~src_core.propagate.run.TrackingRun`). Instead of ``--prompts``,
``--text TEXT --text-frame N`` starts the tracking from the objects TEXT names
on frame N (CLIP among SAM's masks: the optional ``napari-sam[text]`` extra),
with ids 1, 2, ... best first.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from ..video import VIDEO_SUFFIXES
from .common import (
    ENGINE_ERRORS,
    EXIT_PARTIAL,
    ProgressBar,
    UsageError,
    add_model_arguments,
    build_predictor,
    build_video_predictor,
    plain_text,
    sam2_model_name,
    status,
)
from .text import (
    add_text_arguments,
    check_text_args,
    text_fingerprint,
    track_prompts_from_text,
)

__all__ = ["add_track_parser"]



def add_track_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``track`` subcommand to ``napari-sam``'s subparsers; returns its parser."""
    from ..propagate import DIRECTIONS, RECIPES

    p = subparsers.add_parser(
        "track",
        help="propagate prompted objects through a video or a stack (tracking)",
        description=plain_text(__doc__),
    )
    p.add_argument("input", metavar="VIDEO_OR_STACK",
                   help="video file (mp4, avi, mov, ...), TIFF stack or .npy (T, H, W[, C])")
    p.add_argument("--prompts", default=None, metavar="FILE",
                   help='JSON {"prompts": [{"frame": 0, "id": 1, "points": [[x, y]], "labels": [1], '
                   '"box": [x0, y0, x1, y1]}, ...]} or CSV frame,id,x,y[,label]')
    p.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created if missing)")
    p.add_argument("--direction", default=None, choices=DIRECTIONS,
                   help="forward, backward or both (default: both, from each object's first prompt)")
    p.add_argument("--start", type=int, default=0, metavar="N", help="first frame (default 0)")
    p.add_argument("--stop", type=int, default=None, metavar="N", help="stop before this frame (default: the end)")
    p.add_argument("--recipe", default=None, metavar="NAME",
                   help=f"how each frame is prompted from the last: {', '.join(RECIPES)} (default: the best measured)")
    p.add_argument("--search-frames", type=int, default=30, metavar="K",
                   help="frames a lost object is searched for (default 30)")
    p.add_argument("--divisions", action="store_true", help="detect dividing cells (daughters get new ids)")
    p.add_argument("--z", action="store_true",
                   help="a z-stack: follow objects up and down from their slices, ending where they end")
    add_model_arguments(p)
    p.add_argument("--lenient", action="store_true",
                   help="keep the best mask unless it is empty or lies on another object (ignore SAM's "
                   "predicted IoU, stability and area jumps): for objects lost at once; costs ID switches "
                   "where objects touch")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate of overlay.mp4 (default 15)")
    p.add_argument("--no-video", action="store_true", help="do not write overlay.mp4")
    p.add_argument("--tif", action="store_true", help="also write labels.tif (a compressed BigTIFF)")
    p.add_argument("--npy", action="store_true",
                   help="also write labels.npy (every pixel, uncompressed: for readers of napari-sam 0.1)")
    p.add_argument("--export-only", action="store_true",
                   help="do not track: write the exports again from what OUT holds (after one failed)")
    p.add_argument("--overwrite", action="store_true", help="start again, discarding a previous run in OUT")
    add_text_arguments(p, track=True)
    p.set_defaults(func=_cmd_track)
    return p


def open_frames(path: Path) -> Any:
    import numpy as np

    if not path.exists():
        raise UsageError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in VIDEO_SUFFIXES:
            from ..video import VideoFrames

            return VideoFrames(path)
        if suffix == ".gif":  # an animation: small, read whole
            import imageio.v3 as iio

            frames = iio.imread(path, index=None)
        elif suffix == ".npy":
            frames = np.load(path, mmap_mode="r")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            try:
                frames = tifffile.memmap(path, mode="r")
            except (ValueError, OSError):
                frames = tifffile.imread(path)
        else:
            raise UsageError(f"{path}: expected a video ({', '.join(VIDEO_SUFFIXES)}), an animated GIF, "
                             "a TIFF stack or .npy")
    except UsageError:
        raise
    except ENGINE_ERRORS as exc:
        raise UsageError(f"{path} could not be read: {exc}") from exc
    if frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] in (3, 4) and frames.shape[0] > 4):
        raise UsageError(f"{path} is a single image (shape {frames.shape}): there is nothing to track")
    if frames.ndim not in (3, 4):
        raise UsageError(f"{path} has shape {frames.shape}; expected (T, H, W) or (T, H, W, C)")
    if len(frames) < 2:
        raise UsageError(f"{path} has a single slice (frame): there is nothing to propagate to")
    return frames


def _settings(args: argparse.Namespace, prompt_text: bytes, n: int, direction: str) -> Any:
    from ..propagate.run import RunSettings

    return RunSettings(
        input=str(Path(args.input).resolve()), frames=n, prompts=hashlib.sha1(prompt_text).hexdigest(),
        direction=direction, start=args.start, stop=args.stop, recipe=args.recipe, z=args.z,
        divisions=args.divisions, search_frames=args.search_frames, lenient=args.lenient,
        model=args.sam2_model or "",
    )


def _cmd_track(args: argparse.Namespace) -> int:
    from ..propagate import check_prompts, get_recipe, load_prompts
    from ..propagate.run import RunMismatch, TrackingRun

    out = Path(args.output).expanduser()
    if args.export_only:
        return _export(args, out, TrackingRun.open(out) if (out / "progress.json").is_file() else None)
    direction = args.direction or "both"
    try:
        get_recipe(args.recipe)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if (args.prompts is None) == (args.text is None):
        raise UsageError("track needs the objects to start from: --prompts FILE or --text TEXT (one of them)")
    args.sam2_model = sam2_model_name(args)
    if args.sam2_model is not None:
        if args.text is not None:
            raise UsageError("--text finds objects with a SAM 1 model: give --prompts to track with SAM 2.1")
        if args.divisions:
            raise UsageError("--divisions needs the SAM 1 recipe: drop it or use a SAM 1 model")
        if args.recipe is not None:
            raise UsageError("--recipe is for SAM 1 models: SAM 2.1 tracks with its memory")
    if args.text is not None:
        check_text_args(args)
        prompt_path, prompts, prompt_bytes = None, None, text_fingerprint(args)
    else:
        prompt_path = Path(args.prompts).expanduser()
        try:
            prompts = load_prompts(prompt_path)
        except (ValueError, FileNotFoundError) as exc:
            raise UsageError(str(exc)) from exc
        prompt_bytes = prompt_path.read_bytes()
    frames = open_frames(Path(args.input).expanduser())
    n = len(frames)
    stop = n if args.stop is None else args.stop
    if not 0 <= args.start < stop <= n:
        raise UsageError(f"--start/--stop must satisfy 0 <= start < stop <= {n} (frames), got {args.start}, {stop}")
    shape = tuple(int(s) for s in frames.shape[1:3])
    if prompts is not None:
        try:
            check_prompts(prompts, n, shape)
        except ValueError as exc:
            raise UsageError(f"{prompt_path}: {exc}") from exc
        prompts = [p for p in prompts if args.start <= p.frame < stop]
        if not prompts:
            raise UsageError(f"no prompt lies in frames {args.start} to {stop - 1}")
    elif not args.start <= args.text_frame < stop:
        raise UsageError(f"--text-frame {args.text_frame} is not in the frames tracked ({args.start} to {stop - 1})")

    out.mkdir(parents=True, exist_ok=True)
    try:
        run = TrackingRun(out, _settings(args, prompt_bytes, n, direction), overwrite=args.overwrite)
    except RunMismatch as exc:
        raise UsageError(str(exc)) from exc
    if run.complete:
        return _export(args, out, run, frames, already=True)
    if run.started:
        status(f"resuming the run in {out}")
    predictor = None
    if prompts is None:  # --text: the objects found on --text-frame (kept for resuming)
        saved = out / "text_prompts.json"
        if run.started and saved.is_file():
            prompts = load_prompts(saved)
        else:
            predictor = _make_predictor(args)
            prompts = track_prompts_from_text(predictor, frames, args, out)
    run.start(prompts, shape)
    predictor = predictor if predictor is not None else _make_predictor(args)
    from ..propagate import PropagationError

    done, total = run.frames_total()
    bar = ProgressBar("tracking", "frame", initial=done)
    failure = None
    try:
        for step, _ in enumerate(run.track(frames, predictor, prompts), start=done + 1):
            bar(step, total)
    except PropagationError as exc:
        hint = f" Frames past {exc.frame} cannot be read: rerun with --overwrite --stop {exc.frame}." if exc.direction > 0 else ""
        failure = f"{exc}{hint}"
    except KeyboardInterrupt:
        bar.close()
        status(f"interrupted: what was done is in {out}; run the same command again to resume")
        raise
    except ENGINE_ERRORS as exc:
        bar.close()
        raise UsageError(str(exc)) from exc
    bar.close()
    code = _export(args, out, run, frames, video=not failure)
    if failure:
        print(f"napari-sam: error: {failure} Partial results are in {out}.", file=sys.stderr)
        return EXIT_PARTIAL
    return code


def _export(args: argparse.Namespace, out: Path, run: Any, frames: Any = None, *, video: bool = True,
            already: bool = False) -> int:
    """The exports not written yet (after tracking, ``--export-only`` or a complete run run again)."""
    if run is None:
        raise UsageError(f"{out} holds no tracking run to export (no progress.json): track first")
    if frames is None and video and not args.no_video:
        frames = open_frames(Path(run.settings.input))
    failed = []
    written = run.export(frames, tif=args.tif, npy=args.npy, video=video and not args.no_video, fps=args.fps,
                         redo=args.export_only,
                         report=lambda line: failed.append(line))
    for line in failed:
        print(f"napari-sam: error: {line}", file=sys.stderr)
    if failed:
        print(f"napari-sam: error: {len(failed)} export(s) failed; the labels and tables are in {out}: "
              "redo them with --export-only (or the same command again)", file=sys.stderr)
        return EXIT_PARTIAL
    if already and not written:
        status(f"{out} already holds this run, complete (pass --overwrite to redo it)")
    elif run.complete:
        import numpy as np

        from ..propagate import read_table

        ids = np.unique(read_table(out / "table.csv")["id"]) if (out / "table.csv").is_file() else []
        print(f"tracked {len(ids)} object{'s' * (len(ids) != 1)} over {run.settings.frames} frames; outputs in {out}")
    return 0


def _make_predictor(args: argparse.Namespace) -> Any:
    """SAM 2.1's video predictor (memory tracking) or a SAM 1 predictor (the recipe);
    a seam: tests put the stand-in segmenter here."""
    if getattr(args, "sam2_model", None):
        return build_video_predictor(args, args.sam2_model)
    return build_predictor(args)
