"""Measure propagation on synthetic ground-truth videos: J, ID switches, MOTA, IDF1.

Run: ``python scripts/eval_tracking.py [--scenes crossing,reentry] [--recipes full,box]
[--checkpoint PATH --model-type vit_tiny] [--key point|box|mask] [--lenient]``

Every scene of :mod:`src_core.synthetic.videos` is tracked from prompts made
from its ground truth on frame 0 (``--key``), once per prompt recipe, with the
deterministic stand-in segmenter (:mod:`src_core.propagate.standin`): that
measures the propagation logic independently of any weights. With
``--checkpoint`` the real model runs the same scenes end to end too (only
meaningful with trained weights; ``--random-weights`` runs it untrained, for
plumbing and timing).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from src_core.propagate import LENIENT, RECIPES, TrackingWriter, evaluate, propagate  # noqa: E402
from src_core.propagate.standin import StandInSegmenter  # noqa: E402
from src_core.synthetic.videos import SCENES, make_scene  # noqa: E402


def run(scene, segmenter, recipe: str, key: str, qc=None) -> dict:
    labels = np.zeros(scene.shape, np.int32)
    counts: dict[str, int] = {}
    start = time.perf_counter()
    with TrackingWriter(labels) as writer:
        for result in propagate(scene, segmenter, scene.prompts(0, key), recipe=recipe, qc=qc,
                                divisions=scene.name == "cells"):
            writer.write(result)
            for obj in result.objects.values():
                counts[obj.status] = counts.get(obj.status, 0) + 1
    seconds = time.perf_counter() - start
    scores = evaluate((scene.labels(t) for t in range(len(scene))), labels)
    return {"scores": scores, "fps": len(scene) / seconds, "counts": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenes", default=",".join(SCENES), help=f"comma-separated, from {', '.join(SCENES)}")
    parser.add_argument("--recipes", default=",".join(RECIPES), help=f"comma-separated, from {', '.join(RECIPES)}")
    parser.add_argument("--key", default="mask", choices=["mask", "box", "point"], help="prompt kind on frame 0")
    parser.add_argument("--size", type=int, default=128, help="frame side in pixels")
    parser.add_argument("--seeds", type=int, default=1, help="stand-in noise seeds to average over")
    parser.add_argument("--checkpoint", help="also run the real model with these weights")
    parser.add_argument("--model-type", default="vit_tiny")
    parser.add_argument("--random-weights", action="store_true", help="run the real model untrained (plumbing)")
    parser.add_argument("--lenient", action="store_true",
                        help="also run every recipe with the lenient QC (LENIENT), to measure what it costs")
    args = parser.parse_args()

    scenes = [make_scene(name, size=args.size) for name in args.scenes.split(",")]
    recipes = args.recipes.split(",")
    segmenters = [(f"stand-in s{seed}", lambda scene, seed=seed: StandInSegmenter(scene.labels_for_image, seed=seed))
                  for seed in range(args.seeds)]
    if args.checkpoint or args.random_weights:
        import torch

        from src_core.model.build import MODEL_CONFIGS, build_sam, build_sam_from_config
        from src_core.predictor import SamPredictor

        torch.manual_seed(0)
        model = (build_sam(args.model_type, args.checkpoint) if args.checkpoint
                 else build_sam_from_config(MODEL_CONFIGS[args.model_type]))
        predictor = SamPredictor(model)
        segmenters.append((args.model_type, lambda scene: predictor))

    print(f"{'scene':10s} {'segmenter':12s} {'recipe':17s} {'J':>6s} {'IDsw':>4s} {'MOTA':>6s} {'IDF1':>6s} "
          f"{'FN':>4s} {'FP':>4s} {'fps':>6s}  statuses")
    summary: dict[str, list[float]] = {}
    for scene in scenes:
        for seg_name, make in segmenters:
            for recipe, qc in [(r, q) for r in recipes for q in ([None, LENIENT] if args.lenient else [None])]:
                out = run(scene, make(scene), recipe, args.key, qc)
                recipe = recipe if qc is None else f"{recipe}/lenient"
                s = out["scores"]
                counts = " ".join(f"{k}:{v}" for k, v in sorted(out["counts"].items()))
                print(f"{scene.name:10s} {seg_name:12s} {recipe:17s} {s.mean_j:6.3f} {s.id_switches:4d} "
                      f"{s.mota:6.3f} {s.idf1:6.3f} {s.misses:4d} {s.false_positives:4d} {out['fps']:6.1f}  {counts}")
                if seg_name.startswith("stand-in"):
                    summary.setdefault(recipe, []).append(s.mean_j + s.mota + s.idf1 - 0.05 * s.id_switches)
    if summary:
        print("\nstand-in, mean of (J + MOTA + IDF1 - 0.05 IDsw) / 3 over scenes and seeds:")
        for recipe, values in sorted(summary.items(), key=lambda kv: -np.mean(kv[1])):
            print(f"  {recipe:17s} {np.mean(values) / 3:.4f}")


if __name__ == "__main__":
    main()
