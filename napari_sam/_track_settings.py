"""The folded "Settings" of the Track panel: the engine's prompt recipe, its accept/reject
thresholds and division detection.

Shows the engine's defaults for the axis tracked (time or z) and gives back the
keyword arguments :func:`~src_core.propagate.propagate` and
:func:`~src_core.propagate.propagate_volume` take.
"""

from __future__ import annotations

import dataclasses
import inspect

from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from src_core.propagate import DEFAULT_RECIPE, LENIENT, RECIPES, VOLUME_QC, QualityControl, propagate

#: The engine's defaults, shown in "Settings": QC thresholds per axis, frames a lost object is searched for.
DEFAULT_QC = (QualityControl(), VOLUME_QC)
DEFAULT_SEARCH_FRAMES = inspect.signature(propagate).parameters["search_frames"].default
DEFAULT_DIVISIONS = inspect.signature(propagate).parameters["divisions"].default


def describe_recipe(name: str) -> str:
    """One line saying what a prompt recipe gives SAM on every frame."""
    r = RECIPES[name]
    parts = [text for on, text in (
        (r.box, "the moved, enlarged box"), (r.mask_logits, "the previous mask logits"),
        (r.interior_point, "a click inside"), (r.negative_points, "the neighbours as background clicks"),
    ) if on]
    extra = ("" if r.motion else "; no motion model") + ("; 3 candidates, the best kept" if r.multimask else "")
    default = " (default)" if r == DEFAULT_RECIPE else ""
    return f"{name}{default}: " + ", ".join(parts) + extra


class TrackSettings(QWidget):
    """'Settings' (folded at first, with a 'Defaults' button): recipe, min predicted IoU,
    min stability, max area change, search frames and divisions; ``along_z`` picks the
    axis's defaults."""

    def __init__(self) -> None:
        super().__init__()
        self.along_z = False
        outer = QVBoxLayout(self)
        outer.setContentsMargins(0, 0, 0, 0)
        outer.setSpacing(2)
        header = QHBoxLayout()
        self.settings_button = QToolButton()
        self.settings_button.setText("Settings")
        self.settings_button.setCheckable(True)
        self.settings_button.setArrowType(Qt.ArrowType.RightArrow)
        self.settings_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.settings_button.setAutoRaise(True)
        self.settings_button.setToolTip("How each frame is prompted, and when a mask is rejected (the object lost).")
        self.settings_button.toggled.connect(self._fold)
        defaults = QPushButton("Defaults")
        defaults.setToolTip("The engine's defaults for the chosen axis.")
        defaults.clicked.connect(self.reset)
        header.addWidget(self.settings_button)
        header.addStretch(1)
        header.addWidget(defaults)
        outer.addLayout(header)
        self.settings_area = QWidget()
        grid = QGridLayout(self.settings_area)
        grid.setContentsMargins(12, 0, 0, 0)
        grid.setVerticalSpacing(2)
        self.recipe_box = QComboBox()
        for i, name in enumerate(RECIPES):
            self.recipe_box.addItem(name)
            self.recipe_box.setItemData(i, describe_recipe(name), Qt.ItemDataRole.ToolTipRole)
        self.recipe_box.setToolTip(
            "How an object's prompt on the next frame is made from its mask on this one:\n"
            + "\n".join(describe_recipe(name) for name in RECIPES)
        )
        qc = QualityControl()

        def number(low, high, step, tip, decimals=2):
            box = QDoubleSpinBox()
            box.setRange(low, high)
            box.setSingleStep(step)
            box.setDecimals(decimals)
            box.setToolTip(tip)
            return box

        self.min_score_box = number(0.0, 1.0, 0.05, "Reject a mask whose predicted IoU (SAM's own estimate) is lower.")
        self.min_stability_box = number(
            0.0, 1.0, 0.05, "Reject a mask that changes this much when the logit threshold moves by "
            f"+-{qc.stability_offset:g} (stability score)."
        )
        self.max_area_box = number(
            1.0, 100.0, 0.1, "Reject a mask whose area is more than this many times (or less than 1/this of) "
            "the object's area on the previous frame.", decimals=1,
        )
        self.search_box = QSpinBox()
        self.search_box.setRange(0, 100000)
        self.search_box.setToolTip(
            "Frames a lost object is searched for around its predicted position before it is given up "
            "(0: it ends where it is lost). Along z an object always ends where it is lost."
        )
        self.divisions_check = QCheckBox("detect divisions")
        self.divisions_check.setToolTip(
            "Time-lapse, forward: a cell whose mask splits in two (or halves) becomes two daughters "
            "with new ids, their mother recorded (the Trajectories layer draws the lineage)."
        )
        self.lenient_check = QCheckBox("lenient: keep the best mask unless empty or on another object")
        self.lenient_check.setToolTip(
            "Ignore SAM's predicted IoU, the stability score and area jumps (the thresholds above); "
            "a mask is rejected only when it is empty or lies mostly on another object. For objects "
            "lost at once (natural images, a model unsure of its masks); costs ID switches where "
            "objects touch."
        )
        self.lenient_check.toggled.connect(self._on_lenient)
        for row, (label, box, label2, box2) in enumerate((
            ("min pred. IoU", self.min_score_box, "min stability", self.min_stability_box),
            ("max area change \u00d7", self.max_area_box, "search frames K", self.search_box),
        )):
            grid.addWidget(QLabel(label), row + 1, 0)
            grid.addWidget(box, row + 1, 1)
            grid.addWidget(QLabel(label2), row + 1, 2)
            grid.addWidget(box2, row + 1, 3)
        grid.addWidget(self.divisions_check, 3, 0, 1, 4)
        grid.addWidget(self.lenient_check, 4, 0, 1, 4)
        grid.addWidget(QLabel("prompt recipe"), 0, 0)
        grid.addWidget(self.recipe_box, 0, 1, 1, 3)
        grid.setColumnStretch(1, 1)
        grid.setColumnStretch(3, 1)
        outer.addWidget(self.settings_area)
        self.settings_area.setVisible(False)
        self.reset()

    def _fold(self, shown: bool) -> None:
        self.settings_area.setVisible(shown)
        self.settings_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def reset(self) -> None:
        """The engine's defaults (QC thresholds of the axis)."""
        qc = DEFAULT_QC[int(self.along_z)]
        self.recipe_box.setCurrentText(DEFAULT_RECIPE.name)
        self.min_score_box.setValue(qc.min_score)
        self.min_stability_box.setValue(qc.min_stability)
        self.max_area_box.setValue(qc.max_area_change)
        self.search_box.setValue(DEFAULT_SEARCH_FRAMES)
        self.search_box.setEnabled(not self.along_z)
        self.divisions_check.setChecked(DEFAULT_DIVISIONS)
        self.divisions_check.setEnabled(not self.along_z)
        self.lenient_check.setChecked(False)

    def _on_lenient(self, lenient: bool) -> None:
        for box in (self.min_score_box, self.min_stability_box, self.max_area_box):
            box.setEnabled(not lenient)

    def set_axis(self, along_z: bool) -> None:
        """Track through z (True) or time; the area limit follows the axis unless the user set one."""
        before, after = DEFAULT_QC[int(self.along_z)].max_area_change, DEFAULT_QC[int(along_z)].max_area_change
        self.along_z = bool(along_z)
        self.search_box.setEnabled(not along_z)
        self.divisions_check.setEnabled(not along_z)
        if abs(self.max_area_box.value() - before) < 1e-9:
            self.max_area_box.setValue(after)

    def values(self) -> dict:
        """The engine's keyword arguments: ``recipe``, ``qc`` (and ``search_frames`` and
        ``divisions`` in time)."""
        if self.lenient_check.isChecked():
            qc = LENIENT
        else:
            qc = dataclasses.replace(
                DEFAULT_QC[int(self.along_z)],
                min_score=self.min_score_box.value(),
                min_stability=self.min_stability_box.value(),
                max_area_change=self.max_area_box.value(),
            )
        out = {"recipe": self.recipe_box.currentText(), "qc": qc}
        if not self.along_z:
            out["search_frames"] = self.search_box.value()
            out["divisions"] = self.divisions_check.isChecked()
        return out
