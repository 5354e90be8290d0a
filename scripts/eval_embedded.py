"""Measure prompt quality of a model: held-out procedural scenes and real images.

    .venv/bin/python scripts/eval_embedded.py                      # the built-in vit_tiny
    .venv/bin/python scripts/eval_embedded.py --checkpoint X.pth   # any SAM checkpoint

Held-out scenes come from scene seeds the training never uses (777 and 778;
training draws scenes from seed 1125, or another given with --scene-seed): each
kind at 256 px, the kinds mixed at 384 px, and close-ups (objects 2-4x larger,
filling the frame or cut by it; training sees them only with --closeups), and
stained tissue (brightfield H&E and immunohistochemistry, nuclei as the objects;
training sees it only with --tissue). Real
images are scikit-image's bundled ones, with a classical segmentation as the
reference:

* coins: the gallery's recipe (Sobel elevation map, markers from two thresholds,
  watershed, holes filled), objects touching the border dropped;
* horse: the silhouette itself (the image is a binary mask, shown as grey levels);
* immunohistochemistry: nuclei from the haematoxylin channel (colour deconvolution,
  Otsu threshold, small objects removed, touching nuclei split by a distance
  watershed) -- itself only approximately right.

And the README's sample (synthetic nuclei 2D, uint16): the 16 nuclei the built-in
model's test clicks on.

Prints mean IoU for one click at the most interior pixel (the most confident of
the three candidate masks; "best/3" is the best of the three, what cycling the
candidates gives), a tight box, and 1-3 corrective clicks (see
src_core/train/evaluate.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_core.model.build import build_sam  # noqa: E402
from src_core.predictor import SamPredictor  # noqa: E402
from src_core.train.data import SceneStream  # noqa: E402
from src_core.train.evaluate import evaluate_prompts  # noqa: E402
from src_core.synthetic.training import SCENE_KINDS, make_training_scene  # noqa: E402

HELD_OUT_SEED = 777


def coins_reference():
    from scipy import ndimage as ndi
    from skimage import data, filters, measure, segmentation

    image = data.coins()
    elevation = filters.sobel(image)
    markers = np.zeros_like(image, np.int32)
    markers[image < 30] = 1
    markers[image > 150] = 2
    foreground = segmentation.watershed(elevation, markers) == 2
    foreground = ndi.binary_fill_holes(foreground)
    labels = segmentation.clear_border(measure.label(foreground))
    labels = measure.label(np.isin(labels, [r.label for r in measure.regionprops(labels) if r.area > 200]))
    return image, labels


def horse_reference():
    from skimage import data

    mask = ~data.horse()
    image = np.where(mask, 60, 200).astype(np.uint8)
    return image, mask.astype(np.int32)


def ihc_reference():
    from scipy import ndimage as ndi
    from skimage import color, data, feature, filters, measure, morphology, segmentation

    image = data.immunohistochemistry()
    haematoxylin = color.rgb2hed(image)[..., 0]
    nuclei = haematoxylin > filters.threshold_otsu(haematoxylin)
    nuclei = morphology.remove_small_objects(ndi.binary_fill_holes(nuclei), max_size=60)
    distance = ndi.distance_transform_edt(nuclei)
    peaks = feature.peak_local_max(distance, min_distance=7, labels=measure.label(nuclei))
    markers = np.zeros(nuclei.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = segmentation.watershed(-distance, markers, mask=nuclei)
    return image, labels


def readme_sample():
    """The sample README's main command opens (nuclei 2D, uint16), with the 16 nuclei
    tests/test_builtin_model.py clicks on (the first of at least 80 pixels)."""
    from src_core.synthetic import make_nuclei_2d

    image, truth = make_nuclei_2d()
    ids = [i for i in np.unique(truth) if i and (truth == i).sum() >= 80][:16]
    return image, np.where(np.isin(truth, ids), truth, 0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny")
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--images", type=int, default=40, help="held-out scenes per kind")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    model = build_sam(args.model if args.checkpoint is None else "auto", checkpoint=args.checkpoint, device="cpu")
    predictor = SamPredictor(model)
    print(f"model: {args.checkpoint or args.model}")
    header = f"{'data':<28}{'objects':>8}{'point':>8}{'best/3':>8}{'box':>8}{'+1':>8}{'+2':>8}{'+3':>8}"
    print(header)
    print("-" * len(header))
    start = time.time()
    rows = []
    for kind in SCENE_KINDS:
        pairs = [make_training_scene(np.random.default_rng([HELD_OUT_SEED, i]), 256, kind=kind) for i in range(args.images)]
        rows.append((f"held-out {kind}", evaluate_prompts(predictor, pairs, max_objects=8)))
    stream = SceneStream(HELD_OUT_SEED + 1, size=384)
    mixed = [stream[i] for i in range(args.images)]
    rows.append(("held-out mixed, 384 px", evaluate_prompts(predictor, mixed, max_objects=8)))
    closeups = SceneStream(HELD_OUT_SEED, size=256, closeups=1.0)
    close = [closeups[i] for i in range(args.images)]
    rows.append(("held-out close-ups", evaluate_prompts(predictor, close, max_objects=8)))
    tissue = [make_training_scene(np.random.default_rng([HELD_OUT_SEED, i]), 256, kind="tissue") for i in range(args.images)]
    rows.append(("held-out stained tissue", evaluate_prompts(predictor, tissue, max_objects=8)))
    for name, make in (("coins (skimage)", coins_reference), ("horse (skimage)", horse_reference),
                       ("immunohistochemistry", ihc_reference), ("README sample, nuclei 2D", readme_sample)):
        rows.append((name, evaluate_prompts(predictor, [make()], max_objects=40)))
    for name, s in rows:
        print(f"{name:<28}{s.objects:>8}{s.point:>8.3f}{s.point_best:>8.3f}{s.box:>8.3f}"
              + "".join(f"{c:>8.3f}" for c in s.clicks[1:]))
    # the targets: the four kinds at 256 px (mixed, close-ups and tissue are shown apart)
    held = [s for name, s in rows if name.startswith("held-out") and name.split()[1] in SCENE_KINDS]
    weights = np.array([s.objects for s in held], float)
    mean = lambda values: float(np.average(values, weights=weights))  # noqa: E731
    print("-" * len(header))
    print(
        f"{'held-out scenes, all kinds':<28}{int(weights.sum()):>8}{mean([s.point for s in held]):>8.3f}"
        f"{mean([s.point_best for s in held]):>8.3f}{mean([s.box for s in held]):>8.3f}"
        + "".join(f"{mean([s.clicks[k] for s in held]):>8.3f}" for k in (1, 2, 3))
    )
    print(f"\n({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
