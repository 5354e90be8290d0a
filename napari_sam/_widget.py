"""The "Segment Anything" dock widget: point and box prompts, live preview, commit.

The widget shows a :class:`~napari_sam._session.Session` (the model, the chosen
image and its layers, the embedding, the one job at a time, the status line) and
handles the prompt layers: layers -> :class:`~src_core.prompts.Prompt`
(``_layers``), the engine (:class:`~src_core.interactive.ObjectSegmenter`) in napari
thread workers, results -> layers. A prompt edit that arrives while a job runs is
remembered and decoded next with the newest prompts, so edits never queue up.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from src_core.tiling import TiledCandidates, TiledObjectSegmenter

from . import _layers as L
from . import _tiled as T
from ._everything_panel import EverythingPanel
from ._finetune_panel import FinetunePanel
from ._image_panel import ImagePanel
from ._model_panel import ModelPanel, load_predictor
from ._session import Session
from ._text_panel import TextPanel
from ._track_panel import TrackPanel

KEYS = (
    ("click", "add an object point (Points layer in add mode)"),
    ("Shift+click", "add a background point"),
    ("N", "toggle new points between object and background"),
    ("M", "show the next of the three candidate masks"),
    ("C", "commit the object to 'SAM labels' with a new id"),
    ("Q", "discard the current object's prompts"),
    ("Ctrl+Z", "undo the last commit"),
)


class SegmentAnythingWidget(QWidget):
    """Dock widget driving SAM on the chosen image layer.

    :attr:`session` (:class:`~napari_sam._session.Session`) is its public API, the
    one the panels and tests use; the widget adds the model box, the image box, the
    tick boxes and buttons, the status label, and the prompt layers' clicks and keys
    (:meth:`commit`, :meth:`clear`, :meth:`next_candidate`, :meth:`undo_commit`,
    :meth:`toggle_negative`, :meth:`load_model`, :meth:`cancel`).
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self._negative_once = False
        self._connected: set[int] = set()  # prompt layers whose events we listen to
        self._generation = 0  # counts the predictors set (an automatic load yields to a newer one)
        self._loading = False
        self._shown_once = False
        self._build_ui()
        self.session.layers_changed.connect(self._on_layers_changed)
        self.session.decode_requested.connect(self._start_decode)
        self.session.model_changed.connect(self._on_model_changed)
        self.viewer.layers.events.inserted.connect(self._refresh_images)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        self.viewer.dims.events.current_step.connect(self._on_plane_changed)
        self._refresh_images()

    # -- UI -----------------------------------------------------------------------------

    def _build_ui(self) -> None:
        layout = QVBoxLayout(self)
        self.model_panel = ModelPanel()
        self.model_panel.load_button.clicked.connect(self.load_model)
        self.model_panel.model_box.currentIndexChanged.connect(
            lambda *_: self.session.predictor is None and self.session.set_status(self.model_panel.hint())
        )
        layout.addWidget(self.model_panel)
        self.image_panel = ImagePanel()
        self.image_panel.image_box.currentIndexChanged.connect(self._on_image_changed)
        self.image_panel.norm_box.currentIndexChanged.connect(self._on_image_changed)
        self.image_panel.channel_list.itemChanged.connect(self._on_channels_changed)
        layout.addWidget(self.image_panel)
        self.session = Session(self.viewer, self.image_panel)
        self.paint_over = QCheckBox("commit paints over existing labels")
        self.paint_over.toggled.connect(lambda on: setattr(self.session, "paint_over", on))
        layout.addWidget(self.paint_over)
        self.use_cache = QCheckBox("keep embeddings on disk")
        self.use_cache.setChecked(True)
        self.use_cache.setToolTip(
            "Reopened images load their embeddings instead of recomputing them. "
            "Stored under the napari-sam cache folder (NAPARI_SAM_CACHE overrides it), "
            "at most 2 GB; the least recently used are removed first."
        )
        self.use_cache.toggled.connect(lambda on: setattr(self.session, "keep_embeddings", on))
        layout.addWidget(self.use_cache)
        buttons = QHBoxLayout()
        for text, slot in (
            ("Commit (C)", self.commit),
            ("Clear (Q)", self.clear),
            ("Next mask (M)", self.next_candidate),
        ):
            button = QPushButton(text)
            button.clicked.connect(slot)
            buttons.addWidget(button)
        layout.addLayout(buttons)
        stack_buttons = QHBoxLayout()
        for text, slot in (("Embed all slices", self.session.embed_all_slices), ("Cancel", self.cancel)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            stack_buttons.addWidget(button)
        layout.addLayout(stack_buttons)
        session = self.session  # the panels work through the session only
        self.everything = EverythingPanel(session)
        # "SAM text": the objects a text names, committed like a prompt; candidates come
        # from segment everything's settings, and "Track these" hands them to Track
        self.text = TextPanel(session, everything_settings=lambda: self.everything.settings(),
                              track=lambda: self.track)
        self.track = TrackPanel(session)  # propagates prompted objects through a video or stack
        self.finetune = FinetunePanel(session)  # trains a copy of the loaded model on the labels
        # one tab per tool keeps the dock about one screen tall
        self.tabs = QTabWidget()
        for panel, title in ((self.everything, "Everything"), (self.text, "Text"),
                             (self.track, "Track"), (self.finetune, "Fine-tune")):
            self.tabs.addTab(panel, title)
        self.tabs.currentChanged.connect(self._on_tab_changed)
        layout.addWidget(self.tabs)
        self.status = QLabel(self.model_panel.hint())
        self.status.setWordWrap(True)
        self.session.status_changed.connect(self.status.setText)
        layout.addWidget(self.status)
        help_text = "<br>".join(f"<b>{k}</b>: {v}" for k, v in KEYS)
        keys = QLabel(help_text)
        keys.setWordWrap(True)
        layout.addWidget(keys)
        layout.addStretch()

    def _on_tab_changed(self, index: int) -> None:
        if self.tabs.widget(index) is self.track:
            self.track.open()  # its layers, ready for clicks, and what to do next

    # -- image and layers ---------------------------------------------------------------

    def _refresh_images(self, event=None) -> None:
        # the first image to appear is picked up; later changes are the user's choice
        if self.image_panel.refresh(self.session.image_list()):
            self._on_image_changed()

    def _on_channels_changed(self, item=None) -> None:
        if self.session.segmenter is not None:
            self.session.segmenter.reset()
        self.session.ensure_embedding()

    def _on_layer_removed(self, event) -> None:
        removed = event.value
        if any(removed is layer for layer in self.session.layers.values()):
            # the user (or napari closing) removed one of ours: stop using them; they
            # come back when an image is chosen again
            self.session.forget_layers()
        if isinstance(removed, Image):
            self.session.forget_image(removed)
        self._refresh_images()

    def _on_image_changed(self, *args) -> None:
        if self.session.image_layer is None:
            return
        self.image_panel.refresh_channels(self.session.image_list())
        self.session.prepare_layers()

    def _on_layers_changed(self) -> None:
        """The chosen image's SAM layers were made or found: listen to its prompt layers."""
        layers = self.session.layers
        self._connect_prompt_layers()
        self.viewer.layers.selection.active = layers[L.POINTS]
        layers[L.POINTS].mode = "add"
        self.finetune.refresh_labels(image_changed=True)  # the chosen image's own labels
        if self.tabs.currentWidget() is self.track:
            self.track.open()

    def _connect_prompt_layers(self) -> None:
        points, boxes = self.session.layers[L.POINTS], self.session.layers[L.BOXES]
        if id(points) in self._connected:
            return
        points.events.data.connect(self._on_points_changed)
        boxes.events.data.connect(self._on_prompts_changed)
        points.mouse_drag_callbacks.insert(0, self._on_points_press)
        for layer in (points, boxes, self.session.layers[L.LABELS]):
            # Ctrl+Z undoes the last commit from the prompt layers too (napari's own undo
            # only listens on the labels layer), and the status says so
            layer.bind_key("Control-Z", lambda _: self.undo_commit(), overwrite=True)
        for layer in (points, boxes):
            layer.bind_key("c", lambda _: self.commit(), overwrite=True)
            layer.bind_key("q", lambda _: self.clear(), overwrite=True)
            layer.bind_key("m", lambda _: self.next_candidate(), overwrite=True)
        points.bind_key("n", lambda _: self.toggle_negative(), overwrite=True)
        self._connected.add(id(points))

    def _on_points_press(self, layer, event):
        # Shift+click adds one background point: napari's add mode adds the point on
        # release with the feature defaults, so set them now and restore after the add
        if layer.mode == "add" and "Shift" in event.modifiers:
            self._negative_once = True
            layer.feature_defaults["label"] = 0
            layer.current_face_color = L.NEGATIVE_COLOR
        yield

    def toggle_negative(self) -> None:
        """Switch the label of new points between object (1) and background (0)."""
        points = self.session.layers.get(L.POINTS)
        if points is None:
            return
        new = 0 if int(points.feature_defaults["label"][0]) == 1 else 1
        points.feature_defaults["label"] = new
        points.current_face_color = L.POSITIVE_COLOR if new else L.NEGATIVE_COLOR
        self.session.set_status(f"new points: {'object' if new else 'background'}")

    def _on_points_changed(self, event=None) -> None:
        points = self.session.layers.get(L.POINTS)
        if points is None:
            return
        if self._negative_once and getattr(event, "action", None) in ("added", None):
            # napari selects the new point after this event, which copies its label into
            # the defaults: restore "object" once napari is done with the click
            self._negative_once = False
            QTimer.singleShot(0, self._restore_positive)
        labels = np.asarray(points.features["label"]) if len(points.data) else np.zeros(0)
        colors = L.point_colors(labels)
        if colors:
            points.face_color = colors
        self._on_prompts_changed(event)

    def _restore_positive(self) -> None:
        points = self.session.layers.get(L.POINTS)
        if points is not None:
            points.feature_defaults["label"] = 1
            points.current_face_color = L.POSITIVE_COLOR

    def _on_plane_changed(self, event=None) -> None:
        session = self.session
        if session.image_layer is None or not session.layers or session.predictor is None:
            return
        if session.segmenter is not None:
            session.segmenter.reset()
        session.ensure_embedding()

    # -- model --------------------------------------------------------------------------

    def load_model(self, *, automatic: bool = False) -> None:
        """Load the chosen model in a worker (downloads official weights if needed).

        ``automatic``: the load the widget starts by itself when it is first shown
        without a model; it never downloads, and a model set meanwhile wins.
        """
        if not self.session.idle:
            if not automatic:
                show_info("Busy: wait for the current job to finish.")
            return
        if automatic and (self.session.predictor is not None or self.model_panel.needs_download()):
            return
        choice, generation = self.model_panel.choice(), self._generation
        self.session.set_status(f"Loading {choice.name} ...")
        self._loading = True
        worker = thread_worker(
            load_predictor, ignore_errors=True, progress={"total": 0, "desc": f"Loading SAM {choice.name}"}
        )(choice)

        def loaded(predictor) -> None:
            if not (automatic and self._generation != generation):  # else a model was set meanwhile
                self.session.set_predictor(predictor, choice.name)

        worker.returned.connect(loaded)
        worker.finished.connect(lambda: setattr(self, "_loading", False))
        self.session.run_job(worker)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            # the default model (built in, or an official one already cached) loads by
            # itself, so a first click is never silently ignored
            QTimer.singleShot(0, lambda: self.load_model(automatic=True))

    def _on_model_changed(self, name: str, weights) -> None:
        self._generation += 1
        if weights is not None:  # the model box says what is in use (e.g. fine-tuned weights)
            self.model_panel.show_weights(weights)

    def cancel(self) -> None:
        """Stop the running job: an embedding (within one encoder block), 'embed all
        slices', or a panel's work (each stops at its next check)."""
        if self.session.idle:
            return
        for panel in (self.everything, self.text, self.finetune, self.track):
            panel.cancel()  # tracking stops between frames; the frames done are kept
        self.session.cancel_job()

    # -- decode -------------------------------------------------------------------------

    def _on_prompts_changed(self, event=None) -> None:
        if not self.session.layers:
            return
        if getattr(event, "action", None) in ("adding", "removing", "changing"):
            return  # napari announces an edit before making it: act once, after
        if self.session.predictor is None:
            if self._loading:  # the prompt is decoded once the model is ready
                self.session.decode_pending = True
                self.session.set_status("Loading the model: your prompt is used when it is ready.")
            else:
                message = "No model is loaded yet: press 'Load model' (the built-in one loads in about a second)."
                show_info(message)
                self.session.set_status(message)
            return
        self.session.request_embedding()  # a prompt is a request to segment
        if not self.session.idle or self.session.embedded != self.session.embedding_key():
            self.session.decode_pending = True
            if self.session.idle:
                self.session.ensure_embedding()
            return
        self._start_decode()

    def _start_decode(self) -> None:
        plane = self.session.embedded[1]
        if self.session.embedded_is_blank:  # SAM's answer on a blank plane would be arbitrary
            self._show(None, plane)
            self.session.set_status("This plane is blank (one value everywhere): nothing to segment.")
            return
        prompt = L.collect_prompt(self.session.layers[L.POINTS], self.session.layers[L.BOXES], plane)
        segmenter = self.session.segmenter
        worker = thread_worker(segmenter.decode, ignore_errors=True)(prompt)
        worker.returned.connect(lambda candidates: self._show(candidates, plane))
        self.session.run_job(worker)

    def _show(self, candidates, plane) -> None:
        preview = self.session.layers.get(L.PREVIEW)
        if preview is None:
            return
        self.text.discard()  # a prompt's mask replaces the text matches in the preview
        if isinstance(self.session.segmenter, TiledObjectSegmenter):
            tiled = None if candidates is None else candidates.tiled
            self.session.preview_region = T.show_preview(preview, tiled, plane, self.session.preview_region)
            self.session.preview_plane = plane
            if tiled is not None:
                self.session.set_status(
                    f"mask {candidates.choice + 1}/{len(candidates.options)}, predicted IoU "
                    f"{min(max(tiled.score, 0.0), 1.0):.2f}, {tiled.area} px"
                )
            return
        mask = None if candidates is None else candidates.mask
        L.show_preview(preview, mask, plane, self.session.preview_plane)
        self.session.preview_plane = plane
        if candidates is not None:
            self.session.set_status(
                f"mask {candidates.choice + 1}/{len(candidates.masks)}, predicted IoU "
                f"{min(max(candidates.score, 0.0), 1.0):.2f}, {int(mask.sum())} px"
            )

    # -- actions ------------------------------------------------------------------------

    def next_candidate(self) -> None:
        if self.session.segmenter is None or not self.session.idle or self.session.embedded is None:
            return
        candidates = self.session.segmenter.cycle()
        if candidates is not None:
            self._show(candidates, self.session.embedded[1])

    def commit(self) -> None:
        """Write the current mask into 'SAM labels' with a new id, then start a new object."""
        if self.text.matches and self.session.idle:  # the matches of a text search
            self.text.commit()
            return self.clear()
        if self.session.segmenter is None or self.session.segmenter.candidates is None or not self.session.idle:
            show_info("Nothing to commit yet.")
            return
        plane, candidates = self.session.embedded[1], self.session.segmenter.candidates
        if isinstance(candidates, TiledCandidates):
            new_id = T.commit_mask(
                self.session.layers[L.LABELS], candidates.tiled, plane, overwrite=self.session.paint_over
            )
        else:
            new_id = L.commit_mask(
                self.session.layers[L.LABELS], candidates.mask, plane, overwrite=self.session.paint_over
            )
        self.session.set_status(f"committed object {new_id}" if new_id else "nothing new to commit")
        self.clear()

    def undo_commit(self) -> None:
        """Undo the last change to 'SAM labels' (a commit, or a stroke painted there)."""
        labels = self.session.layers.get(L.LABELS)
        if labels is None:
            return
        before = int(np.asarray(labels.data).max())
        labels.undo()
        after = int(np.asarray(labels.data).max())
        if after < before:
            self.session.set_status(f"undid the commit of object {before}; the next object gets id {after + 1}")
        else:
            self.session.set_status("undid the last change to 'SAM labels'")

    def clear(self) -> None:
        """Discard the current object's prompts, preview and logits."""
        self.text.discard()
        if self.session.segmenter is not None:
            self.session.segmenter.reset()
        points, boxes = self.session.layers.get(L.POINTS), self.session.layers.get(L.BOXES)
        if points is not None:
            with points.events.data.blocker():
                points.data = np.zeros((0, points.ndim))
        if boxes is not None and len(boxes.data):
            with boxes.events.data.blocker():
                boxes.data = []
        if self.session.layers.get(L.PREVIEW) is not None and self.session.preview_plane is not None:
            L.show_preview(self.session.layers[L.PREVIEW], None, self.session.preview_plane, self.session.preview_plane)
        self.session.decode_pending = False
