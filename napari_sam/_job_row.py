"""The row every long-running panel shares: a run button, Cancel, and a progress bar."""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget


def job_row(run_text: str, run: Callable[[], None], cancel: Callable[[], None],
            *extra: QWidget) -> tuple[QHBoxLayout, QPushButton, QPushButton, QProgressBar]:
    """(layout, run button, cancel button, progress bar); ``extra`` widgets go after Cancel.

    Cancel starts disabled; the bar starts empty.
    """
    run_button = QPushButton(run_text)
    run_button.clicked.connect(run)
    cancel_button = QPushButton("Cancel")
    cancel_button.clicked.connect(cancel)
    cancel_button.setEnabled(False)
    bar = QProgressBar()
    bar.setRange(0, 1)
    bar.setValue(0)
    row = QHBoxLayout()
    for widget in (run_button, cancel_button, *extra):
        row.addWidget(widget)
    row.addWidget(bar, 1)
    return row, run_button, cancel_button, bar
