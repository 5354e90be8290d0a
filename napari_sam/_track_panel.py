"""The "Track" part of the dock widget: propagate prompted objects through a video or a stack.

Prompt objects on any frame in "SAM track prompts" / "SAM track boxes" (each object
its own id and colour; "New object" or O starts the next one), choose a range and a
direction, and Propagate: :func:`~src_core.propagate.propagate` (time) or
:func:`~src_core.propagate.propagate_volume` (z) runs in one of the widget's jobs,
reading frames lazily from the image layer, and every frame's labels appear in
"SAM tracks" as it is done. Painting on a frame of "SAM tracks" makes it a key frame:
its labels are given to the next run as the objects' masks and never overwritten.
Results also go to a Tracks layer; Export writes the engine's table, trajectories
and overlay video.

The panel uses its host (:class:`~napari_sam._widget.SegmentAnythingWidget`) for the
viewer, the predictor, the chosen image, its normalization and the job runner.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
    QVBoxLayout,
)

from src_core.propagate import (
    DIRECTIONS,
    PropagationError,
    TrackingWriter,
    propagate,
    propagate_volume,
    tracks_data,
    write_overlay_video,
    write_table,
    write_trajectories,
)

from . import _layers as L
from . import _track_layers as T

AXES = ("time (video, T stack)", "z (volume)")


@dataclass(frozen=True)
class TrackOutcome:
    """How a propagation job ended: "done", "cancelled" or "stopped" (with the reason)."""

    status: str
    frames: int
    message: str = ""


def run_propagation(results, writer: TrackingWriter, should_stop):
    """Consume the engine's generator, write each result, yield it (runs in a worker; no Qt).

    Returns a :class:`TrackOutcome`. Never raises a RuntimeError: napari's generator
    workers swallow those without finishing.
    """
    from src_core.model.image_encoder import EncodingCancelled

    done = 0
    try:
        for result in results:
            writer.write(result)  # paints the labels array: the next frames read it as context
            done += 1
            yield result
            if should_stop():
                return TrackOutcome("cancelled", done)
    except EncodingCancelled:
        return TrackOutcome("cancelled", done)
    except PropagationError as err:
        return TrackOutcome("stopped", done, str(err))
    except RuntimeError as err:
        return TrackOutcome("stopped", done, f"{type(err).__name__}: {err}")
    return TrackOutcome("done", done)


class TrackPanel(QWidget):
    """Object ids, range, direction, Propagate/Cancel, key frames and exports."""

    def __init__(self, host) -> None:
        super().__init__()
        self.host = host
        self.layers: dict = {}
        self.key_frames: set[int] = set()
        self.writer: TrackingWriter | None = None  # keeps the rows of every run (last wins)
        self._stop = threading.Event()
        self._progress: progress | None = None
        self._connected: set[int] = set()
        self.outcome: TrackOutcome | None = None  # how the last run ended
        self._build_ui()

    # -- UI -----------------------------------------------------------------------------

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Track")
        outer.addWidget(box)
        form = QFormLayout(box)
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
        self.axis_box.currentIndexChanged.connect(lambda i: self.direction_box.setEnabled(i == 0))
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
        self.run_button = QPushButton("Propagate")
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        buttons = QHBoxLayout()
        buttons.addWidget(self.run_button)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.progress_bar, 1)
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
        form.addRow(buttons)
        form.addRow(self.keys_label)
        form.addRow(key_buttons)
        form.addRow("export", exports)

    # -- layers and prompts -------------------------------------------------------------

    def current_frame(self) -> int:
        image = self.host.image_layer
        if image is None:
            return 0
        plane = L.current_plane(image, self.host.viewer)
        return plane[0] if plane else 0

    def prepare(self) -> bool:
        """Make (or find) the track layers for the chosen image; False (with a message) if it can't be tracked."""
        image = self.host.image_layer
        if image is None:
            show_warning("Track: add or choose an image layer (a video or a stack) first.")
            return False
        try:
            layers = T.ensure_track_layers(self.host.viewer, image)
        except ValueError as err:
            show_error(f"Track: {err}")
            return False
        if layers.get(T.TRACKS) is not self.layers.get(T.TRACKS):
            self.key_frames, self.writer = set(), None  # other tracks: start over
            self._show_keys()
        self.layers = layers
        n = layers[T.TRACKS].data.shape[0]
        for spin in (self.first_box, self.last_box):
            spin.setMaximum(n - 1)
        if self.last_box.value() == 0:
            self.last_box.setValue(n - 1)
        self._connect(layers)
        self._on_object_changed()
        return True

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
        if self.host.viewer.layers.selection.active is not self.layers[T.BOXES]:
            self.host.viewer.layers.selection.active = points  # ready to click on the next object
            points.mode = "add"
        self.host._set_status(f"Track: object {self.object_box.value()}; click on it or draw a box.")

    # -- key frames ---------------------------------------------------------------------

    def _on_paint(self, event) -> None:
        frames = set()
        n = self.layers[T.TRACKS].data.shape[0] if self.layers else 0
        for indices, *_ in event.value:
            first = indices[0]
            if isinstance(first, slice):
                frames.update(range(*first.indices(n)))
            else:
                frames.update(int(f) for f in np.unique(np.asarray(first)))
        if frames - self.key_frames:
            self.key_frames |= frames
            self._show_keys()

    def mark_key_frame(self, frame: int | None = None) -> None:
        if not self.layers and not self.prepare():
            return
        self.key_frames.add(self.current_frame() if frame is None else int(frame))
        self._show_keys()

    def unmark_key_frame(self, frame: int | None = None) -> None:
        self.key_frames.discard(self.current_frame() if frame is None else int(frame))
        self._show_keys()

    def _show_keys(self) -> None:
        keys = sorted(self.key_frames)
        text = ", ".join(map(str, keys[:20])) + (" ..." if len(keys) > 20 else "")
        self.keys_label.setText(f"key frames: {text or 'none'}")

    # -- run and cancel -----------------------------------------------------------------

    def run(self) -> None:
        """Propagate the prompted objects over the range, in a worker, frame by frame."""
        host = self.host
        if not host.idle:
            show_warning("Busy: wait for the current job to finish (or cancel it).")
            return
        if host.predictor is None:
            show_warning("Track: load a model first ('Load model').")
            return
        if not self.prepare():
            return
        image = host.image_layer
        labels_layer = self.layers[T.TRACKS]
        start, stop = self.first_box.value(), self.last_box.value() + 1
        along_z = self.axis_box.currentIndex() == 1
        # the tracked image alone: extra channel layers are not read frame by frame
        kwargs = host.image_panel.normalization(image, [image])
        model_id = getattr(getattr(host.predictor, "model", None), "weights_id", None)
        cache = host._embedding_cache() if model_id else None
        try:
            prompts = T.collect_track_prompts(
                self.layers[T.PROMPTS], self.layers[T.BOXES], labels_layer, self.key_frames
            )
            if not prompts:
                raise ValueError("no object is prompted: click on an object or draw a box in "
                                 f"'{T.PROMPTS}'/'{T.BOXES}', or paint it in '{T.TRACKS}'")
            common = dict(start=start, stop=stop, set_image_kwargs=kwargs, cache=cache, model_id=model_id)
            if along_z:
                results = propagate_volume(image.data, host.predictor, prompts, labels=labels_layer.data, **common)
            else:
                results = propagate(
                    image.data, host.predictor, prompts, direction=self.direction_box.currentText(),
                    context_labels=labels_layer.data, **common,
                )
        except ValueError as err:
            show_error(f"Track: {err}")
            return
        if self.writer is None or self.writer.labels is not labels_layer.data:
            self.writer = TrackingWriter(labels_layer.data)
        self._stop.clear()
        worker = thread_worker(run_propagation, ignore_errors=True)(results, self.writer, self._stop.is_set)
        worker.yielded.connect(self._on_result)
        worker.returned.connect(self._on_outcome)
        worker.aborted.connect(lambda: self._on_outcome(TrackOutcome("cancelled", -1)))
        worker.finished.connect(self._on_done)
        host._embedded = None  # the predictor will hold other frames: the shown one comes back after
        if host.segmenter is not None:
            host.segmenter.reset()
        what = "slices" if along_z else "frames"
        host._set_status(f"Tracking {len(prompts)} prompts through {what} {start}-{stop - 1} ...")
        self._progress = progress(total=0, desc="Tracking")
        self.progress_bar.setRange(0, 0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        host._run(worker)

    def cancel(self) -> None:
        """Stop after the frame being tracked (everything tracked so far is kept)."""
        self._stop.set()
        if hasattr(self.host.predictor, "cancel"):
            self.host.predictor.cancel()  # within an embedding
        self.host._set_status("cancelling tracking ...")

    def _on_result(self, result) -> None:
        labels = self.layers.get(T.TRACKS)
        if labels is not None:
            labels.refresh()
        if self.follow_check.isChecked():
            step = list(self.host.viewer.dims.current_step)
            axis = self.host.viewer.dims.ndim - 3  # the tracked axis is the image's first spatial axis
            if step[axis] != result.frame:
                step[axis] = result.frame
                self.host.viewer.dims.current_step = tuple(step)
        self.progress_bar.setRange(0, result.total)
        self.progress_bar.setValue(result.step)
        if self._progress is not None:
            self._progress.total = result.total
            self._progress.update(result.step - self._progress.n)
        lost = [i for i, o in result.objects.items() if o.mask is None]
        self.host._set_status(
            f"frame {result.frame}: {len(result.objects) - len(lost)} objects"
            + (f", lost {lost}" if lost else "")
            + f" ({result.step}/{result.total})"
        )

    def _on_outcome(self, outcome: TrackOutcome) -> None:
        self.outcome = outcome
        self._update_tracks()
        if outcome.status == "done":
            self.host._set_status(f"Tracking done: {outcome.frames} frames.")
        elif outcome.status == "cancelled":
            self.host._set_status("Tracking cancelled; the frames tracked so far are kept.")
        else:
            show_error(f"Track: {outcome.message}")
            self.host._set_status(f"Tracking stopped after {outcome.frames} frames; they are kept.")

    def _on_done(self) -> None:
        self._stop.clear()
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.progress_bar.setRange(0, max(self.progress_bar.maximum(), 1))
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        if self.layers.get(T.TRACKS) is not None:
            self.layers[T.TRACKS].refresh()

    def _update_tracks(self) -> None:
        """Show the centroids over time as a Tracks layer (time only: along z they mean little)."""
        if self.axis_box.currentIndex() == 1 or not self.layers:
            return
        data, graph = tracks_data(self.table())
        viewer, image = self.host.viewer, self.host.image_layer
        existing = {layer.name: layer for layer in viewer.layers}.get(T.TRAJECTORIES)
        if not len(data):
            return
        if existing is None:
            geometry = {"scale": tuple(image.scale)[:3], "translate": tuple(image.translate)[:3]}
            viewer.add_tracks(data, graph=graph, name=T.TRAJECTORIES, tail_length=30, **geometry)
            viewer.layers.selection.active = self.layers[T.TRACKS]
        else:
            existing.graph = {}
            existing.data = data
            existing.graph = graph

    # -- results and exports ------------------------------------------------------------

    def table(self) -> np.ndarray:
        """Every tracked row (the last run wins), with key frames measured from the labels."""
        writer = self.writer or TrackingWriter()
        labels = self.layers[T.TRACKS].data if self.layers else None
        if labels is None:
            return writer.table
        return T.merge_key_frames(writer.table, labels, self.key_frames)

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
        """Write the per-frame table CSV (frame, id, centroid, area, bbox, score, status)."""
        path = self._target(path, "Save the per-frame table", "CSV (*.csv)")
        if path is None:
            return None
        try:
            write_table(path, self.table())
        except OSError as err:
            show_error(f"Track: could not write {path}: {err}")
            return None
        self.host._set_status(f"Table written to {path}")
        return path

    def export_trajectories(self, path=None) -> Path | None:
        """Write the wide trajectories CSV (frame, x1, y1, x2, y2, ...)."""
        path = self._target(path, "Save the trajectories", "CSV (*.csv)")
        if path is None:
            return None
        try:
            write_trajectories(path, self.table(), n_frames=self.layers[T.TRACKS].data.shape[0])
        except OSError as err:
            show_error(f"Track: could not write {path}: {err}")
            return None
        self.host._set_status(f"Trajectories written to {path}")
        return path

    def export_video(self, path=None):
        """Write an overlay video (frames with the tracks drawn on) in a worker; returns the worker."""
        path = self._target(path, "Save the overlay video", "MP4 video (*.mp4)")
        if path is None:
            return None
        if not self.host.idle:
            show_warning("Busy: wait for the current job to finish (or cancel it).")
            return None
        image = self.host.image_layer
        frames, labels = image.data, self.layers[T.TRACKS].data
        fps = float(image.metadata.get("fps", 15.0) or 15.0)
        worker = thread_worker(
            write_overlay_video, ignore_errors=True, progress={"total": 0, "desc": "Writing overlay video"}
        )(path, frames, labels, fps=fps)
        worker.returned.connect(lambda written: self.host._set_status(f"Overlay video written to {written}"))
        self.host._set_status(f"Writing {path} ...")
        self.host._run(worker)
        return worker
