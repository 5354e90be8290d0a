"""SAM's mask decoder: tokens + image embedding -> mask logits and IoU predictions.

Parameter names match Meta's released checkpoints (``mask_decoder.*``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .common import LayerNorm2d


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (``layers.0`` ... )."""

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        num_layers: int,
        sigmoid_output: bool = False,
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.num_layers = num_layers
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < self.num_layers - 1:
                x = F.relu(x)
        return torch.sigmoid(x) if self.sigmoid_output else x


class MaskDecoder(nn.Module):
    """Predict masks from an image embedding and prompt tokens.

    Parameters
    ----------
    transformer_dim : int
        Channel width of the transformer (256).
    transformer : nn.Module
        The :class:`TwoWayTransformer`.
    num_multimask_outputs : int
        Candidate masks returned in multimask mode (3); one more token is the
        single-mask output.
    iou_head_depth, iou_head_hidden_dim : int
        Geometry of the IoU prediction MLP.
    """

    def __init__(
        self,
        *,
        transformer_dim: int,
        transformer: nn.Module,
        num_multimask_outputs: int = 3,
        activation: type[nn.Module] = nn.GELU,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer_dim = transformer_dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(transformer_dim // 4),
            activation(),
            nn.ConvTranspose2d(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3)
            for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth
        )

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (B, M, 4H, 4W) mask logits and (B, M) IoU predictions.

        ``M`` is 3 with ``multimask_output`` and 1 otherwise. ``image_embeddings`` is
        (1, C, H, W) shared by all B prompts, or (B, C, H, W) one per prompt.
        """
        selected = slice(1, None) if multimask_output else slice(0, 1)
        return self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            mask_slice=selected,
        )

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        mask_slice: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and IoU predictions of the mask tokens in ``mask_slice`` (all by default)."""
        if image_embeddings.shape[0] not in (1, sparse_prompt_embeddings.shape[0]):
            raise ValueError("image_embeddings must have batch 1 or one per prompt")
        _, _, height, width = image_embeddings.shape
        src = image_embeddings + dense_prompt_embeddings
        return self.predict_masks_from_tokens(
            src.flatten(2).transpose(1, 2).contiguous(),
            image_pe.flatten(2).transpose(1, 2).contiguous(),
            sparse_prompt_embeddings,
            (height, width),
            mask_slice,
        )

    def predict_masks_from_tokens(
        self,
        src_tokens: torch.Tensor,
        pos_tokens: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        grid: tuple[int, int],
        mask_slice: slice = slice(None),
        src_with_pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` on channels-last tokens.

        ``src_tokens`` is the image embedding plus the dense prompt, (1 or B, H*W, C);
        ``pos_tokens`` the positional encoding (1, H*W, C); ``src_with_pos`` their sum,
        if already known (a predictor caches all three for prompts without a mask).
        """
        batch = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat(
            [output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse_prompt_embeddings], dim=1
        )
        hs, image_tokens = self.transformer.forward_tokens(
            src_tokens, pos_tokens, tokens, keys_with_pe=src_with_pos
        )
        iou_pred = self.iou_prediction_head(hs[:, 0, :])[:, mask_slice]
        token_ids = range(self.num_mask_tokens)[mask_slice]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](hs[:, 1 + i, :]) for i in token_ids], dim=1
        )
        return self._upscale_and_project(image_tokens, hyper_in, *grid), iou_pred

    def _upscale_and_project(
        self, image_tokens: torch.Tensor, hyper_in: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """``output_upscaling`` followed by the product with the hypernetwork outputs.

        Both transposed convolutions are 2x2 with stride 2, i.e. one matrix product per
        input pixel. They run on channels-last tokens, keeping each pixel's 2x2 (then
        4x4) children next to it, and the pixels are put in image order only once, on
        the few mask channels at the end. Same arithmetic as the Conv/LayerNorm2d stack.
        """
        conv1, norm, act1, conv2, act2 = self.output_upscaling
        batch, masks = hyper_in.shape[:2]
        c1 = conv1.weight.shape[1]
        c2 = conv2.weight.shape[1]
        # (in, out, kh, kw) -> (in, kh * kw * out): children (kh, kw) outer, channels inner
        w1 = conv1.weight.permute(0, 2, 3, 1).reshape(conv1.weight.shape[0], 4 * c1)
        w2 = conv2.weight.permute(0, 2, 3, 1).reshape(c1, 4 * c2)
        tokens = image_tokens.reshape(batch * height * width, -1)
        x = torch.addmm(conv1.bias.repeat(4), tokens, w1).view(batch, height * width * 4, c1)
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        x = torch.addmm(conv2.bias.repeat(4), x.view(-1, c1), w2)
        x = act2(x.view(batch, height * width * 16, c2))
        logits = x @ hyper_in.transpose(1, 2)  # (B, H*W*[a,b]*[c,d], M)
        logits = logits.view(batch, height, width, 2, 2, 2, 2, masks)
        # output row = 4h + 2a + c, column = 4w + 2b + d
        logits = logits.permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, masks, 4 * height, 4 * width)
