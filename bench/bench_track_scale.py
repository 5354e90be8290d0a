"""Tracking a 1024 x 1024 video with the built-in model: frames per second, where the time goes, output sizes.

Run: ``python bench/bench_track_scale.py [--frames 150] [--side 1024] [--dtype auto]``

A synthetic arena video (two dark animals wandering on a lit, textured floor)
is written as an mp4 and tracked by :class:`~src_core.propagate.run.TrackingRun`
(what ``napari-sam track`` runs) with the built-in ``vit_tiny`` and its own
masks, from two boxes on frame 0. Time is split into reading frames (decoding
the mp4), the model (encoder and decoder), writing outputs as frames are done
(labels store, table, tracks) and the helper itself (prompts, QC, motion); the
exports after the run are timed apart. Sizes are compared with what an int32
array of the whole video would take (what napari-sam 0.1 wrote, twice).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import Timed, machine

from src_core.propagate import ObjectPrompt
from src_core.propagate import outputs as outputs_module
from src_core.propagate.run import RunSettings, TrackingRun


class TimedFrames:
    def __init__(self, frames) -> None:
        self.frames, self.shape, self.dtype, self.timer = frames, frames.shape, frames.dtype, Timed()

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, t):
        return self.timer(self.frames.__getitem__, t)


class TimedPredictor:
    def __init__(self, predictor) -> None:
        self.predictor, self.model, self.timer = predictor, predictor.model, Timed()

    def set_image(self, image, **kwargs):
        return self.timer(self.predictor.set_image, image, **kwargs)

    def predict(self, **kwargs):
        return self.timer(self.predictor.predict, **kwargs)


def centre(t: int, phase: float, side: int) -> tuple[int, int]:
    c = side / 2
    return int(c + 0.33 * side * np.cos(t / 70 + 1.3 * phase)), int(c + 0.28 * side * np.sin(t / 90 + phase))


def arena(n: int, side: int):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:side, :side]
    floor = 170 + 30 * np.exp(-((yy - side / 2) ** 2 + (xx - side / 2) ** 2) / (0.4 * side) ** 2)
    floor = floor + rng.normal(0, 4, (side, side))
    r = side // 40
    by, bx = np.mgrid[-2 * r:2 * r + 1, -3 * r:3 * r + 1]
    body = (by / (1.2 * r)) ** 2 + (bx / (2.2 * r)) ** 2 <= 1
    for t in range(n):
        frame = floor.copy()
        for phase in (0.0, 1.7):
            x, y = centre(t, phase, side)
            window = frame[y - 2 * r:y + 2 * r + 1, x - 3 * r:x + 3 * r + 1]
            window[body] = 40 + 10 * np.sin(t / 5 + phase)
        yield np.repeat(np.clip(frame, 0, 255).astype(np.uint8)[..., None], 3, axis=2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--side", type=int, default=1024)
    parser.add_argument("--dtype", default="auto", help="image encoder precision: auto, float32, bfloat16")
    args = parser.parse_args()
    from src_core.model.build import build_sam
    from src_core.predictor import SamPredictor
    from src_core.video import VideoFrames, write_video

    print(machine())
    n, side = args.frames, args.side
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        video = write_video(tmp / "arena.mp4", arena(n, side), fps=30)
        print(f"video: {n} frames of {side}x{side}, {video.stat().st_size / 1e6:.1f} MB mp4 "
              f"(written in {time.perf_counter() - start:.1f} s)")
        frames = TimedFrames(VideoFrames(video))
        predictor = TimedPredictor(SamPredictor(build_sam("vit_tiny", device="cpu", dtype=args.dtype)))
        r = side // 40
        prompts = [ObjectPrompt(0, i + 1, box=[x - 3 * r - 4, y - 2 * r - 4, x + 3 * r + 4, y + 2 * r + 4])
                   for i, (x, y) in enumerate(centre(0, phase, side) for phase in (0.0, 1.7))]
        write_timer = Timed()
        real_write = outputs_module.TrackingWriter.write
        outputs_module.TrackingWriter.write = lambda self, result: write_timer(real_write, self, result)
        run = TrackingRun(tmp / "out", RunSettings(input=str(video), frames=n, prompts="bench"))
        run.start(prompts, (side, side))
        predictor.set_image(np.asarray(frames.frames[0]))  # warm-up, outside the timing
        predictor.timer.seconds = 0.0
        start = time.perf_counter()
        done = sum(1 for _ in run.track(frames, predictor, prompts))
        total = time.perf_counter() - start
        outputs_module.TrackingWriter.write = real_write
        helper = total - frames.timer.seconds - predictor.timer.seconds - write_timer.seconds
        print(f"\ntracking, built-in vit_tiny ({args.dtype}), 2 objects: {done / total:.2f} frames/s "
              f"({1e3 * total / done:.0f} ms/frame)")
        for name, seconds in (("read frames", frames.timer.seconds), ("model", predictor.timer.seconds),
                              ("write outputs", write_timer.seconds), ("helper", helper)):
            print(f"  {name:14s} {1e3 * seconds / done:8.1f} ms/frame  {seconds / total:6.1%}")
        for what, kwargs in (("trajectories + sorted table/tracks", {}), ("labels.tif (BigTIFF, zlib)", {"tif": True}),
                             ("overlay.mp4", {"video": True})):
            start = time.perf_counter()
            run.export(frames.frames, video="video" in kwargs, tif="tif" in kwargs)
            print(f"export {what}: {time.perf_counter() - start:.1f} s")
        sizes = {f.name: f.stat().st_size for f in (tmp / "out").iterdir() if f.is_file()}
        sizes["labels.zarr"] = sum(f.stat().st_size for f in (tmp / "out" / "labels.zarr").rglob("*") if f.is_file())
        full = n * side * side * 4
        print(f"\noutputs ({n} frames): " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in sorted(sizes.items())))
        print(f"labels.zarr {sizes['labels.zarr'] / 1e6:.2f} MB against {full / 1e9:.2f} GB for an int32 array "
              f"of the video: x{full / sizes['labels.zarr']:.0f} smaller; per 1,500 frames "
              f"{1500 / n * sizes['labels.zarr'] / 1e6:.1f} MB")
        table = np.genfromtxt(tmp / "out" / "table.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
        lost = table[table["status"] == "lost"]
        print(f"rows {len(table)}, lost {len(lost)}"
              + (f" (reasons: {dict(zip(*np.unique(lost['reason'], return_counts=True)))})" if len(lost) else ""))


if __name__ == "__main__":
    main()
