"""SAM 2.1 video tracking (#27): our SAM2VideoPredictor against Meta's, same weights, same frames.

Run: ``python bench/bench_sam2_video.py [--part speed|memory|embed|all] [--quick]``

speed
    Per-frame propagation time at the real 1024-px input: one object clicked on
    frame 0 of an 854x480 clip (a camera panning over scikit-image's ``coffee``
    photo, written as JPEG frames, the folder layout Meta's predictor reads), then
    tracked forward. Meta's ``sam2==1.1.0`` ``SAM2VideoPredictor`` (built with hydra
    from its yaml with the overrides of its ``build_sam2_video_predictor``; random
    weights, loaded strictly into ours) in float32 and under a caller's bfloat16
    CPU autocast, ours in float32 and in bfloat16 (``model.set_compute_dtype``), hiera
    tiny and base_plus (``--sizes``). Hole filling off on both (``fill_hole_area=0``:
    Meta's needs its CUDA extension and skips it on a CPU). Meta's up-front frame
    loading is timed apart. Each run's time is split between the image encoder
    (``forward_image``), the memory attention, the prompt encoder + mask decoder,
    the memory encoder and the rest. Masks: per-frame IoU of ours-bfloat16 against
    ours-float32 and of ours-float32 against Meta-float32 (random weights: this says
    little about accuracy on real weights).
memory
    Each measurement in its own process (``ru_maxrss`` for peaks; ``--memory-runs``
    picks them): (a) ``meta``: Meta's ``init_state`` on a folder of 1,000 JPEG frames
    of 1024x1024 (it decodes every frame to a float32 tensor; at fewer frames if that
    would not fit, extrapolated linearly), then a click and 3 tracked frames; what
    tracking all frames would add is estimated from what it keeps per frame;
    (b) ``ours1024``: ours on the same folder at 1024 px (bfloat16), click + forward
    propagation for ``--minutes`` minutes, resident memory sampled every 25 frames;
    (c) ``ours128``: ours with a 128-px-input tiny model (random weights, one thread)
    on a 10,000-frame 1024x1024 video generated on the fly (no files), RSS every 500
    frames, for ``--minutes`` minutes.
embed
    Image embedding (``forward_image`` on a normalized 1x3x1024x1024 image) of each
    SAM 2.1 size against SAM 1 vit_b's encoder, float32 and bfloat16, random weights,
    best of 2 after a warm-up.

Prints the CPU kind first (AMX or not matters most for bfloat16). Not a test: numbers
vary with the machine and its load.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Self

import numpy as np
import torch
from _common import ROOT, best_time, machine, use_reference

SIZES = ("tiny", "small", "base_plus", "large")
PARTS = ("speed", "memory", "embed")
CLIP_W, CLIP_H = 854, 480
SEEDS = {"tiny": 1, "base_plus": 3}  # random weights whose masks cover 10-90% of the frame
BUSY = 0.25  # other processes' CPU use (cores) above which a timed run is done again
COMPONENTS = ("image encoder", "memory attention", "decoder", "memory encoder")


# ---- inputs -------------------------------------------------------------------------


def clip_frames(n: int) -> np.ndarray:
    """A camera panning over a real photo: (n, 480, 854, 3) uint8."""
    from PIL import Image
    from skimage import data

    photo = data.coffee()  # 400 x 600
    frames = []
    for i in range(n):
        crop = photo[20 + i : 20 + i + 300, 5 * i : 5 * i + 533]
        frames.append(np.asarray(Image.fromarray(crop).resize((CLIP_W, CLIP_H), Image.BICUBIC)))
    return np.stack(frames)


class PanningVideo:
    """A (n, side, side, 3) uint8 video made on the fly: a window panning over the
    astronaut photo upscaled 3x (nothing holds more than one frame)."""

    def __init__(self, n: int, side: int = 1024) -> None:
        from PIL import Image
        from skimage import data

        big = 3 * 512
        self.base = np.asarray(Image.fromarray(data.astronaut()).resize((big, big), Image.BICUBIC))
        self.n, self.side, self.room = n, side, big - side
        self.shape, self.dtype = (n, side, side, 3), np.dtype(np.uint8)

    def __len__(self) -> int:
        return self.n

    def _offset(self, t: int, speed: int) -> int:
        period = 2 * self.room
        x = (t * speed) % period
        return x if x <= self.room else period - x

    def __getitem__(self, t: int) -> np.ndarray:
        if not 0 <= t < self.n:
            raise IndexError(t)
        y, x = self._offset(t, 3), self._offset(t, 5)
        return np.ascontiguousarray(self.base[y : y + self.side, x : x + self.side])


def write_jpegs(frames, folder: Path) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(len(frames)):
        Image.fromarray(frames[i]).save(folder / f"{i:05d}.jpg", quality=90)
    return folder


# ---- a shared machine ----------------------------------------------------------------


def _busy_jiffies() -> tuple[int, int]:
    """(all CPUs' busy jiffies, this process's jiffies, threads and children included)."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    values = [int(v) for v in fields]
    busy = sum(values) - values[3] - values[4]  # minus idle and iowait
    own = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    return busy, sum(int(v) for v in own[11:15])  # utime, stime, cutime, cstime


class OtherLoad:
    """CPU used by other processes while a block runs, in cores (0 = the machine was ours)."""

    def __enter__(self) -> Self:
        self.start, self.t0 = _busy_jiffies(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        (busy0, own0), (busy1, own1) = self.start, _busy_jiffies()
        hz = os.sysconf("SC_CLK_TCK")
        self.cores = max(0.0, ((busy1 - busy0) - (own1 - own0)) / hz / max(1e-9, time.perf_counter() - self.t0))


def quiet_best_time(fn, repeats: int, limit: float) -> tuple[float, str]:
    """best_time on a quiet machine: run again (at most twice) if others took a core."""
    for _ in range(3):
        quiet = wait_quiet(limit)
        with OtherLoad() as load:
            seconds = best_time(fn, repeats)
        if load.cores <= BUSY:
            break
    return seconds, f"{quiet}; during: others {load.cores:.2f} cores"


def wait_quiet(limit: float) -> str:
    """Wait (at most ``limit`` seconds) until other processes use under 0.1 core for 2 s."""
    start = time.perf_counter()
    while True:
        with OtherLoad() as load:
            time.sleep(2.0)
        if load.cores < 0.1 or time.perf_counter() - start > limit:
            waited = time.perf_counter() - start - 2.0
            return f"waited {waited:.0f} s, others {load.cores:.2f} cores"


# ---- models -------------------------------------------------------------------------


def no_progress_bars() -> None:
    """Meta's predictor draws tqdm bars while loading and tracking: not here."""
    import sam2.sam2_video_predictor
    import sam2.utils.misc

    sam2.sam2_video_predictor.tqdm = sam2.utils.misc.tqdm = lambda iterable, *args, **kwargs: iterable


def model_pair(size: str, seed: int | None = None, score_shift: float = 2.0):
    """Meta's video predictor with random weights and our model with the same weights
    (seeds where the clicked object is neither empty nor the whole frame)."""
    seed = SEEDS.get(size, 1) if seed is None else seed
    use_reference()  # tests/ on the path, torchvision stand-in if needed
    from test_sam2_model import PREDICTOR_DECODER_ARGS, _meta_model, _randomize

    no_progress_bars()
    from src_core.model.sam2.sam2_base import build_sam2_model

    torch.manual_seed(seed)
    ref = _meta_model(
        size, 1024, PREDICTOR_DECODER_ARGS,
        _target_="sam2.sam2_video_predictor.SAM2VideoPredictor",
        binarize_mask_from_pts_for_mem_enc=True, fill_hole_area=0,
    )  # fmt: skip
    _randomize(ref, seed)
    with torch.no_grad():  # random heads: make the object present, so masks are not empty
        ref.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += score_shift
    ours = build_sam2_model(size, binarize_mask_from_pts_for_mem_enc=True, **PREDICTOR_DECODER_ARGS)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref.eval(), ours.eval()


class Timers:
    """Adds up the time spent in chosen methods of the models, by component."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.last_call: dict[str, tuple] = {}  # the arguments of each component's last call
        self._patched: list[tuple[object, str]] = []

    def wrap(self, obj, name: str, component: str) -> None:
        original = getattr(obj, name)

        def timed(*args, **kwargs):
            self.last_call[component] = (original, args, kwargs)
            start = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[component] += time.perf_counter() - start

        setattr(obj, name, timed)
        self._patched.append((obj, name))

    def wrap_model(self, model) -> None:
        self.wrap(model, "forward_image", "image encoder")
        self.wrap(model.memory_attention, "forward", "memory attention")
        self.wrap(model.sam_prompt_encoder, "forward", "decoder")
        self.wrap(model.sam_mask_decoder, "forward", "decoder")
        self.wrap(model.memory_encoder, "forward", "memory encoder")

    def snapshot(self) -> dict[str, float]:
        return dict(self.seconds)

    def undo(self) -> None:
        for obj, name in self._patched:
            delattr(obj, name)
        self._patched.clear()


def stored_bytes(tensors) -> int:
    """Bytes of the distinct storages behind some tensors."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor):
            storage = t.untyped_storage()
            if storage.data_ptr() not in seen:
                seen.add(storage.data_ptr())
                total += storage.nbytes()
    return total


def output_tensors(outputs: dict):
    """The tensors of each frame in {frame: {key: tensor or [tensors]}} dicts (not the
    memories' position encoding: one for all frames in both predictors)."""
    for out in outputs.values():
        for key, value in out.items():
            if key == "maskmem_pos_enc":
                continue
            yield from (value if isinstance(value, list) else [value])


# ---- part 1: speed ------------------------------------------------------------------


def track_run(predictor, model, folder: Path, click, frames: int, meta: bool, autocast: bool) -> dict:
    """Click on frame 0, track forward; per-frame times, component split, masks."""
    import contextlib

    timers = Timers()
    timers.wrap_model(model)
    load_timer = {"s": 0.0}
    if meta:
        import sam2.sam2_video_predictor as meta_module

        real_load = meta_module.load_video_frames

        def timed_load(*args, **kwargs):
            start = time.perf_counter()
            try:
                return real_load(*args, **kwargs)
            finally:
                load_timer["s"] += time.perf_counter() - start

        meta_module.load_video_frames = timed_load
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    result: dict = {}
    try:
        with torch.inference_mode(), ctx:
            start = time.perf_counter()
            state = predictor.init_state(str(folder))
            result["init"] = time.perf_counter() - start
            result["load"] = load_timer["s"]
            if not meta:  # ours reads and resizes frames lazily: count that as "read frames"
                source = state.source
                timers.wrap(source, "model_input", "read frames")
            start = time.perf_counter()
            predictor.add_new_points_or_box(state, 0, 1, points=[click], labels=[1])
            result["click"] = time.perf_counter() - start
            masks, per_frame, parts = [], [], []
            before = timers.snapshot()
            load = OtherLoad().__enter__()
            start = time.perf_counter()
            for i, (frame_idx, _, logits) in enumerate(predictor.propagate_in_video(state)):
                now = time.perf_counter()
                masks.append((logits[0, 0] > 0).cpu().numpy())
                after = timers.snapshot()
                if i > 0:  # frame 0 was prompted: its yield is the preflight (memory of frame 0)
                    per_frame.append(now - start)
                    parts.append({k: after.get(k, 0.0) - before.get(k, 0.0) for k in after})
                before = after
                if i + 1 >= frames:
                    break
                start = time.perf_counter()
            load.__exit__(None, None, None)
            result["others"] = load.cores
        if meta:
            outs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
            images = state["images"]
            result["frames_bytes"] = images.numel() * images.element_size()
        else:
            outs = state.objects[1].outputs["non_cond_frame_outputs"]
        result["state_bytes_per_frame"] = stored_bytes(output_tensors(outs)) / max(1, len(outs))
        result["last_memory_attention"] = timers.last_call.get("memory attention")
    finally:
        timers.undo()
        if meta:
            meta_module.load_video_frames = real_load
    result.update(per_frame=per_frame, parts=parts, masks=np.stack(masks))
    return result


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def flops(fn, *args, **kwargs) -> float:
    """Floating-point operations of one call (torch's counter: matrix products,
    convolutions, attention)."""
    from torch.utils import flop_counter

    cpu_sdpa = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    if cpu_sdpa not in flop_counter.flop_registry:  # torch counts SDPA on GPUs only

        @flop_counter.register_flop_formula(cpu_sdpa)
        def _sdpa(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
            return flop_counter.sdpa_flop_count(query_shape, key_shape, value_shape)

    with torch.inference_mode(), flop_counter.FlopCounterMode(display=False) as counter:
        fn(*args, **kwargs)
    return float(counter.get_total_flops())


def matmul_peak(dtype: torch.dtype, n: int = 4096) -> float:
    """FLOP/s of an n x n x n matrix product in ``dtype`` on this machine (best of 3)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    return 2 * n**3 / best_time(lambda: torch.mm(a, b), 3)


def merge(reps: list[dict]) -> dict:
    """Repeated runs of one configuration: each frame's best time (the machine may be
    shared), the component split of the fastest run, the first run's masks."""
    quiet = [r for r in reps if r["others"] <= BUSY]
    reps = quiet or reps
    fastest = min(reps, key=lambda r: sum(r["per_frame"]))
    merged = dict(fastest)
    merged["fastest_per_frame"] = fastest["per_frame"]
    merged["per_frame"] = np.min([r["per_frame"] for r in reps], axis=0).tolist()
    for key in ("init", "load", "click"):
        merged[key] = min(r[key] for r in reps)
    merged["others"] = [r["others"] for r in reps]  # of the runs kept
    merged["masks"] = reps[0]["masks"]
    return merged


def part_speed(args) -> None:
    print(f"\n## speed: propagation at 1024-px input, {args.frames} frames of {CLIP_W}x{CLIP_H}, one object, "
          f"{args.speed_repeats} interleaved runs each (per frame: the best)")
    from src_core.sam2_video import SAM2VideoPredictor

    clip = clip_frames(args.frames)
    click = [CLIP_W * 0.42, CLIP_H * 0.55]
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_jpegs(clip, Path(tmp) / "clip")
        for size in args.sizes:
            ref, ours = model_pair(size)
            ours16 = copy.deepcopy(ours).set_compute_dtype(torch.bfloat16)
            x = torch.randn(1, 3, 1024, 1024)
            with torch.inference_mode():  # warm-up: the first call of each kernel set pays extra
                for model in (ref, ours, ours16):
                    model.forward_image(x)
                    with torch.autocast("cpu", dtype=torch.bfloat16):
                        model.forward_image(x)
            configs = [("Meta float32", True, False), ("Meta bfloat16 autocast", True, True),
                       ("ours float32", False, False), ("ours bfloat16", False, True)]  # fmt: skip
            if args.no_meta_bf16:
                configs.pop(1)
            reps: dict[str, list] = {name: [] for name, _, _ in configs}
            for rep in range(args.speed_repeats):
                for name, meta, bf16 in configs:
                    if meta:
                        predictor, model = ref, ref
                    else:
                        model = ours16 if bf16 else ours
                        predictor = SAM2VideoPredictor(model, fill_hole_area=0)
                    for attempt in range(3):  # another process took a core: run it again
                        quiet = wait_quiet(args.wait_quiet)
                        r = track_run(predictor, model, folder, click, args.frames, meta, bf16 and meta)
                        reps[name].append(r)
                        if r["others"] <= BUSY:
                            break
                        print(f"  ({size} {name}: others used {r['others']:.2f} cores during the run)")
                    pf = np.array(r["per_frame"])
                    print(f"  {size} {name} #{rep + 1} ({quiet}; during: others {r['others']:.2f} cores): "
                          f"init {r['init']:.2f} s (frame loading {r['load']:.2f} s), click {r['click']:.2f} s, "
                          f"per frame {pf.mean():.2f} s, frames {np.round(pf, 2).tolist()}", flush=True)
            runs = {name: merge(r) for name, r in reps.items()}
            fn, a, k = runs["ours float32"]["last_memory_attention"]
            memory_tokens = int(k["memory"].shape[0])
            work = {"image encoder": flops(ours.forward_image, x), "memory attention": flops(fn, *a, **k)}
            for r in runs.values():
                r.pop("last_memory_attention", None)
            tables.append((size, runs, work, memory_tokens))
            del ref, ours, ours16, model, predictor, fn, a, k

    peaks = {d: matmul_peak(getattr(torch, d)) for d in ("float32", "bfloat16")}
    print("\nthis machine's 4096^3 matrix product: "
          + ", ".join(f"{d} {p / 1e9:.0f} GFLOP/s" for d, p in peaks.items()))
    meta_name, meta16 = "Meta float32", "Meta bfloat16 autocast"
    full = min(7, args.frames - 1)  # frame 7 on: 6 tracked memories + the prompted frame's
    for size, runs, work, memory_tokens in tables:
        print(f"\n### {size}: seconds per tracked frame: mean of frames 1-{args.frames - 1}, and of frames "
              f"{full}-{args.frames - 1} (memory bank full)")
        mean = {name: np.mean(r["per_frame"]) for name, r in runs.items()}
        steady = {name: np.mean(r["per_frame"][full - 1 :]) for name, r in runs.items()}
        refs = [n for n in (meta_name, meta16) if n in runs]
        print("| run | init (frame loading) | click | per frame | " + " | ".join(f"vs {n}" for n in refs)
              + " | full bank | " + " | ".join(f"vs {n}" for n in refs) + " | others' load (cores) |")
        print("|---|---|---|---|" + "---|" * len(refs) + "---|" + "---|" * len(refs) + "---|")
        for name, r in runs.items():
            load = f" ({r['load']:.2f})" if name.startswith("Meta") else ""
            others = "/".join(f"{c:.2f}" for c in r["others"])
            print(f"| {name} | {r['init']:.2f}{load} | {r['click']:.2f} | {mean[name]:.2f} | "
                  + " | ".join(f"{mean[n] / mean[name]:.2f}x" for n in refs)
                  + f" | {steady[name]:.2f} | " + " | ".join(f"{steady[n] / steady[name]:.2f}x" for n in refs)
                  + f" | {others} |")
        print(f"\nwork per frame: image encoder {work['image encoder'] / 1e9:.0f} GFLOP; memory attention "
              f"{work['memory attention'] / 1e9:.0f} GFLOP on the last frame ({memory_tokens} memory tokens)")
        print("last frame: " + "; ".join(
            f"{name}: encoder {work['image encoder'] / r['parts'][-1]['image encoder'] / 1e9:.0f} GFLOP/s, "
            f"memory attention {work['memory attention'] / r['parts'][-1]['memory attention'] / 1e9:.0f} GFLOP/s"
            for name, r in runs.items()))
        print("\nper tracked frame, by component (seconds, fastest run):")
        print("| run | " + " | ".join(COMPONENTS) + " | read frames | rest |")
        print("|---|" + "---|" * (len(COMPONENTS) + 2))
        for name, r in runs.items():
            n = len(r["parts"])
            mean = {k: sum(p.get(k, 0.0) for p in r["parts"]) / n for k in (*COMPONENTS, "read frames")}
            rest = sum(r["fastest_per_frame"]) / n - sum(mean.values())  # the fastest run's own frames
            cells = [f"{mean[k]:.3f}" for k in (*COMPONENTS, "read frames")]
            print(f"| {name} | " + " | ".join(cells) + f" | {rest:.3f} |")
        f32, b16, meta = (runs[k]["masks"] for k in ("ours float32", "ours bfloat16", meta_name))
        ious16 = [iou(a, b) for a, b in zip(b16, f32)]
        iousm = [iou(a, b) for a, b in zip(f32, meta)]
        area = [float(m.mean()) for m in f32]
        print(f"\nmask IoU ours-bfloat16 vs ours-float32 per frame: {np.round(ious16, 3).tolist()}")
        print(f"mask IoU ours-float32 vs Meta-float32 per frame: {np.round(iousm, 4).tolist()}")
        if meta16 in runs:
            ious_m16 = [iou(a, b) for a, b in zip(runs[meta16]["masks"], meta)]
            print(f"mask IoU Meta-bfloat16 vs Meta-float32 per frame: {np.round(ious_m16, 3).tolist()}")
        print(f"mask area (fraction of the frame), ours float32: {np.round(area, 3).tolist()}")
        print(f"stored per tracked frame and object: Meta {runs[meta_name]['state_bytes_per_frame'] / 1e6:.2f} MB, "
              f"ours {runs['ours float32']['state_bytes_per_frame'] / 1e6:.2f} MB (ours drops frames "
              f"outside the memory window); Meta's frame tensor: "
              f"{runs[meta_name]['frames_bytes'] / args.frames / 1e6:.1f} MB a frame")


# ---- part 2: memory -----------------------------------------------------------------


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def child_meta_init(args) -> dict:
    use_reference()
    from test_sam2_model import PREDICTOR_DECODER_ARGS, _meta_model

    no_progress_bars()
    model = _meta_model(
        "tiny", 1024, PREDICTOR_DECODER_ARGS, _target_="sam2.sam2_video_predictor.SAM2VideoPredictor",
        binarize_mask_from_pts_for_mem_enc=True, fill_hole_area=0,
    ).eval()  # fmt: skip
    before = rss()
    start = time.perf_counter()
    with torch.inference_mode():
        state = model.init_state(args.folder)
    seconds = time.perf_counter() - start
    images = state["images"]
    result = {"frames": state["num_frames"], "before": before, "after": rss(), "peak": peak(),
              "seconds": seconds, "images_bytes": images.numel() * images.element_size()}  # fmt: skip
    # then a click and a few tracked frames, in bfloat16 as ours runs: the peak with
    # the model's working memory on top of the frames
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        model.add_new_points_or_box(state, 0, 1, points=[[400, 500]], labels=[1])
        for i, _ in enumerate(model.propagate_in_video(state)):
            if i >= args.track:
                break
    outs = state["output_dict_per_obj"][0]["non_cond_frame_outputs"]
    result.update(tracked=len(outs), tracked_after=rss(), tracked_peak=peak(),
                  per_frame_bytes=stored_bytes(output_tensors(outs)) / max(1, len(outs)))  # fmt: skip
    return result


def child_ours(args) -> dict:
    from src_core.model.sam2.sam2_base import build_sam2_model
    from src_core.sam2_video import SAM2VideoPredictor

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build_sam2_model("tiny", image_size=args.image_size, binarize_mask_from_pts_for_mem_enc=True).eval()
    model.set_compute_dtype(torch.bfloat16 if args.dtype == "bfloat16" else None)
    predictor = SAM2VideoPredictor(model, fill_hole_area=0)
    video = args.folder if args.folder else PanningVideo(args.frames)
    before = rss()
    samples = []
    deadline = time.perf_counter() + 60 * args.minutes
    start = time.perf_counter()
    done = 0
    with torch.inference_mode():
        state = predictor.init_state(video)
        predictor.add_new_points_or_box(state, 0, 1, points=[[400, 500]], labels=[1])
        for i, (frame_idx, _, logits) in enumerate(predictor.propagate_in_video(state)):
            done = i + 1
            if done % args.every == 0 or done == 1:
                samples.append((done, rss(), state.memory_bytes(), time.perf_counter() - start))
            if time.perf_counter() > deadline:
                break
    samples.append((done, rss(), state.memory_bytes(), time.perf_counter() - start))
    return {"frames": done, "of": state.num_frames, "before": before, "after": rss(), "peak": peak(),
            "seconds": time.perf_counter() - start, "samples": samples,
            "window": predictor.memory_window}  # fmt: skip


def run_child(kind: str, **options) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind]
    for key, value in options.items():
        cmd += [f"--{key.replace('_', '-')}", str(value)]
    print(f"  $ {' '.join(cmd[1:])}", flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-4000:])
        raise RuntimeError(f"{kind} failed ({proc.returncode})")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def part_memory(args) -> None:
    import psutil

    n, runs = args.memory_frames, args.memory_runs.split(",")
    print(f"\n## memory: {n}-frame 1024x1024 video (JPEG folder); runs: {', '.join(runs)}")
    meta = ours = long = None
    with tempfile.TemporaryDirectory() as tmp:
        if "meta" in runs or "ours1024" in runs:
            start = time.perf_counter()
            folder = write_jpegs(PanningVideo(n), Path(tmp) / "video")
            print(f"  wrote {n} JPEG frames in {time.perf_counter() - start:.0f} s "
                  f"({sum(f.stat().st_size for f in folder.iterdir()) / 1e6:.0f} MB)", flush=True)
        if "meta" in runs:
            # Meta: every frame as a 3x1024x1024 float32 tensor (12.6 MB) up front
            need = n * 3 * 1024 * 1024 * 4
            avail = psutil.virtual_memory().available
            meta_n = n if need < 0.7 * avail else 200
            meta_folder = folder
            if meta_n != n:
                print(f"  Meta at {n} frames needs ~{gb(need)}, {gb(avail)} available: measured at {meta_n} "
                      "frames, extrapolated linearly")
                meta_folder = Path(tmp) / "sub"
                meta_folder.mkdir()
                for i in range(meta_n):
                    os.link(folder / f"{i:05d}.jpg", meta_folder / f"{i:05d}.jpg")
            meta = run_child("meta-init", folder=meta_folder, track=3)
            print(f"  Meta: {json.dumps(meta)}", flush=True)
        if "ours1024" in runs:
            ours = run_child("ours", folder=folder, image_size=1024, dtype="bfloat16", minutes=args.minutes,
                             every=25, threads=torch.get_num_threads())  # fmt: skip
            print(f"  ours at 1024 px: {json.dumps({k: v for k, v in ours.items() if k != 'samples'})}", flush=True)
    if "ours128" in runs:
        # one thread: at 128 px the model is many small operations, and with two threads a
        # second process busy on one of the two cores makes each of them wait (~20x slower)
        long = run_child("ours", frames=args.long_frames, image_size=128, dtype="float32", minutes=args.minutes,
                         every=500, threads=1)  # fmt: skip
        print(f"  ours at 128 px: {json.dumps({k: v for k, v in long.items() if k != 'samples'})}", flush=True)

    print(f"\n### resident memory, {n}-frame 1024x1024 video, hiera tiny")
    print("| what | frames tracked | RSS before | RSS after | peak RSS |")
    print("|---|---|---|---|---|")
    if meta:
        # only the frame tensor grows with the video: extrapolate by its size a frame
        extra = (n - meta["frames"]) * meta["images_bytes"] / meta["frames"]
        est = f" (measured at {meta['frames']} frames, + {gb(extra)} of frames)" if extra else ""
        print(f"| Meta `init_state`{est} | 0 | {gb(meta['before'])} | {gb(meta['after'] + extra)} "
              f"| {gb(meta['peak'] + extra)} |")
        meta_peak = meta["tracked_peak"] + extra
        print(f"| Meta, then a click and {meta['tracked']} tracked frames (bfloat16 autocast) | {meta['tracked']} "
              f"| | {gb(meta['tracked_after'] + extra)} | {gb(meta_peak)} |")
        grow = (n - 1 - meta["tracked"]) * meta["per_frame_bytes"]
        print(f"| Meta after tracking all {n} frames (estimate: + {meta['per_frame_bytes'] / 1e6:.2f} MB a tracked "
              f"frame, kept) | {n - 1} | | | {gb(meta_peak + grow)} |")
    if ours:
        print(f"| ours, 1024 px, bfloat16, click + propagate for {args.minutes:g} min | {ours['frames']} "
              f"| {gb(ours['before'])} | {gb(ours['after'])} | {gb(ours['peak'])} |")
    if meta and ours:
        print(f"\nours / Meta peak: {ours['peak'] / meta_peak:.3f} against Meta's measured peak "
              f"({meta_peak / ours['peak']:.1f}x less), {ours['peak'] / (meta_peak + grow):.3f} against its estimate "
              f"after {n} frames; Meta init_state took {meta['seconds']:.1f} s for {meta['frames']} frames")
    for label, run in (("1024 px (bfloat16)", ours), ("128 px (float32, one thread)", long)):
        if not run:
            continue
        print(f"\nours at {label}, memory window {run['window']} frames:")
        print("| frames | RSS | stored outputs | elapsed |")
        print("|---|---|---|---|")
        for done, r, stored, secs in run["samples"]:
            print(f"| {done} | {r / 1e6:.0f} MB | {stored / 1e6:.1f} MB | {secs:.0f} s |")
        print(f"peak RSS {gb(run['peak'])}, {run['seconds'] / run['frames'] * 1e3:.0f} ms a frame, "
              f"{run['frames']} of {run['of']} frames")


# ---- part 3: embedding --------------------------------------------------------------


def part_embed(args) -> None:
    from PIL import Image
    from skimage import data

    from src_core.model.build import MODEL_CONFIGS, build_sam_from_config
    from src_core.model.sam2.sam2_base import build_sam2_model

    print(f"\n## embed: one 1024x1024 image, best of {args.repeats} after a warm-up")
    rgb = np.asarray(Image.fromarray(data.astronaut()).resize((1024, 1024), Image.BICUBIC))
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor([0.485, 0.456, 0.406])[:, None, None]) / torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    rows = []
    torch.manual_seed(0)
    sam = build_sam_from_config(MODEL_CONFIGS["vit_b"]).eval()
    padded = sam.preprocess(torch.from_numpy(rgb).permute(2, 0, 1)[None].float())
    for dtype in ("float32", "bfloat16"):
        sam.set_encoder_dtype(getattr(torch, dtype))
        with torch.inference_mode():
            t, note = quiet_best_time(lambda m=sam: m.encode_image(padded), args.repeats, args.wait_quiet)
        rows.append(("vit_b (SAM 1)", dtype, sum(p.numel() for p in sam.image_encoder.parameters()), t))
        print(f"  vit_b {dtype}: {t:.2f} s ({note})", flush=True)
    del sam
    for size in args.embed_sizes:
        model = build_sam2_model(size).eval()
        for dtype in ("float32", "bfloat16"):  # float32 first: bfloat16 rounds the trunk
            model.set_compute_dtype(getattr(torch, dtype))

            def embed(m=model):
                with m.compute_context():
                    return m.forward_image(x)

            with torch.inference_mode():
                t, note = quiet_best_time(embed, args.repeats, args.wait_quiet)
            rows.append((f"sam2.1_hiera_{size}", dtype, sum(p.numel() for p in model.image_encoder.parameters()), t))
            print(f"  {size} {dtype}: {t:.2f} s ({note})", flush=True)
        del model
    base = {d: next(r[3] for r in rows if r[0].startswith("vit_b") and r[1] == d) for d in ("float32", "bfloat16")}
    print("\n| model | encoder parameters | float32 (s) | vs vit_b | bfloat16 (s) | vs vit_b |")
    print("|---|---|---|---|---|---|")
    for name in dict.fromkeys(r[0] for r in rows):
        f, b = (next(r for r in rows if r[0] == name and r[1] == d) for d in ("float32", "bfloat16"))
        print(f"| {name} | {f[2] / 1e6:.1f} M | {f[3]:.2f} | {base['float32'] / f[3]:.2f}x | "
              f"{b[3]:.2f} | {base['bfloat16'] / b[3]:.2f}x |")


# ---- main ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=(*PARTS, "all"), default="all")
    parser.add_argument("--quick", action="store_true",
                        help="a fast smoke run: tiny only, 4 frames, 200-frame memory runs of 1 minute")
    parser.add_argument("--sizes", default="tiny,base_plus", help="speed part: comma-separated sizes")
    parser.add_argument("--frames", type=int, default=10, help="speed part: clip length")
    parser.add_argument("--no-meta-bf16", action="store_true", help="skip Meta under bfloat16 autocast")
    parser.add_argument("--speed-repeats", type=int, default=2, help="speed part: interleaved runs of each")
    parser.add_argument("--wait-quiet", type=float, default=120.0,
                        help="wait up to this many seconds before each timing for other processes to go idle")
    parser.add_argument("--memory-frames", type=int, default=1000)
    parser.add_argument("--long-frames", type=int, default=10000)
    parser.add_argument("--memory-runs", default="meta,ours1024,ours128",
                        help="memory part: which of meta, ours1024, ours128 to run")
    parser.add_argument("--minutes", type=float, default=10.0, help="memory part: limit of each of our runs")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--embed-sizes", default=",".join(SIZES))
    # internal: one memory measurement in its own process
    parser.add_argument("--child", choices=("meta-init", "ours"), help=argparse.SUPPRESS)
    parser.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--image-size", type=int, default=1024, help=argparse.SUPPRESS)
    parser.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    parser.add_argument("--every", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--track", type=int, default=3, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help=argparse.SUPPRESS)
    args = parser.parse_args()
    import warnings

    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    if args.child:
        result = child_meta_init(args) if args.child == "meta-init" else child_ours(args)
        print(json.dumps(result))
        return
    if args.quick:
        args.sizes, args.frames, args.embed_sizes = "tiny", 4, "tiny"
        args.memory_frames, args.long_frames, args.minutes, args.repeats = 200, 2000, 1.0, 1
        args.speed_repeats, args.wait_quiet = 1, 10.0
    args.sizes = args.sizes.split(",")
    args.embed_sizes = args.embed_sizes.split(",")
    print(machine())
    print(f"lscpu: {lscpu_model()}")
    parts = PARTS if args.part == "all" else (args.part,)
    for part in parts:
        start = time.perf_counter()
        {"speed": part_speed, "memory": part_memory, "embed": part_embed}[part](args)
        print(f"({part}: {time.perf_counter() - start:.0f} s)", flush=True)


def lscpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return "?"
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    flags = next((line for line in out.splitlines() if line.startswith("Flags")), "")
    return f"{name}, {'AMX (amx_bf16)' if 'amx_bf16' in flags else 'no AMX'}, " \
           f"{'avx512_bf16' if 'avx512_bf16' in flags else 'no avx512_bf16'}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
