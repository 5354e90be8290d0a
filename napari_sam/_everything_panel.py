"""The "Segment everything" part of the dock widget.

It runs :class:`~src_core.automatic.SamAutomaticMaskGenerator` on the shown plane, or
on every slice of a stack (then links the slices into 3D objects with
:func:`~src_core.automatic.linking.link_slices`), in one of the widget's jobs, with
progress and cancel. The result goes into "SAM labels" with ids above those already
there, as one undoable edit, so point and box commits can correct it afterwards.

The panel works through the session (:class:`~napari_sam._session.Session`): the
viewer, the predictor, the chosen image, the SAM layers and the job runner.

Planes that are large for the model (:func:`~src_core.tiling.tiling_plan`) are
segmented tile by tile with :func:`~src_core.tiling.generate_tiled` (progress counts
tiles), read lazily from the layer, and painted into "SAM labels" by each object's
crop, so no full-size mask or float copy of the plane is made.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_warning
from qtpy.QtWidgets import (
    QGroupBox,
    QVBoxLayout,
)

from src_core.automatic.settings import DEFAULTS
from src_core.jobs import Cancelled

from . import _layers as L
from . import _tiled as T
from ._forms import form_settings, settings_form
from ._job import JobPanel

SCOPES = ("current plane", "all slices (3D, linked)")
# larger writes skip napari's undo history, whose index arrays would cost ~25 bytes a pixel
UNDO_LIMIT = 20_000_000


@dataclass(frozen=True)
class EverythingSettings:
    """What the panel asks of segment everything."""

    points_per_side: int = DEFAULTS.points_per_side
    pred_iou_thresh: float = DEFAULTS.pred_iou_thresh
    stability_score_thresh: float = DEFAULTS.stability_score_thresh
    min_mask_region_area: int = DEFAULTS.min_mask_region_area
    crop_n_layers: int = DEFAULTS.crop_n_layers
    all_slices: bool = False
    link_min_iou: float = 0.3


def _fraction(tooltip: str) -> dict:
    return {"min": 0.0, "max": 1.0, "step": 0.01, "tooltip": tooltip}


#: The settings form (magicgui): a widget per field of EverythingSettings.
FORM_FIELDS = {
    "points_per_side": {"min": 1, "max": 128, "label": "points per side",
                        "tooltip": "Grid of points per image side; each point prompts SAM once."},
    "pred_iou_thresh": {"label": "pred IoU threshold", **_fraction("Keep masks SAM rates above this quality.")},
    "stability_score_thresh": {
        "label": "stability threshold",
        **_fraction("Keep masks that barely change when SAM's threshold moves."),
    },
    "min_mask_region_area": {"min": 0, "max": 1_000_000, "label": "min region area (px)",
                             "tooltip": "Fill holes and drop islands smaller than this; 0 keeps everything."},
    "crop_n_layers": {"min": 0, "max": 3, "label": "crop layers",
                      "tooltip": "Also run on 4, 16, 64 overlapping crops: finds smaller objects, slower."},
    "all_slices": {
        "widget_type": "ComboBox", "label": "stacks", "choices": [(SCOPES[0], False), (SCOPES[1], True)],
        "tooltip": "Stacks: the shown plane, or every slice along the last slider, with objects "
                   "linked from slice to slice by overlap into 3D labels.",
    },
    "link_min_iou": {"label": "link min IoU", **_fraction("Smallest overlap (IoU) of one object in neighbouring slices.")},
}


def make_generator(predictor, settings: EverythingSettings):
    """The real generator on the predictor's model (the panel's default factory)."""
    model = getattr(predictor, "model", None)
    if model is None:
        raise ValueError("Segment everything needs a SAM model: load one with 'Load model'.")
    from src_core.automatic import mask_generator_for

    return mask_generator_for(  # SAM 1's generator or SAM 2.1's, as Meta's packages have them
        model,
        points_per_side=settings.points_per_side,
        pred_iou_thresh=settings.pred_iou_thresh,
        stability_score_thresh=settings.stability_score_thresh,
        min_mask_region_area=settings.min_mask_region_area,
        crop_n_layers=settings.crop_n_layers,
    )


def segment_planes(
    generator,
    read_plane: Callable[[tuple], np.ndarray],
    normalization: dict,
    planes: Sequence[tuple],
    report: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    link_min_iou: float = 0.3,
) -> np.ndarray | None:
    """Label images of ``planes`` (runs in a worker; no Qt).

    Returns the (H, W) labels of a single plane, or the (Z, H, W) labels of several,
    linked into 3D objects; None when cancelled (``should_stop`` returned True, or the
    generator's ``cancel()`` was called). ``report(done, total)`` counts point batches
    over all planes.
    """
    from src_core.automatic import masks_to_label_image
    from src_core.automatic.linking import link_slices
    from src_core.preprocess import to_rgb

    slices = []
    for index, plane in enumerate(planes):

        def plane_progress(done: int, total: int, index: int = index) -> None:
            if report is not None:
                report(index * total + done, len(planes) * total)

        if should_stop is not None and should_stop():
            return None
        rgb = to_rgb(read_plane(plane), **normalization)
        if rgb.dtype != np.uint8:  # scaled to 0-255 already: give the generator what SAM sees
            rgb = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
        try:
            records = generator.generate(rgb, progress=plane_progress, should_stop=should_stop)
        except Cancelled:
            # caught here: napari's generator workers swallow RuntimeErrors silently
            return None
        slices.append(masks_to_label_image(records, rgb.shape[:2]))
    if len(slices) == 1:
        return slices[0]
    return link_slices(np.stack(slices), min_iou=link_min_iou)


def segment_large_plane(
    generator,
    source,
    normalization: dict,
    plan: tuple[int, int],
    report: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> list[dict] | None:
    """Records (``output_mode="crop"``) of a large plane, tile by tile (runs in a worker;
    no Qt). ``report(done, total)`` counts tiles; None when cancelled."""
    from src_core.tiling import generate_tiled

    tile_size, overlap = plan
    try:
        return generate_tiled(
            generator, source, tile_size, overlap, output_mode="crop",
            progress=report, should_stop=should_stop, **normalization,
        )
    except Cancelled:
        return None


def paint_labels(
    labels_layer, labels: np.ndarray, prefix: tuple, *, overwrite: bool = False
) -> tuple[int, int, bool]:
    """Write ``labels`` into ``labels_layer`` at ``prefix`` with new ids, as one undo step.

    The objects get consecutive ids above the layer's current maximum, in the order of
    their ids in ``labels``. Existing labels are kept unless ``overwrite``. Returns the
    first and last id written ((0, 0) when nothing was) and whether it can be undone
    (not above :data:`UNDO_LIMIT` pixels).
    """
    data = labels_layer.data
    region = np.asarray(data[prefix] if prefix else data)
    write = labels > 0
    if not overwrite:
        write &= region == 0
    ids, inverse = np.unique(labels[write], return_inverse=True)
    if not len(ids):
        return 0, 0, True
    start = int(np.asarray(data).max()) + 1
    if start + len(ids) - 1 > np.iinfo(data.dtype).max:
        raise ValueError(f"'{labels_layer.name}' ({data.dtype}) has no room for {len(ids)} more ids")
    values = (start + inverse).astype(data.dtype)
    if values.size > UNDO_LIMIT:
        view = data[prefix] if prefix else data
        view[write] = values
        labels_layer.refresh()
        return start, start + len(ids) - 1, False
    else:
        where = np.nonzero(write)
        index = tuple(np.full(len(where[0]), p) for p in prefix) + where
        with labels_layer.block_history():
            labels_layer.data_setitem(index, values)
    return start, start + len(ids) - 1, True


class EverythingPanel(JobPanel):
    """Settings, Run and Cancel for segment everything, with a progress bar.

    ``generator_factory(predictor, settings)`` makes the generator (anything with
    ``generate(image, progress=...)`` and ``cancel()``); tests swap it for a stand-in.
    """

    job_name = "Segment everything"
    cancelled_message = "Segment everything cancelled; the labels are unchanged."

    def __init__(self, session) -> None:
        super().__init__(session)
        self.generator_factory = make_generator
        self._generator = None
        self._build_ui()

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Segment everything")
        outer.addWidget(box)
        layout = QVBoxLayout(box)
        self.form = settings_form(EverythingSettings(), FORM_FIELDS)
        self.form.link_min_iou.enabled = False
        self.form.all_slices.changed.connect(lambda all_slices: setattr(self.form.link_min_iou, "enabled", all_slices))
        layout.addWidget(self.form.native)
        layout.addLayout(self.make_job_row("Run"))

    def settings(self) -> EverythingSettings:
        settings = form_settings(self.form, EverythingSettings)
        return dataclasses.replace(settings, link_min_iou=max(settings.link_min_iou, 0.01))

    # -- run and cancel ---------------------------------------------------------------

    def run(self) -> None:
        """Segment everything in the chosen image (shown plane or all slices) in a worker."""
        if not self.session_ready():
            return
        session = self.session
        image = session.image_layer
        settings = self.settings()
        plan = T.plan_for(image, session.predictor)
        plane = L.current_plane(image, session.viewer)
        if plan is not None and settings.all_slices and plane:
            show_error(
                f"Segment everything: the planes of '{image.name}' are large, so they are "
                "segmented tile by tile, and linking all slices into 3D is not available for "
                "them. Run it on the current plane (one slice at a time)."
            )
            return
        try:
            self._generator = self.generator_factory(session.predictor, settings)
        except (ValueError, RuntimeError, ImportError) as err:
            show_error(f"Segment everything: {err}")
            return
        if settings.all_slices and plane:
            prefix = plane[:-1]  # link along the last slider, the others where they are
            planes = [(*prefix, k) for k in range(L.spatial_shape(image)[len(prefix)])]
        else:
            prefix, planes = plane, [plane]
        labels_layer = session.layers[L.LABELS]
        overwrite = session.paint_over
        generator, read = self._generator, session.plane_reader(image)
        normalization, stop, report = session.normalization(image), self.should_stop, self.report

        if plan is not None:
            source = T.lazy_plane([image, *session.channel_layers()], plane)

            def work():
                return segment_large_plane(generator, source, normalization, plan, report, stop)

        else:

            def work():
                return segment_planes(generator, read, normalization, planes, report, stop, settings.link_min_iou)

        worker = thread_worker(work, ignore_errors=True)()
        worker.returned.connect(lambda labels: self._on_result(labels, labels_layer, prefix, overwrite))
        where = f"{len(planes)} slices" if len(planes) > 1 else f"plane {plane}" if plane else "the image"
        self.start_job(worker, f"Segmenting everything in {where} of '{image.name}' ...")

    def on_cancel(self) -> None:
        """Stop the generator after its current point batch."""
        if self._generator is not None:
            self._generator.cancel()

    def on_finished(self) -> None:
        self._generator = None

    def _on_result(self, labels, labels_layer, prefix: tuple, overwrite: bool) -> None:
        self.result_arrived()
        if labels is None:
            self.session.set_status("Segment everything cancelled; the labels are unchanged.")
            return
        if labels_layer not in self.session.viewer.layers:
            show_warning(f"'{L.LABELS}' was removed while segmenting: the result is dropped.")
            return
        try:
            if isinstance(labels, list):  # records of a large plane, segmented tile by tile
                first, last, undoable = T.paint_records(
                    labels_layer, labels, prefix, overwrite=overwrite, undo_limit=UNDO_LIMIT
                )
            else:
                first, last, undoable = paint_labels(labels_layer, labels, prefix, overwrite=overwrite)
        except ValueError as err:
            show_error(f"Segment everything: {err}")
            return
        if not first:
            self.session.set_status("Segment everything found nothing new (try lower thresholds).")
            return
        count = last - first + 1
        undo = "" if undoable else " (too large to undo)"
        self.session.set_status(f"Segment everything: {count} object{'s' * (count != 1)}, ids {first}-{last}{undo}.")
