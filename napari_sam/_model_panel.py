"""The model part of the dock widget: which SAM, which weights, where, how precise."""

from __future__ import annotations

from dataclasses import dataclass

from qtpy.QtCore import Qt
from qtpy.QtGui import QStandardItem, QStandardItemModel
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLineEdit,
    QPushButton,
    QStyledItemDelegate,
    QWidget,
)

#: Item data role holding a model's one-line summary (a group title has none).
SUMMARY_ROLE = Qt.ItemDataRole.UserRole + 1


@dataclass(frozen=True)
class ModelChoice:
    model_type: str
    device: str
    dtype: str
    checkpoint: str | None  # a local weights file; None: the official ones

    @property
    def name(self) -> str:
        return self.checkpoint or self.model_type


def load_predictor(choice: ModelChoice):
    """Build the chosen model and its predictor (runs in a worker: may download):
    SAM 2.1's image predictor for a SAM 2.1 name or file, else SAM 1's."""
    from src_core import SamPredictor, build_sam
    from src_core.checkpoints import SAM2_CHECKPOINTS, holds_sam2, load_state_dict

    checkpoint, sam2_size = choice.checkpoint, None
    if checkpoint and holds_sam2(checkpoint):  # a SAM 2 file, whatever the box says
        from src_core.model.sam2.build import infer_sam2_size

        checkpoint = load_state_dict(checkpoint)  # loaded once, given to the builder
        sam2_size = infer_sam2_size(checkpoint) or "tiny"  # an unknown size is refused by build_sam2
    elif not checkpoint and choice.model_type in SAM2_CHECKPOINTS:
        sam2_size = choice.model_type
    if sam2_size is not None:
        from src_core import SAM2ImagePredictor, build_sam2

        return SAM2ImagePredictor(build_sam2(sam2_size, checkpoint, device=choice.device, dtype=choice.dtype))
    if checkpoint:
        model = build_sam("auto", checkpoint=checkpoint, device=choice.device, dtype=choice.dtype)
    else:
        model = build_sam(choice.model_type, device=choice.device, dtype=choice.dtype)
    return SamPredictor(model)


def weights_hint(model_type: str) -> str:
    """What the user needs to know about the weights before loading them."""
    from src_core.checkpoints import (
        EMBEDDED_MODEL,
        cached_checkpoint,
        checkpoint_info,
        checkpoint_path,
        size_estimate,
    )

    if model_type == EMBEDDED_MODEL:
        return (
            f"{EMBEDDED_MODEL} is napari-sam's small built-in model (offline, 16 MB), "
            "trained by the project on synthetic microscopy-like images. It is not Meta's "
            "SAM and is much less accurate (rough masks, often merging neighbours): for "
            "the official models choose vit_b/vit_l/vit_h, for microscopy vit_b_lm and the "
            "other micro-sam models (downloaded once, or `napari-sam download vit_b`)."
        )
    info = checkpoint_info(model_type)
    what = f"{model_type}: {info.summary}. " if info.summary else ""
    kind = "Official" if info.group == "meta" else "Published"
    if cached_checkpoint(model_type) is not None:
        return f"{what}{kind} {model_type} weights are cached: press Load model."
    size = size_estimate(info)
    amount = "" if size is None else f" ({'' if info.size else 'about '}{size / 1e6:.0f} MB)"
    return (
        f"{what}No {kind.lower()} {model_type} weights cached yet. Load model downloads "
        f"them{amount}. Offline: put {info.filename} at {checkpoint_path(model_type)} (or run "
        f"`napari-sam download {model_type}` where there is network)."
    )


class _SummaryDelegate(QStyledItemDelegate):
    """The open list shows each model with its one line; the closed box, the name alone."""

    def initStyleOption(self, option, index) -> None:
        super().initStyleOption(option, index)
        summary = index.data(SUMMARY_ROLE)
        if summary:
            option.text = f"{option.text}  -  {summary}"
        elif not index.flags() & Qt.ItemFlag.ItemIsSelectable:  # a group's title
            option.font.setBold(True)


def fill_model_box(box: QComboBox) -> None:
    """The models by group (Meta's SAM, microscopy fine-tunes, small and fast, built-in,
    video: SAM 2.1):
    a bold title that cannot be chosen, then each model's name with its one line."""
    from src_core.checkpoints import model_groups

    model = QStandardItemModel(box)
    for group in model_groups(video=True):
        title = QStandardItem(group.title)
        title.setFlags(Qt.ItemFlag.NoItemFlags)
        model.appendRow(title)
        for name, summary in group.models:
            item = QStandardItem(name)
            item.setData(summary, SUMMARY_ROLE)
            item.setToolTip(summary)
            model.appendRow(item)
    box.setModel(model)
    box.setItemDelegate(_SummaryDelegate(box))

    def skip_titles(index: int) -> None:
        # a title cannot be clicked, but code (or the keyboard) may still land on one
        item = model.item(index)
        if item is not None and not item.isSelectable():
            box.setCurrentIndex(index + 1)  # every title is followed by a model

    box.currentIndexChanged.connect(skip_titles)
    # the closed box is as wide as the longest name; the open list as its longest line
    box.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
    box.view().setTextElideMode(Qt.TextElideMode.ElideNone)
    box.view().setMinimumWidth(box.view().sizeHintForColumn(0))


class ModelPanel(QWidget):
    """Model type, weights file, device and precision, and the Load button."""

    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.model_box = QComboBox()
        from src_core.checkpoints import default_model_type

        fill_model_box(self.model_box)
        # a published model already in the cache (Meta's, then micro-sam's), else the built-in one
        self.model_box.setCurrentText(default_model_type())
        self.checkpoint_edit = QLineEdit()
        self.checkpoint_edit.setPlaceholderText("official weights (or a local .pth file)")
        browse = QPushButton("...")
        browse.setMaximumWidth(30)
        browse.clicked.connect(self._browse)
        checkpoint_row = QHBoxLayout()
        checkpoint_row.addWidget(self.checkpoint_edit)
        checkpoint_row.addWidget(browse)
        self.device_box = QComboBox()
        self.device_box.addItems(["auto", "cpu", "cuda", "mps"])
        self.dtype_box = QComboBox()
        self.dtype_box.addItems(["auto", "float32", "bfloat16"])
        self.load_button = QPushButton("Load model")
        form.addRow("model", self.model_box)
        form.addRow("weights", checkpoint_row)
        form.addRow("device", self.device_box)
        form.addRow("precision", self.dtype_box)
        form.addRow(self.load_button)

    def choice(self) -> ModelChoice:
        return ModelChoice(
            self.model_box.currentText(),
            self.device_box.currentText(),
            self.dtype_box.currentText(),
            self.checkpoint_edit.text().strip() or None,
        )

    def show_weights(self, path) -> None:
        """Show a weights file now in use (a fine-tuned copy): the weights field names it."""
        self.checkpoint_edit.setText(str(path))

    def needs_download(self) -> bool:
        """Whether loading the chosen model would download weights (no local file, not cached)."""
        from src_core.checkpoints import EMBEDDED_MODEL, cached_checkpoint

        choice = self.choice()
        if choice.checkpoint or choice.model_type == EMBEDDED_MODEL:
            return False
        return cached_checkpoint(choice.model_type) is None

    def hint(self) -> str:
        return weights_hint(self.model_box.currentText())

    def _browse(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "SAM checkpoint", "", "PyTorch weights (*.pth *.pt)")
        if path:
            self.checkpoint_edit.setText(path)
