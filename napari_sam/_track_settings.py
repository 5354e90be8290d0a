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
    QHBoxLayout,
    QPushButton,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from src_core.propagate import (
    DEFAULT_RECIPE,
    LENIENT,
    RECIPES,
    VOLUME_QC,
    QualityControl,
    propagate,
)

from ._forms import form_settings, settings_form

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


@dataclasses.dataclass(frozen=True)
class TrackFormSettings:
    """What "Settings" shows; the defaults are the engine's for tracking in time."""

    recipe: str = DEFAULT_RECIPE.name
    min_score: float = DEFAULT_QC[0].min_score
    min_stability: float = DEFAULT_QC[0].min_stability
    max_area_change: float = DEFAULT_QC[0].max_area_change
    search_frames: int = DEFAULT_SEARCH_FRAMES
    divisions: bool = DEFAULT_DIVISIONS
    lenient: bool = False

    @classmethod
    def for_axis(cls, along_z: bool) -> TrackFormSettings:
        """The engine's defaults for tracking through z (True) or time."""
        qc = DEFAULT_QC[int(along_z)]
        return cls(min_score=qc.min_score, min_stability=qc.min_stability, max_area_change=qc.max_area_change)


_QC_TIP = QualityControl()
#: The settings form (magicgui), one widget per field of TrackFormSettings.
FORM_FIELDS = {
    "recipe": {
        "widget_type": "ComboBox", "choices": list(RECIPES), "label": "prompt recipe",
        "tooltip": "How an object's prompt on the next frame is made from its mask on this one:\n"
                   + "\n".join(describe_recipe(name) for name in RECIPES),
    },
    "min_score": {"min": 0.0, "max": 1.0, "step": 0.05, "label": "min pred. IoU",
                  "tooltip": "Reject a mask whose predicted IoU (SAM's own estimate) is lower."},
    "min_stability": {
        "min": 0.0, "max": 1.0, "step": 0.05, "label": "min stability",
        "tooltip": "Reject a mask that changes this much when the logit threshold moves by "
                   f"+-{_QC_TIP.stability_offset:g} (stability score).",
    },
    "max_area_change": {
        "min": 1.0, "max": 100.0, "step": 0.1, "label": "max area change \u00d7",
        "tooltip": "Reject a mask whose area is more than this many times (or less than 1/this of) "
                   "the object's area on the previous frame.",
    },
    "search_frames": {
        "min": 0, "max": 100_000, "label": "search frames K",
        "tooltip": "Frames a lost object is searched for around its predicted position before it is given up "
                   "(0: it ends where it is lost). Along z an object always ends where it is lost.",
    },
    "divisions": {
        "label": "", "text": "detect divisions",
        "tooltip": "Time-lapse, forward: a cell whose mask splits in two (or halves) becomes two daughters "
                   "with new ids, their mother recorded (the Trajectories layer draws the lineage).",
    },
    "lenient": {
        "label": "", "text": "lenient: keep the best mask unless empty or on another object",
        "tooltip": "Ignore SAM's predicted IoU, the stability score and area jumps (the thresholds above); "
                   "a mask is rejected only when it is empty or lies mostly on another object. For objects "
                   "lost at once (natural images, a model unsure of its masks); costs ID switches where "
                   "objects touch.",
    },
}


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
        self.form = settings_form(TrackFormSettings(), FORM_FIELDS)
        self.form.native.setContentsMargins(12, 0, 0, 0)
        recipes = self.form.recipe.native
        for i, name in enumerate(RECIPES):
            recipes.setItemData(i, describe_recipe(name), Qt.ItemDataRole.ToolTipRole)  # one tip per recipe
        self.form.lenient.changed.connect(self._on_lenient)
        self.settings_area = self.form.native
        # the Qt widgets, for code and tests that drive them as the keyboard and mouse do
        self.recipe_box = recipes
        self.min_score_box = self.form.min_score.native
        self.min_stability_box = self.form.min_stability.native
        self.max_area_box = self.form.max_area_change.native
        self.search_box = self.form.search_frames.native
        self.divisions_check = self.form.divisions.native
        self.lenient_check = self.form.lenient.native
        outer.addWidget(self.settings_area)
        self.settings_area.setVisible(False)
        self.reset()

    def _fold(self, shown: bool) -> None:
        self.settings_area.setVisible(shown)
        self.settings_button.setArrowType(Qt.ArrowType.DownArrow if shown else Qt.ArrowType.RightArrow)

    def reset(self) -> None:
        """The engine's defaults (QC thresholds of the axis)."""
        defaults = TrackFormSettings.for_axis(self.along_z)
        for field in dataclasses.fields(defaults):
            getattr(self.form, field.name).value = getattr(defaults, field.name)
        self.form.search_frames.enabled = self.form.divisions.enabled = not self.along_z

    def _on_lenient(self, lenient: bool) -> None:
        for name in ("min_score", "min_stability", "max_area_change"):
            getattr(self.form, name).enabled = not lenient

    def set_axis(self, along_z: bool) -> None:
        """Track through z (True) or time; the area limit follows the axis unless the user set one."""
        before, after = DEFAULT_QC[int(self.along_z)].max_area_change, DEFAULT_QC[int(along_z)].max_area_change
        self.along_z = bool(along_z)
        self.form.search_frames.enabled = self.form.divisions.enabled = not along_z
        if abs(self.form.max_area_change.value - before) < 1e-9:
            self.form.max_area_change.value = after

    def values(self) -> dict:
        """The engine's keyword arguments: ``recipe``, ``qc`` (and ``search_frames`` and
        ``divisions`` in time)."""
        chosen = form_settings(self.form, TrackFormSettings)
        if chosen.lenient:
            qc = LENIENT
        else:
            qc = dataclasses.replace(
                DEFAULT_QC[int(self.along_z)],
                min_score=chosen.min_score,
                min_stability=chosen.min_stability,
                max_area_change=chosen.max_area_change,
            )
        out = {"recipe": chosen.recipe, "qc": qc}
        if not self.along_z:
            out["search_frames"] = chosen.search_frames
            out["divisions"] = chosen.divisions
        return out
