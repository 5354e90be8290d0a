"""The one idiom for long work in the engine: a progress callback, a stop check, one :class:`Cancelled`.

Long work (embedding, segment everything, text search, tiled work) takes
``progress(done, total)`` and ``should_stop()`` callbacks; when ``should_stop``
answers True it raises :class:`Cancelled` at the next safe point (between encoder
blocks, point batches, tiles, crops), keeping nothing half-written. Work that
yields results as it goes (tracking, training, batch labeling) is a generator or
takes a per-item callback: stopping is not asking for the next item, and what
was yielded is kept. The plugin runs either in a napari worker and catches
:class:`Cancelled` alone.
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
