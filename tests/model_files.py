"""Checkpoint files as their publishers store them, with random weights: shared by the
registry, layout and model-box tests."""

from __future__ import annotations

import torch

from src_core.model.build import MODEL_CONFIGS, build_sam_from_config

MICROSCOPY = [
    "vit_b_lm", "vit_l_lm", "vit_t_lm",
    "vit_b_em_organelles", "vit_l_em_organelles", "vit_t_em_organelles",
    "vit_b_histopathology", "vit_l_histopathology", "vit_h_histopathology",
    "vit_b_medical_imaging",
]

# A few keys of micro-sam's instance-segmentation decoder (torch_em's UNETR without
# its encoder), as its *_decoder files hold them.
DECODER_KEYS = {
    "decoder.blocks.0.block.0.weight": (256, 512, 3, 3),
    "decoder.samplers.0.conv.weight": (256, 512, 1, 1),
    "base.block.0.weight": (512, 768, 3, 3),
    "deconv1.block.0.weight": (256, 768, 3, 3),
    "deconv_out.conv.weight": (64, 64, 1, 1),
    "decoder_head.block.0.weight": (64, 128, 3, 3),
    "out_conv.weight": (3, 64, 1, 1),
    "out_conv.bias": (3,),
}


def random_state(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict of ``architecture``'s exact keys and shapes with seeded random values.

    Each tensor repeats one random row along its first axis (an expanded view), so that
    a vit_h file takes a few MB on disk instead of 2.5 GB, while every key, shape and
    row is still checked when it loads."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in build_sam_from_config(MODEL_CONFIGS[architecture]).state_dict().items()}
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            state[key] = torch.tensor(0)
        elif len(shape) == 0:
            state[key] = torch.randn((), generator=gen)
        else:
            row = torch.randn(shape[1:], generator=gen)
            if key.endswith("running_var"):
                row = row.abs() + 0.5
            state[key] = row.expand(shape)
    return state


def save_in_layout(state: dict[str, torch.Tensor], layout: str, path) -> None:
    if layout == "bare":
        torch.save(state, path)
    elif layout == "combined":
        decoder = {k: torch.zeros(shape) for k, shape in DECODER_KEYS.items()}
        torch.save({"model_state": state, "decoder_state": decoder}, path)
    elif layout == "training":
        torch.save({
            "model_state": {f"sam.{k}": v for k, v in state.items()},
            "optimizer_state": {"state": {}, "param_groups": [{"lr": 1e-5, "params": [0]}]},
            "iteration": 100, "epoch": 3, "best_metric": 0.12, "current_metric": 0.13,
        }, path)
    else:
        raise AssertionError(layout)
