"""What the engine asks of a predictor: :class:`Predictor`, the shape of ``SamPredictor``.

The engine's loops (propagation, the interactive segmenter) take anything with this
shape: Meta's and our :class:`~src_core.predictor.SamPredictor`, the test and
measurement stand-ins (:class:`~src_core.propagate.standin.StandInSegmenter`). No
torch here, so the loops can be typed without loading it.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

__all__ = ["Predictor", "is_sam2_model"]


@runtime_checkable
class Predictor(Protocol):
    """``set_image`` once per image, then ``predict`` per prompt, as ``SamPredictor``.

    ``predict`` takes ``point_coords`` (N, 2) x, y pixels, ``point_labels`` (N,),
    ``box`` (4,) x0, y0, x1, y1, ``mask_input`` (1, L, L) logits, ``multimask_output``
    and ``return_logits``, and returns ``(masks, scores, low_res_logits)``: (C, H, W),
    (C,) and (C, L, L).
    """

    def set_image(self, image: np.ndarray, image_format: str = "RGB", **kwargs: Any) -> None: ...

    def predict(
        self,
        point_coords: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box: np.ndarray | None = None,
        mask_input: np.ndarray | None = None,
        multimask_output: bool = True,
        return_logits: bool = False,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...


def is_sam2_model(model: Any) -> bool:
    """Whether ``model`` is a SAM 2 model (its prompt encoder is ``sam_prompt_encoder``):
    the tools written for SAM 1's internals (segment everything, tiles, fine-tuning)
    check this to refuse it or fall back."""
    return hasattr(model, "sam_prompt_encoder")
