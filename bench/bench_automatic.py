"""Segment everything: napari-sam's generator against Meta's ``SamAutomaticMaskGenerator``.

Both run on the same random weights (the real geometry of ``--model``), shaped as in
``tests/test_automatic.py`` so that every point gives blob masks around it (raw
random weights give pixel noise that NMS collapses to one mask, which would time
nothing real). Prints the image encoder time, ``generate`` with the embedding
included, the mask generation alone (``generate`` minus its encoder calls), the
ratios reference / ours, and how well the two outputs agree.

Run: ``python bench/bench_automatic.py [--model vit_b] [--points-per-side 16]``.
``--points-per-side 32`` is the generator's default (1024 prompts, minutes here).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import best_time, machine, use_reference


class EncoderClock:
    """Wraps a predictor's ``set_image`` to add up the time spent in it."""

    def __init__(self, predictor) -> None:
        self.seconds = 0.0
        self._set_image = predictor.set_image
        predictor.set_image = self

    def __call__(self, *args, **kwargs):
        start = time.perf_counter()
        try:
            return self._set_image(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def timed_generate(generator, image) -> tuple[list, float, float]:
    """Records, total seconds, seconds spent encoding."""
    clock = EncoderClock(generator.predictor)
    start = time.perf_counter()
    records = generator.generate(image)
    total = time.perf_counter() - start
    generator.predictor.set_image = clock._set_image
    return records, total, clock.seconds


def agreement(ref_records, our_records) -> str:
    from scipy.optimize import linear_sum_assignment
    from segment_anything.utils.amg import rle_to_mask

    def masks(records):
        return np.stack([rle_to_mask(r["segmentation"]).ravel() for r in records]).astype(np.float32)

    if not ref_records or not our_records:
        return f"reference {len(ref_records)} masks, ours {len(our_records)}"
    a, b = masks(ref_records), masks(our_records)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    iou = np.where(union > 0, inter / np.maximum(union, 1), 1.0)
    rows, cols = linear_sum_assignment(-iou)
    matched = int((iou[rows, cols] >= 0.99).sum())
    return (
        f"reference {len(ref_records)} masks, ours {len(our_records)}; "
        f"{matched} matched one-to-one at mask IoU >= 0.99 (min IoU {iou[rows, cols].min():.4f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--points-per-side", type=int, default=16)
    parser.add_argument("--height", type=int, default=768)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--crop-n-layers", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1, help="generate runs per side (best kept)")
    args = parser.parse_args()

    use_reference()
    from parity_helpers import astronaut_image, randomize_
    from segment_anything import SamAutomaticMaskGenerator as RefGenerator
    from segment_anything import SamPredictor as RefPredictor
    from segment_anything import sam_model_registry
    from test_automatic import shape_weights_for_blobs_

    from src_core import SamPredictor, build_sam
    from src_core.automatic import SamAutomaticMaskGenerator

    torch.manual_seed(0)
    reference = randomize_(sam_model_registry[args.model](), seed=0).eval()
    shape_weights_for_blobs_(reference)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.pth"
        torch.save(reference.state_dict(), path)
        ours = build_sam(args.model, checkpoint=path, device="cpu")
    image = astronaut_image(args.height, args.width)
    settings = dict(
        points_per_side=args.points_per_side,
        crop_n_layers=args.crop_n_layers,
        output_mode="uncompressed_rle",  # the reference's cheapest; ours too
    )

    print(f"machine: {machine()}")
    print(
        f"model: {args.model} geometry, random weights shaped for blob masks; image "
        f"{args.height}x{args.width} uint8 RGB; points_per_side={args.points_per_side}, "
        f"crop_n_layers={args.crop_n_layers}, other settings the defaults"
    )
    with torch.inference_mode():
        ref_pred, our_pred = RefPredictor(reference), SamPredictor(ours)
        enc_ref = best_time(lambda: ref_pred.set_image(image), 1)
        enc_ours = best_time(lambda: our_pred.set_image(image), 1)
        del ref_pred, our_pred
    runs = {}
    for name, generator in (
        ("reference", RefGenerator(reference, **settings)),
        ("ours", SamAutomaticMaskGenerator(ours, **settings)),
    ):
        best = None
        for _ in range(args.repeats):
            result = timed_generate(generator, image)
            if best is None or result[1] < best[1]:
                best = result
        runs[name] = best
    (ref_records, ref_total, ref_enc), (our_records, our_total, our_enc) = runs["reference"], runs["ours"]
    rows = [
        ("image encoder (set_image)", enc_ref, enc_ours),
        ("generate(), embedding included", ref_total, our_total),
        ("generate() minus its encoder calls", ref_total - ref_enc, our_total - our_enc),
    ]
    print(f"{'':38s} {'reference':>10s} {'ours':>10s} {'ratio':>7s}")
    for label, ref_s, our_s in rows:
        print(f"{label:38s} {ref_s:9.2f}s {our_s:9.2f}s {ref_s / our_s:6.2f}x")
    print(agreement(ref_records, our_records))


if __name__ == "__main__":
    main()
