"""Fine-tuning (or training from scratch) with the seed's recipe.

Recipe ("Training Details" of the seed): AdamW, a linear warm-up of 250 iterations,
then step-wise learning-rate decay; lr 8e-4, weight decay 0.1, drop path and
layer-wise learning-rate decay in the image encoder; masks covering more than 90%
of an image dropped; up to 64 masks per image; optional large-scale jitter with a
scale range of [0.1, 2.0]. Each sample is trained through SAM's interactive
simulation (:mod:`.simulate`): a point or a noisy box first, then corrective clicks
from the error region with the previous low-resolution logits as the mask prompt.

Checkpoints: ``OUT`` holds the model alone, in the official key layout (loadable by
:func:`src_core.build_sam` and by Meta's package); ``OUT.state`` holds what resuming
needs (optimizer, step, random states). Both are written to a temporary file and
renamed into place, so an interrupted save never replaces a good file.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..jobs import ShouldStop, check_stop
from ..model.sam import Sam
from .data import TrainingSample, prepare_sample
from .simulate import (
    corrective_points,
    corrective_points_torch,
    focal_dice_iou_loss,
    mask_iou,
    sample_boxes,
    sample_points,
)

__all__ = ["PreparedSample", "TrainConfig", "TrainingDiverged", "Trainer", "prepare_step", "save_model"]


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; nothing was saved from the diverged state."""


@dataclass
class TrainConfig:
    """Hyper-parameters; defaults are the seed's (ViT-H line) where it gives them."""

    steps: int = 1000
    batch_size: int = 4
    masks_per_image: int = 64
    lr: float = 8e-4
    weight_decay: float = 0.1
    warmup: int = 250
    decay_at: tuple[float, ...] = (2 / 3, 8 / 9)
    decay_factor: float = 0.1
    layer_decay: float = 0.8
    drop_path: float = 0.4
    jitter: tuple[float, float] | None = None
    jitter_probability: float = 1.0
    max_area_fraction: float = 0.9
    correction_rounds: int = 2
    #: also put a loss on the first prompt's prediction when corrective rounds follow
    #: (otherwise only the last round is trained, and a lone click, the commonest
    #: prompt, is trained only in the samples drawn with no corrective round)
    supervise_first_round: bool = True
    box_probability: float = 0.5
    train_encoder: bool = True
    train_prompt_encoder: bool = True
    seed: int = 0
    bf16: bool = False
    checkpoint_every: int = 500
    #: where each step's samples come from. None: drawn in the training process from
    #: the trainer's one random stream, prompts and corrective clicks included (runs 1
    #: to 11 of the built-in model). 0 or more: each step's batch and its first prompts
    #: are drawn from a stream seeded by (seed, step) by torch's DataLoader, in that
    #: many worker processes (0: in this one) a few steps ahead, and the corrective
    #: clicks are drawn with torch on the model's device. The result is the same for
    #: any number of workers; workers keep a GPU fed while the CPU prepares images.
    data_workers: int | None = None
    #: batches each worker prepares ahead (with data_workers > 0)
    prefetch: int = 2
    #: side of the square the losses and the IoU targets are computed at. None: the
    #: model's input size (runs 1-11 of the built-in model). Smaller (the input size
    #: divided by a whole number) upsamples the logits less and downsamples the truth
    #: by area (a pixel is in an object when at least half its area is): the
    #: full-resolution loss is most of a CPU step's time, and at half the side it
    #: costs a quarter. Corrective clicks are still drawn at the input size.
    loss_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): warm-up, then step-wise decay."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        drops = sum(step >= int(f * self.steps) for f in self.decay_at)
        return self.lr * self.decay_factor**drops


def _layer_id(name: str, depth: int) -> int:
    """Encoder depth of a parameter for layer-wise decay: patch embedding 0, block i
    i + 1, everything after the blocks (neck, prompt encoder, decoder) depth + 1."""
    if name.startswith("image_encoder.patch_embed") or name == "image_encoder.pos_embed":
        return 0
    if name.startswith("image_encoder.blocks."):
        return int(name.split(".")[2]) + 1
    return depth + 1


def parameter_groups(model: Sam, config: TrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: layer-wise lr scale, and no weight decay on norms, biases and
    position tables."""
    depth = len(model.image_encoder.blocks)
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        layer = _layer_id(name, depth)
        decay = param.ndim >= 2 and "pos_embed" not in name and "rel_pos" not in name
        key = (layer, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr_scale": config.layer_decay ** (depth + 1 - layer),
                "weight_decay": config.weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
    return list(groups.values())


class Trainer:
    """Trains ``model`` on a source of (image, labels) pairs.

    Use :meth:`run` (a generator of per-step records, so a GUI can show progress and
    stop between steps) or :meth:`train` (runs to the end).
    """

    def __init__(self, model: Sam, source: Any, config: TrainConfig, output: str | os.PathLike | None = None) -> None:
        if len(source) == 0:
            raise ValueError("the training data is empty: give at least one image with labels")
        if not hasattr(model.image_encoder, "blocks"):
            raise ValueError(
                "fine-tuning needs a ViT image encoder (vit_b, vit_l, vit_h, vit_tiny or micro-sam's "
                "vit_b/l/h models); MobileSAM's TinyViT (vit_t and micro-sam's vit_t_* models) "
                "cannot be fine-tuned by napari-sam yet"
            )
        if not 0.0 <= config.jitter_probability <= 1.0:
            raise ValueError(f"jitter_probability is a share of the samples, 0 to 1; got {config.jitter_probability}")
        if config.correction_rounds < 0:
            raise ValueError(f"correction_rounds is a number of rounds, 0 or more; got {config.correction_rounds}")
        if config.data_workers is not None and config.data_workers < 0:
            raise ValueError(f"data_workers is a number of processes, 0 or more (or None); got {config.data_workers}")
        if config.prefetch < 1:
            raise ValueError(f"prefetch is a number of batches, 1 or more; got {config.prefetch}")
        if config.loss_size is not None:
            side = model.image_encoder.img_size
            if config.loss_size < 1 or side % config.loss_size:
                raise ValueError(
                    f"loss_size must divide the model's {side}-px input (e.g. {side // 2}); got {config.loss_size}"
                )
        self.model, self.source, self.config = model, source, config
        self.output = Path(output) if output is not None else None
        self.step = 0
        self.rng = np.random.default_rng(config.seed)
        torch.manual_seed(config.seed)
        for i, block in enumerate(model.image_encoder.blocks):
            block.drop_path = config.drop_path * i / max(len(model.image_encoder.blocks) - 1, 1)
        model.image_encoder.requires_grad_(config.train_encoder)
        model.prompt_encoder.requires_grad_(config.train_prompt_encoder)
        self.optimizer = torch.optim.AdamW(
            parameter_groups(model, config), lr=config.lr, betas=(0.9, 0.999)
        )

    # ------------------------------------------------------------------ state

    def save(self) -> None:
        """Write the model (official layout) and the resume state, atomically."""
        if self.output is None:
            return
        save_model(self.model, self.output)
        state = {
            "step": self.step,
            "optimizer": self.optimizer.state_dict(),
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "config": asdict(self.config),
        }
        _atomic_save(state, Path(str(self.output) + ".state"))

    def resume(self, state_path: str | os.PathLike | None = None) -> None:
        """Continue from ``OUT`` and ``OUT.state`` (or the given state file)."""
        from ..checkpoints import load_state_dict

        if self.output is None and state_path is None:
            raise ValueError("resume needs the output path of the interrupted run")
        model_path = self.output
        state_path = Path(state_path) if state_path else Path(str(model_path) + ".state")
        if not state_path.exists() or model_path is None or not model_path.exists():
            raise FileNotFoundError(
                f"nothing to resume: {model_path} and {state_path} must both exist "
                "(they are written every checkpoint_every steps)"
            )
        self.model.load_state_dict(load_state_dict(model_path), strict=True)
        state = torch.load(state_path, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])
        self.rng.bit_generator.state = state["numpy_rng"]
        torch.set_rng_state(state["torch_rng"])

    # ------------------------------------------------------------------ loop

    def train(self, progress: Callable[[int, int, float], None] | None = None) -> list[float]:
        """Run all remaining steps; ``progress(step, steps, loss)`` after each."""
        losses = []
        for record in self.run():
            losses.append(record["loss"])
            if progress is not None:
                progress(record["step"], self.config.steps, record["loss"])
        return losses

    def run(self, should_stop: ShouldStop | None = None) -> Iterator[dict[str, float]]:
        """Yield ``{"step", "loss", "lr", "iou"}`` after every step; saves every
        ``checkpoint_every`` steps and at the end. ``should_stop`` is asked before
        every step: True stops with :class:`~src_core.jobs.Cancelled` (the steps done
        stay in the model; nothing more is saved)."""
        self.model.train()
        batches = self._step_batches() if self.config.data_workers is not None else None
        try:
            while self.step < self.config.steps:
                check_stop(should_stop, "training")
                record = self.train_step(next(batches) if batches is not None else None)
                self.step += 1
                if self.step % self.config.checkpoint_every == 0 or self.step == self.config.steps:
                    self.save()
                yield record
        finally:
            self.model.eval()
            if batches is not None:
                del batches  # shuts the workers down

    def _step_batches(self) -> Iterator[list[PreparedSample]]:
        """The prepared batches of steps ``self.step``, ``self.step + 1``, ... (endless:
        a time budget may still change ``config.steps``), from torch's DataLoader."""
        from torch.utils.data import DataLoader

        workers = self.config.data_workers or 0
        loader = DataLoader(
            _StepBatches(self.source, self.config, self.model.image_encoder.img_size),
            batch_size=None,
            sampler=itertools.count(self.step),
            num_workers=workers,
            collate_fn=_as_is,
            prefetch_factor=self.config.prefetch if workers else None,
            # its own generator: the loader's draw of worker seeds must not move the
            # global torch stream (drop path), or a resumed run would differ
            generator=torch.Generator().manual_seed(self.config.seed),
        )
        for batch in loader:
            if isinstance(batch, _Failure):
                raise batch.error  # a bad file's own message, not the worker's traceback
            yield batch

    def _next_samples(self) -> list[TrainingSample]:
        return draw_samples(self.source, self.config, self.model.image_encoder.img_size, self.rng)

    def train_step(self, prepared: list[PreparedSample] | None = None) -> dict[str, float]:
        """One optimizer step on ``batch_size`` images; returns the loss and lr.

        ``prepared`` is the step's batch from :func:`prepare_step`; without it the
        samples and prompts are drawn from the trainer's random stream.
        """
        config = self.config
        lr = config.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]
        samples = [p.sample for p in prepared] if prepared is not None else self._next_samples()
        plans = prepared if prepared is not None else [None] * len(samples)
        device = self.model.device
        images = torch.from_numpy(np.stack([s.image for s in samples])).to(device)
        autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.bf16)
        with autocast:
            embeddings = self.model.image_encoder(self.model.preprocess(images)).float()
        total, ious = 0.0, []
        loss_sum = torch.zeros((), device=device)
        for embedding, sample, plan in zip(embeddings, samples, plans):
            loss, iou = self._simulate(embedding[None], sample, autocast, plan)
            loss_sum = loss_sum + loss
            ious.append(float(iou))
        loss_sum = loss_sum / len(samples)
        total = float(loss_sum.detach())
        if not math.isfinite(total):
            raise TrainingDiverged(
                f"the loss became {total} at step {self.step}: training diverged. The last "
                "checkpoint was kept; lower the learning rate (--lr) and resume or restart."
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return {"step": self.step + 1, "loss": total, "lr": lr, "iou": float(np.mean(ious))}

    def _decode(self, embedding, coords, labels, boxes, mask_input, multimask: bool):
        model = self.model
        points = None if coords is None else (coords, labels)
        sparse, dense = model.prompt_encoder(points=points, boxes=boxes, masks=mask_input)
        low_res, iou = model.mask_decoder(
            image_embeddings=embedding,
            image_pe=model.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask,
        )
        return low_res, iou

    def _simulate(self, embedding, sample: TrainingSample, autocast, plan: PreparedSample | None = None):
        """Interactive rounds on one image; the loss is on the last one (and the first).

        The rounds before it (0 to ``correction_rounds``, at random) produce the
        clicks and the mask prompt the trained round starts from. They run without
        gradient, except the first one when ``supervise_first_round``: its loss is
        averaged with the last round's, so the initial prompt (a lone click gives
        three candidate masks and their predicted IoUs) is trained in every sample.
        That keeps the cost of a step at one or two decodings with gradient per mask.

        With a ``plan`` (from :func:`prepare_step`) the first prompt and the number of
        rounds come from it and the corrective clicks are drawn on the device.
        """
        config, rng = self.config, self.rng
        device = embedding.device
        size = self.model.image_encoder.img_size
        truth_np = sample.masks
        truth = torch.as_tensor(truth_np).to(device, non_blocking=True)
        loss_size = config.loss_size or size
        truth_loss = truth
        if loss_size != size:
            truth_loss = F.interpolate(truth[None].float(), (loss_size, loss_size), mode="area")[0] >= 0.5
        generator = None
        if plan is None:
            use_box = rng.random() < config.box_probability
            first = sample_boxes(truth_np, rng) if use_box else sample_points(truth_np, rng)
            rounds = int(rng.integers(0, config.correction_rounds + 1))
        else:
            use_box, first, rounds = plan.use_box, plan.prompts, plan.rounds
            generator = torch.Generator(device=device)
            generator.manual_seed(plan.click_seed)
        first_t = torch.as_tensor(first).to(device)
        boxes = first_t if use_box else None
        coords = labels = None
        if not use_box:
            coords = first_t
            labels = torch.ones(coords.shape[:2], device=device)
        mask_input = None
        first_loss = None
        for index in range(rounds):
            multimask = coords is not None and coords.shape[1] == 1 and boxes is None
            supervised = index == 0 and config.supervise_first_round
            with torch.set_grad_enabled(supervised), autocast:
                low_res, iou = self._decode(embedding, coords, labels, boxes, mask_input, multimask)
            up = F.interpolate(low_res.float(), (loss_size, loss_size), mode="bilinear", align_corners=False)
            if supervised:
                first_loss, _ = focal_dice_iou_loss(up, truth_loss, iou.float())
            low_res, up = low_res.detach().float(), up.detach()
            # carry on from the candidate closest to the truth
            actual = mask_iou(up, truth_loss[:, None].expand_as(up))
            best = actual.argmax(1)
            chosen = low_res[torch.arange(len(best)), best][:, None]
            if loss_size == size:
                pred = up[torch.arange(len(best)), best] > 0
            else:
                pred = F.interpolate(chosen, (size, size), mode="bilinear", align_corners=False)[:, 0] > 0
            if plan is None:
                new_xy, new_labels = corrective_points(pred.cpu().numpy(), truth_np, rng)
                new_xy_t = torch.from_numpy(new_xy).to(device)
                new_labels_t = torch.from_numpy(new_labels).to(device)
            else:
                new_xy_t, new_labels_t = corrective_points_torch(pred, truth, generator)
            coords = new_xy_t if coords is None else torch.cat([coords, new_xy_t], 1)
            labels = new_labels_t if labels is None else torch.cat([labels, new_labels_t], 1)
            mask_input = chosen.detach()
        multimask = coords is not None and coords.shape[1] == 1 and boxes is None
        with autocast:
            low_res, iou_pred = self._decode(embedding, coords, labels, boxes, mask_input, multimask)
        logits = F.interpolate(low_res.float(), (loss_size, loss_size), mode="bilinear", align_corners=False)
        loss, actual = focal_dice_iou_loss(logits, truth_loss, iou_pred.float())
        if first_loss is not None:
            loss = (first_loss + loss) / 2
        return loss, actual.max(1).values.mean()


@dataclass(frozen=True)
class PreparedSample:
    """A sample with its first prompt: ``prompts`` is (M, 4) boxes when ``use_box``,
    else (M, 1, 2) points; ``rounds`` corrective rounds; ``click_seed`` seeds them."""

    sample: TrainingSample
    use_box: bool
    prompts: np.ndarray
    rounds: int
    click_seed: int


def draw_samples(source: Any, config: TrainConfig, input_size: int, rng: np.random.Generator) -> list[TrainingSample]:
    """``config.batch_size`` samples drawn from ``source`` with ``rng``."""
    samples: list[TrainingSample] = []
    tries = 0
    while len(samples) < config.batch_size:
        tries += 1
        if tries > 20 * config.batch_size:
            raise ValueError(
                "no usable masks in the training data: every mask was empty or covered "
                f"more than {config.max_area_fraction:.0%} of its image"
            )
        image, labels = source[int(rng.integers(len(source)))]
        jitter = config.jitter
        if jitter is not None and config.jitter_probability < 1.0:
            jitter = jitter if rng.random() < config.jitter_probability else None
        sample = prepare_sample(
            image, labels, input_size, rng, config.masks_per_image, config.max_area_fraction, jitter
        )
        if sample is not None:
            samples.append(sample)
    return samples


def prepare_step(source: Any, config: TrainConfig, input_size: int, step: int) -> list[PreparedSample]:
    """Step ``step``'s batch and first prompts, from a random stream seeded by
    ``(config.seed, step)`` alone: any process can make it, in any order."""
    rng = np.random.default_rng([config.seed, step])
    prepared = []
    for sample in draw_samples(source, config, input_size, rng):
        use_box = bool(rng.random() < config.box_probability)
        prompts = sample_boxes(sample.masks, rng) if use_box else sample_points(sample.masks, rng)
        rounds = int(rng.integers(0, config.correction_rounds + 1))
        prepared.append(PreparedSample(sample, use_box, prompts, rounds, int(rng.integers(2**62))))
    return prepared


class _StepBatches:
    """Map-style dataset for DataLoader: item ``step`` is :func:`prepare_step`'s batch."""

    def __init__(self, source: Any, config: TrainConfig, input_size: int) -> None:
        self.source, self.config, self.input_size = source, config, input_size

    def __getitem__(self, step: int) -> list[PreparedSample] | _Failure:
        try:
            return prepare_step(self.source, self.config, self.input_size, step)
        except Exception as exc:  # handed to the training process, raised there as it is
            return _Failure(exc)


@dataclass(frozen=True)
class _Failure:
    error: Exception


def _as_is(batch: Any) -> Any:
    return batch


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def save_model(model: Sam, path: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
    """Save ``model``'s weights as a plain state dict in the official key layout,
    atomically; ``dtype`` (e.g. float16) shrinks floating-point tensors for shipping."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    _atomic_save(state, Path(path))
