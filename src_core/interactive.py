"""One object at a time: prompts in, candidate masks out, like SAM's interactive demo."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .predictor import SamPredictor
from .prompts import Prompt


@dataclass(frozen=True)
class Candidates:
    """What one decoder call gave for the current object.

    Attributes
    ----------
    masks : (M, H, W) bool
    scores : (M,) predicted IoU
    low_res_logits : (M, 256, 256)
    choice : index of the mask shown (the best score unless the user cycled)
    """

    masks: np.ndarray
    scores: np.ndarray
    low_res_logits: np.ndarray
    choice: int

    @property
    def mask(self) -> np.ndarray:
        return self.masks[self.choice]

    @property
    def score(self) -> float:
        return float(self.scores[self.choice])


class ObjectSegmenter:
    """Decode the object described by a growing set of prompts on the predictor's image.

    The first prompt asks for three candidates (a single click is ambiguous); when
    the user adds points to the same object, the previous chosen low-resolution
    logits are passed back as the mask prompt, as in SAM's own interactive loop.
    :meth:`reset` (on commit or clear) forgets them, so nothing of one object leaks
    into the next.
    """

    def __init__(self, predictor: SamPredictor) -> None:
        self.predictor = predictor
        self._prompt: Prompt | None = None
        self._candidates: Candidates | None = None

    @property
    def candidates(self) -> Candidates | None:
        return self._candidates

    def reset(self) -> None:
        """Forget the current object's prompts, candidates and logits."""
        self._prompt = None
        self._candidates = None

    def decode(self, prompt: Prompt) -> Candidates | None:
        """Candidates for ``prompt`` (None when it is empty)."""
        if prompt.is_empty:
            self.reset()
            return None
        refine = (
            self._prompt is not None and self._candidates is not None and prompt.extends(self._prompt)
        )
        kwargs = prompt.predict_kwargs()
        if refine:
            chosen = self._candidates.low_res_logits[self._candidates.choice]
            masks, scores, logits = self.predictor.predict(
                **kwargs, mask_input=chosen[None], multimask_output=False
            )
        else:
            single_click = len(prompt.points) == 1 and prompt.box is None
            masks, scores, logits = self.predictor.predict(**kwargs, multimask_output=single_click)
        self._prompt = prompt
        masks = np.asarray(masks).astype(bool, copy=False)  # SAM 2.1's predictor returns 0/1 floats
        self._candidates = Candidates(masks, scores, logits, int(np.argmax(scores)))
        return self._candidates

    def cycle(self) -> Candidates | None:
        """Show the next candidate mask (when there are several)."""
        if self._candidates is None:
            return None
        c = self._candidates
        self._candidates = Candidates(
            c.masks, c.scores, c.low_res_logits, (c.choice + 1) % len(c.masks)
        )
        return self._candidates
