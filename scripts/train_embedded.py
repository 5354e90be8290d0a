"""Train napari-sam's embedded default model (vit_tiny) from scratch on procedural scenes.

Run by hand (CI only runs a short training test):

    .venv/bin/python scripts/train_embedded.py --out build/embedded/vit_tiny.pth
    .venv/bin/python scripts/train_embedded.py --out build/embedded/vit_tiny.pth --resume
    .venv/bin/python scripts/train_embedded.py --out build/embedded/vit_tiny.pth --export
    .venv/bin/python scripts/train_embedded.py --out build/more.pth --init-from-shipped --steps 1000

``--init-from-shipped`` starts from the weights in the package (a fresh optimizer and
schedule), to train the built-in model further in a later session.

``--export`` writes the float16 copy that ships in the package
(src_core/weights/sam_vit_tiny.pth). The shipped file came from the runs below, with
the seeds and recipe of this file (README, "The built-in model", records their times).
Runs 1-3 predate the loss on the first round; ``--last-round-only`` repeats them:

    .venv/bin/python scripts/train_embedded.py --steps 2000     # then --resume --steps 2500
    .venv/bin/python scripts/train_embedded.py --out build/embedded2/vit_tiny.pth \
        --init-from-shipped --steps 5400 --warmup 150 --bank 6000
    .venv/bin/python scripts/train_embedded.py --out build/embedded3/vit_tiny.pth \
        --init-from-shipped --steps 5600 --warmup 150 --bank 6000 --lr 4e-4 \
        --jitter 1.0 2.5 --jitter-probability 0.3
    .venv/bin/python scripts/train_embedded.py --out build/embedded4/vit_tiny.pth \
        --init-from-shipped --steps 4400 --warmup 150 --bank 6000 --lr 4e-4 \
        --jitter 1.0 2.5 --jitter-probability 0.3 --scene-seed 1126 --correction-rounds 3
    .venv/bin/python scripts/train_embedded.py --out build/embedded5/vit_tiny.pth \
        --init-from-shipped --steps 4000 --warmup 150 --bank 6000 --lr 4e-4 \
        --jitter 1.0 2.5 --jitter-probability 0.3 --scene-seed 1127 --correction-rounds 3 \
        --closeups 0.2

Runs 1-5 were at a 256-px input (add ``--image-size 256`` to repeat them). Run 6 moved
the model to 512 px, the shipped weights' position tables resized by
``resize_position_tables``:

    .venv/bin/python scripts/train_embedded.py --out build/embedded6/vit_tiny.pth \
        --init-from-shipped --image-size 512 --steps 1800 --warmup 100 --bank 3000 \
        --lr 4e-4 --jitter 0.6 2.0 --jitter-probability 0.4 --scene-seed 1128 \
        --correction-rounds 3 --closeups 0.2

Run 7 continued at 512 px on new scenes; planned for 2,000 steps, it was stopped
after the checkpoint of step 1,800 (both decays done) and that checkpoint exported:

    .venv/bin/python scripts/train_embedded.py --out build/embedded7/vit_tiny.pth \
        --init-from-shipped --image-size 512 --steps 2000 --warmup 100 --bank 3000 \
        --lr 4e-4 --jitter 0.6 2.0 --jitter-probability 0.4 --scene-seed 1129 \
        --correction-rounds 3 --closeups 0.2

Run 8 continued at 512 px on new scenes, a tenth of them stained tissue (``--tissue``:
brightfield H&E and immunohistochemistry, nuclei as the objects); planned for 1,900
steps, it was stopped after the checkpoint of step 1,700 (both decays done) and that
checkpoint exported:

    .venv/bin/python scripts/train_embedded.py --out build/embedded8/vit_tiny.pth \
        --init-from-shipped --image-size 512 --steps 1900 --warmup 100 --bank 3000 \
        --lr 4e-4 --jitter 0.6 2.0 --jitter-probability 0.4 --scene-seed 1130 \
        --correction-rounds 3 --closeups 0.2 --tissue 0.1

Runs 9 and 10 ran on an NVIDIA H200 (PyTorch 2.11, CUDA 13, float32 with TF32) within
a 15-minute loan, so their steps were set by a time budget (``--minutes``; it printed
1,152 and 591, which ``--steps`` repeats). Run 9, then its export, then run 10 from it:

    python scripts/train_embedded.py --out /tmp/run9/vit_tiny.pth --init-from-shipped \
        --image-size 512 --minutes 6.7 --warmup 100 --bank 6000 --lr 4e-4 --jitter 0.6 2.0 \
        --jitter-probability 0.4 --scene-seed 1131 --correction-rounds 3 --closeups 0.2 \
        --tissue 0.1 --threads 16 --device cuda
    python scripts/train_embedded.py --out /tmp/run9/vit_tiny.pth --image-size 512 --export
    python scripts/train_embedded.py --out /tmp/run10/vit_tiny.pth --init-from-shipped \
        --image-size 512 --minutes 3.6 --warmup 60 --bank 6000 --lr 2e-4 --jitter 0.6 2.0 \
        --jitter-probability 0.4 --scene-seed 1132 --correction-rounds 3 --closeups 0.2 \
        --tissue 0.1 --threads 16 --device cuda --fp16-copy vit_tiny_fp16.pth

Run 11 ran on two cores again (an Intel Xeon with AMX), from run 10 at its learning
rate, on new scenes; its 100-minute budget chose 1,284 steps (4.4 s a step), and its
float16 copy is the shipped file:

    .venv/bin/python scripts/train_embedded.py --out build/embedded12/vit_tiny.pth \
        --init-from-shipped --image-size 512 --minutes 100 --warmup 60 --bank 3000 \
        --lr 2e-4 --jitter 0.6 2.0 --jitter-probability 0.4 --scene-seed 1134 \
        --correction-rounds 3 --closeups 0.2 --tissue 0.1 --threads 2 \
        --fp16-copy build/embedded12/vit_tiny_fp16.pth

(Scene seed 1133 went to a run whose weights were lost with its session; it never
shipped.)

Runs 1-11 prepared their batches in the training process. On a GPU, add
``--data-workers N`` (N a few less than the cores; ``--threads`` then 2-4) and a
larger ``--batch-size``: DataLoader workers prepare the batches ahead and the
corrective clicks are drawn on the GPU (a different random stream from runs 1-11,
seeded by the seed and step).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_core.model.build import MODEL_CONFIGS, build_sam_from_config, resize_position_tables  # noqa: E402
from src_core.train.data import SceneBank, SceneStream  # noqa: E402
from src_core.train.trainer import TrainConfig, Trainer, save_model  # noqa: E402

SHIPPED = ROOT / "src_core" / "weights" / "sam_vit_tiny.pth"

# From scratch, so no layer-wise decay (it protects pre-trained early layers) and a
# light drop path; the rest is the seed's recipe (AdamW, warm-up 250, step decay,
# weight decay 0.1).
CONFIG = TrainConfig(
    steps=2000,
    batch_size=6,
    masks_per_image=12,
    lr=8e-4,
    weight_decay=0.1,
    warmup=250,
    layer_decay=1.0,
    drop_path=0.1,
    correction_rounds=2,
    box_probability=0.5,
    seed=20261125,
    bf16=False,  # autocast bfloat16 training ran 9x slower than float32 on the 2-core EPYC (no AMX)
    checkpoint_every=100,
)
SCENE_SEED = 1125


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "embedded" / "vit_tiny.pth")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--export", action="store_true", help="write the shipped float16 file and stop")
    parser.add_argument("--steps", type=int, default=CONFIG.steps)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--init-from-shipped", action="store_true", help="start from the packaged weights")
    parser.add_argument("--bank", type=int, default=0,
                        help="make this many scenes up front (in --threads processes) and draw from "
                        "them, x8 flips/rotations, instead of making a new scene per sample")
    parser.add_argument("--warmup", type=int, default=CONFIG.warmup)
    parser.add_argument("--lr", type=float, default=CONFIG.lr, help="peak learning rate")
    parser.add_argument("--jitter", type=float, nargs=2, metavar=("LO", "HI"), default=None,
                        help="large-scale jitter: rescale images by a factor in [LO, HI]")
    parser.add_argument("--jitter-probability", type=float, default=1.0,
                        help="share of samples that are jittered (the rest keep their scale)")
    parser.add_argument("--scene-seed", type=int, default=SCENE_SEED,
                        help="seed of the procedural scenes (a new one gives scenes earlier runs never saw; "
                        "scripts/eval_embedded.py holds out 777 and 778)")
    parser.add_argument("--closeups", type=float, default=0.0,
                        help="share of scenes that are close-ups (objects 2-4x larger, filling the "
                        "frame or cut by its edge); 0 keeps the scene stream of runs 1-4")
    parser.add_argument("--tissue", type=float, default=0.0,
                        help="share of scenes that are stained tissue (brightfield H&E or "
                        "immunohistochemistry, nuclei as the objects); 0 keeps the stream of runs 1-7")
    parser.add_argument("--correction-rounds", type=int, default=CONFIG.correction_rounds,
                        help="most corrective-click rounds simulated per sample (0 to this, at random)")
    parser.add_argument("--last-round-only", action="store_true",
                        help="loss on the last round only (runs 1-3), not also on the first prompt's")
    parser.add_argument("--image-size", type=int, default=MODEL_CONFIGS["vit_tiny"].image_size,
                        help="model input size; --init-from-shipped resizes the shipped weights' "
                        "position tables to it")
    parser.add_argument("--device", default="cpu", help="cpu (the shipped model's), cuda, mps or auto")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on GPUs, slow on CPUs without AMX)")
    parser.add_argument("--data-workers", type=int, default=None,
                        help="prepare each step's batch in this many DataLoader worker processes, "
                        "corrective clicks on the device (for GPUs; a batch then depends only on "
                        "the seed and the step); default: in the training process, the stream of runs 1-11")
    parser.add_argument("--loss-size", type=int, default=None,
                        help="compute the losses at this side (the input size divided by a whole number, "
                        "e.g. 256 for the 512-px input); default: the input size")
    parser.add_argument("--batch-size", type=int, default=CONFIG.batch_size, help="images per step")
    parser.add_argument("--minutes", type=float, default=None,
                        help="time budget (overrides --steps): time steps 10-40, then set the "
                        "steps so that training ends within this many minutes (the schedule's "
                        "decays move with it; the number is printed, to repeat the run with --steps)")
    parser.add_argument("--fp16-copy", type=Path, default=None,
                        help="at every checkpoint and at the end, also write the float16 copy that "
                        "ships (what --export writes) to this path")
    args = parser.parse_args()
    if args.scene_seed in (777, 778):
        parser.error("scene seeds 777 and 778 are the held-out evaluation scenes")
    if not 0.0 <= args.closeups <= 1.0:
        parser.error("--closeups is a share of the scenes, 0 to 1")
    if not 0.0 <= args.tissue <= 1.0:
        parser.error("--tissue is a share of the scenes, 0 to 1")
    if args.correction_rounds < 0:
        parser.error("--correction-rounds must be 0 or more")
    if args.minutes is not None and (args.minutes <= 0 or args.resume):
        parser.error("--minutes must be positive, and cannot be combined with --resume")
    if args.minutes is not None and args.warmup <= 40:
        parser.error("--minutes times steps 10-40, inside the warm-up: give --warmup above 40")
    if args.data_workers is not None and args.data_workers < 0:
        parser.error("--data-workers must be 0 or more")
    if args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if args.loss_size is not None and (args.loss_size < 1 or args.image_size % args.loss_size):
        parser.error(f"--loss-size must divide --image-size ({args.image_size}), e.g. {args.image_size // 2}")
    if args.image_size % 16 or args.image_size < 64:
        parser.error("--image-size must be a multiple of 16, at least 64")
    torch.set_num_threads(args.threads)
    config = replace(MODEL_CONFIGS["vit_tiny"], image_size=args.image_size)
    model = build_sam_from_config(config)
    if args.export:
        from src_core.checkpoints import load_state_dict

        model.load_state_dict(load_state_dict(args.out), strict=True)
        save_model(model, SHIPPED, dtype=torch.float16)
        print(f"wrote {SHIPPED} ({SHIPPED.stat().st_size / 1e6:.1f} MB)")
        return 0
    CONFIG.steps, CONFIG.warmup, CONFIG.bf16, CONFIG.lr = args.steps, args.warmup, args.bf16, args.lr
    CONFIG.jitter = tuple(args.jitter) if args.jitter else None
    CONFIG.jitter_probability = args.jitter_probability
    CONFIG.correction_rounds = args.correction_rounds
    CONFIG.supervise_first_round = not args.last_round_only
    CONFIG.data_workers, CONFIG.batch_size = args.data_workers, args.batch_size
    CONFIG.loss_size = args.loss_size
    if args.init_from_shipped:
        from src_core.checkpoints import load_state_dict

        shipped = {k: v.float() for k, v in load_state_dict(SHIPPED).items()}
        model.load_state_dict(resize_position_tables(shipped, config), strict=True)
    if args.bank:
        start = time.time()
        source = SceneBank(args.scene_seed, args.bank, size=256, workers=args.threads, closeups=args.closeups,
                           tissue=args.tissue)
        print(f"made {args.bank} scenes in {time.time() - start:.0f} s", flush=True)
    else:
        source = SceneStream(args.scene_seed, size=256, closeups=args.closeups, tissue=args.tissue)
    from src_core.device import resolve_device

    device = resolve_device(None if args.device == "auto" else args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # the float32 parts (losses, upsampling)
        torch.backends.cudnn.allow_tf32 = True
    model.to(device)
    trainer = Trainer(model, source, CONFIG, output=args.out)
    if args.resume:
        trainer.resume()
    start, window = time.time(), []
    timed_from = None
    for record in trainer.run():
        window.append(record["loss"])
        step = record["step"]
        if args.minutes is not None and step == 10:
            timed_from = time.time()
        if args.minutes is not None and step == 40:
            per_step = (time.time() - timed_from) / 30
            left = args.minutes * 60 - (time.time() - start)
            # 5% spare for checkpoints and the slower steps of the schedule's end
            CONFIG.steps = max(41, 40 + int(0.95 * left / per_step))
            print(f"{per_step:.3f} s per step: training for {CONFIG.steps} steps "
                  f"(decays at {int(CONFIG.decay_at[0] * CONFIG.steps)} and "
                  f"{int(CONFIG.decay_at[1] * CONFIG.steps)})", flush=True)
        if args.fp16_copy is not None and (step % CONFIG.checkpoint_every == 0 or step == CONFIG.steps):
            save_model(model, args.fp16_copy, dtype=torch.float16)
        if step % 20 == 0:
            elapsed = time.time() - start
            print(
                f"step {step}/{CONFIG.steps} loss {sum(window) / len(window):.4f} "
                f"iou {record['iou']:.3f} lr {record['lr']:.2e} elapsed {elapsed / 60:.1f} min",
                flush=True,
            )
            window = []
    print(f"done in {(time.time() - start) / 60:.1f} min; model at {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
