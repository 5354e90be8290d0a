"""The "Track" part of the dock widget: propagate prompted objects through a video or a stack.

Prompt objects on any frame in "SAM track prompts" / "SAM track boxes" (each object
its own id and colour; "New object" or O starts the next one), choose a range and a
direction, and Propagate: :func:`~src_core.propagate.propagate` (time) or
:func:`~src_core.propagate.propagate_volume` (z) runs in one of the widget's jobs,
reading frames lazily from the image layer, and every frame's labels appear in
"SAM tracks" as it is done. A run first clears the frames it will fill (what an
earlier run left there goes). Painting on a frame of "SAM tracks" makes it a key
frame: its labels are given to the next run as the objects' masks (an object erased
there is lost on it) and never overwritten, not even while a run goes on.
Results also go to a Tracks layer; Export writes the engine's table, trajectories
and overlay video. "Settings" (:class:`~napari_sam._track_settings.TrackSettings`)
holds the engine's prompt recipe and its accept/reject thresholds. A (T, Z, Y, X)
stack is tracked through time at the shown z (or through z at the shown t).

The panel works through the session (:class:`~napari_sam._session.Session`): the
viewer, the predictor, the chosen image, its normalization and the job runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from src_core.embedding_cache import cache_model_id
from src_core.propagate import (
    DIRECTIONS,
    PropagationError,
    TrackingWriter,
    frames_visited,
    propagate,
    propagate_volume,
    resume_prompts,
    tracks_data,
    write_overlay_video,
    write_table,
    write_trajectories,
)

from . import _layers as L
from . import _track_layers as T
from ._job import JobPanel
from ._track_settings import TrackSettings

AXES = ("time (video, T stack)", "z (volume)")


@dataclass(frozen=True)
class TrackOutcome:
    """How a propagation job ended: "done", "cancelled" or "stopped" (with the reason)."""

    status: str
    frames: int
    message: str = ""


def run_propagation(results, writer: TrackingWriter, keep=None):
    """Consume the engine's generator, write each result, yield it (runs in a worker; no Qt).

    Frames for which ``keep(frame)`` is true (key frames) are not written. Returns a
    :class:`TrackOutcome`. Never raises a RuntimeError: napari's generator workers
    swallow those without finishing.
    """
    from src_core.jobs import Cancelled

    done = 0
    try:
        for result in results:
            if keep is None or not keep(result.frame):
                writer.write(result)  # paints the labels array: the next frames read it as context
            done += 1
            yield result
    except Cancelled:  # the engine asks should_stop before every frame (given to propagate)
        return TrackOutcome("cancelled", done)
    except PropagationError as err:
        return TrackOutcome("stopped", done, str(err))
    except RuntimeError as err:
        return TrackOutcome("stopped", done, f"{type(err).__name__}: {err}")
    return TrackOutcome("done", done)


NOT_A_STACK = "Track needs a video or a stack: choose one in 'image'."
NEXT_STEP = "Click on an object on any frame (object 1), New object (O) for the next, then Propagate."


def memory_tracker(predictor):
    """SAM 2.1's video predictor on the weights of a loaded SAM 2.1 image predictor, or
    None for a SAM 1 predictor (tracked with the recipe, frame by frame)."""
    from src_core.sam2_predictor import SAM2ImagePredictor

    if not isinstance(predictor, SAM2ImagePredictor):
        return None
    from src_core.sam2_video import SAM2VideoPredictor

    return SAM2VideoPredictor.for_model(predictor.model)


class TrackPanel(JobPanel):
    """Object ids, range, direction, Propagate/Cancel, key frames and exports."""

    job_name = "Tracking"
    cancelled_message = None  # the run's outcome says it (the frames tracked so far are kept)

    def __init__(self, session) -> None:
        super().__init__(session)
        self.layers: dict = {}
        # corrected planes, (t,) or (t, z): replaced, never changed in place (workers read it)
        self._key_planes: frozenset[tuple[int, ...]] = frozenset()
        self._tables: dict[T.TrackAxis, np.ndarray] = {}  # the rows of the finished runs, per axis
        self.writer: TrackingWriter | None = None  # the running run's
        self._run_axis: T.TrackAxis | None = None
        self._done = 0
        self._connected: set[int] = set()
        self.outcome: TrackOutcome | None = None  # how the last run ended
        self._lost: dict[tuple[int, ...], dict[int, str]] = {}  # plane -> {id: why it was lost there}
        self._build_ui()
        session.viewer.dims.events.current_step.connect(self.show_lost)

    # -- UI -----------------------------------------------------------------------------

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Track")
        outer.addWidget(box)
        form = QFormLayout(box)
        self.hint_label = QLabel(NOT_A_STACK)
        self.hint_label.setWordWrap(True)
        # two lines, kept when the dock is short (a wrapped label has no fixed height of its own)
        self.hint_label.setMinimumHeight(2 * self.hint_label.fontMetrics().lineSpacing() + 4)
        form.addRow(self.hint_label)
        self.object_box = QSpinBox()
        self.object_box.setRange(1, 2**31 - 1)
        self.object_box.setToolTip("New clicks and boxes in 'SAM track prompts/boxes' belong to this object.")
        self.object_box.valueChanged.connect(self._on_object_changed)
        new_object = QPushButton("New object (O)")
        new_object.clicked.connect(self.new_object)
        self.background_check = QCheckBox("background clicks (N)")
        self.background_check.toggled.connect(self._on_object_changed)
        row = QHBoxLayout()
        row.addWidget(self.object_box)
        row.addWidget(new_object)
        row.addWidget(self.background_check)
        self.axis_box = QComboBox()
        self.axis_box.addItems(AXES)
        self.axis_box.setToolTip(
            "Time: objects are followed frame by frame, lost ones searched for, with trajectories. "
            "z: each object is followed up and down from its slices and ends where it ends."
        )
        self.axis_box.currentIndexChanged.connect(self._on_axis_changed)
        self.direction_box = QComboBox()
        self.direction_box.addItems(DIRECTIONS)
        self.direction_box.setCurrentText("both")
        self.first_box, self.last_box = QSpinBox(), QSpinBox()
        for spin in (self.first_box, self.last_box):
            spin.setRange(0, 0)
        here = QPushButton("from shown frame")
        here.setToolTip("Start at the frame on screen, e.g. after correcting it.")
        here.clicked.connect(lambda: self.first_box.setValue(self.current_frame()))
        span = QHBoxLayout()
        span.addWidget(self.first_box)
        span.addWidget(QLabel("to"))
        span.addWidget(self.last_box)
        span.addWidget(here)
        self.follow_check = QCheckBox("show each frame as it is tracked")
        self.follow_check.setChecked(True)
        buttons = self.make_job_row("Propagate")
        self.lost_label = QLabel("")
        self.lost_label.setWordWrap(True)
        self.lost_label.setToolTip("Why objects were lost on the shown frame (the table's reason column).")
        self.lost_label.setVisible(False)
        self.keys_label = QLabel("key frames: none")
        self.keys_label.setWordWrap(True)
        key_buttons = QHBoxLayout()
        for text, slot, tip in (
            ("Mark key frame", self.mark_key_frame, "Use the shown frame's labels as they are (painting does this)."),
            ("Unmark", self.unmark_key_frame, "Let propagation replace the shown frame again."),
        ):
            button = QPushButton(text)
            button.setToolTip(tip)
            button.clicked.connect(slot)
            key_buttons.addWidget(button)
        exports = QHBoxLayout()
        for text, slot in (
            ("Table CSV", self.export_table),
            ("Trajectories CSV", self.export_trajectories),
            ("Overlay mp4", self.export_video),
        ):
            button = QPushButton(text)
            button.clicked.connect(lambda checked=False, slot=slot: slot())
            exports.addWidget(button)
        form.addRow("object id", row)
        form.addRow("along", self.axis_box)
        form.addRow("direction", self.direction_box)
        form.addRow("frames", span)
        form.addRow(self.follow_check)
        self.settings_panel = TrackSettings()
        form.addRow(self.settings_panel)
        form.addRow(buttons)
        form.addRow(self.lost_label)
        form.addRow(self.keys_label)
        form.addRow(key_buttons)
        form.addRow("export", exports)

    def reset_settings(self) -> None:
        """The engine's defaults in "Settings" (QC thresholds of the chosen axis)."""
        self.settings_panel.reset()

    def settings(self) -> dict:
        """The engine's keyword arguments set in "Settings": ``recipe``, ``qc`` (and
        ``search_frames`` and ``divisions`` in time)."""
        return self.settings_panel.values()

    def _on_axis_changed(self, index: int) -> None:
        self.direction_box.setEnabled(index == 0)
        self.settings_panel.set_axis(index == 1)
        if self.layers:
            self._update_range()
            self._show_keys()

    # -- layers and prompts -------------------------------------------------------------

    def track_axis(self) -> T.TrackAxis:
        """The axis a run goes through now: the first axis, or in a (T, Z, Y, X) stack
        time at the shown z ("along" time) or z at the shown t ("along" z)."""
        image = self.session.image_layer
        if image is None or len(L.spatial_shape(image)) != 4:
            return T.TrackAxis()
        t, z = L.current_plane(image, self.session.viewer)
        return T.TrackAxis(0, z) if self.axis_box.currentIndex() == 0 else T.TrackAxis(1, t)

    def current_frame(self) -> int:
        image = self.session.image_layer
        if image is None:
            return 0
        plane = L.current_plane(image, self.session.viewer)
        return plane[self.track_axis().axis] if plane else 0

    @property
    def key_frames(self) -> set[int]:
        """The corrected frames on the axis tracked now (see :meth:`track_axis`)."""
        return self._keys_on(self.track_axis())

    def _keys_on(self, along: T.TrackAxis) -> set[int]:
        return {f for f in map(along.frame, self._key_planes) if f is not None}

    def open(self) -> bool:
        """The tab was opened: on a video or stack, make its layers and get them ready for clicks.

        The track prompts layer becomes the active one, in add mode, the frame range is
        the image's, and the hint says what to do next. Nothing is said on a 2D image
        but the hint (the tab may be opened just to look).
        """
        image = self.session.image_layer
        if image is None or len(L.spatial_shape(image)) not in (3, 4):
            self.hint_label.setText(NOT_A_STACK)
            return False
        if not self.prepare():
            return False
        points = self.layers[T.PROMPTS]
        self.session.viewer.layers.selection.active = points
        points.mode = "add"
        self.hint_label.setText(NEXT_STEP)
        return True

    def prepare(self) -> bool:
        """Make (or find) the track layers for the chosen image; False (with a message) if it can't be tracked."""
        image = self.session.image_layer
        if image is None:
            show_warning("Track: add or choose an image layer (a video or a stack) first.")
            return False
        try:
            layers = T.ensure_track_layers(self.session.viewer, image)
        except ValueError as err:
            show_error(f"Track: {err}")
            return False
        if layers.get(T.TRACKS) is not self.layers.get(T.TRACKS):
            self._key_planes, self._tables, self.writer = frozenset(), {}, None  # other tracks: start over
            self._lost = {}
        self.layers = layers
        self._update_range()
        self._show_keys()
        self._connect(layers)
        self._on_object_changed()
        return True

    def _update_range(self) -> None:
        """Frame spin boxes up to the length of the tracked axis."""
        n = self.layers[T.TRACKS].data.shape[self.track_axis().axis]
        was_full = self.last_box.value() in (0, self.last_box.maximum())
        for spin in (self.first_box, self.last_box):
            spin.setMaximum(n - 1)
        if was_full:
            self.last_box.setValue(n - 1)

    def _connect(self, layers: dict) -> None:
        points, boxes, labels = layers[T.PROMPTS], layers[T.BOXES], layers[T.TRACKS]
        for layer in (points, boxes, labels):
            if id(layer) in self._connected:
                continue
            self._connected.add(id(layer))
            layer.bind_key("o", lambda _: self.new_object(), overwrite=True)
            if layer is labels:
                layer.events.paint.connect(self._on_paint)
            else:
                layer.events.data.connect(self._on_prompts_changed)
        points.bind_key("n", lambda _: self.background_check.toggle(), overwrite=True)

    def _on_prompts_changed(self, event=None) -> None:
        if self.layers:
            T.color_prompts(self.layers[T.PROMPTS], self.layers[T.BOXES], self.layers[T.TRACKS])

    def _on_object_changed(self, *args) -> None:
        if not self.layers:
            return
        obj_id = self.object_box.value()
        color = T.object_color(self.layers[T.TRACKS], obj_id)
        points, boxes = self.layers[T.PROMPTS], self.layers[T.BOXES]
        label = 0 if self.background_check.isChecked() else 1
        points.feature_defaults = {"obj_id": obj_id, "label": label}
        points.current_face_color = color
        points.current_border_color = T.BACKGROUND_BORDER if label == 0 else T.OBJECT_BORDER
        boxes.feature_defaults = {"obj_id": obj_id}
        boxes.current_edge_color = color

    def new_object(self) -> None:
        """Start the next object: an id above every id in the prompts and the tracks."""
        if not self.layers and not self.prepare():
            return
        self.background_check.setChecked(False)
        self.object_box.setValue(T.largest_id(*(self.layers[k] for k in (T.PROMPTS, T.BOXES, T.TRACKS))) + 1)
        points = self.layers[T.PROMPTS]
        if self.session.viewer.layers.selection.active is not self.layers[T.BOXES]:
            self.session.viewer.layers.selection.active = points  # ready to click on the next object
            points.mode = "add"
        self.session.set_status(f"Track: object {self.object_box.value()}; click on it or draw a box.")

    # -- key frames ---------------------------------------------------------------------

    def _on_paint(self, event) -> None:
        if not self.layers:
            return
        lead_shape = tuple(self.layers[T.TRACKS].data.shape[:-2])
        planes = T.changed_planes(event.value, lead_shape)
        if planes - self._key_planes:
            self._key_planes = self._key_planes | planes  # a run in progress stops painting them
            self._show_keys()

    def mark_key_frame(self, frame: int | None = None) -> None:
        if not self.layers and not self.prepare():
            return
        frame = self.current_frame() if frame is None else int(frame)
        self._key_planes = self._key_planes | {self.track_axis().plane(frame)}
        self._show_keys()

    def unmark_key_frame(self, frame: int | None = None) -> None:
        frame = self.current_frame() if frame is None else int(frame)
        self._key_planes = self._key_planes - {self.track_axis().plane(frame)}
        self._show_keys()

    def _show_keys(self) -> None:
        keys = sorted(self.key_frames)
        text = ", ".join(map(str, keys[:20])) + (" ..." if len(keys) > 20 else "")
        along = self.track_axis()
        where = "" if along.at is None else f" (at {'z' if along.axis == 0 else 't'} {along.at})"
        self.keys_label.setText(f"key frames{where}: {text or 'none'}")

    # -- run and cancel -----------------------------------------------------------------

    def run(self) -> None:
        """Propagate the prompted objects over the range, in a worker, frame by frame."""
        session = self.session
        if not session.idle:
            show_warning("Busy: wait for the current job to finish (or cancel it).")
            return
        if session.predictor is None:
            show_warning("Track: load a model first ('Load model').")
            return
        if not self.prepare():
            return
        image = session.image_layer
        labels_layer = self.layers[T.TRACKS]
        along = self.track_axis()
        channels = session.channel_layers()  # "+ channels": tracked together with the image
        frames = along.take(getattr(image.data, "source", image.data))  # a damaged video frame stops the run
        if channels:
            frames = T.StackedFrames([frames, *(along.take(layer.data) for layer in channels)])
        tracks = along.take(labels_layer.data)
        start, stop = self.first_box.value(), self.last_box.value() + 1
        along_z = self.axis_box.currentIndex() == 1
        direction = "both" if along_z else self.direction_box.currentText()
        keys = self._keys_on(along)
        kwargs = session.normalization(image)  # the widget's contrast, the channels included
        model_id = cache_model_id(session.predictor)
        cache = session.embedding_cache() if model_id else None
        settings = self.settings()
        segmenter = memory_tracker(session.predictor)
        if segmenter is None:
            segmenter = session.predictor
        else:  # SAM 2.1: its memory carries the objects; the SAM 1 recipe's settings do not apply
            settings = {k: v for k, v in settings.items() if k in ("qc",)}
            cache = model_id = None  # nor does the embedding cache: it keeps its own features
        try:
            prompts = T.collect_track_prompts(
                self.layers[T.PROMPTS], self.layers[T.BOXES], labels_layer, keys, along
            )
            if not prompts:
                raise ValueError("no object is prompted: click on an object or draw a box in "
                                 f"'{T.PROMPTS}'/'{T.BOXES}', or paint it in '{T.TRACKS}'")
            common = dict(start=start, stop=stop, should_stop=self.should_stop, set_image_kwargs=kwargs, cache=cache, model_id=model_id,
                          key_frames=keys, **settings)
            if along_z:
                results = propagate_volume(frames, segmenter, prompts, labels=tracks, **common)
            else:
                prompts += self._still_lost(tracks, prompts, keys, start, stop, direction,
                                            settings.get("search_frames", 0))
                results = propagate(
                    frames, segmenter, prompts, direction=direction, context_labels=tracks, **common,
                )
        except ValueError as err:
            show_error(f"Track: {err}")
            return
        self._clear(along, tracks, frames_visited(prompts, direction, start, stop) - keys)
        self.writer, self._run_axis, self._done = TrackingWriter(tracks), along, 0
        keep = lambda frame: along.plane(frame) in self._key_planes  # noqa: E731 (read live: painted mid-run too)
        worker = thread_worker(run_propagation, ignore_errors=True)(results, self.writer, keep)
        worker.yielded.connect(self._on_result)
        worker.returned.connect(self._on_outcome)
        worker.aborted.connect(lambda: self._on_outcome(TrackOutcome("cancelled", self._done)))
        session.forget_embedding()  # the predictor will hold other frames: the shown one comes back after
        if session.segmenter is not None:
            session.segmenter.reset()
        what = "slices" if along_z else "frames"
        self.start_job(worker, f"Tracking {len(prompts)} prompts through {what} {start}-{stop - 1} ...")

    def _clear(self, along: T.TrackAxis, tracks, frames: set[int]) -> None:
        """Forget what earlier runs left on ``frames`` (labels and table rows): the run fills them again."""
        for t in sorted(frames):
            self._lost.pop(along.plane(t), None)
            if np.asarray(tracks[t]).any():
                tracks[t] = 0
        table = self._tables.get(along)
        if table is not None and len(table):
            self._tables[along] = table[~np.isin(table["frame"], sorted(frames))]
        self.layers[T.TRACKS].refresh()

    @staticmethod
    def _still_lost(tracks, prompts, keys, start, stop, direction, search_frames) -> list:
        """Objects lost on the key frame a run starts from, to be searched for on (as the engine does mid-run).

        They were tracked on the frames before (an earlier run) but are not on the
        corrected frame: the user erased them there, or they had been lost already.
        """
        edge, step = (stop - 1, -1) if direction == "backward" else (start, 1)
        if edge not in keys or not search_frames:
            return []
        here = {p.obj_id for p in prompts if p.frame == edge}
        seeds = resume_prompts(tracks, edge, step, search_frames=search_frames)
        return [p for p in seeds if p.lost_for and p.obj_id not in here]

    def on_cancel(self) -> None:
        """Stop within an embedding too; the frames tracked so far are kept."""
        if hasattr(self.session.predictor, "cancel"):
            self.session.predictor.cancel()

    def _on_result(self, result) -> None:
        self._done += 1
        labels = self.layers.get(T.TRACKS)
        if labels is not None:
            labels.refresh()
        if self.follow_check.isChecked() and self._run_axis is not None:
            step = list(self.session.viewer.dims.current_step)
            # the tracked axis among the image's spatial axes
            axis = self.session.viewer.dims.ndim - labels.data.ndim + self._run_axis.axis
            if step[axis] != result.frame:
                step[axis] = result.frame
                self.session.viewer.dims.current_step = tuple(step)
        self.on_progress(result.step, result.total)
        lost = [i for i, o in result.objects.items() if o.mask is None]
        if self._run_axis is not None:
            plane = self._run_axis.plane(result.frame)
            self._lost.pop(plane, None)
            if lost:
                self._lost[plane] = {i: result.objects[i].reason for i in lost}
            self.show_lost()
        self.session.set_status(
            f"frame {result.frame}: {len(result.objects) - len(lost)} object{'s' * (len(result.objects) - len(lost) != 1)}"
            + (f", lost {lost}" if lost else "")
            + f" ({result.step}/{result.total})"
        )

    def lost_on_shown_frame(self) -> dict[int, str]:
        """Object id -> why it was lost on the frame shown (empty when none was)."""
        image = self.session.image_layer
        if image is None:
            return {}
        along = self.track_axis()
        return dict(self._lost.get(along.plane(self.current_frame()), {}))

    def show_lost(self, *args) -> None:
        """Say on the panel why objects were lost on the frame shown."""
        lost = self.lost_on_shown_frame()
        self.lost_label.setText("; ".join(f"object {i} lost: {why}" for i, why in sorted(lost.items())))
        self.lost_label.setVisible(bool(lost))

    def _on_outcome(self, outcome: TrackOutcome) -> None:
        self.outcome = outcome
        self._update_tracks()
        if outcome.status == "done":
            self.session.set_status(f"Tracking done: {outcome.frames} frames.")
        elif outcome.status == "cancelled":
            self.session.set_status("Tracking cancelled; the frames tracked so far are kept.")
        else:
            show_error(f"Track: {outcome.message}")
            self.session.set_status(f"Tracking stopped after {outcome.frames} frames; they are kept.")

    def on_finished(self) -> None:
        if self.writer is not None and self._run_axis is not None:  # keep the run's rows
            self._tables[self._run_axis] = T.combine_tables(self._table_of(self._run_axis), self.writer.table)
            self.writer = None
        if self.layers.get(T.TRACKS) is not None:
            self.layers[T.TRACKS].refresh()

    def _update_tracks(self) -> None:
        """Show the centroids over time as a Tracks layer (time only: along z they mean little).

        In a (T, Z, Y, X) stack every z tracked through time is shown at its z: one track
        per object and z (track ids are renumbered; the features ``obj_id`` and ``z``
        keep the object and its plane).
        """
        along = self._run_axis
        if self.axis_box.currentIndex() == 1 or not self.layers or along is None or along.axis != 0:
            return
        features = None
        if along.at is None:
            data, graph = tracks_data(self.table(along))
        else:  # (track, t, z, y, x) for every z tracked through time
            data, graph, features = self._tracks_through_time_per_z()
        if not len(data):
            return
        viewer, image = self.session.viewer, self.session.image_layer
        existing = {layer.name: layer for layer in viewer.layers}.get(T.TRAJECTORIES)
        if existing is not None and existing.data.shape[1] != data.shape[1]:
            viewer.layers.remove(existing)  # another image's dimensions
            existing = None
        if existing is None:
            ndim = data.shape[1] - 1
            geometry = {"scale": tuple(image.scale)[:ndim], "translate": tuple(image.translate)[:ndim]}
            viewer.add_tracks(data, graph=graph, name=T.TRAJECTORIES, tail_length=30, features=features, **geometry)
            viewer.layers.selection.active = self.layers[T.TRACKS]
        else:
            existing.graph = {}
            existing.data = data
            existing.graph = graph
            if features is not None:
                existing.features = features

    def _tracks_through_time_per_z(self):
        """Tracks data (N, 5), graph and features of every z of a (T, Z, Y, X) stack tracked through time."""
        chunks, graph, obj_ids, zs = [], {}, [], []
        next_id = 1
        for along, table in self._tables_across(0):
            data, z_graph = tracks_data(table)
            if not len(data):
                continue
            objects, inverse = np.unique(data[:, 0].astype(int), return_inverse=True)
            renumber = dict(zip(objects.tolist(), range(next_id, next_id + len(objects))))
            ids = (next_id + inverse).astype(float)
            next_id += len(objects)
            chunks.append(np.column_stack([ids, data[:, 1], np.full(len(data), float(along.at)), data[:, 2:]]))
            obj_ids.append(data[:, 0].astype(int))
            zs.append(np.full(len(data), along.at, int))
            for daughter, mothers in z_graph.items():
                if daughter in renumber and all(m in renumber for m in mothers):
                    graph[renumber[daughter]] = [renumber[m] for m in mothers]
        if not chunks:
            return np.zeros((0, 5)), {}, None
        features = {"obj_id": np.concatenate(obj_ids), "z": np.concatenate(zs)}
        return np.concatenate(chunks), graph, features

    # -- results and exports ------------------------------------------------------------

    def _tables_across(self, axis: int) -> list[tuple[T.TrackAxis, np.ndarray]]:
        """The tables tracked along ``axis`` of a (T, Z, Y, X) stack, one per position
        on the other leading axis, in order of that position."""
        axes = {a for a in self._tables if a.axis == axis and a.at is not None}
        if self._run_axis is not None and self._run_axis.axis == axis and self._run_axis.at is not None:
            axes.add(self._run_axis)
        return [(along, self.table(along)) for along in sorted(axes, key=lambda a: a.at)]

    def _export_rows(self) -> tuple[np.ndarray, tuple[str, np.ndarray] | None]:
        """The rows to export and, in a (T, Z, Y, X) stack, the position column: every
        z tracked through time (column "z"), or every t tracked through z (column "t")."""
        along = self.track_axis()
        if along.at is None:
            return self.table(), None
        tables = self._tables_across(along.axis)
        if not any(at == along for at, _ in tables):  # the shown plane, e.g. only painted so far
            tables = sorted([*tables, (along, self.table(along))], key=lambda item: item[0].at)
        rows = np.concatenate([table for _, table in tables])
        where = np.concatenate([np.full(len(table), at.at, int) for at, table in tables])
        return rows, ("z" if along.axis == 0 else "t", where)

    def _table_of(self, along: T.TrackAxis) -> np.ndarray:
        rows = self._tables.get(along, TrackingWriter().table)
        if self.writer is not None and self._run_axis == along:  # a run in progress
            rows = T.combine_tables(rows, self.writer.table)
        return rows

    def table(self, along: T.TrackAxis | None = None) -> np.ndarray:
        """Every tracked row on the axis (default: the one tracked now; the last run wins).

        Key frames are measured from the labels (the user may have edited them).
        """
        along = self.track_axis() if along is None else along
        rows = self._table_of(along)
        if not self.layers:
            return rows
        return T.merge_key_frames(rows, along.take(self.layers[T.TRACKS].data), self._keys_on(along))

    def _target(self, path, title: str, pattern: str) -> Path | None:
        if not self.layers:
            show_info("Track: nothing tracked yet.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, title, "", pattern)
            if not path:
                return None
        return Path(path)

    def export_table(self, path=None) -> Path | None:
        """Write the per-frame table CSV (frame, id, centroid, area, bbox, score, status);
        in a (T, Z, Y, X) stack every tracked z (or t) with a first column "z" (or "t")."""
        path = self._target(path, "Save the per-frame table", "CSV (*.csv)")
        if path is None:
            return None
        try:
            write_table(path, *self._export_rows())
        except OSError as err:
            show_error(f"Track: could not write {path}: {err}")
            return None
        self.session.set_status(f"Table written to {path}")
        return path

    def export_trajectories(self, path=None) -> Path | None:
        """Write the wide trajectories CSV (frame, x1, y1, x2, y2, ...); in a (T, Z, Y, X)
        stack one pair per object and z (or t): x1_z0, y1_z0, ..."""
        path = self._target(path, "Save the trajectories", "CSV (*.csv)")
        if path is None:
            return None
        try:
            n = self.layers[T.TRACKS].data.shape[self.track_axis().axis]
            rows, position = self._export_rows()
            write_trajectories(path, rows, n_frames=n, position=position)
        except OSError as err:
            show_error(f"Track: could not write {path}: {err}")
            return None
        self.session.set_status(f"Trajectories written to {path}")
        return path

    def export_video(self, path=None):
        """Write an overlay video (frames with the tracks drawn on) in a worker; returns the worker."""
        path = self._target(path, "Save the overlay video", "MP4 video (*.mp4)")
        if path is None:
            return None
        if not self.session.idle:
            show_warning("Busy: wait for the current job to finish (or cancel it).")
            return None
        image, along = self.session.image_layer, self.track_axis()
        frames, labels = along.take(image.data), along.take(self.layers[T.TRACKS].data)
        fps = float(image.metadata.get("fps", 15.0) or 15.0)
        worker = thread_worker(
            write_overlay_video, ignore_errors=True, progress={"total": 0, "desc": "Writing overlay video"}
        )(path, frames, labels, fps=fps)
        worker.returned.connect(lambda written: self.session.set_status(f"Overlay video written to {written}"))
        self.session.set_status(f"Writing {path} ...")
        self.session.run_job(worker)
        return worker
