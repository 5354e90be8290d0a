"""Building SAM models by name, with or without weights."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from types import MappingProxyType
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..device import resolve_device, resolve_dtype
from .image_encoder import ImageEncoderViT
from .mask_decoder import MaskDecoder
from .prompt_encoder import PromptEncoder
from .sam import Sam
from .tiny_vit import TinyViT
from .transformer import TwoWayTransformer

if TYPE_CHECKING:
    from ..checkpoints import CheckpointInfo


@dataclass(frozen=True)
class SamConfig:
    """Geometry of a SAM model. The prompt encoder and decoder are the same for all."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256


@dataclass(frozen=True)
class TinyViTConfig:
    """Geometry of a MobileSAM-style model: a TinyViT image encoder (see
    :class:`~src_core.model.tiny_vit.TinyViT`) with SAM's prompt encoder and decoder.
    The defaults are MobileSAM's vit_t."""

    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    image_size: int = 1024
    prompt_embed_dim: int = 256
    # TinyViT's tokens end at 1/16 of the input, like SAM's 16-pixel patches
    patch_size: int = 16


MODEL_CONFIGS: Mapping[str, SamConfig | TinyViTConfig] = MappingProxyType(
    {
        "vit_h": SamConfig(1280, 32, 16, (7, 15, 23, 31)),
        "vit_l": SamConfig(1024, 24, 16, (5, 11, 17, 23)),
        "vit_b": SamConfig(768, 12, 12, (2, 5, 8, 11)),
        # napari-sam's own small model (trained by the project, shipped in the
        # package): SAM's 16-pixel patches at a 512-pixel input (32 x 32 tokens:
        # trained at 256 px first, whose 16 x 16 tokens left object edges coarse), at
        # a small fraction of vit_b's cost. Checkpoints of the 256-px version still load, at
        # their own size (config_for_weights).
        "vit_tiny": SamConfig(192, 6, 3, (2, 5), image_size=512, patch_size=16, window_size=8),
        # MobileSAM (and micro-sam's vit_t_* fine-tunes of it): TinyViT-5M at 1024 px
        "vit_t": TinyViTConfig(),
    }
)


def _image_encoder(config: SamConfig | TinyViTConfig) -> nn.Module:
    if isinstance(config, TinyViTConfig):
        return TinyViT(
            img_size=config.image_size,
            embed_dims=config.embed_dims,
            depths=config.depths,
            num_heads=config.num_heads,
            window_sizes=config.window_sizes,
            out_chans=config.prompt_embed_dim,
        )
    return ImageEncoderViT(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.encoder_embed_dim,
        depth=config.encoder_depth,
        num_heads=config.encoder_num_heads,
        mlp_ratio=4.0,
        out_chans=config.prompt_embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        window_size=config.window_size,
        global_attn_indexes=config.encoder_global_attn_indexes,
    )


def build_sam_from_config(config: SamConfig | TinyViTConfig) -> Sam:
    """A SAM model with freshly initialized (untrained) weights, in eval mode."""
    embedding_size = config.image_size // config.patch_size
    dim = config.prompt_embed_dim
    sam = Sam(
        image_encoder=_image_encoder(config),
        prompt_encoder=PromptEncoder(
            embed_dim=dim,
            image_embedding_size=(embedding_size, embedding_size),
            input_image_size=(config.image_size, config.image_size),
            mask_in_chans=16,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=2, embedding_dim=dim, mlp_dim=2048, num_heads=8),
            transformer_dim=dim,
            iou_head_depth=3,
            iou_head_hidden_dim=256,
        ),
    )
    return sam.eval()


# Top-level modules of micro-sam's instance-segmentation decoder (torch_em's UNETR
# without its encoder): what its ``*_decoder`` files and ``"decoder_state"`` hold.
_MICROSAM_DECODER_PARTS = frozenset(
    {"decoder", "base", "out_conv", "deconv_out", "decoder_head", "deconv1", "deconv2", "deconv3", "deconv4"}
)


def is_microsam_decoder(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """Whether ``state_dict`` is micro-sam's instance-segmentation decoder alone."""
    parts = {k.split(".")[0] for k in state_dict}
    return bool(parts) and parts <= _MICROSAM_DECODER_PARTS and "decoder_head" in parts


def _tiny_vit_geometry(state_dict: Mapping[str, torch.Tensor]) -> tuple[tuple[int, ...], tuple[int, ...]] | None:
    """(stage widths, stage depths) of a TinyViT image encoder in ``state_dict``, else None."""
    if "image_encoder.patch_embed.seq.0.c.weight" not in state_dict:
        return None
    widths, depths = [], []
    for stage in range(8):
        prefix = f"image_encoder.layers.{stage}.blocks."
        blocks = {k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)}
        if not blocks:
            break
        depths.append(len(blocks))
        first = state_dict.get(f"{prefix}0.conv1.c.weight", state_dict.get(f"{prefix}0.attn.norm.weight"))
        widths.append(int(first.shape[1] if first is not None and first.ndim == 4 else
                          first.shape[0] if first is not None else 0))
    return tuple(widths), tuple(depths)


def describe_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What a state dict holds, in words (its image encoder's kind and geometry)."""
    if is_microsam_decoder(state_dict):
        return (
            "micro-sam's instance-segmentation decoder only (a '*_decoder' file: UNETR decoder "
            "layers, no SAM image encoder, prompt encoder or mask decoder)"
        )
    if any(k.startswith("image_encoder.trunk.") for k in state_dict):
        return "a SAM 2 model (a Hiera image encoder): load it with build_sam2"
    tiny = _tiny_vit_geometry(state_dict)
    if tiny is not None:
        found = infer_model_type(state_dict)
        named = f" (model type {found!r})" if found else ""
        return f"MobileSAM's TinyViT image encoder{named}, stages {tiny[0]} wide and {tiny[1]} blocks deep"
    pos = state_dict.get("image_encoder.pos_embed")
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    if pos is None:
        sample = sorted(state_dict)[:3]
        return f"no SAM image encoder ({len(state_dict)} tensors, e.g. {sample})"
    return f"a ViT image encoder {pos.shape[-1]} wide and {depth} blocks deep"


def infer_model_type(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """The model type (a key of :data:`MODEL_CONFIGS`) whose geometry matches
    ``state_dict``, or None."""
    tiny = _tiny_vit_geometry(state_dict)
    if tiny is not None:
        for name, config in MODEL_CONFIGS.items():
            if isinstance(config, TinyViTConfig) and tiny == (config.embed_dims, config.depths):
                return name
        return None
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is None:
        return None
    depth = len({k.split(".")[2] for k in state_dict if k.startswith("image_encoder.blocks.")})
    for name, config in MODEL_CONFIGS.items():
        if (
            isinstance(config, SamConfig)
            and pos.shape[-1] == config.encoder_embed_dim
            and depth == config.encoder_depth
        ):
            return name
    return None


def config_for_weights(config: SamConfig, state_dict: Mapping[str, torch.Tensor]) -> SamConfig:
    """``config`` at the input size ``state_dict`` was trained at.

    The input size of a SAM model is fixed by its weights: the absolute position
    embedding holds one vector per patch of the input. A checkpoint trained at
    another size than its registry entry's (napari-sam's built-in vit_tiny was
    256 px before it became 512, and fine-tuned copies of it keep 256) is built at
    its own size instead of failing to load.
    """
    pos = state_dict.get("image_encoder.pos_embed")
    if pos is None or pos.ndim != 4 or pos.shape[1] != pos.shape[2]:
        return config
    size = int(pos.shape[1]) * config.patch_size
    return config if size == config.image_size else replace(config, image_size=size)


def resize_position_tables(
    state_dict: Mapping[str, torch.Tensor], config: SamConfig
) -> dict[str, torch.Tensor]:
    """``state_dict`` with its image encoder's position tables resized to ``config``'s
    input size, to continue training a model at another resolution.

    The absolute position embedding (one vector per patch) is resized bicubically,
    and the relative position tables of the global-attention blocks (``2 * grid - 1``
    offsets) linearly; windowed blocks keep theirs (the window size is fixed).
    Everything else is returned as it is.
    """
    grid = config.image_size // config.patch_size
    out = dict(state_dict)
    pos = out.get("image_encoder.pos_embed")
    if pos is None:
        raise ValueError("no SAM image encoder in this state dict ('image_encoder.pos_embed' is missing)")
    if pos.shape[1:3] != (grid, grid):
        resized = torch.nn.functional.interpolate(
            pos.permute(0, 3, 1, 2).float(), size=(grid, grid), mode="bicubic", align_corners=False
        )
        out["image_encoder.pos_embed"] = resized.permute(0, 2, 3, 1).to(pos.dtype).contiguous()
    for index in config.encoder_global_attn_indexes:
        for axis in ("h", "w"):
            key = f"image_encoder.blocks.{index}.attn.rel_pos_{axis}"
            table = out.get(key)
            if table is not None and table.shape[0] != 2 * grid - 1:
                resized = torch.nn.functional.interpolate(
                    table.T[None].float(), size=2 * grid - 1, mode="linear", align_corners=False
                )
                out[key] = resized[0].T.to(table.dtype).contiguous()
    return out


def load_weights(sam: Sam, state_dict: Mapping[str, torch.Tensor], model_type: str, source: str) -> None:
    """Load ``state_dict`` strictly, explaining mismatches in terms of model types."""
    own = sam.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if missing or unexpected or wrong_shape:
        found = infer_model_type(state_dict)
        hint = f"it holds {describe_state_dict(state_dict)}"
        if found is not None and found != model_type:
            hint += f"; its keys match model type {found!r}: use model_type={found!r}"
        details = []
        if missing:
            details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} keys with other shapes (e.g. {wrong_shape[:3]})")
        raise ValueError(
            f"checkpoint {source} does not fit a {model_type!r} SAM model: {hint}; "
            + "; ".join(details)
        )
    sam.load_state_dict(state_dict, strict=True)


def build_sam(
    model_type: str = "vit_b",
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    *,
    download: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Sam:
    """Build a SAM model with weights, ready for inference.

    Parameters
    ----------
    model_type : str
        "vit_b", "vit_l" or "vit_h" ("default" means "vit_h", as in Meta's package),
        "vit_t" (MobileSAM), a microscopy model of micro-sam ("vit_b_lm",
        "vit_t_em_organelles", ...: see ``src_core.checkpoints.MICROSCOPY_CHECKPOINTS``),
        "vit_tiny" (napari-sam's small built-in model), or "auto" to read it from
        ``checkpoint``.
    checkpoint : path, state dict or None
        A local checkpoint file (published or fine-tuned, in Meta's, MobileSAM's or
        micro-sam's layout), an already loaded state dict, or None for the published
        file of ``model_type`` from the cache (downloaded, verified, if missing and
        ``download`` is True); for "vit_tiny", the file that ships in the package.
        A local file that is a published one (by its xxh128) must be named by its own
        model type (or "auto"); a file of micro-sam's instance-segmentation decoder
        alone is refused.
    device : str or torch.device or None
        None or "auto" picks cuda > mps > cpu.
    dtype : str or torch.dtype or None
        Precision of the image encoder: None/"float32", "bfloat16", or "auto" (bfloat16
        where the hardware runs it natively). The decoder always runs in float32.
    download : bool
        Allow downloading the official checkpoint when ``checkpoint`` is None.
    progress : callable, optional
        ``progress(done_bytes, total_bytes)`` during a download.

    Returns
    -------
    Sam
        The model in eval mode on ``device``.
    """
    from ..checkpoints import (
        identify_checkpoint,
        load_state_dict,
        resolve_checkpoint,
        sam_checkpoints,
    )

    registry = sam_checkpoints()
    model_type = "vit_h" if model_type == "default" else model_type
    if model_type == "auto" and checkpoint is None:
        raise ValueError("model_type='auto' needs a checkpoint to read the model type from")
    if model_type not in MODEL_CONFIGS and model_type not in registry and model_type != "auto":
        known = sorted({*MODEL_CONFIGS, *registry})
        raise ValueError(f"unknown model type {model_type!r}: expected one of {known} or 'auto'")
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    weights_id = None
    if isinstance(checkpoint, Mapping):
        state_dict, source = checkpoint, "(state dict)"
    else:
        path = resolve_checkpoint(
            "vit_b" if model_type == "auto" else model_type, checkpoint, download=download, progress=progress
        )
        source = str(path)
        published = identify_checkpoint(path) if checkpoint is not None else registry.get(model_type)
        if checkpoint is not None and published is not None:
            if model_type not in ("auto", published.name):
                raise ValueError(
                    f"checkpoint {source} is {_published_as(published)}, not {model_type!r}: "
                    f"use model_type={published.name!r} (or 'auto')"
                )
            model_type = published.name
        state_dict = load_state_dict(path)
    if is_microsam_decoder(state_dict):
        raise ValueError(
            f"checkpoint {source} is not a SAM model: it holds {describe_state_dict(state_dict)}. "
            "Load the model file it belongs with (for vit_b_lm_decoder, vit_b_lm); napari-sam "
            "does not run micro-sam's decoder yet"
        )
    if model_type == "auto":
        model_type = infer_model_type(state_dict)
        if model_type is None:
            raise ValueError(
                f"checkpoint {source} is not a known SAM model: it holds "
                f"{describe_state_dict(state_dict)}"
            )
    architecture = registry[model_type].model_type if model_type in registry else model_type
    if not isinstance(checkpoint, Mapping):
        weights_id = _weights_id(model_type, path, published)
    sam = build_sam_from_config(config_for_weights(MODEL_CONFIGS[architecture], state_dict))
    label = model_type if architecture == model_type else f"{model_type} ({architecture})"
    load_weights(sam, state_dict, label, source)
    # names these weights for caches of their outputs (embeddings); None: don't cache
    sam.weights_id = weights_id
    sam.to(torch_device)
    sam.set_encoder_dtype(torch_dtype)
    return sam.eval()


def _published_as(info: CheckpointInfo) -> str:
    """"micro-sam's vit_b_lm (light microscopy ...)" for a registry entry."""
    who = {"microscopy": "micro-sam's ", "small": "MobileSAM's ", "meta": "Meta's "}.get(info.group, "")
    return f"{who}{info.name} ({info.summary})" if info.summary else f"{who}{info.name}"


def _weights_id(model_type: str, path: os.PathLike, published: CheckpointInfo | None) -> str:
    """A cheap identity of a checkpoint file: the published checksum for a registry
    file that has one, else the file's absolute path, size and modification time."""
    import hashlib

    checksum = published.checksum if published is not None else None
    if checksum is not None:
        kind, digest = checksum
        return f"{published.name}-{kind}-{digest[:16]}"
    stat = os.stat(path)
    token = f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"
    return f"{model_type}-file-{hashlib.sha256(token.encode()).hexdigest()[:16]}"


def _registry_builder(model_type: str) -> Callable[..., Sam]:
    def build(checkpoint: str | os.PathLike | None = None) -> Sam:
        if checkpoint is None:
            return build_sam_from_config(MODEL_CONFIGS[model_type])
        return build_sam(model_type, checkpoint, device="cpu")

    build.__doc__ = (
        f"Build a {model_type} SAM on the CPU like Meta's registry: untrained weights when "
        "checkpoint is None, else loaded from the file."
    )
    return build


sam_model_registry: Mapping[str, Callable[..., Sam]] = MappingProxyType(
    {
        "default": _registry_builder("vit_h"),
        "vit_h": _registry_builder("vit_h"),
        "vit_l": _registry_builder("vit_l"),
        "vit_b": _registry_builder("vit_b"),
        "vit_t": _registry_builder("vit_t"),  # as MobileSAM's registry names it
    }
)
