"""``napari-sam track``: carry prompted objects through a video or a stack.

``napari-sam track VIDEO_OR_STACK --prompts prompts.json -o OUT/`` writes into
OUT: ``labels.npy`` (T, H, W, written frame by frame), ``labels.tif`` (the
same, at the end), ``table.csv`` (one row per frame and object, appended as
frames are done), ``trajectories.csv`` (wide: frame, x1, y1, x2, y2, ...),
``tracks.csv`` (napari Tracks data: track_id, t, y, x; ``tracks_graph.json``
for divisions), ``overlay.mp4`` and ``progress.json``. Running the same
command again resumes an interrupted run from the last frame done. The engine
is :mod:`src_core.propagate`. Instead of ``--prompts``, ``--text TEXT --text-frame N``
starts the tracking from the objects TEXT names on frame N (CLIP among SAM's
masks: the optional ``napari-sam[text]`` extra), with ids 1, 2, ... best first.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .cli import _ENGINE_ERRORS, UsageError, _build_model, _status

__all__ = ["add_track_parser"]

_VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".gif")
_EXIT_PARTIAL = 1


def add_track_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``track`` subcommand to ``napari-sam``'s subparsers; returns its parser."""
    from .propagate import DIRECTIONS, RECIPES

    p = subparsers.add_parser(
        "track",
        help="propagate prompted objects through a video or a stack (tracking)",
        description=__doc__.split("\n\n", 1)[1],
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
    p.add_argument("--model", default=None, metavar="NAME",
                   help="vit_b, vit_l, vit_h or vit_tiny (default: inferred from --checkpoint, else a "
                   "cached official model, else the built-in vit_tiny)")
    p.add_argument("--checkpoint", default=None, metavar="FILE", help="local weights file")
    p.add_argument("--no-download", action="store_true", help="fail instead of downloading weights")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 or mps")
    p.add_argument("--dtype", default="auto", help="image encoder precision: auto, float32 or bfloat16")
    p.add_argument("--fps", type=float, default=15.0, help="frame rate of overlay.mp4 (default 15)")
    p.add_argument("--no-video", action="store_true", help="do not write overlay.mp4")
    p.add_argument("--overwrite", action="store_true", help="start again, discarding a previous run in OUT")
    from .cli_text import add_text_arguments

    add_text_arguments(p, track=True)
    p.set_defaults(func=_cmd_track)
    return p


def open_frames(path: Path) -> Any:
    import numpy as np

    if not path.exists():
        raise UsageError(f"{path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix in _VIDEO_SUFFIXES:
            from .video import VideoFrames

            return VideoFrames(path)
        if suffix == ".npy":
            frames = np.load(path, mmap_mode="r")
        elif suffix in (".tif", ".tiff"):
            import tifffile

            try:
                frames = tifffile.memmap(path, mode="r")
            except (ValueError, OSError):
                frames = tifffile.imread(path)
        else:
            raise UsageError(f"{path}: expected a video ({', '.join(_VIDEO_SUFFIXES)}), a TIFF stack or .npy")
    except UsageError:
        raise
    except _ENGINE_ERRORS as exc:
        raise UsageError(f"{path} could not be read: {exc}") from exc
    if frames.ndim == 2 or (frames.ndim == 3 and frames.shape[-1] in (3, 4) and frames.shape[0] > 4):
        raise UsageError(f"{path} is a single image (shape {frames.shape}): there is nothing to track")
    if frames.ndim not in (3, 4):
        raise UsageError(f"{path} has shape {frames.shape}; expected (T, H, W) or (T, H, W, C)")
    if len(frames) < 2:
        raise UsageError(f"{path} has a single slice (frame): there is nothing to propagate to")
    return frames


def _passes(prompts: list, direction: str, start: int, stop: int) -> list[dict]:
    """The passes of a run: forward over all prompts; backward from each object's first prompt."""
    frames = sorted({p.frame for p in prompts})
    passes = []
    if direction in ("forward", "both"):
        passes.append({"direction": 1, "first": frames[0], "last": stop - 1, "seeds_only": False})
    if direction == "backward":
        passes.append({"direction": -1, "first": frames[-1], "last": start, "seeds_only": False})
    if direction == "both":
        first = {}
        for p in sorted(prompts, key=lambda p: p.frame):
            first.setdefault(p.obj_id, p.frame)
        top = max(first.values())
        if top > start:
            passes.append({"direction": -1, "first": top, "last": start, "seeds_only": True})
    for p in passes:
        p["done_to"] = None
    return passes


def _pass_prompts(pas: dict, prompts: list, labels: Any, search_frames: int = 30) -> tuple[list, set]:
    """(prompts for a pass, {(frame, id)} not to write again), resuming after ``done_to``.

    Objects lost when the run stopped come back as lost seeds (:func:`resume_prompts`),
    so the resumed run goes on searching for them."""
    from .propagate import ObjectPrompt, resume_prompts

    skip: set = set()
    if pas["seeds_only"]:  # the forward pass's result on each object's first frame
        first: dict = {}
        for p in sorted(prompts, key=lambda p: p.frame):
            first.setdefault(p.obj_id, p.frame)
        prompts = []
        for obj_id, t in first.items():
            mask = labels[t] == obj_id
            if mask.any():
                prompts.append(ObjectPrompt(t, obj_id, mask=mask))
                skip.add((t, obj_id))
    t = pas["done_to"]
    if t is None:
        return prompts, skip
    d = pas["direction"]
    started = {p.obj_id for p in prompts if (p.frame - t) * d <= 0}
    later = [p for p in prompts if (p.frame - t) * d > 0]
    seeds = resume_prompts(labels, t, d, obj_ids=started, search_frames=search_frames)
    return later + seeds, skip | {(t, s.obj_id) for s in seeds}


def _fingerprint(args: argparse.Namespace, prompt_text: bytes, n: int, direction: str) -> dict:
    return {
        "input": str(Path(args.input).resolve()), "frames": n,
        "prompts_sha1": hashlib.sha1(prompt_text).hexdigest(), "direction": direction,
        "start": args.start, "stop": args.stop, "recipe": args.recipe, "z": args.z,
        "divisions": args.divisions, "search_frames": args.search_frames,
    }


def _save(path: Path, state: dict) -> None:
    done = {"forward": "complete", "backward": "complete"}
    for pas in state["passes"]:
        key = "forward" if pas["direction"] > 0 else "backward"
        if pas["done_to"] != pas["last"]:
            done[key] = pas["done_to"]
    state["done"] = done  # a summary for people: the last frame done per direction
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, path)


def _cmd_track(args: argparse.Namespace) -> int:
    import numpy as np

    from .propagate import VOLUME_QC, LabelFile, TrackingWriter, check_prompts, load_prompts

    from .propagate import get_recipe

    direction = args.direction or "both"
    try:
        get_recipe(args.recipe)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    if (args.prompts is None) == (args.text is None):
        raise UsageError("track needs the objects to start from: --prompts FILE or --text TEXT (one of them)")
    if args.text is not None:
        from .cli_text import check_text_args, text_fingerprint

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

    out = Path(args.output).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    progress_path, labels_path = out / "progress.json", out / "labels.npy"
    fingerprint = _fingerprint(args, prompt_bytes, n, direction)
    state = None
    if progress_path.is_file() and labels_path.is_file() and not args.overwrite:
        state = json.loads(progress_path.read_text())
        if state.get("settings") != fingerprint:
            raise UsageError(f"{out} holds another run (other input, prompts or options): "
                             "pass --overwrite to discard it, or choose another folder")
        if state.get("complete"):
            _status(f"{out} already holds this run, complete (pass --overwrite to redo it)")
            return 0
        _status(f"resuming the run in {out}")
    predictor = None
    if prompts is None:  # --text: the objects found on --text-frame (kept for resuming)
        from .cli_text import track_prompts_from_text

        saved = out / "text_prompts.json"
        if state is not None and saved.is_file():
            prompts = load_prompts(saved)
        else:
            predictor = _make_predictor(args)
            prompts = track_prompts_from_text(predictor, frames, args, out)
    if state is None:
        state = {"settings": fingerprint, "passes": _passes(prompts, direction, args.start, stop),
                 "complete": False}
        labels = LabelFile(labels_path, (n, *shape), np.int32, overwrite=True)
    else:
        labels = LabelFile(labels_path)
    _save(progress_path, state)

    predictor = predictor if predictor is not None else _make_predictor(args)
    from tqdm import tqdm

    from .propagate import PropagationError, propagate

    total = sum(abs(p["first"] - p["last"]) + 1 for p in state["passes"])
    done = sum(abs(p["done_to"] - p["first"]) + 1 for p in state["passes"] if p["done_to"] is not None)
    bar = tqdm(total=total, initial=done, unit="frame", desc="tracking", file=sys.stderr, dynamic_ncols=True)
    resumed = progress_path.is_file() and any(p["done_to"] is not None for p in state["passes"])
    writer = TrackingWriter(labels, out / "table.csv", out / "trajectories.csv", n_frames=n, resume=resumed)
    qc = VOLUME_QC if args.z else None
    failure = None
    try:
        for pas in state["passes"]:
            if pas["done_to"] == pas["last"]:
                continue
            pass_prompts, skip = _pass_prompts(pas, prompts, labels, 0 if args.z else args.search_frames)
            if not pass_prompts:
                pas["done_to"] = pas["last"]
                continue
            d = pas["direction"]
            lo, hi = (min(p.frame for p in pass_prompts), stop) if d > 0 else (args.start, max(p.frame for p in pass_prompts) + 1)
            run = propagate(
                frames, predictor, pass_prompts, direction="forward" if d > 0 else "backward", start=lo, stop=hi,
                recipe=args.recipe, qc=qc, search_frames=0 if args.z else args.search_frames,
                divisions=args.divisions and d > 0, context_labels=labels, what="slice" if args.z else "frame",
            )
            for result in run:
                objects = {i: o for i, o in result.objects.items() if (result.frame, i) not in skip}
                writer.write(type(result)(result.frame, objects, result.direction, result.step, result.total))
                pas["done_to"] = result.frame
                _save(progress_path, state)
                bar.update(1)
    except PropagationError as exc:
        hint = f" Frames past {exc.frame} cannot be read: rerun with --overwrite --stop {exc.frame}." if exc.direction > 0 else ""
        failure = f"{exc}{hint}"
    except KeyboardInterrupt:
        writer.close()
        labels.close()
        bar.close()
        _status(f"interrupted: what was done is in {out}; run the same command again to resume")
        raise
    except _ENGINE_ERRORS as exc:
        bar.close()
        raise UsageError(str(exc)) from exc
    bar.close()
    data, graph = writer.close()
    _finish(out, frames, labels, data, graph, args, video=not failure, start=args.start, stop=stop)
    labels.close()
    if failure:
        print(f"napari-sam: error: {failure} Partial results are in {out}.", file=sys.stderr)
        return _EXIT_PARTIAL
    state["complete"] = True
    _save(progress_path, state)
    ids = sorted({int(i) for i in data[:, 0]}) if len(data) else []
    print(f"tracked {len(ids)} object{'s' * (len(ids) != 1)} over {n} frames; outputs in {out}")
    return 0


def _make_predictor(args: argparse.Namespace) -> Any:
    from .predictor import SamPredictor

    return SamPredictor(_build_model(args))


def _finish(out: Path, frames: Any, labels: Any, data: Any, graph: dict, args: argparse.Namespace,
            video: bool = True, start: int = 0, stop: int | None = None) -> None:
    """labels.tif, tracks.csv (+ graph), overlay.mp4 from what is done."""
    import numpy as np
    import tifffile

    n = len(labels)
    tifffile.imwrite(out / "labels.tif", (labels[t] for t in range(n)), shape=labels.shape, dtype=labels.dtype)
    np.savetxt(out / "tracks.csv", data, delimiter=",", header="track_id,t,y,x", comments="",
               fmt=["%d", "%d", "%.2f", "%.2f"])
    if graph:
        (out / "tracks_graph.json").write_text(json.dumps({str(k): v for k, v in graph.items()}))
    if video and not args.no_video:
        from .propagate import write_overlay_video

        write_overlay_video(out / "overlay.mp4", frames, labels, fps=args.fps, start=start, stop=stop)
