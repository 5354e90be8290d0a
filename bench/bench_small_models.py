"""Embedding time of the small models against vit_b, on the same machine, in one process.

Run: ``python bench/bench_small_models.py [--repeats 2] [--dtype float32|bfloat16|both]``.
Times ``SamPredictor.set_image`` on one 1024x1024 RGB image (resize, normalize, pad,
encode) for MobileSAM's vit_t (TinyViT-5M at 1024 px; micro-sam's vit_t_lm and
vit_t_em_organelles have the same network), napari-sam's built-in vit_tiny (512 px) and
Meta's vit_b (1024 px; micro-sam's vit_b_* likewise), best of ``--repeats`` after a
warm-up, and one click (``predict`` with one point, multimask) on each. Random
weights: the timings do not depend on them. Prints the CPU kind first.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from _common import best_time, machine

from src_core.model.build import MODEL_CONFIGS, build_sam_from_config
from src_core.predictor import SamPredictor

MODELS = ("vit_t", "vit_tiny", "vit_b")


def parameters(model: torch.nn.Module) -> float:
    return sum(p.numel() for p in model.parameters()) / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "bfloat16", "both"), default="float32")
    args = parser.parse_args()
    dtypes = ("float32", "bfloat16") if args.dtype == "both" else (args.dtype,)

    print(machine())
    image = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    rows = []
    torch.manual_seed(0)
    for name in MODELS:
        model = build_sam_from_config(MODEL_CONFIGS[name])
        for dtype in dtypes:
            model.set_encoder_dtype(getattr(torch, dtype))
            predictor = SamPredictor(model)
            with torch.inference_mode():
                embed = best_time(lambda p=predictor: p.set_image(image), args.repeats)
                click = best_time(
                    lambda p=predictor: p.predict(
                        point_coords=np.array([[512.0, 512.0]]), point_labels=np.array([1]), multimask_output=True
                    ),
                    10,
                )
            rows.append((name, dtype, model.image_encoder.img_size, parameters(model.image_encoder), embed, click))
            print(f"  {name} {dtype}: embedding {embed:.3f} s, click {click * 1000:.0f} ms", flush=True)
        del model

    base = {dtype: next(r[4] for r in rows if r[0] == "vit_b" and r[1] == dtype) for dtype in dtypes}
    print("\n| model | precision | input | encoder parameters | embedding (s) | vs vit_b | one click (ms) |")
    print("|---|---|---|---|---|---|---|")
    for name, dtype, size, params, embed, click in rows:
        print(
            f"| {name} | {dtype} | {size} px | {params:.1f} M | {embed:.3f} | "
            f"{base[dtype] / embed:.1f}x faster | {click * 1000:.0f} |"
        )


if __name__ == "__main__":
    main()
