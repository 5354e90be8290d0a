"""The one idiom for long work in the engine: a progress callback, a stop check, one :class:`Cancelled`.

Long work takes ``progress(done, total)`` (or a per-item form of it) and
``should_stop()`` callbacks; when ``should_stop`` answers True it raises
:class:`Cancelled` at the next safe point, keeping nothing half-written:
embedding (between encoder blocks), segment everything (point batches, tiles),
the text search (batches of crops), tracking (before every frame; what was
yielded stays valid), training (before every step) and batch labeling (after
every image; images done are kept). Work that yields results as it goes
(tracking, training) is a generator that also takes ``should_stop``. The plugin
runs it in a napari worker and catches :class:`Cancelled` alone.
"""

from __future__ import annotations

from collections.abc import Callable

#: ``progress(done, total)``: called as work advances (``total`` may change as it becomes known).
Progress = Callable[[int, int], None]
#: ``should_stop()``: asked at safe points; True stops the work with :class:`Cancelled`.
ShouldStop = Callable[[], bool]

__all__ = ["Cancelled", "Progress", "ShouldStop", "check_stop"]


class Cancelled(RuntimeError):
    """Long work was asked to stop (``should_stop`` answered True, or ``cancel()`` was called)."""


def check_stop(should_stop: ShouldStop | None, what: str) -> None:
    """Raise :class:`Cancelled` ("``what`` was cancelled") if ``should_stop`` says so."""
    if should_stop is not None and should_stop():
        raise Cancelled(f"{what} was cancelled")
