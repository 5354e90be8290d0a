"""``napari-sam train``: fine-tune SAM on your own annotations (or train from scratch).

``napari-sam train DATA -o model.pth [--from vit_b] [--steps 1000] ...``

DATA is a folder of image/label TIFF pairs (``images/`` + ``labels/``, or
``NAME.tif`` + ``NAME_labels.tif``), an image TIFF stack with ``--labels``
LABELS.tif, or ``synthetic`` for the procedural scenes the built-in model was
trained on. The result is a checkpoint in the official key layout, loadable with
``--checkpoint`` anywhere in napari-sam (and by Meta's package); ``model.pth.state``
next to it lets ``--resume`` continue an interrupted run.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import checkpoints
from .common import (
    ENGINE_ERRORS,
    ProgressBar,
    UsageError,
    build_model,
    check_output_file,
    plain_text,
    status,
)

__all__ = ["add_train_parser"]


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description as written, and an option's default after its help when it
    has a value to show (not for flags, nor where the help already names it)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is argparse.SUPPRESS or isinstance(default, bool) or "default" in text:
            return text
        return f"{text} (default: %(default)s)" if text else "default: %(default)s"


def add_train_parser(sub: Any) -> None:
    """Register the ``train`` subcommand on ``sub`` (argparse subparsers)."""
    from ..train.trainer import TrainConfig

    defaults = TrainConfig()
    p = sub.add_parser(
        "train",
        help="fine-tune SAM on images with instance labels",
        description=plain_text(__doc__),
        formatter_class=_HelpFormatter,
    )
    p.add_argument("data", metavar="DATA", help="folder of image/label pairs, an image stack, or 'synthetic'")
    p.add_argument("-o", "--output", required=True, type=Path, help="checkpoint to write (.pth)")
    p.add_argument("--labels", default=None, help="label stack for an image stack DATA")
    p.add_argument("--from", dest="start", default="vit_tiny",
                   help="start from this model type's weights (vit_tiny, vit_b, vit_l, vit_h) or a .pth file "
                        "(default: vit_tiny, the built-in model)")
    p.add_argument("--scratch", action="store_true", help="start from random weights of the --from model type")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT and OUTPUT.state")
    p.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps in all")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size, help="images per step")
    p.add_argument("--masks-per-image", type=int, default=defaults.masks_per_image,
                   help="most objects of an image trained per step, drawn at random")
    p.add_argument("--lr", type=float, default=defaults.lr, help="peak learning rate (AdamW)")
    p.add_argument("--weight-decay", type=float, default=defaults.weight_decay, help="AdamW weight decay")
    p.add_argument("--warmup", type=int, default=defaults.warmup,
                   help="steps of linear warm-up; the rate then drops x0.1 at 2/3 and 8/9 of the run")
    p.add_argument("--layer-decay", type=float, default=defaults.layer_decay,
                   help="layer-wise learning-rate decay of the image encoder (1: none)")
    p.add_argument("--drop-path", type=float, default=defaults.drop_path,
                   help="stochastic depth rate of the image encoder")
    p.add_argument("--jitter", action="store_true", help="large-scale jitter, scale range [0.1, 2.0]")
    p.add_argument("--freeze-encoder", action="store_true", help="train only the prompt encoder and decoder")
    p.add_argument("--correction-rounds", type=int, default=defaults.correction_rounds,
                   help="most corrective-click rounds simulated per sample (0 to this, at random)")
    p.add_argument("--last-round-only", action="store_true",
                   help="put the loss on the last round only, not also on the first prompt's prediction")
    p.add_argument("--seed", type=int, default=defaults.seed, help="seed of the sampling and initialization")
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or mps")
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast on GPUs and on CPUs with AMX; on other CPUs "
                   "it can be several times slower than float32)")
    p.add_argument("--workers", type=int, default=None,
                   help="prepare each step's images and prompts in this many worker processes, ahead "
                   "of the model (for GPUs; each step's batch then depends only on --seed and the step, "
                   "so any number of workers gives the same run); default: in the training process")
    p.add_argument("--checkpoint-every", type=int, default=defaults.checkpoint_every,
                   help="write OUTPUT and OUTPUT.state every this many steps (and at the end)")
    p.set_defaults(func=_cmd_train)


def _check_output(path: Path, resume: bool) -> None:
    check_output_file(path, (".pth", ".pt"), "a PyTorch checkpoint")
    if resume and not path.exists():
        raise UsageError(f"--resume: {path} does not exist (nothing to resume)")


def _model(args: argparse.Namespace) -> Any:
    """The starting model: random weights of a type (--scratch), else through
    :func:`~.common.build_model` like every command (a type's weights, or a file)."""
    from ..device import resolve_device
    from ..model.build import MODEL_CONFIGS, build_sam_from_config

    device = resolve_device(args.device)
    start = args.start
    if args.scratch:
        if start not in MODEL_CONFIGS:
            raise UsageError(f"--scratch needs a model type as --from ({', '.join(MODEL_CONFIGS)}), got {start!r}")
        return build_sam_from_config(MODEL_CONFIGS[start]).to(device)
    named = start in MODEL_CONFIGS or start in checkpoints.sam_checkpoints()  # vit_b_lm too
    if not named and not Path(start).is_file():
        raise UsageError(f"--from {start!r} is neither a model type ({', '.join(MODEL_CONFIGS)}, or a "
                         "model 'napari-sam models' lists) nor a file")
    weights = argparse.Namespace(
        model=start if named else None, checkpoint=None if named else start,
        device=str(device), dtype=None, no_download=False,
    )
    return build_model(weights)


def _cmd_train(args: argparse.Namespace) -> int:
    from ..train.data import SceneStream, open_training_data
    from ..train.trainer import TrainConfig, Trainer, TrainingDiverged

    _check_output(args.output, args.resume)
    for name in ("steps", "batch_size", "masks_per_image"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    if args.workers is not None and args.workers < 0:
        raise UsageError(f"--workers must be 0 or more, got {args.workers}")
    if not 0 < args.lr < 1:
        raise UsageError(f"--lr must be between 0 and 1, got {args.lr}")
    try:
        source = SceneStream(args.seed) if args.data == "synthetic" else open_training_data(args.data, args.labels)
        model = _model(args)
        config = TrainConfig(
            steps=args.steps, batch_size=args.batch_size, masks_per_image=args.masks_per_image,
            lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
            layer_decay=args.layer_decay, drop_path=args.drop_path,
            jitter=(0.1, 2.0) if args.jitter else None, train_encoder=not args.freeze_encoder,
            correction_rounds=args.correction_rounds, supervise_first_round=not args.last_round_only,
            seed=args.seed, bf16=args.bf16,
            checkpoint_every=args.checkpoint_every, data_workers=args.workers,
        )
        trainer = Trainer(model, source, config, output=args.output)
        if args.resume:
            trainer.resume()
        status(f"training {len(source) if args.data != 'synthetic' else 'procedural'} images, "
                f"{config.steps} steps, on {model.device}")
        with ProgressBar("train", "step", initial=trainer.step) as bar:
            for step, record in enumerate(trainer.run(), start=trainer.step + 1):
                bar(step, config.steps, loss=f"{record['loss']:.4f}", iou=f"{record['iou']:.3f}")
    except TrainingDiverged as exc:
        raise UsageError(str(exc)) from exc
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    status(f"wrote {args.output} (resume state: {args.output}.state)")
    return 0
