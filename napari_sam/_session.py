"""The session: what the dock widget and its panels share, with no Qt widgets of its own.

One :class:`Session` per dock widget holds the loaded predictor (and the interactive
segmenter on it), the on-disk embedding cache and the model's id, the chosen image
and its SAM layers, the embedding of the plane shown, the one job running at a
time, and the status line. The panels (Everything, Text, Track, Fine-tune) and the
tests work through this API only; the widget shows it (model box, image box,
buttons, the status label) and handles the prompt layers' clicks and keys.

Signals: ``ready(key)`` when the shown plane is embedded and prompts can be decoded,
``status_changed(text)``, ``layers_changed()`` when the chosen image's SAM layers
were made or found, ``decode_requested()`` when a job ended and a prompt edit is
waiting, and ``model_changed(name, weights)`` when a predictor is set.
"""

from __future__ import annotations

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QObject, Signal

from src_core.embedding_cache import cache_model_id
from src_core.interactive import ObjectSegmenter
from src_core.preprocess import blank_value
from src_core.tiling import TiledObjectSegmenter

from . import _layers as L
from . import _tiled as T


class EmbeddingNotStored(Exception):
    """'Embed all slices' could not write to the embedding cache."""


class Session(QObject):
    """The shared state and jobs of one dock widget.

    ``images`` is the widget's image chooser (:class:`~napari_sam._image_panel.ImagePanel`):
    the session asks it which image is chosen, with which channels and contrast.
    """

    ready = Signal(object)
    status_changed = Signal(str)
    layers_changed = Signal()
    decode_requested = Signal()
    model_changed = Signal(str, object)  # (name, weights file or None)

    def __init__(self, viewer, images) -> None:
        super().__init__()
        self.viewer = viewer
        self._images = images
        self.predictor = None
        self.segmenter: ObjectSegmenter | TiledObjectSegmenter | None = None
        self.layers: dict = {}
        self.status = ""
        self.paint_over = False  # commits paint over existing labels (the widget's tick box)
        self.keep_embeddings = True  # use the on-disk cache (the widget's tick box)
        self.decode_pending = False  # a prompt edit waits for the running job
        self.preview_plane: tuple | None = None  # the plane the preview shows a mask on
        self.preview_region: tuple | None = None  # the box painted in a large (tiled) plane
        self._cache = None
        self._embedded: tuple | None = None  # (layer id, plane, settings, channels) embedded
        self._blank: tuple | None = None  # the embedded plane, when it is blank (one value everywhere)
        self._cancelled: tuple | None = None  # the embedding the user cancelled
        self._worker = None

    # -- status ---------------------------------------------------------------------------

    def set_status(self, text: str) -> None:
        self.status = text
        self.status_changed.emit(text)

    # -- model ----------------------------------------------------------------------------

    def set_predictor(self, predictor, name: str = "model", cache=None, weights=None) -> None:
        """Use ``predictor`` (a SamPredictor or anything with its interface).

        ``cache``: an :class:`~src_core.embedding_cache.EmbeddingCache`; by default the
        per-user one, used when the model's weights have an identity. ``weights``: the
        file the weights came from, when the caller knows it (fine-tuning).
        """
        self.predictor = predictor
        self._cache = cache
        self.segmenter = ObjectSegmenter(predictor)
        self._embedded = None
        self.set_status(f"{name} ready.")
        self.model_changed.emit(name, weights)
        self.ensure_embedding()

    @property
    def model_id(self) -> str | None:
        """The id the loaded weights are cached under (None: not cached)."""
        return None if self.predictor is None else cache_model_id(self.predictor)

    def embedding_cache(self):
        """The on-disk embedding cache, or None when embeddings are not kept."""
        if not self.keep_embeddings:
            return None
        if self._cache is None:
            from src_core.embedding_cache import EmbeddingCache

            self._cache = EmbeddingCache()
        return self._cache

    # -- image and layers -------------------------------------------------------------------

    def image_list(self) -> list:
        from napari.layers import Image

        return [layer for layer in self.viewer.layers if isinstance(layer, Image)]

    @property
    def image_layer(self):
        """The chosen image layer (None when there is none)."""
        return self._images.image(self.image_list())

    def channel_layers(self) -> list:
        """The layers ticked under "+ channels", seen by SAM with the image."""
        return self._images.channel_layers(self.image_list())

    def normalization(self, image) -> dict:
        """The contrast settings ``set_image`` gets for ``image`` (channels included)."""
        return self._images.normalization(image, self.image_list())

    def plane_reader(self, image):
        """``read(plane)``: the image's plane (with its channels) as an array."""
        return self._images.plane_reader(image, self.image_list())

    def prepare_layers(self) -> None:
        """Make (or find) the chosen image's SAM layers, and embed its shown plane."""
        image = self.image_layer
        if image is None:
            return
        if len(L.spatial_shape(image)) < 2:
            show_error(f"'{image.name}' is not an image with at least 2 dimensions.")
            return
        self.layers = L.ensure_layers(self.viewer, image)
        self.layers_changed.emit()
        self.ensure_embedding()

    def forget_layers(self) -> None:
        """One of the SAM layers was removed: stop using them until an image is chosen again."""
        self.layers = {}
        self.preview_plane = None
        if self.segmenter is not None:
            self.segmenter.reset()

    def show_in_preview(self, plane: tuple, paint) -> None:
        """Clear the preview, call ``paint(view)`` on ``plane``'s view of it, and show it."""
        preview = self.layers[L.PREVIEW]
        L.show_preview(preview, None, plane, self.preview_plane)
        paint(preview.data[plane] if plane else preview.data)
        preview.refresh()
        self.preview_plane, self.preview_region = plane, None

    # -- jobs -----------------------------------------------------------------------------

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
        return self._worker is None and not self.decode_pending

    def run_job(self, worker) -> None:
        """Start ``worker`` (made with ``ignore_errors=True``: its errors become notifications)."""
        self._worker = worker
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        worker.start()

    def cancel_job(self) -> None:
        """Stop a running embedding (within one encoder block) or 'embed all slices'."""
        if self._worker is None:
            return
        if hasattr(self._worker, "quit"):
            self._worker.quit()  # generator workers: 'embed all slices' stops between slices
        if hasattr(self.predictor, "cancel"):
            self.predictor.cancel()
        self.set_status("cancelling ...")

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
            self.ensure_embedding()
        elif self.decode_pending:
            self.decode_pending = False
            self.decode_requested.emit()

    # -- the embedding of the plane shown ------------------------------------------------------

    @property
    def embedded(self):
        """The key (layer id, plane, settings, channels) of the plane the predictor holds, or None."""
        return self._embedded

    @property
    def embedded_is_blank(self) -> bool:
        """The plane the predictor holds is blank (one value everywhere)."""
        return self._embedded is not None and self._blank == self._embedded

    def embedding_key(self):
        """The key of the plane shown (None without an image)."""
        image = self.image_layer
        if image is None:
            return None
        plane = L.current_plane(image, self.viewer)
        settings = repr(sorted(self.normalization(image).items()))
        channels = tuple(id(layer) for layer in self.channel_layers())
        return (id(image), plane, settings, channels)

    def forget_embedding(self) -> None:
        """A job is about to give the predictor other images: the shown plane is embedded again after it."""
        self._embedded = None

    def forget_image(self, image) -> None:
        """``image`` was removed from the viewer."""
        if self._embedded and self._embedded[0] == id(image):
            self._embedded = None
            if self.segmenter is not None:
                self.segmenter.reset()

    def adopt_embedding(self, key) -> None:
        """A job left the embedding of ``key`` (see :meth:`embedding_key`) in the predictor."""
        self._embedded = key

    def request_embedding(self) -> None:
        """A prompt asks for the shown plane: embed it even if it was cancelled."""
        self._cancelled = None

    def ensure_embedding(self) -> None:
        """Embed the shown plane (in a job) unless the predictor holds it already."""
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
        model_id = self.model_id
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
        model_id = self.model_id
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
        self.preview_region = None
        self._on_embedded(key)
        self.set_status(
            f"Ready (large image: each prompt is segmented in {plan[0]}-px tiles, embedded "
            "when a prompt first reaches them): click on an object."
        )

    def _on_embedded(self, key, blank: float | None = None, name: str = "") -> None:
        self._embedded = key
        self._blank = key if blank is not None else None
        if self.segmenter is not None:
            self.segmenter.reset()
        self.decode_pending = True  # prompts may already exist on this plane
        if blank is None:
            self.set_status("Ready: click on an object.")
        else:
            message = (f"'{name}' is blank (every pixel is {blank:g}): nothing to segment, "
                       "prompts on it are ignored.")
            show_warning(message)
            self.set_status(message)
        self.ready.emit(key)

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
        model_id = self.model_id
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
