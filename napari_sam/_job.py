"""The one long-work idiom of the plugin's panels: a Run button, Cancel, progress.

Every panel that runs long work (segment everything, text, track, fine-tune) is a
:class:`JobPanel`. Its ``run`` checks its inputs, makes a napari worker (with
``ignore_errors=True``: errors reach the session as notifications), connects what the
result means to it, and hands it to :meth:`JobPanel.start_job`. The work reports
through :meth:`JobPanel.report` (any thread) and stops when
:meth:`JobPanel.should_stop` says so; the engine's functions take both as their
``progress`` and ``should_stop`` arguments and raise ``src_core.jobs.Cancelled``.
The base keeps the buttons, the panel's bar and napari's activity bar in step,
and says in the status line when a job ended without a result because it was
cancelled.
"""

from __future__ import annotations

import threading

from napari.utils import progress
from napari.utils.notifications import show_warning
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QHBoxLayout, QProgressBar, QPushButton, QWidget


class JobPanel(QWidget):
    """A panel of the dock widget that runs one job at a time in a worker.

    Class attributes a panel sets: ``job_name`` (napari's activity bar, the
    "cancelling ..." status) and ``cancelled_message`` (the status when a job ends
    cancelled; None: the panel's result handler says it).

    Hooks, all on the UI thread: :meth:`on_progress` (default: both bars),
    :meth:`on_cancel` (stop what ``should_stop`` cannot reach, e.g. a generator's
    batch), :meth:`on_finished` (after every job, with or without a result).
    """

    job_name = "Job"
    cancelled_message: str | None = "Cancelled; nothing changed."
    progressed = Signal(int, int)  # (done, total), emitted by report() from the worker

    def __init__(self, session) -> None:
        super().__init__()
        self.session = session
        self._stop = threading.Event()
        self._progress: progress | None = None
        self.running = False
        self.progressed.connect(self.on_progress)

    # -- building ------------------------------------------------------------------------

    def make_job_row(self, run_text: str, *extra: QWidget) -> QHBoxLayout:
        """The row of ``run_button``, ``cancel_button``, ``extra`` widgets and ``progress_bar``."""
        self.run_button = QPushButton(run_text)
        self.run_button.clicked.connect(self.run)
        self.cancel_button = QPushButton("Cancel")
        self.cancel_button.clicked.connect(self.cancel)
        self.cancel_button.setEnabled(False)
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1)
        self.progress_bar.setValue(0)
        row = QHBoxLayout()
        for widget in (self.run_button, self.cancel_button, *extra):
            row.addWidget(widget)
        row.addWidget(self.progress_bar, 1)
        return row

    def run(self) -> None:  # pragma: no cover - every panel defines it
        raise NotImplementedError

    # -- checks before a run ---------------------------------------------------------------

    def session_ready(self, *, model: bool = True, layers: bool = True) -> bool:
        """The checks every run starts with, each a warning naming what to do: no other
        job running, an image chosen, a model loaded, the image's SAM layers there
        (made again when one was removed)."""
        session, name = self.session, self.job_name
        if not session.idle:
            show_warning("Busy: wait for the current job to finish (or cancel it).")
            return False
        if session.image_layer is None:
            show_warning(f"{name}: add or choose an image layer first.")
            return False
        if model and session.predictor is None:
            show_warning(f"{name}: load a model first ('Load model').")
            return False
        if layers and not session.layers:  # a SAM layer was removed: make them again
            session.prepare_layers()
            if not session.idle:
                show_warning(f"{name}: preparing the image; press {self.run_button.text()} again when it is ready.")
                return False
        return True

    # -- the job ---------------------------------------------------------------------------

    def should_stop(self) -> bool:
        """True once Cancel was pressed (read by the work, in its thread)."""
        return self._stop.is_set()

    def report(self, done: int, total: int) -> None:
        """Progress from the work (any thread): carried to the UI thread by ``progressed``."""
        self.progressed.emit(int(done), int(total))

    def start_job(self, worker, status: str, *, total: int = 0) -> None:
        """Run ``worker`` through the session; ``total`` 0 shows a busy bar until the first report."""
        self._stop.clear()
        worker.finished.connect(self._job_finished)
        self._progress = progress(total=total, desc=self.job_name)
        self.progress_bar.setRange(0, total)
        self.progress_bar.setValue(0)
        self.run_button.setEnabled(False)
        self.cancel_button.setEnabled(True)
        self.running = True
        self.session.set_status(status)
        self.session.run_job(worker)

    def result_arrived(self) -> None:
        """Called first by a result handler: the job is done, a late Cancel changes nothing."""
        self._stop.clear()

    def cancel(self) -> None:
        """Ask the running job to stop (at its next check); nothing when none runs."""
        if not self.running:
            return
        self._stop.set()
        self.on_cancel()
        self.session.set_status(f"cancelling {self.job_name.lower()} ...")

    def on_cancel(self) -> None:
        """Stop parts of the work that do not ask ``should_stop`` (default: nothing)."""

    def on_progress(self, done: int, total: int) -> None:
        """Show progress (UI thread): the panel's bar and napari's activity bar."""
        if total > 0:
            scale = max(1, total // 1_000_000)  # bytes of a download would overflow the bar's int
            self.progress_bar.setRange(0, total // scale)
            self.progress_bar.setValue(done // scale)
        bar = self._progress  # napari's progress may process events: the job can end meanwhile
        if bar is not None and total > 0:
            bar.total = total
            if self._progress is bar:
                bar.update(done - bar.n)

    def on_finished(self) -> None:
        """After every job (default: nothing)."""

    def _job_finished(self) -> None:
        if self._stop.is_set():  # no result came (cancelled, or aborted): say so
            self._stop.clear()
            if self.cancelled_message:
                self.session.set_status(self.cancelled_message)
        self.running = False
        if self._progress is not None:
            self._progress.close()
            self._progress = None
        self.progress_bar.setRange(0, max(self.progress_bar.maximum(), 1))
        self.run_button.setEnabled(True)
        self.cancel_button.setEnabled(False)
        self.on_finished()
