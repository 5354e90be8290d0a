"""Image encoder and one-click latency: napari-sam against Meta's reference, same weights.

Run: ``python bench/bench_core.py [--model vit_b] [--repeats 2]``. Prints absolute times
and the ratios reference / ours measured in this one process.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from _common import best_time, machine, use_reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="vit_b", choices=["vit_b", "vit_l", "vit_h"])
    parser.add_argument("--repeats", type=int, default=2, help="encoder runs (best is kept)")
    parser.add_argument("--clicks", type=int, default=20, help="decoder runs (best is kept)")
    parser.add_argument("--size", type=int, default=1024, help="square test image side")
    parser.add_argument("--batch", type=int, default=2,
                        help="also time the bfloat16 encoder on this many planes at once (0: skip)")
    args = parser.parse_args()

    use_reference()
    from parity_helpers import astronaut_image, mask_iou, randomize_
    from segment_anything import SamPredictor as RefPredictor
    from segment_anything import sam_model_registry

    from src_core import SamPredictor, build_sam
    from src_core.device import bfloat16_is_fast, cpu_kind
    from src_core.model.vit_attention import attention_path

    torch.manual_seed(0)
    reference = randomize_(sam_model_registry[args.model](), seed=0).eval()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.pth"
        torch.save(reference.state_dict(), path)
        ours32 = SamPredictor(build_sam(args.model, checkpoint=path, device="cpu"))
        ours16 = SamPredictor(build_sam(args.model, checkpoint=path, device="cpu", dtype="bfloat16"))
    ref = RefPredictor(reference)
    image = astronaut_image(args.size, args.size)
    point = dict(point_coords=np.array([[args.size * 0.45, args.size * 0.3]]), point_labels=np.array([1]))

    print(f"machine: {machine()}")
    print(f"model: {args.model} (random weights), image {args.size}x{args.size} uint8 RGB")
    print(f"bfloat16 native on this CPU: {bfloat16_is_fast(torch.device('cpu'))}; CPU kind: {cpu_kind()}")
    with torch.inference_mode():
        paths = {
            dtype: attention_path(torch.zeros(1, dtype=dtype)) for dtype in (torch.float32, torch.bfloat16)
        }
    print(f"encoder attention path: float32 {paths[torch.float32]!r}, bfloat16 {paths[torch.bfloat16]!r}")
    rows = []
    with torch.inference_mode():
        t_ref = best_time(lambda: ref.set_image(image), args.repeats)
        t_32 = best_time(lambda: ours32.set_image(image), args.repeats)
        t_16 = best_time(lambda: ours16.set_image(image), args.repeats)
        rows += [
            ("encoder, reference float32", t_ref, 1.0),
            ("encoder, ours float32", t_32, t_ref / t_32),
            ("encoder, ours bfloat16", t_16, t_ref / t_16),
        ]
        c_ref = best_time(lambda: ref.predict(**point), args.clicks, warmup=3)
        c_32 = best_time(lambda: ours32.predict(**point), args.clicks, warmup=3)
        rows += [
            ("one click predict(), reference", c_ref, 1.0),
            ("one click predict(), ours", c_32, c_ref / c_32),
        ]
        # the plugin's update after a prompt edit: a second point refining the first
        # object with its previous logits (ObjectSegmenter, as the widget runs it)
        from src_core.interactive import ObjectSegmenter
        from src_core.prompts import Prompt

        segmenter = ObjectSegmenter(ours32)
        first = Prompt(point["point_coords"], point["point_labels"])
        second = Prompt(
            np.vstack([point["point_coords"], [[args.size * 0.6, args.size * 0.5]]]), np.array([1, 0])
        )

        def update():
            segmenter.reset()
            segmenter.decode(first)
            segmenter.decode(second)

        u_32 = best_time(update, args.clicks, warmup=3) / 2
        rows.append(("plugin update (per prompt edit), ours", u_32, c_ref / u_32))
        if args.batch > 1:
            # embedding a stack: planes through the encoder one at a time, or several at once
            model16 = ours16.model
            planes = model16.preprocess(
                torch.as_tensor(image).permute(2, 0, 1)[None].float().expand(args.batch, -1, -1, -1)
            )
            one = best_time(lambda: [model16.encode_image(p[None]) for p in planes], 1)
            batched = best_time(lambda: model16.encode_image(planes), 1)
            rows += [
                (f"stack of {args.batch}: one at a time", one, args.batch / one),
                (f"stack of {args.batch}: batched", batched, args.batch / batched),
            ]
        emb_diff = (ref.features - ours32.features).abs().max().item()
        ref_masks = ref.predict(**point)[0]
        iou32 = min(mask_iou(a, b) for a, b in zip(ref_masks, ours32.predict(**point)[0]))
        iou16 = min(mask_iou(a, b) for a, b in zip(ref_masks, ours16.predict(**point)[0]))

    print(f"{'what':34s} {'seconds':>9s} {'speed-up vs reference':>22s}")
    for name, seconds, ratio in rows:
        unit = " planes/s" if name.startswith("stack") else "x"
        print(f"{name:34s} {seconds:9.3f} {ratio:21.2f}{unit}")
    print(f"check: embedding max |diff| float32 {emb_diff:.2e}; mask IoU vs reference: "
          f"float32 {iou32:.4f}, bfloat16 {iou16:.4f}")


if __name__ == "__main__":
    main()
