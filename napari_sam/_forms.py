"""Settings forms built with magicgui, the way napari plugins build their forms.

Each panel's settings live in a frozen dataclass (the one home of their defaults);
:func:`settings_form` makes a magicgui :class:`~magicgui.widgets.Container` with
one widget per field, starting at the dataclass's values, and
:func:`form_settings` reads it back into the dataclass. Qt code is kept for what
magicgui does not do here: the folding "Settings" header, layer choosers that
order their layers, the run/cancel rows.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from magicgui.widgets import Container, create_widget

S = TypeVar("S")


def settings_form(settings: Any, fields: Mapping[str, Mapping[str, Any]]) -> Container:
    """A form with one widget per entry of ``fields``, valued from ``settings``.

    ``fields`` maps a dataclass field to its widget's options: ``label`` and
    ``tooltip``, ``widget_type`` (magicgui's name, e.g. "ComboBox"), and whatever
    that widget takes (``min``, ``max``, ``step``, ``choices``, ``text``, ...).
    The widget's ``name`` is the field's, so ``form.<field>`` finds it.
    """
    widgets = []
    for name, spec in fields.items():
        options = dict(spec)
        label = options.pop("label", name.replace("_", " "))
        tooltip = options.pop("tooltip", None)
        widget_type = options.pop("widget_type", None)
        widget = create_widget(
            value=getattr(settings, name), name=name, label=label, widget_type=widget_type, options=options
        )
        widget.tooltip = tooltip
        widgets.append(widget)
    form = Container(widgets=widgets)
    form.margins = (0, 0, 0, 0)
    return form


def form_settings(form: Container, cls: type[S], **overrides: Any) -> S:
    """The ``cls`` dataclass from the form's values (fields the form lacks keep their
    defaults), with ``overrides`` on top."""
    names = {field.name for field in dataclasses.fields(cls)}
    values = {widget.name: widget.value for widget in form if widget.name in names}
    return cls(**{**values, **overrides})
