"""SAM 2's prompt encoder: SAM 1's, plus box corners given as labelled points.

Parameters and buffers are SAM 1's (``sam_prompt_encoder.*`` in the SAM 2.1
checkpoints). SAM 2's predictors pass a box as two points labelled 2 (top left)
and 3 (bottom right) among the clicks, so those labels add the corner embeddings.
"""

from __future__ import annotations

import torch

from ..prompt_encoder import PromptEncoder as Sam1PromptEncoder

__all__ = ["PromptEncoder"]


class PromptEncoder(Sam1PromptEncoder):
    """:class:`~src_core.model.prompt_encoder.PromptEncoder` reading point labels 2 and 3.

    Point labels: -1 padding, 0 background, 1 foreground, 2 box top-left corner,
    3 box bottom-right corner. Everything else (boxes, masks, dense positional
    encoding) is SAM 1's, parameter for parameter.
    """

    def _embed_points(
        self, points: torch.Tensor, labels: torch.Tensor, pad: bool
    ) -> torch.Tensor:
        embedding = super()._embed_points(points, labels, pad)
        if pad:  # the parent appended a padding point; keep the labels aligned
            labels = torch.cat([labels, labels.new_full((labels.shape[0], 1), -1)], dim=1)
        labels = labels[..., None]
        # adding a zero row elsewhere leaves those tokens bit-for-bit unchanged
        embedding = embedding + (labels == 2) * self.point_embeddings[2].weight
        return embedding + (labels == 3) * self.point_embeddings[3].weight
