"""The "Fine-tune on my annotations" part of the dock widget.

It trains a copy of the loaded model on the chosen image and a labels layer (every
plane of a stack that has labels), with the seed's recipe (:mod:`src_core.train`),
in one of the widget's jobs, with progress (loss) and cancel. The result is written
as a checkpoint in the official layout and then loaded in place of the model, so the
next clicks use it; the file can be loaded again later ("local weights file").

The panel works through the session (:class:`~napari_sam._session.Session`): the
viewer, the predictor, the chosen image, its normalization and the job runner.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QLineEdit,
    QVBoxLayout,
)

from src_core.protocols import is_sam2_model

from . import _layers as L
from ._forms import form_settings, settings_form
from ._job import JobPanel


@dataclass(frozen=True)
class FinetuneSettings:
    """What the panel asks of the trainer (the rest is the seed's recipe)."""

    steps: int = 200
    lr: float = 1e-4
    freeze_encoder: bool = True
    masks_per_image: int = 16


#: The settings form (magicgui): steps, learning rate, frozen encoder.
FORM_FIELDS = {
    "steps": {"min": 1, "max": 100_000, "tooltip": "Optimizer steps; the time left is shown while it runs."},
    "lr": {"min": 1e-6, "max": 1e-2, "step": 1e-5, "label": "learning rate"},
    "freeze_encoder": {"label": "", "text": "image encoder frozen (fast; decoder only)",
                       "tooltip": "Train the prompt encoder and mask decoder only."},
}


def default_output(image_name: str) -> Path:
    """A new file under the napari-sam cache, named after the image and the time."""
    from src_core.checkpoints import cache_dir

    safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in image_name) or "image"
    return cache_dir() / "finetuned" / f"{safe}-{time.strftime('%Y%m%d-%H%M%S')}.pth"


def training_pairs(read_plane: Callable[[tuple], np.ndarray], normalization: dict, labels: np.ndarray,
                   prefix_shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The (image, labels) planes with at least one object, as uint8 RGB stacks.

    ``labels`` has the image's spatial shape; ``prefix_shape`` is the shape of its
    leading (z / t) axes, () for a 2D image. Raises ValueError when no plane has labels.
    """
    from src_core.preprocess import to_rgb

    images, masks = [], []
    for plane in np.ndindex(*prefix_shape):
        plane_labels = np.asarray(labels[plane] if plane else labels)
        if not plane_labels.any():
            continue
        rgb = to_rgb(read_plane(plane), **normalization)
        images.append(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))
        masks.append(plane_labels.astype(np.int32))
    if not images:
        raise ValueError("the labels layer has no objects: annotate a few first (commit some masks)")
    return np.stack(images), np.stack(masks)


def finetune(model, images: np.ndarray, labels: np.ndarray, settings: FinetuneSettings, output: Path,
             report: Callable[[int, int, float], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> Path | None:
    """Train a copy of ``model`` and save it to ``output`` (runs in a worker; no Qt).

    Returns ``output``, or None when stopped (nothing is written then: a half-trained
    model never replaces anything).
    """
    from src_core.jobs import Cancelled
    from src_core.train.data import ArrayPairs
    from src_core.train.trainer import TrainConfig, Trainer, save_model

    source = ArrayPairs(images, labels)  # checks shapes and that there are objects
    trainee = copy.deepcopy(model).float()
    config = TrainConfig(
        steps=settings.steps, batch_size=min(2, len(source)), masks_per_image=settings.masks_per_image,
        lr=settings.lr, warmup=min(250, max(settings.steps // 10, 1)),
        train_encoder=not settings.freeze_encoder, drop_path=0.1 if not settings.freeze_encoder else 0.0,
        checkpoint_every=10**9,  # saved once, at the end, below
    )
    trainer = Trainer(trainee, source, config)
    try:
        for record in trainer.run(should_stop):
            if report is not None:
                report(int(record["step"]), config.steps, float(record["loss"]))
    except Cancelled:
        return None
    output.parent.mkdir(parents=True, exist_ok=True)
    save_model(trainee, output)
    return output


class FinetunePanel(JobPanel):
    """Labels layer, steps, learning rate, encoder frozen or not, output file, Run/Cancel."""

    job_name = "Fine-tune"
    cancelled_message = "Fine-tuning cancelled; the model is unchanged and nothing was written."

    def __init__(self, session) -> None:
        super().__init__(session)
        self._started: tuple[float, int] | None = None  # (time, step) the estimate counts from
        self._loss = float("nan")  # the last step's, written by the worker
        self._build_ui()
        session.viewer.layers.events.inserted.connect(self.refresh_labels)
        session.viewer.layers.events.removed.connect(self.refresh_labels)

    def _build_ui(self) -> None:
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        box = QGroupBox("Fine-tune on my annotations")
        outer.addWidget(box)
        form = QFormLayout(box)
        self.labels_box = QComboBox()
        self.labels_box.setToolTip("Instance labels of the chosen image to train on (default: SAM labels).")
        self.labels_box.showPopup = self._popup_with_fresh_layers(self.labels_box.showPopup)
        self.form = settings_form(FinetuneSettings(), FORM_FIELDS)
        self.form.lr.native.setDecimals(6)  # magicgui derives 5 from the step: 2.5e-5 would round
        self.output_edit = QLineEdit()
        self.output_edit.setPlaceholderText("default: a new file under the napari-sam cache")
        buttons = self.make_job_row("Fine-tune")
        form.addRow("labels", self.labels_box)
        form.addRow(self.form.native)
        form.addRow("save to", self.output_edit)
        form.addRow(buttons)
        self.refresh_labels()

    def _popup_with_fresh_layers(self, show):
        def popup() -> None:
            self.refresh_labels()
            show()

        return popup

    def refresh_labels(self, event=None, *, image_changed: bool = False) -> None:
        """List the viewer's Labels layers (the chosen image's own "SAM labels" first),
        keeping the user's choice, except when the image changed: then its own labels."""
        from napari.layers import Labels

        current = self.labels_box.currentText()
        layers = {layer.name: layer for layer in self.session.viewer.layers if isinstance(layer, Labels)}
        own = self.session.layers.get(L.LABELS)  # the chosen image's own "SAM labels"
        own_name = own.name if own is not None else L.LABELS
        names = sorted(layers, key=lambda name: name != own_name)
        self.labels_box.blockSignals(True)
        self.labels_box.clear()
        self.labels_box.addItems(names)
        self.labels_box.setCurrentText(current if current in layers and not image_changed else own_name)
        self.labels_box.blockSignals(False)

    def settings(self) -> FinetuneSettings:
        return form_settings(self.form, FinetuneSettings)

    # -- run and cancel ---------------------------------------------------------------

    def run(self) -> None:
        """Fine-tune a copy of the loaded model on the chosen image and labels, in a worker."""
        session = self.session
        if not self.session_ready(model=False, layers=False):
            return
        image = session.image_layer
        model = getattr(session.predictor, "model", None)
        if model is None:
            show_warning("Fine-tune: load a model first ('Load model'); it is the starting point.")
            return
        if is_sam2_model(model):
            show_warning("Fine-tune: SAM 2.1 models cannot be fine-tuned here yet; load a SAM 1 model.")
            return
        self.refresh_labels()
        name = self.labels_box.currentText()
        if not name or name not in session.viewer.layers:
            show_warning("Fine-tune: there is no labels layer; commit a few objects first.")
            return
        labels = session.viewer.layers[name].data
        spatial = L.spatial_shape(image)
        if tuple(labels.shape) != tuple(spatial):
            show_error(
                f"Fine-tune: '{name}' has shape {tuple(labels.shape)} but the image '{image.name}' has "
                f"{tuple(spatial)}: choose the labels of this image."
            )
            return
        output = Path(self.output_edit.text()).expanduser() if self.output_edit.text().strip() else None
        if output is not None and output.is_dir():
            show_error(f"Fine-tune: {output} is a folder; give the .pth file to write.")
            return
        output = output or default_output(image.name)
        try:
            images, masks = training_pairs(
                session.plane_reader(image), session.normalization(image), labels, tuple(spatial[:-2])
            )
        except ValueError as err:
            show_error(f"Fine-tune: {err}")
            return
        settings, device, dtype = self.settings(), model.device, model.encoder_dtype
        self._started = None

        def work():
            path = finetune(model, images, masks, settings, output, self.report, self.should_stop)
            if path is None:
                return None
            from src_core import SamPredictor, build_sam

            return SamPredictor(build_sam("auto", checkpoint=path, device=device, dtype=dtype))

        worker = thread_worker(work, ignore_errors=True)()
        worker.returned.connect(lambda predictor: self._on_result(predictor, output))
        self.start_job(
            worker,
            f"Fine-tuning on {len(images)} plane(s) of '{image.name}' with '{name}' for {settings.steps} steps ...",
            total=settings.steps,
        )

    def report(self, step: int, total: int, loss: float = float("nan")) -> None:
        """The trainer's progress (worker thread): step, steps, loss."""
        self._loss = float(loss)
        super().report(step, total)

    def on_progress(self, step: int, total: int) -> None:
        import time

        loss = self._loss
        now = time.monotonic()
        if step <= 1 or self._started is None:
            self._started = (now, step)
        first_time, first_step = self._started
        left = ""
        if step > first_step:  # time per step measured after the first (which warms up)
            seconds = (now - first_time) / (step - first_step) * (total - step)
            left = f", about {seconds / 60:.0f} min left" if seconds >= 90 else f", about {seconds:.0f} s left"
        self.progress_bar.setFormat(f"%v/%m  loss {loss:.3f}{left}")
        self.session.set_status(f"Fine-tuning: step {step}/{total}, loss {loss:.3f}{left}")
        if self._progress is not None:
            self._progress.set_description(f"Fine-tune (loss {loss:.3f})")
        super().on_progress(step, total)

    def _on_result(self, predictor, output: Path) -> None:
        self.result_arrived()
        if predictor is None:
            self.session.set_status("Fine-tuning cancelled; the model is unchanged and nothing was written.")
            return
        # the message outlives the status line, which the re-embedding overwrites
        show_info(f"Fine-tuned model saved to {output} and in use. Load it later as a local weights file.")
        # the model box says what is in use: the model type with the fine-tuned weights file
        self.session.set_predictor(predictor, f"fine-tuned model ({output})", weights=output)
