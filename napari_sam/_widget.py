"""The "Segment Anything" dock widget: point and box prompts, live preview, commit.

Thin by design: layers -> :class:`~src_core.prompts.Prompt` (``_layers``), the engine
(:class:`~src_core.interactive.ObjectSegmenter`) in napari thread workers, results ->
layers. One job (model load, embedding, or decode) runs at a time; a prompt edit that
arrives meanwhile is remembered and decoded next with the newest prompts, so edits
never queue up.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Image
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QTimer, Signal
from qtpy.QtWidgets import QCheckBox, QHBoxLayout, QLabel, QPushButton, QTabWidget, QVBoxLayout, QWidget

from src_core.embedding_cache import cache_model_id
from src_core.interactive import ObjectSegmenter
from src_core.preprocess import blank_value
from src_core.tiling import TiledCandidates, TiledObjectSegmenter

from . import _layers as L
from . import _tiled as T
from ._everything_panel import EverythingPanel
from ._finetune_panel import FinetunePanel
from ._image_panel import ImagePanel
from ._model_panel import ModelPanel, load_predictor
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


class EmbeddingNotStored(Exception):
    """Embedding all slices could not write to the disk cache."""


class SegmentAnythingWidget(QWidget):
    """Dock widget driving SAM on the selected image layer.

    Its public API is what the panels (and tests) use: :attr:`predictor`,
    :attr:`image_layer` and its SAM :attr:`layers`, :meth:`channel_layers`,
    :meth:`normalization`, :meth:`plane_reader`, :meth:`embedding_cache`,
    :attr:`embedded` / :meth:`embedding_key` / :meth:`forget_embedding` /
    :meth:`adopt_embedding`, :meth:`run_job` with :attr:`idle` and
    :attr:`current_job`, :meth:`set_status`, :meth:`show_in_preview`,
    :meth:`prepare_layers`, and the :attr:`ready` signal.
    """

    #: emitted with the embedding key when the shown plane is embedded and prompts can be decoded
    ready = Signal(object)

    def __init__(self, napari_viewer) -> None:
        super().__init__()
        self.viewer = napari_viewer
        self.predictor = None
        self._cache = None
        self.segmenter: ObjectSegmenter | None = None
        self.layers: dict = {}
        self._embedded: tuple | None = None  # (layer id, plane, settings, channels) embedded
        self._blank: tuple | None = None  # the embedded plane, when it is blank (one value everywhere)
        self._cancelled: tuple | None = None  # the embedding the user cancelled
        self._worker = None
        self._decode_pending = False
        self._preview_plane: tuple | None = None
        self._preview_region: tuple | None = None  # the box painted in a large (tiled) plane
        self._negative_once = False
        self._connected: set[int] = set()  # prompt layers whose events we listen to
        self._generation = 0  # counts the predictors set (an automatic load yields to a newer one)
        self._loading = False
        self._shown_once = False
        self._build_ui()
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
            lambda *_: self.predictor is None and self.set_status(self.model_panel.hint())
        )
        layout.addWidget(self.model_panel)
        self.image_panel = ImagePanel()
        self.image_panel.image_box.currentIndexChanged.connect(self._on_image_changed)
        self.image_panel.norm_box.currentIndexChanged.connect(self._on_image_changed)
        self.image_panel.channel_list.itemChanged.connect(self._on_channels_changed)
        layout.addWidget(self.image_panel)
        self.paint_over = QCheckBox("commit paints over existing labels")
        layout.addWidget(self.paint_over)
        self.use_cache = QCheckBox("keep embeddings on disk")
        self.use_cache.setChecked(True)
        self.use_cache.setToolTip(
            "Reopened images load their embeddings instead of recomputing them. "
            "Stored under the napari-sam cache folder (NAPARI_SAM_CACHE overrides it), "
            "at most 2 GB; the least recently used are removed first."
        )
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
        for text, slot in (("Embed all slices", self.embed_all_slices), ("Cancel", self.cancel)):
            button = QPushButton(text)
            button.clicked.connect(slot)
            stack_buttons.addWidget(button)
        layout.addLayout(stack_buttons)
        self.everything = EverythingPanel(self)  # uses this widget's predictor, layers and jobs
        self.text = TextPanel(self)  # "SAM text": the objects a text names, committed like a prompt
        self.track = TrackPanel(self)  # propagates prompted objects through a video or stack
        self.finetune = FinetunePanel(self)  # trains a copy of the loaded model on the labels
        # one tab per tool keeps the dock about one screen tall
        self.tabs = QTabWidget()
        for panel, title in ((self.everything, "Everything"), (self.text, "Text"),
                             (self.track, "Track"), (self.finetune, "Fine-tune")):
            self.tabs.addTab(panel, title)
        self.tabs.currentChanged.connect(self._on_tab_changed)
        layout.addWidget(self.tabs)
        self.status = QLabel(self.model_panel.hint())
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        help_text = "<br>".join(f"<b>{k}</b>: {v}" for k, v in KEYS)
        keys = QLabel(help_text)
        keys.setWordWrap(True)
        layout.addWidget(keys)
        layout.addStretch()

    def _on_tab_changed(self, index: int) -> None:
        if self.tabs.widget(index) is self.track:
            self.track.open()  # its layers, ready for clicks, and what to do next

    def set_status(self, text: str) -> None:
        self.status.setText(text)

    # -- image and layers ---------------------------------------------------------------

    def _images(self) -> list:
        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, event=None) -> None:
        # the first image to appear is picked up; later changes are the user's choice
        if self.image_panel.refresh(self._images()):
            self._on_image_changed()

    def channel_layers(self) -> list:
        return self.image_panel.channel_layers(self._images())

    def _on_channels_changed(self, item=None) -> None:
        if self.segmenter is not None:
            self.segmenter.reset()
        self._ensure_embedding()

    @property
    def image_layer(self):
        return self.image_panel.image(self._images())

    def _on_layer_removed(self, event) -> None:
        removed = event.value
        if any(removed is layer for layer in self.layers.values()):
            # the user (or napari closing) removed one of ours: stop using them; they
            # come back when an image is chosen again
            self.layers = {}
            self._preview_plane = None
            if self.segmenter is not None:
                self.segmenter.reset()
        if isinstance(removed, Image) and self._embedded and self._embedded[0] == id(removed):
            self._embedded = None
            if self.segmenter is not None:
                self.segmenter.reset()
        self._refresh_images()

    def _on_image_changed(self, *args) -> None:
        image = self.image_layer
        if image is None:
            return
        self.image_panel.refresh_channels(self._images())
        if len(L.spatial_shape(image)) < 2:
            show_error(f"'{image.name}' is not an image with at least 2 dimensions.")
            return
        self.layers = L.ensure_layers(self.viewer, image)
        self._connect_prompt_layers()
        self.viewer.layers.selection.active = self.layers[L.POINTS]
        self.layers[L.POINTS].mode = "add"
        self.finetune.refresh_labels(image_changed=True)  # the chosen image's own labels
        if self.tabs.currentWidget() is self.track:
            self.track.open()
        self._ensure_embedding()

    def _connect_prompt_layers(self) -> None:
        points, boxes = self.layers[L.POINTS], self.layers[L.BOXES]
        if id(points) in self._connected:
            return
        points.events.data.connect(self._on_points_changed)
        boxes.events.data.connect(self._on_prompts_changed)
        points.mouse_drag_callbacks.insert(0, self._on_points_press)
        for layer in (points, boxes, self.layers[L.LABELS]):
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
        points = self.layers.get(L.POINTS)
        if points is None:
            return
        new = 0 if int(points.feature_defaults["label"][0]) == 1 else 1
        points.feature_defaults["label"] = new
        points.current_face_color = L.POSITIVE_COLOR if new else L.NEGATIVE_COLOR
        self.set_status(f"new points: {'object' if new else 'background'}")

    def _on_points_changed(self, event=None) -> None:
        points = self.layers.get(L.POINTS)
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
        points = self.layers.get(L.POINTS)
        if points is not None:
            points.feature_defaults["label"] = 1
            points.current_face_color = L.POSITIVE_COLOR

    def _on_plane_changed(self, event=None) -> None:
        if self.image_layer is None or not self.layers or self.predictor is None:
            return
        if self.segmenter is not None:
            self.segmenter.reset()
        self._ensure_embedding()

    # -- model --------------------------------------------------------------------------

    def load_model(self, *, automatic: bool = False) -> None:
        """Load the chosen model in a worker (downloads official weights if needed).

        ``automatic``: the load the widget starts by itself when it is first shown
        without a model; it never downloads, and a model set meanwhile wins.
        """
        if self._worker is not None:
            if not automatic:
                show_info("Busy: wait for the current job to finish.")
            return
        if automatic and (self.predictor is not None or self.model_panel.needs_download()):
            return
        choice, generation = self.model_panel.choice(), self._generation
        self.set_status(f"Loading {choice.name} ...")
        self._loading = True
        worker = thread_worker(
            load_predictor, ignore_errors=True, progress={"total": 0, "desc": f"Loading SAM {choice.name}"}
        )(choice)

        def loaded(predictor) -> None:
            if not (automatic and self._generation != generation):  # else a model was set meanwhile
                self.set_predictor(predictor, choice.name)

        worker.returned.connect(loaded)
        worker.finished.connect(lambda: setattr(self, "_loading", False))
        self.run_job(worker)

    def showEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        super().showEvent(event)
        if not self._shown_once:
            self._shown_once = True
            # the default model (built in, or an official one already cached) loads by
            # itself, so a first click is never silently ignored
            QTimer.singleShot(0, lambda: self.load_model(automatic=True))

    def set_predictor(self, predictor, name: str = "model", cache=None) -> None:
        """Use ``predictor`` (a SamPredictor or anything with its interface).

        ``cache``: an :class:`~src_core.embedding_cache.EmbeddingCache`; by default the
        per-user one, used when the model's weights have an identity.
        """
        self.predictor = predictor
        self._generation += 1
        self._cache = cache
        self.segmenter = ObjectSegmenter(predictor)
        self._embedded = None
        self.set_status(f"{name} ready.")
        self._ensure_embedding()

    # -- jobs ---------------------------------------------------------------------------

    @property
    def idle(self) -> bool:
        """No job (model load, embedding, decode, a panel's work) is running."""
        return self._worker is None

    @property
    def current_job(self):
        """The running napari worker (None when idle)."""
        return self._worker

    @property
    def settled(self) -> bool:
        """Idle, with no prompt edit waiting to be decoded."""
        return self._worker is None and not self._decode_pending

    @property
    def embedded(self):
        """The key (layer id, plane, settings, channels) of the plane the predictor holds, or None."""
        return self._embedded

    def forget_embedding(self) -> None:
        """A job is about to give the predictor other images: the shown plane is embedded again after it."""
        self._embedded = None

    def adopt_embedding(self, key) -> None:
        """A job left the embedding of ``key`` (see :meth:`embedding_key`) in the predictor."""
        self._embedded = key

    def prepare_layers(self) -> None:
        """Make (or find) the chosen image's SAM layers again, and embed its shown plane."""
        self._on_image_changed()

    def show_in_preview(self, plane: tuple, paint) -> None:
        """Clear the preview, call ``paint(view)`` on ``plane``'s view of it, and show it."""
        preview = self.layers[L.PREVIEW]
        L.show_preview(preview, None, plane, self._preview_plane)
        paint(preview.data[plane] if plane else preview.data)
        preview.refresh()
        self._preview_plane, self._preview_region = plane, None

    def run_job(self, worker) -> None:
        # every worker is made with ignore_errors=True: its errors arrive here and
        # become notifications instead of being raised in the event loop
        self._worker = worker
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        worker.start()

    def _on_error(self, exc: Exception) -> None:
        from src_core.jobs import Cancelled

        if isinstance(exc, Cancelled):
            # not again by itself: a new plane or a new prompt asks for it
            self._cancelled = self.embedding_key()
            self.set_status("Embedding cancelled; change plane or add a prompt to embed again.")
            return
        show_error(f"Segment Anything: {exc}")
        self.set_status(str(exc))

    def _on_finished(self) -> None:
        self._worker = None
        if self.predictor is None or self.image_layer is None or not self.layers:
            return
        if self.embedding_key() != self._embedded:
            self._ensure_embedding()
        elif self._decode_pending:
            self._decode_pending = False
            self._start_decode()

    def normalization(self, image) -> dict:
        return self.image_panel.normalization(image, self._images())

    def plane_reader(self, image):
        return self.image_panel.plane_reader(image, self._images())

    def embedding_key(self):
        image = self.image_layer
        if image is None:
            return None
        plane = L.current_plane(image, self.viewer)
        settings = repr(sorted(self.normalization(image).items()))
        channels = tuple(id(layer) for layer in self.channel_layers())
        return (id(image), plane, settings, channels)

    def _ensure_embedding(self) -> None:
        if self.predictor is None or self.image_layer is None or not self.layers:
            return
        key = self.embedding_key()
        if key == self._embedded or key == self._cancelled:
            return
        if self._worker is not None:
            return  # _on_finished comes back here
        image = self.image_layer
        plane = key[1]
        kwargs = self.normalization(image)
        plan = T.plan_for(image, self.predictor)
        if plan is not None:  # large planes are prompted tile by tile
            self._prepare_tiled(image, key, plan, kwargs)
            return
        if isinstance(self.segmenter, TiledObjectSegmenter):  # back from a large plane
            self.segmenter = ObjectSegmenter(self.predictor)
        predictor, plane_data = self.predictor, self.plane_reader(image)
        where = f" (plane {plane})" if plane else ""
        self.set_status(f"Embedding '{image.name}'{where} ...")
        model_id = cache_model_id(predictor)
        cache = self.embedding_cache() if model_id else None
        failures, blank = [], []

        def embed():
            data = plane_data(plane)  # lazy data (video, dask) is read here, off the UI thread
            blank.append(blank_value(data))
            if cache is None:
                predictor.set_image(data, **kwargs)
            else:
                from src_core.embedding_cache import embed_with_cache

                embed_with_cache(
                    predictor, data, cache, model_id=model_id, on_store_error=failures.append, **kwargs
                )
            return key

        worker = thread_worker(embed, ignore_errors=True, progress={"total": 0, "desc": f"Embedding{where}"})()
        worker.returned.connect(lambda key: self._on_embedded(key, blank[0] if blank else None, image.name + where))
        worker.finished.connect(
            lambda: failures and show_warning(f"Embedding not kept on disk: {failures[0]}")
        )
        self.run_job(worker)

    def _prepare_tiled(self, image, key, plan: tuple[int, int], kwargs: dict) -> None:
        # nothing is embedded now: the tiles a prompt reaches are, when it is decoded
        model_id = cache_model_id(self.predictor)
        segmenter = T.make_segmenter(self.predictor, plan, self.embedding_cache() if model_id else None, model_id)
        source = T.lazy_plane([image, *self.channel_layers()], key[1])
        height, width = L.spatial_shape(image)[-2:]
        self.set_status(f"'{image.name}' is {width}x{height} px: preparing {plan[0]}-px tiles ...")

        def prepare():
            segmenter.tiled.set_image(source, **kwargs)  # reads a subsample for the contrast
            return key

        worker = thread_worker(prepare, ignore_errors=True, progress={"total": 0, "desc": "Preparing tiles"})()
        worker.returned.connect(lambda key: self._on_tiled_ready(segmenter, key, plan))
        self.run_job(worker)

    def _on_tiled_ready(self, segmenter: TiledObjectSegmenter, key, plan: tuple[int, int]) -> None:
        self.segmenter = segmenter
        self._preview_region = None
        self._on_embedded(key)
        self.set_status(
            f"Ready (large image: each prompt is segmented in {plan[0]}-px tiles, embedded "
            "when a prompt first reaches them): click on an object."
        )

    def embed_all_slices(self) -> None:
        """Embed every plane of a stack into the disk cache, with progress; Cancel stops it."""
        image = self.image_layer
        if self.predictor is None or image is None:
            show_info("Load a model and choose an image first.")
            return
        if self._worker is not None:
            show_info("Busy: wait for the current job to finish.")
            return
        lead = L.spatial_shape(image)[:-2]
        model_id = cache_model_id(self.predictor)
        cache = self.embedding_cache() if model_id else None
        if not lead:
            show_info(f"'{image.name}' has a single plane: nothing more to embed.")
            return
        if T.plan_for(image, self.predictor) is not None:
            show_info(
                f"'{image.name}' has large planes, segmented tile by tile: tiles are embedded "
                "when a prompt reaches them, so 'Embed all slices' is not available for it."
            )
            return
        if cache is None:
            show_info(
                "Embedding all slices stores them on disk: tick 'keep embeddings on disk' "
                "(and use official or file weights)."
            )
            return
        from src_core.embedding_cache import embed_with_cache
        from src_core.jobs import Cancelled

        planes = list(np.ndindex(*lead))
        predictor, kwargs = self.predictor, self.normalization(image)
        plane_data = self.plane_reader(image)
        failures = []

        def run():
            # napari's generator workers swallow a RuntimeError without 'finished':
            # cancellation returns, and a storage failure is raised as another type
            for done, plane in enumerate(planes, start=1):
                try:
                    embed_with_cache(
                        predictor,
                        plane_data(plane),
                        cache,
                        model_id=model_id,
                        on_store_error=failures.append,
                        **kwargs,
                    )
                except Cancelled:
                    return "cancelled"
                if failures:
                    raise EmbeddingNotStored(f"could not store embeddings: {failures[0]}")
                yield done
            return "done"

        worker = thread_worker(
            run, ignore_errors=True, progress={"total": len(planes), "desc": f"Embedding {len(planes)} slices"}
        )()
        worker.yielded.connect(lambda done: self.set_status(f"embedded {done}/{len(planes)} slices"))
        worker.returned.connect(lambda result: self.set_status(f"embedding all slices: {result}"))
        worker.aborted.connect(lambda: self.set_status("embedding all slices: cancelled"))
        self._embedded = None  # the predictor now holds other planes; the shown one comes back
        if self.segmenter is not None:
            self.segmenter.reset()
        self.run_job(worker)

    def cancel(self) -> None:
        """Stop the running embedding (within one encoder block), 'embed all slices' or segment everything."""
        if self._worker is None:
            return
        self.everything.cancel()
        self.text.cancel()
        self.finetune.cancel()
        self.track.cancel()  # tracking stops between frames; the frames done are kept
        if hasattr(self._worker, "quit"):
            self._worker.quit()  # generator workers: 'embed all slices' stops between slices
        if hasattr(self.predictor, "cancel"):
            self.predictor.cancel()
        self.set_status("cancelling ...")

    def embedding_cache(self):
        if not self.use_cache.isChecked():
            return None
        if self._cache is None:
            from src_core.embedding_cache import EmbeddingCache

            self._cache = EmbeddingCache()
        return self._cache

    def _on_embedded(self, key, blank: float | None = None, name: str = "") -> None:
        self._embedded = key
        self._blank = key if blank is not None else None
        if self.segmenter is not None:
            self.segmenter.reset()
        self._decode_pending = True  # prompts may already exist on this plane
        if blank is None:
            self.set_status("Ready: click on an object.")
        else:
            message = (f"'{name}' is blank (every pixel is {blank:g}): nothing to segment, "
                       "prompts on it are ignored.")
            show_warning(message)
            self.set_status(message)
        self.ready.emit(key)

    # -- decode -------------------------------------------------------------------------

    def _on_prompts_changed(self, event=None) -> None:
        if not self.layers:
            return
        if getattr(event, "action", None) in ("adding", "removing", "changing"):
            return  # napari announces an edit before making it: act once, after
        if self.predictor is None:
            if self._loading:  # the prompt is decoded once the model is ready
                self._decode_pending = True
                self.set_status("Loading the model: your prompt is used when it is ready.")
            else:
                message = "No model is loaded yet: press 'Load model' (the built-in one loads in about a second)."
                show_info(message)
                self.set_status(message)
            return
        self._cancelled = None  # a prompt is a request to segment: embed if needed
        if self._worker is not None or self._embedded != self.embedding_key():
            self._decode_pending = True
            if self._worker is None:
                self._ensure_embedding()
            return
        self._start_decode()

    def _start_decode(self) -> None:
        plane = self._embedded[1]
        if self._blank == self._embedded:  # SAM's answer on a blank plane would be arbitrary
            self._show(None, plane)
            self.set_status("This plane is blank (one value everywhere): nothing to segment.")
            return
        prompt = L.collect_prompt(self.layers[L.POINTS], self.layers[L.BOXES], plane)
        segmenter = self.segmenter
        worker = thread_worker(segmenter.decode, ignore_errors=True)(prompt)
        worker.returned.connect(lambda candidates: self._show(candidates, plane))
        self.run_job(worker)

    def _show(self, candidates, plane) -> None:
        preview = self.layers.get(L.PREVIEW)
        if preview is None:
            return
        self.text.discard()  # a prompt's mask replaces the text matches in the preview
        if isinstance(self.segmenter, TiledObjectSegmenter):
            tiled = None if candidates is None else candidates.tiled
            self._preview_region = T.show_preview(preview, tiled, plane, self._preview_region)
            self._preview_plane = plane
            if tiled is not None:
                self.set_status(
                    f"mask {candidates.choice + 1}/{len(candidates.options)}, predicted IoU "
                    f"{min(max(tiled.score, 0.0), 1.0):.2f}, {tiled.area} px"
                )
            return
        mask = None if candidates is None else candidates.mask
        L.show_preview(preview, mask, plane, self._preview_plane)
        self._preview_plane = plane
        if candidates is not None:
            self.set_status(
                f"mask {candidates.choice + 1}/{len(candidates.masks)}, predicted IoU "
                f"{min(max(candidates.score, 0.0), 1.0):.2f}, {int(mask.sum())} px"
            )

    # -- actions ------------------------------------------------------------------------

    def next_candidate(self) -> None:
        if self.segmenter is None or self._worker is not None or self._embedded is None:
            return
        candidates = self.segmenter.cycle()
        if candidates is not None:
            self._show(candidates, self._embedded[1])

    def commit(self) -> None:
        """Write the current mask into 'SAM labels' with a new id, then start a new object."""
        if self.text.matches and self._worker is None:  # the matches of a text search
            self.text.commit()
            return self.clear()
        if self.segmenter is None or self.segmenter.candidates is None or self._worker is not None:
            show_info("Nothing to commit yet.")
            return
        plane, candidates = self._embedded[1], self.segmenter.candidates
        if isinstance(candidates, TiledCandidates):
            new_id = T.commit_mask(
                self.layers[L.LABELS], candidates.tiled, plane, overwrite=self.paint_over.isChecked()
            )
        else:
            new_id = L.commit_mask(
                self.layers[L.LABELS], candidates.mask, plane, overwrite=self.paint_over.isChecked()
            )
        self.set_status(f"committed object {new_id}" if new_id else "nothing new to commit")
        self.clear()

    def undo_commit(self) -> None:
        """Undo the last change to 'SAM labels' (a commit, or a stroke painted there)."""
        labels = self.layers.get(L.LABELS)
        if labels is None:
            return
        before = int(np.asarray(labels.data).max())
        labels.undo()
        after = int(np.asarray(labels.data).max())
        if after < before:
            self.set_status(f"undid the commit of object {before}; the next object gets id {after + 1}")
        else:
            self.set_status("undid the last change to 'SAM labels'")

    def clear(self) -> None:
        """Discard the current object's prompts, preview and logits."""
        self.text.discard()
        if self.segmenter is not None:
            self.segmenter.reset()
        points, boxes = self.layers.get(L.POINTS), self.layers.get(L.BOXES)
        if points is not None:
            with points.events.data.blocker():
                points.data = np.zeros((0, points.ndim))
        if boxes is not None and len(boxes.data):
            with boxes.events.data.blocker():
                boxes.data = []
        if self.layers.get(L.PREVIEW) is not None and self._preview_plane is not None:
            L.show_preview(self.layers[L.PREVIEW], None, self._preview_plane, self._preview_plane)
        self._decode_pending = False
