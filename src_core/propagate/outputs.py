"""Propagation results as files and layers: labels, napari tracks, CSV tables, an overlay video.

:class:`TrackingWriter` takes :class:`~src_core.propagate.results.FrameResult`\\ s
as they come: it paints them into a label array the caller owns (a numpy
array, a ``np.memmap`` or a zarr array for long videos, napari's layer data)
and appends one row per object to the per-frame table CSV, flushed every
frame, so an interrupted run leaves everything done so far on disk.
:meth:`TrackingWriter.close` rewrites the table sorted (the last row of a
frame and object wins), writes the wide trajectories CSV and returns napari
Tracks data.

Per-frame table columns (:data:`TABLE_COLUMNS`): ``frame, id, centroid_x,
centroid_y, area, bbox_x0, bbox_y0, bbox_x1, bbox_y1, score, status, parent,
reason, value`` (pixels; bbox inclusive; empty cells for a lost object; for a
lost object ``reason`` says why its mask was rejected, a key of
:data:`~src_core.propagate.qc.REJECTION_CAUSES` such as ``low-iou`` or
``area-jump``, and ``value`` is the value that failed).

Trajectories CSV (as idtracker.ai/TRex users expect): ``frame, x1, y1, x2,
y2, ...`` one row per frame, one x/y pair per id, ``NaN`` where the object
is not seen.
"""

from __future__ import annotations

import colorsys
import csv
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from .labelstore import smallest_label_dtype
from .masks import mask_stats
from .results import KEY, STATUSES, TRACKED, FrameResult

TABLE_COLUMNS = (
    "frame", "id", "centroid_x", "centroid_y", "area", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1",
    "score", "status", "parent", "reason", "value",
)
#: Columns a table written by napari-sam 0.1 may lack (read as empty).
_OPTIONAL_COLUMNS = ("reason", "value")
_TABLE_DTYPE = np.dtype([
    ("frame", np.int64), ("id", np.int64), ("centroid_x", np.float64), ("centroid_y", np.float64),
    ("area", np.int64), ("bbox_x0", np.float64), ("bbox_y0", np.float64), ("bbox_x1", np.float64),
    ("bbox_y1", np.float64), ("score", np.float64), ("status", "U8"), ("parent", np.int64),
    ("reason", "U12"), ("value", np.float64),
])


def paint_labels(labels: Any, result: FrameResult) -> None:
    """Write one frame's objects into ``labels[result.frame]``.

    Only the objects in ``result`` change: their old pixels on that frame are
    cleared and their new mask painted on pixels no other object holds
    (key-frame masks are painted over anything). A lost object is cleared.
    """
    frame = np.array(labels[result.frame])
    top = max((o.obj_id for o in result.objects.values() if o.mask is not None), default=0)
    if top > np.iinfo(frame.dtype).max:
        if not hasattr(labels, "widen"):  # a plain array would wrap the id around
            raise ValueError(f"object id {top} does not fit the labels' type {frame.dtype}")
        frame = frame.astype(smallest_label_dtype(top))  # the store widens when it is written
    changed = False
    for obj in result.objects.values():
        old = frame == obj.obj_id
        if old.any():
            frame[old] = 0
            changed = True
        if obj.mask is None:
            continue
        target = obj.mask if obj.status == KEY else obj.mask & (frame == 0)
        frame[target] = obj.obj_id
        changed = True
    if changed:
        labels[result.frame] = frame


def result_rows(result: FrameResult) -> list[tuple]:
    """The per-frame table rows (see :data:`TABLE_COLUMNS`) of one result."""
    rows = []
    for obj in result.objects.values():
        parent = obj.parent if obj.parent is not None else 0
        if obj.stats is None:
            rows.append((result.frame, obj.obj_id, np.nan, np.nan, 0, np.nan, np.nan, np.nan, np.nan,
                         np.nan, obj.status, parent, obj.cause, obj.value))
            continue
        x0, y0, x1, y1 = obj.stats.bbox
        rows.append((result.frame, obj.obj_id, obj.stats.centroid[0], obj.stats.centroid[1], obj.stats.area,
                     x0, y0, x1, y1, obj.score, obj.status, parent, "", np.nan))
    return rows


class TrackingWriter:
    """Write propagation results as they come (see the module docstring).

    Parameters
    ----------
    labels : array-like, optional
        ``(T, H, W)`` integer array to paint into (owned by the caller).
    table_csv : path, optional
        Per-frame table, appended every frame.
    trajectories_csv : path, optional
        Wide trajectories CSV, written by :meth:`close`.
    n_frames : int, optional
        Rows of the trajectories CSV (default: up to the last frame with a row).
    resume : bool
        Keep the rows already in ``table_csv`` and ``tracks_csv`` (an interrupted
        run); otherwise the files are started afresh.
    tracks_csv : path, optional
        napari Tracks rows ``track_id,t,y,x``, appended every frame (unsorted;
        :meth:`close` does not touch it: sort it with :func:`tracks_data` of the table).
    """

    def __init__(
        self,
        labels: Any = None,
        table_csv: str | os.PathLike | None = None,
        trajectories_csv: str | os.PathLike | None = None,
        *,
        n_frames: int | None = None,
        resume: bool = False,
        tracks_csv: str | os.PathLike | None = None,
    ) -> None:
        self.labels = labels
        self.table_csv = Path(table_csv) if table_csv is not None else None
        self.trajectories_csv = Path(trajectories_csv) if trajectories_csv is not None else None
        self.n_frames = n_frames
        self._chunks: list[np.ndarray] = []
        self._file = None
        for path in (self.table_csv, self.trajectories_csv):
            if path is not None and not path.parent.is_dir():
                raise FileNotFoundError(f"Cannot write {path}: folder {path.parent} does not exist.")
        if self.table_csv is not None:
            if resume and self.table_csv.is_file():
                read_table(self.table_csv)  # raises if it is not a track table
                self._file = open(self.table_csv, "a", newline="", encoding="utf-8")
            else:
                self._file = open(self.table_csv, "w", newline="", encoding="utf-8")
                self._file.write(",".join(TABLE_COLUMNS) + "\n")
                self._file.flush()
            self._csv = csv.writer(self._file)
        self._tracks_file = None
        if tracks_csv is not None:
            tracks_csv = Path(tracks_csv)
            keep = resume and tracks_csv.is_file()
            self._tracks_file = open(tracks_csv, "a" if keep else "w", newline="", encoding="utf-8")
            if not keep:
                self._tracks_file.write("track_id,t,y,x\n")
                self._tracks_file.flush()

    def write(self, result: FrameResult) -> None:
        """Paint and record one frame's result."""
        if self.labels is not None:
            paint_labels(self.labels, result)
        rows = result_rows(result)
        if not rows:
            return
        if self._tracks_file is not None:
            self._tracks_file.writelines(
                f"{r[1]},{r[0]},{r[3]:.2f},{r[2]:.2f}\n" for r in rows if not np.isnan(r[2]))
            self._tracks_file.flush()
        if self._file is not None:
            # on disk only: memory stays the same however long the video
            self._csv.writerows(_format_row(r) for r in rows)
            self._file.flush()
            return
        self._chunks.append(np.array(rows, dtype=_TABLE_DTYPE))
        if len(self._chunks) > 256:  # keep the row buffer compact
            self._chunks = [np.concatenate(self._chunks)]

    @property
    def table(self) -> np.ndarray:
        """All rows so far as a structured array, one per (frame, id) (the last written wins).

        With a ``table_csv`` the rows are read back from the file (they are not
        kept in memory).
        """
        if self.table_csv is not None and self.table_csv.is_file():
            if self._file is not None:
                self._file.flush()
            return dedupe_table(read_table(self.table_csv))
        return dedupe_table(np.concatenate(self._chunks) if self._chunks else np.zeros(0, _TABLE_DTYPE))

    def abandon(self) -> None:
        """Close the files as they are (everything written so far stays; nothing is rewritten)."""
        for name in ("_file", "_tracks_file"):
            f = getattr(self, name, None)
            if f is not None:
                f.close()
                setattr(self, name, None)

    def close(self) -> tuple[np.ndarray, dict[int, list[int]]]:
        """Finish the files; return napari Tracks ``(data, graph)`` (see :func:`tracks_data`)."""
        if self._tracks_file is not None:
            self._tracks_file.close()
            self._tracks_file = None
        if self._file is not None:
            self._file.close()
            self._file = None
            table = self.table
            write_table(self.table_csv, table)
        else:
            table = self.table
        if self.trajectories_csv is not None:
            write_trajectories(self.trajectories_csv, table, self.n_frames)
        return tracks_data(table)

    def __enter__(self) -> TrackingWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:  # an error: keep what was written, appended as it came
            self.abandon()
        if exc[0] is None:
            self.close()


def _format_row(row: tuple) -> list[str]:
    out = []
    for name, value in zip(TABLE_COLUMNS, row):
        if isinstance(value, (float, np.floating)):
            out.append("" if np.isnan(value) else (f"{value:.6g}" if name in ("score", "value") else f"{value:.2f}"))
        elif name == "parent" and int(value) == 0:
            out.append("")  # no parent
        else:
            out.append(str(value))
    return out


def dedupe_table(table: np.ndarray) -> np.ndarray:
    """One row per (frame, id), the last written, sorted by frame and id."""
    if len(table) == 0:
        return table
    key = table["frame"] * (int(table["id"].max()) + 1) + table["id"]
    # the last occurrence of every key, then sorted by frame and id
    _, last = np.unique(key[::-1], return_index=True)
    kept = table[len(table) - 1 - last]
    return kept[np.lexsort((kept["id"], kept["frame"]))]


def read_table(path: str | os.PathLike, position: str | None = None):
    """Read a per-frame table CSV into a structured array (see :data:`TABLE_COLUMNS`).

    ``position="z"`` (or ``"t"``) also returns that first column of a table written
    with ``position`` (see :func:`write_table`): ``(table, values)``.
    """
    path = Path(path)
    rows, where = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(TABLE_COLUMNS) - set(reader.fieldnames or ()) - set(_OPTIONAL_COLUMNS)
        if position is not None and position not in (reader.fieldnames or ()):
            missing.add(position)
        if missing:
            raise ValueError(f"{path} is not a napari-sam track table (missing columns {sorted(missing)})")
        for n, row in enumerate(reader, start=2):
            try:
                parsed = tuple(_parse(name, row.get(name) or "") for name in TABLE_COLUMNS)
                if position is not None:
                    where.append(int(row[position]))
            except (TypeError, ValueError):
                break  # a row cut short by a crash: the rows before it stand
            rows.append(parsed)
    table = np.array(rows, dtype=_TABLE_DTYPE)
    return table if position is None else (table, np.array(where, int))


def _parse(name: str, text: str):
    if name == "status":
        if text not in STATUSES:
            raise ValueError(text)
        return text
    if name == "reason":
        return text
    if name in ("frame", "id", "area", "parent"):
        return int(text) if text else 0
    return float(text) if text else np.nan


def write_table(
    path: str | os.PathLike, table: np.ndarray, position: tuple[str, np.ndarray] | None = None
) -> Path:
    """Write a structured table (as :attr:`TrackingWriter.table`) as the per-frame CSV.

    ``position=(name, values)`` adds a first column ``name`` with one value per row:
    the index on the other leading axis of a (T, Z, Y, X) stack (``"z"`` for tables
    tracked through time at several z, ``"t"`` for tables tracked through z).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    header, prefix = list(TABLE_COLUMNS), None
    if position is not None:
        name, values = position
        prefix = np.asarray(values, int)
        if prefix.shape != (len(table),):
            raise ValueError(f"{len(prefix)} {name} values for a table of {len(table)} rows")
        header = [name] + header
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for i, r in enumerate(table):
            row = _format_row(tuple(r))
            writer.writerow(row if prefix is None else [str(prefix[i])] + row)
    os.replace(tmp, path)
    return path


def write_trajectories(
    path: str | os.PathLike,
    table: np.ndarray,
    n_frames: int | None = None,
    position: tuple[str, np.ndarray] | None = None,
) -> Path:
    """Write the wide ``frame, x1, y1, x2, y2, ...`` CSV of a table's centroids.

    With ``position=(name, values)`` (see :func:`write_table`) an object has one
    pair of columns per position, ``x1_z0, y1_z0, x1_z2, ...``.
    """
    path = Path(path)
    where = np.zeros(len(table), int) if position is None else np.asarray(position[1], int)
    if where.shape != (len(table),):
        raise ValueError(f"{len(where)} {position[0]} values for a table of {len(table)} rows")
    seen = ~np.isnan(table["centroid_x"]) if len(table) else np.zeros(0, bool)
    keys = sorted({(int(p), int(i)) for p, i in zip(where[seen], table["id"][seen])})
    last = int(table["frame"].max()) + 1 if len(table) else 0
    n = max(n_frames or 0, last)
    xy = np.full((n, 2 * len(keys)), np.nan)
    column = {key: i for i, key in enumerate(keys)}
    for p, row in zip(where[seen], table[seen]):
        c = column[int(p), int(row["id"])]
        xy[row["frame"], 2 * c : 2 * c + 2] = row["centroid_x"], row["centroid_y"]
    suffix = (lambda p: "") if position is None else (lambda p: f"_{position[0]}{p}")
    tmp = path.with_name(f".{path.name}.partial")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["frame"] + [f"{axis}{i}{suffix(p)}" for p, i in keys for axis in ("x", "y")])
        for t in range(n):
            writer.writerow([t] + ["NaN" if np.isnan(v) else f"{v:.2f}" for v in xy[t]])
    os.replace(tmp, path)
    return path


def tracks_data(table: np.ndarray) -> tuple[np.ndarray, dict[int, list[int]]]:
    """napari Tracks ``data`` (N, 4) = (track_id, t, y, x) and ``graph`` {daughter: [mother]}.

    Lost rows (no position) are left out; rows are sorted by track, then time.
    """
    seen = table[~np.isnan(table["centroid_x"])] if len(table) else table
    order = np.lexsort((seen["frame"], seen["id"])) if len(seen) else np.zeros(0, int)
    seen = seen[order]
    data = np.stack([seen["id"], seen["frame"], seen["centroid_y"], seen["centroid_x"]], axis=1).astype(float) \
        if len(seen) else np.zeros((0, 4))
    graph: dict[int, list[int]] = {}
    for row in table:
        if row["parent"] > 0:
            graph.setdefault(int(row["id"]), [int(row["parent"])])
    return data, graph


def table_from_labels(labels: Any, start: int = 0, stop: int | None = None, status: str = TRACKED) -> np.ndarray:
    """A per-frame table measured from a label array (e.g. after the user edited the labels)."""
    stop = len(labels) if stop is None else stop
    chunks = []
    for t in range(start, stop):
        frame = np.asarray(labels[t])
        rows = []
        for obj_id in np.unique(frame[frame > 0]):
            stats = mask_stats(frame == obj_id)
            x0, y0, x1, y1 = stats.bbox
            rows.append((t, int(obj_id), stats.centroid[0], stats.centroid[1], stats.area, x0, y0, x1, y1,
                         np.nan, status, 0, "", np.nan))
        if rows:
            chunks.append(np.array(rows, dtype=_TABLE_DTYPE))
    return np.concatenate(chunks) if chunks else np.zeros(0, _TABLE_DTYPE)


# -- overlay video --------------------------------------------------------------------------


def label_colors(ids: Iterable[int]) -> dict[int, np.ndarray]:
    """A distinct, stable RGB colour per id (golden-ratio hues)."""
    out = {}
    for i in ids:
        hue = (int(i) * 0.618033988749895) % 1.0
        out[int(i)] = np.array(colorsys.hsv_to_rgb(hue, 0.85, 1.0)) * 255
    return out


def overlay_frames(
    frames: Any, labels: Any, start: int = 0, stop: int | None = None, alpha: float = 0.45, draw_ids: bool = True,
) -> Iterator[np.ndarray]:
    """RGB uint8 frames with the labels drawn over them (filled, outlined, numbered), one at a time."""
    from PIL import Image, ImageDraw
    from scipy import ndimage as ndi

    stop = len(frames) if stop is None else stop
    for t in range(start, stop):
        image = _to_rgb8(np.asarray(frames[t])).astype(np.float32)
        lab = np.asarray(labels[t])
        ids = np.unique(lab[lab > 0])
        colors = label_colors(ids)
        edges = lab != ndi.grey_erosion(lab, size=3)
        for obj_id in ids:
            where = lab == obj_id
            image[where] = (1 - alpha) * image[where] + alpha * colors[int(obj_id)]
            image[where & edges] = colors[int(obj_id)]
        out = np.clip(image, 0, 255).astype(np.uint8)
        if draw_ids and len(ids):
            pil = Image.fromarray(out)
            draw = ImageDraw.Draw(pil)
            for obj_id in ids:
                stats = mask_stats(lab == obj_id)
                x, y = stats.centroid
                draw.text((x - 3, y - 5), str(int(obj_id)), fill=(255, 255, 255))
            out = np.asarray(pil)
        yield out


def _to_rgb8(frame: np.ndarray) -> np.ndarray:
    if frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    if frame.dtype == np.uint8 and frame.ndim == 2:
        return np.repeat(frame[..., None], 3, axis=2)
    from ..preprocess import to_rgb  # loads torch: only for unusual frames

    return to_rgb(frame)


def write_overlay_video(
    path: str | os.PathLike, frames: Any, labels: Any, *, fps: float = 15.0, start: int = 0,
    stop: int | None = None, alpha: float = 0.45, draw_ids: bool = True,
) -> Path:
    """Write an mp4 (or any container ffmpeg knows) of the frames with the labels over them.

    Odd frame sizes are padded by one pixel (the default yuv420p needs even sizes).
    """
    from ..video import write_video

    def padded() -> Iterator[np.ndarray]:
        for rgb in overlay_frames(frames, labels, start, stop, alpha, draw_ids):
            h, w = rgb.shape[:2]
            if h % 2 or w % 2:
                rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
            yield rgb

    return write_video(path, padded(), fps=fps)
