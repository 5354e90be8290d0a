"""What the user gives the tracker (objects prompted on key frames) and how it prompts SAM.

:class:`ObjectPrompt` is one object on one frame: points, a box or a mask, with
the object's id. :class:`PromptRecipe` says which parts of the previous
frame's result become the next frame's prompt; :data:`RECIPES` names the
combinations that ``scripts/eval_tracking.py`` compares.

Prompt files
------------
:func:`load_prompts` reads JSON::

    {"prompts": [
        {"frame": 0, "id": 1, "points": [[120.5, 80], [130, 82]], "labels": [1, 0]},
        {"frame": 0, "id": 2, "box": [10, 20, 60, 45]}
    ]}

(a bare list of the entries works too; ``labels`` defaults to all positive),
or CSV with a header ``frame,id,x,y[,label]``, one point per row.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ObjectPrompt:
    """One object prompted on one frame.

    Attributes
    ----------
    frame : int
        Frame (or slice) index.
    obj_id : int
        The object's id (>= 1); it becomes its label value and track id.
    points : (N, 2) float array
        ``(x, y)`` clicks in image pixels.
    labels : (N,) int array
        1 foreground, 0 background, one per point.
    box : (4,) float array or None
        ``(x0, y0, x1, y1)`` in image pixels.
    mask : (H, W) bool array or None
        The object's mask, e.g. a frame the user painted or corrected. It is
        used as it is (no model call).
    key : bool
        True: the frame is a key frame for this object and its result is never
        replaced. False: only a seed (e.g. the last frame of an interrupted run
        when resuming), reported as ``"tracked"``.
    lost_for : int
        Seeds only (``key=False``, with a ``mask``): the object was lost on
        ``frame`` and the ``lost_for - 1`` frames before it; ``mask`` is where it
        was last seen. It is reported lost on ``frame`` and searched for from
        the next frame on, as if the run had not stopped (see
        :func:`resume_prompts`).
    history : tuple of (int, (H, W) bool array)
        Seeds only: where the object was seen before ``mask``, as ``(frame,
        mask)`` pairs, oldest first. The seed's state (motion, usual size) is
        rebuilt from them as the interrupted run had it; empty: it starts at
        rest, with the size of ``mask``.
    """

    frame: int
    obj_id: int
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    labels: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    box: np.ndarray | None = None
    mask: np.ndarray | None = None
    key: bool = True
    lost_for: int = 0
    history: tuple = ()

    def __post_init__(self) -> None:
        for name in ("frame", "obj_id"):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"ObjectPrompt.{name} must be an int, got {value!r}")
            object.__setattr__(self, name, int(value))
        if self.frame < 0:
            raise ValueError(f"object {self.obj_id}: frame must be >= 0, got {self.frame}")
        if self.obj_id < 1:
            raise ValueError(f"object ids must be >= 1 (0 is the background), got {self.obj_id}")
        points = np.asarray(self.points, dtype=np.float64)
        if points.size and (points.ndim != 2 or points.shape[1] != 2):
            raise ValueError(
                f"object {self.obj_id} on frame {self.frame}: points must be (N, 2) x, y, "
                f"got shape {points.shape}"
            )
        points = points.reshape(-1, 2)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(labels) == 0 and len(points):
            labels = np.ones(len(points), dtype=np.int64)
        if len(points) != len(labels):
            raise ValueError(
                f"object {self.obj_id} on frame {self.frame}: {len(points)} points but {len(labels)} labels"
            )
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"object {self.obj_id} on frame {self.frame}: point labels must be 1 or 0")
        if not np.isfinite(points).all():
            raise ValueError(f"object {self.obj_id} on frame {self.frame}: points contain NaN or inf")
        object.__setattr__(self, "points", points)
        object.__setattr__(self, "labels", labels)
        if self.box is not None:
            box = np.asarray(self.box, dtype=np.float64).reshape(-1)
            if box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
                raise ValueError(
                    f"object {self.obj_id} on frame {self.frame}: box must be finite x0, y0, x1, y1 "
                    f"with x1 > x0 and y1 > y0, got {self.box!r}"
                )
            object.__setattr__(self, "box", box)
        if self.mask is not None:
            mask = np.asarray(self.mask).astype(bool, copy=False)
            if mask.ndim != 2:
                raise ValueError(f"object {self.obj_id} on frame {self.frame}: mask must be 2D, got {mask.shape}")
            if not mask.any():
                raise ValueError(f"object {self.obj_id} on frame {self.frame}: the mask is empty")
            object.__setattr__(self, "mask", mask)
        if self.mask is None and self.box is None and not (labels == 1).any():
            raise ValueError(
                f"object {self.obj_id} on frame {self.frame} has no positive point, box or mask: "
                "give at least one of them"
            )
        if isinstance(self.lost_for, (bool, np.bool_)) or not isinstance(self.lost_for, (int, np.integer)) \
                or self.lost_for < 0:
            raise ValueError(f"object {self.obj_id} on frame {self.frame}: lost_for must be an int >= 0")
        object.__setattr__(self, "lost_for", int(self.lost_for))
        if self.lost_for and (self.key or self.mask is None):
            raise ValueError(
                f"object {self.obj_id} on frame {self.frame}: a lost seed (lost_for > 0) needs key=False "
                "and the mask where the object was last seen"
            )
        history = tuple((int(t), np.asarray(m).astype(bool, copy=False)) for t, m in self.history)
        where = f"object {self.obj_id} on frame {self.frame}"
        if history and (self.key or self.mask is None):
            raise ValueError(f"{where}: a history belongs to seeds (key=False, with a mask)")
        if any(m.shape != self.mask.shape or not m.any() for _, m in history):
            raise ValueError(f"{where}: history masks must be non-empty and shaped as the mask")
        object.__setattr__(self, "history", history)


@dataclass(frozen=True)
class PromptRecipe:
    """How the prompt for frame t+1 is made from an object's result on frame t.

    Attributes
    ----------
    name : str
        For reports.
    box : bool
        The previous mask's bounding box, moved by the predicted motion and
        enlarged by ``box_margin`` of its size on each side.
    box_margin : float
        See ``box``.
    mask_logits : bool
        The previous low-resolution logits (moved by the predicted motion) as
        SAM's dense ``mask_input``.
    interior_point : bool
        A positive click at the previous mask's most interior pixel, moved by
        the predicted motion.
    negative_points : bool
        A negative click at the (predicted) most interior pixel of every other
        object whose box overlaps this object's box, so that neighbours do not merge.
    motion : bool
        Move box, click and logits by the smoothed velocity; False keeps them
        where the object was.
    velocity_smoothing : float
        Weight of the newest displacement in the velocity average (see
        :class:`~src_core.propagate.motion.MotionModel`).
    multimask : bool
        Ask SAM for three candidates and keep the one that best agrees with the
        prediction (predicted IoU plus overlap with the moved previous mask);
        False asks for one.
    """

    name: str = "full"
    box: bool = True
    box_margin: float = 0.15
    mask_logits: bool = True
    interior_point: bool = True
    negative_points: bool = True
    motion: bool = True
    velocity_smoothing: float = 0.5
    multimask: bool = False

    def __post_init__(self) -> None:
        if not (self.box or self.mask_logits or self.interior_point):
            raise ValueError("a PromptRecipe needs at least one of box, mask_logits or interior_point")
        if self.box_margin < 0:
            raise ValueError(f"box_margin must be >= 0, got {self.box_margin}")


#: The recipes compared by ``scripts/eval_tracking.py``.
RECIPES: dict[str, PromptRecipe] = {
    r.name: r
    for r in (
        PromptRecipe("box", mask_logits=False, interior_point=False, negative_points=False),
        PromptRecipe("box+point", mask_logits=False, negative_points=False),
        PromptRecipe("box+point+neg", mask_logits=False),
        PromptRecipe("point+neg", box=False, mask_logits=False),
        PromptRecipe("logits+point+neg", box=False),
        PromptRecipe("full"),
        PromptRecipe("full-no-motion", motion=False),
        PromptRecipe("full-multimask", multimask=True),
    )
}

#: The recipe used when none is given (the best in ``scripts/eval_tracking.py``).
DEFAULT_RECIPE = RECIPES["box+point+neg"]


def get_recipe(recipe: str | PromptRecipe | None) -> PromptRecipe:
    """A recipe by name (see :data:`RECIPES`), or the recipe given, or the default."""
    if recipe is None:
        return DEFAULT_RECIPE
    if isinstance(recipe, PromptRecipe):
        return recipe
    if recipe not in RECIPES:
        raise ValueError(f"unknown prompt recipe {recipe!r}; choose one of {', '.join(RECIPES)}")
    return RECIPES[recipe]


def check_prompts(
    prompts: Sequence[ObjectPrompt], n_frames: int, image_shape: tuple[int, int] | None
) -> None:
    """Raise a ValueError saying what is wrong with ``prompts`` for this video.

    Checks: at least one prompt; every frame inside the video; no object id
    twice on one frame; points, boxes and masks inside the ``(H, W)`` frame
    (when ``image_shape`` is known).
    """
    if len(prompts) == 0:
        raise ValueError("no prompts: give at least one object (points, a box or a mask) on a frame")
    seen: set[tuple[int, int]] = set()
    for p in prompts:
        if not isinstance(p, ObjectPrompt):
            raise ValueError(f"prompts must be ObjectPrompt objects, got {type(p).__name__}")
        if p.frame >= n_frames:
            raise ValueError(
                f"object {p.obj_id} is prompted on frame {p.frame}, but there are only {n_frames} "
                f"frames (0 to {n_frames - 1}): move the prompt or check the video/stack"
            )
        if (p.frame, p.obj_id) in seen:
            raise ValueError(
                f"object id {p.obj_id} is used twice on frame {p.frame}: merge its prompts into one "
                "or give the second object another id"
            )
        seen.add((p.frame, p.obj_id))
        if image_shape is None:
            continue
        h, w = image_shape
        where = f"object {p.obj_id} on frame {p.frame}"
        if len(p.points):
            bad = (p.points[:, 0] < 0) | (p.points[:, 0] > w) | (p.points[:, 1] < 0) | (p.points[:, 1] > h)
            if bad.any():
                x, y = p.points[bad][0]
                raise ValueError(
                    f"{where}: point ({x:g}, {y:g}) lies outside the {w}x{h} frame "
                    f"(x must be in [0, {w}], y in [0, {h}])"
                )
        if p.box is not None:
            x0, y0, x1, y1 = p.box
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise ValueError(f"{where}: box {tuple(float(v) for v in p.box)} lies outside the {w}x{h} frame")
        if p.mask is not None and p.mask.shape != (h, w):
            raise ValueError(f"{where}: mask has shape {p.mask.shape}, the frames are {(h, w)}")


def prompts_from_labels(
    labels: np.ndarray, frame: int, obj_ids: Iterable[int] | None = None, key: bool = False
) -> list[ObjectPrompt]:
    """Mask prompts for the objects of one label image.

    Use it to resume an interrupted run (``key=False``: the last frame done
    seeds the rest) or to turn a painted/corrected frame into key frames
    (``key=True``).

    Parameters
    ----------
    labels : (H, W) int array
        0 background, object ids elsewhere.
    frame : int
        The frame ``labels`` belongs to.
    obj_ids : iterable of int, optional
        Only these objects (default: all in ``labels``).
    key : bool
        See :attr:`ObjectPrompt.key`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels of one frame must be 2D, got shape {labels.shape}")
    present = np.unique(labels)
    present = present[present > 0]
    if obj_ids is not None:
        present = np.intersect1d(present, np.fromiter(obj_ids, dtype=np.int64))
    return [ObjectPrompt(frame=frame, obj_id=int(i), mask=labels == i, key=key) for i in present]


def resume_prompts(
    labels, frame: int, direction: int = 1, obj_ids: Iterable[int] | None = None, search_frames: int = 30,
) -> list[ObjectPrompt]:
    """Seeds to resume a run that stopped after ``frame``, read back from the labels it painted.

    Unlike :func:`prompts_from_labels` of ``labels[frame]`` alone, an object that
    was lost on ``frame`` (no pixels there) is not dropped: if it was seen on one
    of the ``search_frames`` frames before (in the run's ``direction``), it comes
    back as a *lost seed* (:attr:`ObjectPrompt.lost_for`, the mask where it was
    last seen), so the resumed run goes on searching for it for the frames the
    search had left. Every seed carries the object's masks on the frames before
    (:attr:`ObjectPrompt.history`), from which its motion and usual size are
    rebuilt.

    Parameters
    ----------
    labels : (T, H, W) array-like
        The labels the interrupted run painted (read frame by frame).
    frame : int
        The last frame done; the resumed run starts there (``start=frame``
        going forward, ``stop=frame + 1`` going backward).
    direction : int
        +1 (the run went forward) or -1 (backward).
    obj_ids : iterable of int, optional
        The objects to resume (default: every object on ``frame`` or on the
        ``search_frames`` frames before it). Leave out objects that ended
        otherwise (the mother of a division).
    search_frames : int
        As given to :func:`~src_core.propagate.tracker.propagate`: an object
        lost for longer was given up and is not resumed.
    """
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    n = len(labels)
    if not 0 <= frame < n:
        raise ValueError(f"frame {frame} is outside the labels (0 to {n - 1})")
    wanted = None if obj_ids is None else {int(i) for i in obj_ids}
    window = 12  # sightings kept per object, for its motion and size
    history: dict[int, list[tuple[int, np.ndarray]]] = {}  # id -> [(frame, mask)], newest first
    t = frame
    while 0 <= t < n and abs(t - frame) <= search_frames + window:
        image = np.asarray(labels[t])
        ids = np.unique(image[image > 0])
        for obj_id in (int(i) for i in ids):
            if wanted is not None and obj_id not in wanted:
                continue
            seen = history.get(obj_id)
            if seen is None and abs(t - frame) > search_frames:
                continue  # last seen too long ago: given up
            if seen is not None and len(seen) >= window:
                continue
            history.setdefault(obj_id, []).append((t, image == obj_id))
        t -= direction
    prompts = []
    for obj_id in sorted(history):
        (last_frame, mask), *earlier = history[obj_id]
        prompts.append(ObjectPrompt(
            frame=frame, obj_id=obj_id, mask=mask, key=False, lost_for=abs(frame - last_frame),
            history=tuple(earlier[::-1]),
        ))
    return prompts


def load_prompts(path: str | os.PathLike) -> list[ObjectPrompt]:
    """Read prompts from a JSON or CSV file (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No prompt file at {path}.")
    text = path.read_text(encoding="utf-8")
    if not text.strip():
        raise ValueError(f"The prompt file {path} is empty: it must list at least one object on a frame.")
    if path.suffix.lower() == ".csv":
        prompts = _prompts_from_csv(text, path)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"The prompt file {path} is not valid JSON ({err}).") from None
        entries = data.get("prompts") if isinstance(data, dict) else data
        if not isinstance(entries, list):
            raise ValueError(f'The prompt file {path} must hold a list of prompts or {{"prompts": [...]}}.')
        prompts = [_prompt_from_entry(e, path, i) for i, e in enumerate(entries)]
    if not prompts:
        raise ValueError(f"The prompt file {path} holds no prompts: it must list at least one object on a frame.")
    return prompts


def save_prompts(path: str | os.PathLike, prompts: Sequence[ObjectPrompt]) -> Path:
    """Write point and box prompts as JSON (mask prompts cannot be stored: ValueError)."""
    entries = []
    for p in prompts:
        if p.mask is not None:
            raise ValueError(f"object {p.obj_id} on frame {p.frame} is a mask prompt; save masks as labels")
        entry: dict = {"frame": p.frame, "id": p.obj_id}
        if len(p.points):
            entry["points"] = p.points.tolist()
            entry["labels"] = p.labels.tolist()
        if p.box is not None:
            entry["box"] = p.box.tolist()
        if not p.key:
            entry["key"] = False
        entries.append(entry)
    path = Path(path)
    path.write_text(json.dumps({"prompts": entries}, indent=1), encoding="utf-8")
    return path


def _prompt_from_entry(entry: object, path: Path, index: int) -> ObjectPrompt:
    if not isinstance(entry, dict) or "frame" not in entry or "id" not in entry:
        raise ValueError(f'{path}: prompt {index} must be an object with "frame" and "id", got {entry!r}')
    try:
        return ObjectPrompt(
            frame=entry["frame"],
            obj_id=entry["id"],
            points=entry.get("points", np.zeros((0, 2))),
            labels=entry.get("labels", np.zeros(0, dtype=np.int64)),
            box=entry.get("box"),
            key=bool(entry.get("key", True)),
        )
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: prompt {index}: {err}") from None


def _prompts_from_csv(text: str, path: Path) -> list[ObjectPrompt]:
    rows = list(csv.DictReader(text.splitlines()))
    missing = {"frame", "id", "x", "y"} - set(rows[0] if rows else {})
    if rows and missing:
        raise ValueError(f"{path}: a CSV prompt file needs the columns frame,id,x,y[,label]; missing {sorted(missing)}")
    grouped: dict[tuple[int, int], list[tuple[float, float, int]]] = {}
    for n, row in enumerate(rows, start=2):
        try:
            key = (int(row["frame"]), int(row["id"]))
            point = (float(row["x"]), float(row["y"]), int(row.get("label") or 1))
        except (TypeError, ValueError):
            raise ValueError(f"{path}, line {n}: frame and id must be integers, x and y numbers: {row}") from None
        grouped.setdefault(key, []).append(point)
    prompts = []
    for (frame, obj_id), pts in grouped.items():
        arr = np.asarray(pts)
        try:
            prompts.append(ObjectPrompt(frame=frame, obj_id=obj_id, points=arr[:, :2], labels=arr[:, 2].astype(int)))
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None
    return prompts
