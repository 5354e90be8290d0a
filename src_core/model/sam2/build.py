"""Build a SAM 2.1 model with its official weights (Meta's ``build_sam2``, without hydra).

The official files (``sam2.1_hiera_{tiny,small,base_plus,large}.pt``) hold
``{"model": state_dict}``. Meta publishes no checksum for them, so a file is
verified by structure: its keys and shapes must fit the named size exactly, and a
file of another model (SAM 1, SAM 2.0, another SAM 2.1 size) is refused with a
message saying what it holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ...device import resolve_device, resolve_dtype
from .sam2_base import Sam2Model, build_sam2_model
from .sam2_config import sam2_size_name

__all__ = ["build_sam2", "describe_sam2_state_dict", "infer_sam2_size"]

# Meta's image predictor builds the model with these decoder settings
# (build_sam2's ``apply_postprocessing``): an unstable single mask falls back
# to the best of the three multimask outputs.
_POSTPROCESSING = dict(
    dynamic_multimask_via_stability=True,
    dynamic_multimask_stability_delta=0.05,
    dynamic_multimask_stability_thresh=0.98,
)
# (trunk width, Hiera blocks) of each size's image encoder
_GEOMETRY = {(96, 12): "tiny", (96, 16): "small", (112, 24): "base_plus", (144, 48): "large"}
# present in SAM 2.1 checkpoints, absent from SAM 2.0 ones
_SAM21_ONLY = ("no_obj_embed_spatial", "obj_ptr_tpos_proj.weight")


def infer_sam2_size(state_dict: Mapping[str, torch.Tensor]) -> str | None:
    """``"tiny"``, ``"small"``, ``"base_plus"`` or ``"large"`` from a SAM 2 state
    dict's image encoder (trunk width and block count), else None."""
    pos = state_dict.get("image_encoder.trunk.pos_embed")
    if pos is None or pos.dim() < 2:
        return None
    blocks = {
        k.split(".")[3] for k in state_dict if k.startswith("image_encoder.trunk.blocks.")
    }
    return _GEOMETRY.get((int(pos.shape[1]), len(blocks)))


def describe_sam2_state_dict(state_dict: Mapping[str, torch.Tensor]) -> str:
    """What a state dict holds, in words: "a SAM 2.1 tiny model", "a SAM 1 vit_b
    model", "a SAM 2.0 (not 2.1) large model", ... ."""
    if "image_encoder.trunk.pos_embed" in state_dict:
        size = infer_sam2_size(state_dict)
        version = "2.1" if all(k in state_dict for k in _SAM21_ONLY) else "2.0 (not 2.1)"
        what = f"{size} model" if size else "model of an unknown size"
        return f"a SAM {version} {what}"
    if "image_encoder.pos_embed" in state_dict:
        from ..build import infer_model_type

        found = infer_model_type(state_dict)
        return f"a SAM 1 {found} model" if found else "a SAM 1 model of an unknown size"
    sample = sorted(state_dict)[:3]
    return f"no SAM image encoder ({len(state_dict)} tensors, e.g. {sample})"


def _load_strictly(model: Sam2Model, state_dict: Mapping[str, torch.Tensor], size: str, source: str) -> None:
    """Load ``state_dict`` strictly, saying what the file holds when it does not fit."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    wrong_shape = sorted(
        k for k in set(own) & set(state_dict) if tuple(own[k].shape) != tuple(state_dict[k].shape)
    )
    if not (missing or unexpected or wrong_shape):
        model.load_state_dict(state_dict, strict=True)
        return
    held = describe_sam2_state_dict(state_dict)
    details = []
    if missing:
        details.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
    if unexpected:
        details.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
    if wrong_shape:
        details.append(f"{len(wrong_shape)} keys with other shapes (e.g. {wrong_shape[:3]})")
    hint = ""
    found = infer_sam2_size(state_dict) if "image_encoder.trunk.pos_embed" in state_dict else None
    if found is not None and found != size and all(k in state_dict for k in _SAM21_ONLY):
        hint = f" Use model_type='sam2.1_hiera_{found}'."
    elif held.startswith("a SAM 1"):
        hint = " Load it with build_sam (SAM 1) instead."
    raise ValueError(
        f"checkpoint {source} does not fit a SAM 2.1 {size} model: it holds {held}; "
        + "; ".join(details) + "." + hint
    )


def build_sam2(
    model_type: str = "sam2.1_hiera_large",
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    download: bool = True,
    *,
    progress: Callable[[int, int], None] | None = None,
    **overrides: Any,
) -> Sam2Model:
    """A SAM 2.1 model with weights, in eval mode, as Meta's ``build_sam2`` makes it
    for the image predictor.

    Parameters
    ----------
    model_type : str
        ``"sam2.1_hiera_tiny"``, ``"sam2.1_hiera_small"``, ``"sam2.1_hiera_base_plus"``
        or ``"sam2.1_hiera_large"`` (also ``"tiny"`` ... or Meta's config names such as
        ``"sam2.1_hiera_t.yaml"``).
    checkpoint : path, state dict or None
        A local checkpoint file (``{"model": state_dict}`` or a bare state dict), an
        already loaded state dict, or None for the official file from the cache
        (downloaded if missing and ``download`` is True).
    device : str or torch.device or None
        None or "auto" picks cuda > mps > cpu.
    dtype : str or torch.dtype or None
        None or "float32": float32. "bfloat16": the predictors run the model under
        bfloat16 autocast, the image encoder's trunk with bfloat16 weights (see
        ``Sam2Model.set_compute_dtype``); masks and logits come out float32.
        "auto": bfloat16 where the hardware runs it natively (AMX or AVX512-BF16
        CPUs, recent GPUs), else float32.
    download : bool
        Allow downloading the official checkpoint when ``checkpoint`` is None.
    progress : callable, optional
        ``progress(done_bytes, total_bytes)`` during a download.
    **overrides
        :class:`~.sam2_config.Sam2ModelConfig` settings on top of the image
        predictor's (the video predictor's builder adds its own).

    Raises
    ------
    ValueError
        Unknown size, unsupported dtype, or weights that do not fit the size exactly
        (the message says what the file holds: a SAM 1 model, another SAM 2.1 size,
        a SAM 2.0 model).
    FileNotFoundError
        ``checkpoint`` does not exist, or the official file is not cached and
        ``download`` is False.
    """
    from ...checkpoints import load_state_dict, resolve_checkpoint
    from ..build import _weights_id

    size = sam2_size_name(model_type)
    name = f"sam2.1_hiera_{size}"
    torch_device = resolve_device(device)
    compute_dtype = resolve_dtype(dtype, torch_device)
    if isinstance(checkpoint, Mapping):
        state_dict, source, weights_id = checkpoint, "(state dict)", None
    else:
        path = resolve_checkpoint(name, checkpoint, download=download, progress=progress)
        state_dict, source = load_state_dict(path), str(path)
        weights_id = _weights_id(name, path, None)  # Meta publishes no checksum
    model = build_sam2_model(size, **{**_POSTPROCESSING, **overrides})
    _load_strictly(model, state_dict, size, source)
    model.weights_id = weights_id  # names these weights for caches of their outputs
    return model.to(torch_device).set_compute_dtype(compute_dtype).eval()
