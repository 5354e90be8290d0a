"""SAM 2's mask decoder and its two-way transformer.

Parameter names match the SAM 2.1 checkpoints (``sam_mask_decoder.*``). Compared
with SAM 1's decoder, SAM 2's adds high-resolution backbone features to the
upscaling path (``conv_s0``/``conv_s1`` project them, applied once per image by
the image encoder's caller), an object-score token and head, a sigmoid on the IoU
head, and, for single-mask output, a fallback to the best multimask output when
the single mask is unstable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..common import LayerNorm2d
from ..mask_decoder import MLP
from ..transformer import TwoWayTransformer as Sam1TwoWayTransformer

__all__ = ["MaskDecoder", "TwoWayTransformer", "high_res_tiles"]


class TwoWayTransformer(Sam1TwoWayTransformer):
    """SAM 1's two-way transformer with SAM 2's names for the token MLP.

    Same arithmetic (SAM 2's attention dropout is zero here); only each block's
    MLP is an :class:`MLP` (``mlp.layers.0``/``mlp.layers.1``) instead of SAM 1's
    ``mlp.lin1``/``mlp.lin2``.
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        if activation is not nn.ReLU:
            raise ValueError("SAM 2's two-way transformer uses ReLU in its MLPs")
        super().__init__(
            depth, embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate
        )
        for layer in self.layers:
            # replacing keeps the submodule's place, so state-dict order is Meta's too
            layer.mlp = MLP(embedding_dim, mlp_dim, embedding_dim, 2)


def high_res_tiles(
    feat_s0: torch.Tensor, feat_s1: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reorder projected high-resolution features to the decoder's upscaling layout.

    The decoder upscales channels-last, each embedding pixel followed by its 2x2
    (then 4x4) children. A predictor may cache the result per image.

    Parameters
    ----------
    feat_s0 : tensor
        (B, C/8, 4H, 4W), the stride-4 features after ``conv_s0``.
    feat_s1 : tensor
        (B, C/4, 2H, 2W), the stride-8 features after ``conv_s1``.

    Returns
    -------
    tuple of tensors
        (B, H*W*16, C/8) and (B, H*W*4, C/4).
    """
    b, c0, h4, w4 = feat_s0.shape
    h, w = h4 // 4, w4 // 4
    # row 4y + 2a + c, column 4x + 2b + d -> (y, x, a, b, c, d)
    s0 = feat_s0.reshape(b, c0, h, 2, 2, w, 2, 2).permute(0, 2, 5, 3, 6, 4, 7, 1)
    c1 = feat_s1.shape[1]
    # row 2y + a, column 2x + b -> (y, x, a, b)
    s1 = feat_s1.reshape(b, c1, h, 2, w, 2).permute(0, 2, 4, 3, 5, 1)
    return s0.reshape(b, h * w * 16, c0), s1.reshape(b, h * w * 4, c1)


class MaskDecoder(nn.Module):
    """Predict masks, IoU, output tokens and object scores from image and prompts.

    Parameters
    ----------
    transformer_dim : int
        Channel width of the transformer (256).
    transformer : nn.Module
        The :class:`TwoWayTransformer`.
    num_multimask_outputs : int
        Candidate masks in multimask mode (3); one more token gives the single mask.
    iou_head_depth, iou_head_hidden_dim : int
        Geometry of the IoU prediction MLP.
    use_high_res_features : bool
        Add stride-4 and stride-8 backbone features while upscaling.
    iou_prediction_use_sigmoid : bool
        IoU predictions in [0, 1].
    dynamic_multimask_via_stability : bool
        In eval single-mask mode, return the best multimask output when the single
        mask's stability score is under ``dynamic_multimask_stability_thresh``; the
        score is the area above ``+delta`` over the area above ``-delta``.
    pred_obj_scores, pred_obj_scores_mlp : bool
        Predict an object-presence logit from an extra token, with a linear layer
        or a 3-layer MLP; without, the logit is a constant 10.
    use_multimask_token_for_obj_ptr : bool
        In multimask mode return the three multimask tokens (else the single one).
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
        use_high_res_features: bool = False,
        iou_prediction_use_sigmoid: bool = False,
        dynamic_multimask_via_stability: bool = False,
        dynamic_multimask_stability_delta: float = 0.05,
        dynamic_multimask_stability_thresh: float = 0.98,
        pred_obj_scores: bool = False,
        pred_obj_scores_mlp: bool = False,
        use_multimask_token_for_obj_ptr: bool = False,
    ) -> None:
        super().__init__()
        dim = transformer_dim
        self.transformer_dim = dim
        self.transformer = transformer
        self.num_multimask_outputs = num_multimask_outputs
        self.iou_token = nn.Embedding(1, dim)
        self.num_mask_tokens = num_multimask_outputs + 1
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, dim)
        self.pred_obj_scores = pred_obj_scores
        if pred_obj_scores:
            self.obj_score_token = nn.Embedding(1, dim)
        self.use_multimask_token_for_obj_ptr = use_multimask_token_for_obj_ptr
        self.output_upscaling = nn.Sequential(
            nn.ConvTranspose2d(dim, dim // 4, kernel_size=2, stride=2),
            LayerNorm2d(dim // 4),
            activation(),
            nn.ConvTranspose2d(dim // 4, dim // 8, kernel_size=2, stride=2),
            activation(),
        )
        self.use_high_res_features = use_high_res_features
        if use_high_res_features:
            self.conv_s0 = nn.Conv2d(dim, dim // 8, kernel_size=1)
            self.conv_s1 = nn.Conv2d(dim, dim // 4, kernel_size=1)
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(dim, dim, dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(
            dim,
            iou_head_hidden_dim,
            self.num_mask_tokens,
            iou_head_depth,
            sigmoid_output=iou_prediction_use_sigmoid,
        )
        if pred_obj_scores:
            self.pred_obj_score_head = (
                MLP(dim, dim, 1, 3) if pred_obj_scores_mlp else nn.Linear(dim, 1)
            )
        self.dynamic_multimask_via_stability = dynamic_multimask_via_stability
        self.dynamic_multimask_stability_delta = dynamic_multimask_stability_delta
        self.dynamic_multimask_stability_thresh = dynamic_multimask_stability_thresh

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks and scores for B prompts.

        Parameters
        ----------
        image_embeddings : tensor
            (B, C, H, W), or (1, C, H, W) shared by all prompts with ``repeat_image``.
        image_pe : tensor
            (1, C, H, W) positional encoding (``PromptEncoder.get_dense_pe()``).
        sparse_prompt_embeddings, dense_prompt_embeddings : tensor
            (B, N, C) and (B, C, H, W) from the prompt encoder.
        multimask_output : bool
            Three candidate masks instead of one.
        repeat_image : bool
            Each image embedding serves ``B`` prompts (Meta's repeat-interleave).
        high_res_features : list of tensors, optional
            [(B, C/8, 4H, 4W), (B, C/4, 2H, 2W)] after ``conv_s0``/``conv_s1``; batch 1
            is shared by all prompts. Required with ``use_high_res_features``.

        Returns
        -------
        tuple of tensors
            Mask logits (B, M, 4H, 4W), IoU predictions (B, M), output tokens
            (B, M or 1, C) and object-score logits (B, 1); M is 3 or 1.
        """
        dynamic = (
            not multimask_output and self.dynamic_multimask_via_stability and not self.training
        )
        if multimask_output:
            wanted = slice(1, None)
        else:
            wanted = slice(None) if dynamic else slice(0, 1)
        masks, iou_pred, mask_tokens_out, object_score_logits = self.predict_masks(
            image_embeddings,
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
            repeat_image,
            high_res_features,
            mask_slice=wanted,
        )
        if dynamic:
            masks, iou_pred = self._dynamic_multimask_via_stability(masks, iou_pred)
        else:
            iou_pred = iou_pred[:, wanted]
        # the single-mask token is the object pointer except in multimask mode if so
        # configured (as trained)
        if multimask_output and self.use_multimask_token_for_obj_ptr:
            sam_tokens_out = mask_tokens_out[:, 1:]
        else:
            sam_tokens_out = mask_tokens_out[:, 0:1]
        return masks, iou_pred, sam_tokens_out, object_score_logits

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        repeat_image: bool,
        high_res_features: list[torch.Tensor] | None = None,
        mask_slice: slice = slice(None),
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Masks of the tokens in ``mask_slice``; IoU and tokens of all mask tokens.

        Returns (B, len(mask_slice), 4H, 4W) logits, (B, 4) IoU predictions,
        (B, 4, C) mask tokens and (B, 1) object-score logits.
        """
        batch = sparse_prompt_embeddings.shape[0]
        if repeat_image:
            # one image for all prompts broadcasts without copies; more repeat
            if image_embeddings.shape[0] != 1:
                image_embeddings = image_embeddings.repeat_interleave(batch, dim=0)
        elif image_embeddings.shape[0] != batch:
            raise ValueError("without repeat_image, give one image embedding per prompt")
        if image_pe.shape[0] != 1:
            raise ValueError("image_pe must have batch 1 (PromptEncoder.get_dense_pe())")
        tiles = None
        if self.use_high_res_features:
            if high_res_features is None:
                raise ValueError("this decoder needs high_res_features")
            tiles = high_res_tiles(*high_res_features)
        _, _, height, width = image_embeddings.shape
        src = image_embeddings + dense_prompt_embeddings
        return self.predict_masks_from_tokens(
            src.flatten(2).transpose(1, 2).contiguous(),
            image_pe.flatten(2).transpose(1, 2).contiguous(),
            sparse_prompt_embeddings,
            (height, width),
            tiles,
            mask_slice,
        )

    def predict_masks_from_tokens(
        self,
        src_tokens: torch.Tensor,
        pos_tokens: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        grid: tuple[int, int],
        high_res: tuple[torch.Tensor, torch.Tensor] | None = None,
        mask_slice: slice = slice(None),
        src_with_pos: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`predict_masks` on channels-last tokens, for callers that cache them.

        ``src_tokens`` is the image embedding plus the dense prompt (1 or B, H*W, C),
        ``pos_tokens`` the positional encoding (1, H*W, C), ``src_with_pos`` their sum
        if known, ``high_res`` the output of :func:`high_res_tiles` (batch 1 or B).
        """
        batch = sparse_prompt_embeddings.shape[0]
        weights = [self.iou_token.weight, self.mask_tokens.weight]
        if self.pred_obj_scores:
            weights.insert(0, self.obj_score_token.weight)
        output_tokens = torch.cat(weights, dim=0).unsqueeze(0).expand(batch, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)
        hs, image_tokens = self.transformer.forward_tokens(
            src_tokens, pos_tokens, tokens, keys_with_pe=src_with_pos
        )
        first = int(self.pred_obj_scores)  # the object-score token, if any, comes first
        iou_pred = self.iou_prediction_head(hs[:, first, :])
        mask_tokens_out = hs[:, first + 1 : first + 1 + self.num_mask_tokens, :]
        token_ids = range(self.num_mask_tokens)[mask_slice]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i, :]) for i in token_ids],
            dim=1,
        )
        masks = self._upscale_and_project(image_tokens, hyper_in, *grid, high_res)
        if self.pred_obj_scores:
            object_score_logits = self.pred_obj_score_head(hs[:, 0, :])
        else:
            # sigmoid(10) ~ 1: the object is taken to be present
            object_score_logits = 10.0 * iou_pred.new_ones(batch, 1)
        return masks, iou_pred, mask_tokens_out, object_score_logits

    def _upscale_and_project(
        self,
        image_tokens: torch.Tensor,
        hyper_in: torch.Tensor,
        height: int,
        width: int,
        high_res: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> torch.Tensor:
        """``output_upscaling`` (plus high-res features) then the hypernetwork product.

        As in SAM 1's decoder, the 2x2 stride-2 transposed convolutions are one
        matrix product per input pixel, run channels-last with each pixel's children
        next to it; pixels go to image order only at the end, on the few mask channels.
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
        if high_res is not None:
            x = x + high_res[1]
        x = act1(F.layer_norm(x, (c1,), norm.weight, norm.bias, norm.eps))
        x = torch.addmm(conv2.bias.repeat(4), x.reshape(-1, c1), w2)
        x = x.view(batch, height * width * 16, c2)
        if high_res is not None:
            x = x + high_res[0]
        x = act2(x)
        logits = x @ hyper_in.transpose(1, 2)  # (B, H*W*[a,b]*[c,d], M)
        logits = logits.view(batch, height, width, 2, 2, 2, 2, masks)
        # output row = 4h + 2a + c, column = 4w + 2b + d
        logits = logits.permute(0, 7, 1, 3, 5, 2, 4, 6)
        return logits.reshape(batch, masks, 4 * height, 4 * width)

    def _stability_scores(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """IoU of the masks thresholded at +delta and -delta (1 where both are empty)."""
        mask_logits = mask_logits.flatten(-2)
        delta = self.dynamic_multimask_stability_delta
        inner = torch.sum(mask_logits > delta, dim=-1).float()
        outer = torch.sum(mask_logits > -delta, dim=-1).float()
        return torch.where(outer > 0, inner / outer, 1.0)

    def _dynamic_multimask_via_stability(
        self, all_mask_logits: torch.Tensor, all_iou_scores: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token 0's mask where stable, else the multimask output with the best IoU.

        Keeps a usable single mask for ambiguous single clicks, e.g. while tracking.
        """
        multi_logits = all_mask_logits[:, 1:]
        multi_iou = all_iou_scores[:, 1:]
        best = torch.argmax(multi_iou, dim=-1)
        rows = torch.arange(multi_iou.shape[0], device=all_iou_scores.device)
        best_logits = multi_logits[rows, best].unsqueeze(1)
        best_iou = multi_iou[rows, best].unsqueeze(1)
        single_logits = all_mask_logits[:, 0:1]
        single_iou = all_iou_scores[:, 0:1]
        stable = self._stability_scores(single_logits) >= self.dynamic_multimask_stability_thresh
        masks = torch.where(stable[..., None, None], single_logits, best_logits)
        return masks, torch.where(stable, single_iou, best_iou)
