"""A tracking run in a folder: resumable, written as frames are done, exports that cannot lose it.

:class:`TrackingRun` is what ``napari-sam track`` does, without the command
line. Everything that grows with the video is written while frames are done:

* ``labels.zarr``: the labels (:class:`~src_core.propagate.labelstore.LabelStore`,
  one compressed chunk per frame, the smallest integer type that holds the ids);
* ``table.csv``: one row per frame and object, appended and flushed every frame
  (with the reason and value when an object is lost);
* ``tracks.csv``: napari Tracks rows (track_id, t, y, x), appended every frame;
* ``progress.json``: the settings, the last frame done per pass, the exports.

The exports are derived from those and run after the tracking, each on its
own: ``trajectories.csv`` (wide), the sorted ``table.csv`` and ``tracks.csv``,
optionally ``labels.tif`` (compressed BigTIFF, frame by frame), ``labels.npy``
(for readers of napari-sam 0.1) and ``overlay.mp4``. One that fails is
reported in one line, everything else stays, and :meth:`TrackingRun.export`
(``napari-sam track ... --export-only``, or the same command again) redoes it
from what is on disk.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .labelstore import (
    LabelStore,
    export_npy,
    export_tiff,
    open_labels,
    smallest_label_dtype,
)
from .outputs import (
    TrackingWriter,
    dedupe_table,
    read_table,
    tracks_data,
    write_overlay_video,
    write_table,
    write_trajectories,
)
from .passes import first_frames, plan_passes
from .prompts import ObjectPrompt, resume_prompts
from .qc import LENIENT, QualityControl
from .results import FrameResult
from .tracker import propagate
from .volume import VOLUME_QC

PROGRESS = "progress.json"
LABELS = "labels.zarr"
#: Every export :meth:`TrackingRun.export` knows, in the order it writes them.
EXPORTS = ("table.csv", "tracks.csv", "trajectories.csv", "labels.tif", "labels.npy", "overlay.mp4")


@dataclass(frozen=True)
class RunSettings:
    """What defines a run: a folder holding a run with other settings is not resumed into.

    ``input`` and ``prompts`` identify the frames and the prompts (a path and a
    hash, say); the rest are :func:`~src_core.propagate.tracker.propagate`'s options.
    """

    input: str
    frames: int
    prompts: str
    direction: str = "both"
    start: int = 0
    stop: int | None = None
    recipe: str | None = None
    z: bool = False
    divisions: bool = False
    search_frames: int = 30
    lenient: bool = False
    model: str = ""  # the SAM 2.1 model tracking with memory; "" for the SAM 1 recipe

    @property
    def qc(self) -> QualityControl | None:
        if self.lenient:
            return LENIENT
        return VOLUME_QC if self.z else None


class RunMismatch(ValueError):
    """The folder holds another run (other input, prompts or options)."""


class TrackingRun:
    """A resumable tracking run in ``folder`` (see the module docstring).

    Parameters
    ----------
    folder : path
        Created if missing.
    settings : RunSettings
    overwrite : bool
        Discard a run already in ``folder`` instead of resuming it.

    Raises
    ------
    RunMismatch
        ``folder`` holds a run with other settings (and ``overwrite`` is False).
    """

    def __init__(self, folder: str | os.PathLike, settings: RunSettings, *, overwrite: bool = False) -> None:
        self.folder = Path(folder)
        self.settings = settings
        self.state: dict | None = None
        path = self.folder / PROGRESS
        if path.is_file() and not overwrite:
            state = json.loads(path.read_text())
            if state.get("settings") != asdict(settings):
                raise RunMismatch(f"{self.folder} holds another run (other input, prompts or options): "
                                  "pass --overwrite to discard it, or choose another folder")
            if self._labels_path(state) is not None:
                self.state = state

    @staticmethod
    def open(folder: str | os.PathLike) -> TrackingRun:
        """The run already in ``folder`` (for :meth:`export`), whatever its settings."""
        path = Path(folder) / PROGRESS
        if not path.is_file():
            raise FileNotFoundError(f"{folder} holds no tracking run (no {PROGRESS})")
        state = json.loads(path.read_text())
        run = TrackingRun.__new__(TrackingRun)
        try:
            settings = RunSettings(**state["settings"])
        except (KeyError, TypeError) as exc:
            raise ValueError(f"{path} was written by another version of napari-sam: track again") from exc
        run.folder, run.settings, run.state = Path(folder), settings, state
        if run._labels_path(state) is None:
            raise FileNotFoundError(f"{folder} holds no labels ({LABELS})")
        return run

    # -- state ----------------------------------------------------------------------------

    def _labels_path(self, state: dict) -> Path | None:
        path = self.folder / LABELS
        return path if path.is_dir() else None

    @property
    def started(self) -> bool:
        """A run was found in the folder (it will be resumed)."""
        return self.state is not None

    @property
    def complete(self) -> bool:
        """Every frame of the run is tracked (the exports may still be missing)."""
        return bool(self.state and self.state.get("complete"))

    @property
    def exports(self) -> dict[str, str]:
        """Export name -> "done" or the one-line error of its last try."""
        return dict((self.state or {}).get("exports", {}))

    def frames_total(self) -> tuple[int, int]:
        """(frames done, frames the run visits), over all passes."""
        passes = self.state["passes"]
        total = sum(abs(p["first"] - p["last"]) + 1 for p in passes)
        done = sum(abs(p["done_to"] - p["first"]) + 1 for p in passes if p["done_to"] is not None)
        return done, total

    def _save(self) -> None:
        done = {"forward": "complete", "backward": "complete"}
        for pas in self.state["passes"]:
            if pas["done_to"] != pas["last"]:
                done["forward" if pas["direction"] > 0 else "backward"] = pas["done_to"]
        self.state["done"] = done  # a summary for people: the last frame done per direction
        path = self.folder / PROGRESS
        tmp = path.with_name(path.name + ".partial")
        tmp.write_text(json.dumps(self.state, indent=1))
        os.replace(tmp, path)

    # -- tracking ---------------------------------------------------------------------------

    def start(self, prompts: Sequence[ObjectPrompt], shape: tuple[int, int]) -> None:
        """Begin a new run (a started one is resumed by :meth:`track` as it is)."""
        if self.started:
            return
        s = self.settings
        stop = s.frames if s.stop is None else s.stop
        self.folder.mkdir(parents=True, exist_ok=True)
        for name in ("table.csv", "tracks.csv", *EXPORTS, "labels.npy"):
            if (self.folder / name).is_file():
                (self.folder / name).unlink()
        max_id = max(p.obj_id for p in prompts)
        dtype = smallest_label_dtype(max_id)
        LabelStore(self.folder / LABELS, (s.frames, *shape), dtype, overwrite=True)
        passes = [{**asdict(plan), "done_to": None} for plan in plan_passes(prompts, s.direction, s.start, stop)]
        self.state = {"settings": asdict(s), "passes": passes, "complete": False, "exports": {}}
        self._save()

    def track(self, frames: Any, segmenter: Any, prompts: Sequence[ObjectPrompt]) -> Iterator[FrameResult]:
        """Track the frames not done yet, one result per frame as it is written.

        Raises :class:`~src_core.propagate.results.PropagationError` (a frame
        that cannot be read) after keeping everything done before it.
        """
        if not self.started:
            raise RuntimeError("call start() first")
        s = self.settings
        stop = s.frames if s.stop is None else s.stop
        labels = open_labels(self._labels_path(self.state))
        resumed = any(p["done_to"] is not None for p in self.state["passes"])
        writer = TrackingWriter(labels, self.folder / "table.csv", tracks_csv=self.folder / "tracks.csv",
                                n_frames=s.frames, resume=resumed)
        search = 0 if s.z else s.search_frames
        try:
            for pas in self.state["passes"]:
                if pas["done_to"] == pas["last"]:
                    continue
                pass_prompts, skip = self._pass_prompts(pas, prompts, labels, search)
                if not pass_prompts:
                    pas["done_to"] = pas["last"]
                    self._save()
                    continue
                d = pas["direction"]
                if d > 0:
                    lo, hi = min(p.frame for p in pass_prompts), stop
                else:
                    lo, hi = s.start, max(p.frame for p in pass_prompts) + 1
                run = propagate(
                    frames, segmenter, pass_prompts, direction="forward" if d > 0 else "backward", start=lo,
                    stop=hi, recipe=s.recipe, qc=s.qc, search_frames=search, divisions=s.divisions and d > 0,
                    context_labels=labels, what="slice" if s.z else "frame",
                )
                for result in run:
                    objects = {i: o for i, o in result.objects.items() if (result.frame, i) not in skip}
                    result = FrameResult(result.frame, objects, result.direction, result.step, result.total)
                    writer.write(result)
                    pas["done_to"] = result.frame
                    self._save()
                    yield result
            self.state["complete"] = True
            self._save()
        finally:
            writer.abandon()
            labels.close()

    @staticmethod
    def _pass_prompts(pas: dict, prompts: Sequence[ObjectPrompt], labels: Any,
                      search_frames: int) -> tuple[list, set]:
        """(prompts for a pass, {(frame, id)} not to write again), resuming after ``done_to``.

        Objects lost when the run stopped come back as lost seeds
        (:func:`~src_core.propagate.prompts.resume_prompts`), so the resumed run
        goes on searching for them.
        """
        skip: set = set()
        prompts = list(prompts)
        if pas["seeds_only"]:  # the forward pass's result on each object's first frame
            first = first_frames(prompts)
            prompts = []
            for obj_id, t in first.items():
                mask = np.asarray(labels[t]) == obj_id
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

    # -- exports ------------------------------------------------------------------------------

    def export(self, frames: Any = None, *, tif: bool = False, npy: bool = False, video: bool = True,
               fps: float = 15.0, redo: bool = False,
               report: Callable[[str], None] | None = None) -> dict[str, str]:
        """Write the exports asked for that are not done yet (all of them with ``redo``).

        Each export is written under a temporary name and renamed, on its own:
        one that fails is recorded with its one-line error and the others still
        run. ``frames`` is needed for the overlay video only. Returns export
        name -> "done" or the error, for this call's exports.
        """
        wanted = ["table.csv", "tracks.csv", "trajectories.csv"]
        wanted += ["labels.tif"] * tif + ["labels.npy"] * npy + ["overlay.mp4"] * (video and frames is not None)
        exports = self.state.setdefault("exports", {})
        todo = [name for name in wanted if redo or exports.get(name) != "done"]
        if not todo:
            return {}
        s = self.settings
        stop = s.frames if s.stop is None else s.stop
        labels = open_labels(self._labels_path(self.state))
        table = None
        out = {}
        for name in todo:
            path = self.folder / name
            try:
                if name in ("table.csv", "tracks.csv", "trajectories.csv") and table is None:
                    table = dedupe_table(read_table(self.folder / "table.csv"))
                if name == "table.csv":
                    write_table(path, table)
                elif name == "tracks.csv":
                    write_tracks_csv(path, *tracks_data(table))
                elif name == "trajectories.csv":
                    write_trajectories(path, table, s.frames)
                elif name == "labels.tif":
                    export_tiff(labels, path)
                elif name == "labels.npy":
                    export_npy(labels, path)
                elif name == "overlay.mp4":
                    write_overlay_video(path, frames, labels, fps=fps, start=s.start, stop=stop)
                out[name] = "done"
            except (OSError, ValueError, RuntimeError, MemoryError) as exc:
                out[name] = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                if report is not None:
                    report(f"could not write {path}: {out[name]}")
            exports[name] = out[name]
            self._save()
        labels.close()
        return out


def write_tracks_csv(path: str | os.PathLike, data: np.ndarray, graph: dict) -> Path:
    """napari Tracks ``data`` as ``track_id,t,y,x`` (and ``graph`` as ``tracks_graph.json`` beside it)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    np.savetxt(tmp, data, delimiter=",", header="track_id,t,y,x", comments="", fmt=["%d", "%d", "%.2f", "%.2f"])
    os.replace(tmp, path)
    if graph:
        (path.parent / "tracks_graph.json").write_text(json.dumps({str(k): v for k, v in graph.items()}))
    return path
