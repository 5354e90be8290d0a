"""The "SAM text" part of the dock widget: find the objects a text names on the shown plane.

Type a text ("cell", "a fly") and press Find (or Enter): in one of the widget's jobs,
:func:`~src_core.text.segment_text` runs segment everything on the shown plane with the
"Segment everything" panel's settings, lets CLIP score every mask against the text and
the optional negative texts, keeps the best (top-k and/or above a threshold) and
refines them with SAM from their boxes. The matches appear in "SAM preview" (one
label each, best = 1); the widget's Commit (C) writes them into "SAM labels" with new
ids as one undo step, Clear (Q) drops them. "Track these" gives each match to the
Track panel as a new object (its box on the shown frame), ready to Propagate.

CLIP (open_clip, the optional ``napari-sam[text]`` extra) is loaded, and its weights
downloaded on first use, inside the job; it is then kept for the next searches.
The panel works through the session (:class:`~napari_sam._session.Session`): the
viewer, the predictor, the chosen image, the SAM layers and the job runner.
"""

from __future__ import annotations

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
)

from src_core.jobs import Cancelled

from . import _layers as L
from . import _tiled as T
from . import _track_layers as TL
from ._everything_panel import UNDO_LIMIT, EverythingSettings, make_generator, paint_labels
from ._job import JobPanel


def make_tiled_predictor(predictor, plan: tuple[int, int]):
    """A tiled predictor of its own on the predictor's model, for refining the matches of
    a large plane (the widget's predictor and its embeddings are left as they are)."""
    model = getattr(predictor, "model", None)
    if model is None:
        raise ValueError("text prompts need a SAM model to refine the matches (load one)")
    from src_core.predictor import SamPredictor
    from src_core.tiling import TiledPredictor

    return TiledPredictor(SamPredictor(model), *plan)


def load_scorer(predictor, report=None):
    """CLIP on the predictor's device (the panel's default factory; downloads on first use)."""
    from src_core.text import load_clip

    device = getattr(predictor, "device", "cpu")
    return load_clip(progress=report, device=device)


class TextPanel(JobPanel):
    """Text, negatives, top-k, threshold; Find / Cancel / Track these, with a progress bar.

    ``scorer_factory(predictor, report)`` makes the CLIP scorer and
    ``generator_factory(predictor, settings)`` the candidate generator; tests swap them.
    """

    job_name = "SAM text"
    cancelled_message = "SAM text cancelled; nothing changed."

    def __init__(self, session, everything_settings=None, track=None) -> None:
        super().__init__(session)
        # segment everything's settings make the candidates; "Track these" goes to Track
        self.everything_settings = everything_settings or EverythingSettings
        self.track_panel = track or (lambda: None)
        self.scorer_factory = load_scorer
        self.generator_factory = make_generator
        self.tiled_factory = make_tiled_predictor
        self.scorer = None  # kept once loaded
        self.matches: list | None = None  # shown in the preview, not committed yet
        self.match_plane: tuple | None = None
        self._generator = None
        self._build_ui()

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("SAM text")
        outer.addWidget(box)
        form = QFormLayout(box)
        self.text_edit = QLineEdit()
        self.text_edit.setPlaceholderText("what to find, e.g. nucleus")
        self.text_edit.returnPressed.connect(self.run)
        self.negative_edit = QLineEdit()
        self.negative_edit.setPlaceholderText("optional, comma-separated, e.g. debris, shadow")
        self.negative_edit.setToolTip("Texts the objects should look less like than the text.")
        self.top_k_box = QSpinBox()
        self.top_k_box.setRange(0, 10_000)
        self.top_k_box.setSpecialValueText("all")
        self.top_k_box.setToolTip("Keep at most this many matches, best first ('all': no limit).")
        self.threshold_box = QDoubleSpinBox()
        self.threshold_box.setRange(0.0, 1.0)
        self.threshold_box.setSingleStep(0.05)
        self.threshold_box.setDecimals(2)
        self.threshold_box.setValue(0.5)
        self.threshold_box.setToolTip(
            "Keep masks CLIP finds at least this likely to show the text rather than a negative "
            "text (0 keeps everything, then top-k chooses)."
        )
        self.track_button = QPushButton("Track these")
        self.track_button.setToolTip("Give each match to the Track panel as a new object (its box).")
        self.track_button.clicked.connect(self.track_matches)
        buttons = self.make_job_row("Find", self.track_button)
        self.find_button = self.run_button
        form.addRow("text", self.text_edit)
        form.addRow("not like", self.negative_edit)
        form.addRow("top-k", self.top_k_box)
        form.addRow("threshold", self.threshold_box)
        form.addRow(buttons)

    def negatives(self) -> list[str]:
        return [t.strip() for t in self.negative_edit.text().split(",") if t.strip()]

    # -- run and cancel -----------------------------------------------------------------

    def run(self) -> None:
        """Find the objects the text names on the shown plane, in a worker."""
        session = self.session
        text = " ".join(self.text_edit.text().split())
        if not text:
            show_warning("SAM text: type what to find first, e.g. 'nucleus'.")
            return
        if not self.session_ready():
            return
        image = session.image_layer
        plan = T.plan_for(image, session.predictor)
        try:
            self._generator = self.generator_factory(session.predictor, self.everything_settings())
            tiled = self.tiled_factory(session.predictor, plan) if plan is not None else None
        except (ValueError, RuntimeError, ImportError) as err:
            show_error(f"SAM text: {err}")
            return
        key = session.embedding_key()
        # a large plane is read tile by tile, by a tiled predictor of its own: the
        # widget's predictor keeps its embedding
        plane, set_image = key[1], plan is None and key != session.embedded
        source = T.lazy_plane([image, *session.channel_layers()], plane) if plan is not None else None
        predictor, generator, factory = session.predictor, self._generator, self.scorer_factory
        read, normalization = session.plane_reader(image), session.normalization(image)
        negatives, top_k = self.negatives(), self.top_k_box.value() or None
        threshold, stop, report = self.threshold_box.value(), self.should_stop, self.report

        def work():
            from src_core.text import (
                TextExtraMissing,
                TextPromptError,
                segment_text,
                segment_text_tiled,
            )

            try:
                if self.scorer is None:
                    self.scorer = factory(predictor, report)
                if tiled is not None:
                    return "ok", segment_text_tiled(
                        tiled, source, text, scorer=self.scorer, generator=generator, negatives=negatives,
                        threshold=threshold, top_k=top_k, progress=report, should_stop=stop, **normalization,
                    )
                return "ok", segment_text(
                    predictor, read(plane), text, scorer=self.scorer, negatives=negatives,
                    threshold=threshold, top_k=top_k, generator=generator, set_image=set_image,
                    normalization=normalization, progress=report, should_stop=stop,
                )
            except Cancelled:
                return "cancelled", None
            except (TextPromptError, TextExtraMissing, FileNotFoundError, ValueError, RuntimeError) as err:
                # returned, not raised: napari's workers would swallow some RuntimeErrors
                return "error", str(err)

        worker = thread_worker(work, ignore_errors=True)()
        worker.returned.connect(lambda result: self._on_result(result, text, plane, key, set_image))
        if set_image:
            session.forget_embedding()  # the predictor will hold the shown plane again
        where = f" in plane {plane}" if plane else ""
        where += ", tile by tile" if plan is not None else ""
        self.start_job(worker, f"SAM text: looking for {text!r}{where} of '{image.name}' ...")

    def on_cancel(self) -> None:
        """Stop the candidate generator after its current batch."""
        if self._generator is not None and hasattr(self._generator, "cancel"):
            self._generator.cancel()

    def on_finished(self) -> None:
        self._generator = None
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)

    def _on_result(self, result, text: str, plane: tuple, key, set_image: bool) -> None:
        session = self.session
        self.result_arrived()
        status, value = result
        if set_image and status == "ok":
            session.adopt_embedding(key)  # the predictor holds the plane's embedding now
        if status == "cancelled":
            session.set_status("SAM text cancelled; nothing changed.")
            return
        if status == "error":
            show_error(f"SAM text: {value}")
            session.set_status(f"SAM text: {value}")
            return
        preview = session.layers.get(L.PREVIEW)
        if preview is None:
            show_warning(f"'{L.PREVIEW}' was removed while searching: the result is dropped.")
            return
        if session.segmenter is not None:
            session.segmenter.reset()  # the preview now shows the text's matches

        def paint(view) -> None:
            for k in range(len(value) - 1, -1, -1):  # label 1 = the best match, on top
                value[k].paste(view, k + 1)

        session.show_in_preview(plane, paint)
        self.matches, self.match_plane = value, plane
        scores = f"scores {value[0].score:.2f}" + (f" to {value[-1].score:.2f}" if len(value) > 1 else "")
        session.set_status(
            f"SAM text: {len(value)} object{'s' * (len(value) != 1)} match {text!r} ({scores}). "
            "Commit (C) adds them, Clear (Q) drops them, 'Track these' tracks them."
        )

    # -- results ------------------------------------------------------------------------

    def discard(self) -> None:
        """Forget the matches (the preview is the session's to clear)."""
        self.matches, self.match_plane = None, None

    def commit(self) -> None:
        """Write the matches into 'SAM labels' with new ids, as one undo step."""
        session = self.session
        if not self.matches or L.LABELS not in session.layers:
            self.discard()
            return
        from src_core.text import TiledTextMatch, matches_to_labels, visible_parts

        labels_layer, plane = session.layers[L.LABELS], self.match_plane
        overwrite = session.paint_over
        try:
            if isinstance(self.matches[0], TiledTextMatch):  # a large plane: painted crop by crop
                first, last, _ = T.paint_crops(labels_layer, visible_parts(self.matches), plane,
                                               overwrite=overwrite, undo_limit=UNDO_LIMIT)
            else:
                labels = matches_to_labels(self.matches, tuple(labels_layer.data.shape[-2:]))
                first, last, _ = paint_labels(labels_layer, labels, plane, overwrite=overwrite)
        except ValueError as err:
            show_error(f"SAM text: {err}")
            return
        self.discard()
        if not first:
            session.set_status("SAM text: nothing new to commit (the matches are labelled already).")
        else:
            session.set_status(f"committed {last - first + 1} object{'s' * (last != first)}, ids {first}-{last}")

    def track_matches(self) -> None:
        """Give each match to the Track panel as a new object: its box on the shown frame."""
        if not self.matches:
            show_info("SAM text: find objects first (type a text, then Find).")
            return
        track = self.track_panel()
        if track is None:
            show_info("SAM text: there is no Track panel to give the matches to.")
            return
        if not track.prepare():
            return
        plane = list(self.match_plane or ())  # (t,) or (t, z): where the matches were found
        layers = track.layers
        first = TL.largest_id(layers[TL.PROMPTS], layers[TL.BOXES], layers[TL.TRACKS]) + 1
        boxes = layers[TL.BOXES]
        for k, match in enumerate(self.matches):
            track.object_box.setValue(first + k)  # new shapes take this object's id
            x0, y0, x1, y1 = (float(v) for v in match.box)
            corners = [[*plane, y0, x0], [*plane, y0, x1], [*plane, y1, x1], [*plane, y1, x0]]
            boxes.add_rectangles(np.array(corners, float))
        last = first + len(self.matches) - 1
        where = ", ".join(map(str, plane))
        self.session.set_status(
            f"Track: objects {first}-{last} prompted by their boxes in plane ({where}); press Propagate."
        )
