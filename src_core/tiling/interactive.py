"""One object at a time in a large image: :class:`~src_core.interactive.ObjectSegmenter`'s
loop on a :class:`~src_core.tiling.TiledPredictor`.

Which planes are tiled is decided by :func:`~src_core.tiling.tiling_plan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..prompts import Prompt
from .predictor import TiledMask, TiledPredictor

__all__ = ["TiledCandidates", "TiledObjectSegmenter"]


@dataclass(frozen=True)
class TiledCandidates:
    """The candidate masks of the current object in a large image.

    ``options`` are SAM's proposals, best scored first (three after a single click,
    else one); ``choice`` is the one shown. ``mask`` is its bounding-box crop at
    ``offset`` (row, column) in the full image; ``masks``/``scores``/``choice``
    mirror :class:`~src_core.interactive.Candidates`.
    """

    options: tuple[TiledMask, ...]
    choice: int = 0

    @property
    def tiled(self) -> TiledMask:
        return self.options[self.choice]

    @property
    def mask(self) -> np.ndarray:
        return self.tiled.mask

    @property
    def offset(self) -> tuple[int, int]:
        return self.tiled.offset

    @property
    def masks(self) -> tuple[np.ndarray, ...]:
        return tuple(option.mask for option in self.options)

    @property
    def scores(self) -> np.ndarray:
        return np.array([option.score for option in self.options])

    @property
    def score(self) -> float:
        return float(self.tiled.score)


class TiledObjectSegmenter:
    """Decode one object from a growing set of prompts in a large image.

    Like :class:`~src_core.interactive.ObjectSegmenter`: a single click asks for
    three masks (the best scored first, :meth:`cycle` shows the others); more points
    on the same object reuse the previous result's window and logits; :meth:`reset`
    forgets them.

    Parameters
    ----------
    tiled : TiledPredictor
        With its image set (``set_image``); tiles are embedded when prompts need them.
    """

    def __init__(self, tiled: TiledPredictor) -> None:
        self.tiled = tiled
        self._prompt: Prompt | None = None
        self._candidates: TiledCandidates | None = None

    @property
    def predictor(self) -> TiledPredictor:
        return self.tiled

    @property
    def candidates(self) -> TiledCandidates | None:
        return self._candidates

    def reset(self) -> None:
        """Forget the current object's prompts, mask and logits."""
        self._prompt = None
        self._candidates = None

    def decode(self, prompt: Prompt) -> TiledCandidates | None:
        """The object for ``prompt``; None when it is empty or has only background points."""
        if prompt.is_empty or (prompt.box is None and not (prompt.labels == 1).any()):
            self.reset()
            return None
        refine = self._prompt is not None and self._candidates is not None and prompt.extends(self._prompt)
        single_click = len(prompt.points) == 1 and prompt.box is None
        options = self.tiled.predict_candidates(
            **prompt.predict_kwargs(),
            multimask_output=single_click and not refine,
            previous=self._candidates.tiled if refine else None,
        )
        self._prompt = prompt
        self._candidates = TiledCandidates(tuple(options))
        return self._candidates

    def cycle(self) -> TiledCandidates | None:
        """Show the next of SAM's candidates (after a single click there are three);
        more points then refine the one shown."""
        if self._candidates is None:
            return None
        current = self._candidates
        self._candidates = TiledCandidates(current.options, (current.choice + 1) % len(current.options))
        return self._candidates
