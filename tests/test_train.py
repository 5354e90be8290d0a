"""Training: scenes, data sources, the interactive simulation, the recipe, checkpoints."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from src_core.model.build import (
    MODEL_CONFIGS,
    SamConfig,
    build_sam,
    build_sam_from_config,
)
from src_core.synthetic.training import ALL_KINDS, make_training_scene
from src_core.train import trainer as trainer_module
from src_core.train.data import (
    ArrayPairs,
    FolderPairs,
    SceneBank,
    SceneStream,
    open_training_data,
    prepare_sample,
)
from src_core.train.evaluate import evaluate_prompts, interior_point, next_click
from src_core.train.simulate import (
    corrective_points,
    corrective_points_torch,
    focal_dice_iou_loss,
    sample_boxes,
    sample_points,
)
from src_core.train.trainer import (
    TrainConfig,
    Trainer,
    TrainingDiverged,
    parameter_groups,
    prepare_step,
)

# a very small SAM (same architecture) so that steps take a fraction of a second
SMALL = SamConfig(64, 2, 2, (1,), image_size=128, patch_size=16, window_size=4)


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_sam_from_config(SMALL)


def nuclei_pair(seed: int = 0, size: int = 96):
    image, labels = make_training_scene(np.random.default_rng(seed), size, kind="nuclei")
    return image, labels


# -- scenes -----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_scenes_are_deterministic_and_labelled(kind):
    a_img, a_lab = make_training_scene(np.random.default_rng(3), (96, 128), kind=kind)
    b_img, b_lab = make_training_scene(np.random.default_rng(3), (96, 128), kind=kind)
    np.testing.assert_array_equal(a_img, b_img)
    np.testing.assert_array_equal(a_lab, b_lab)
    assert a_img.shape[:2] == a_lab.shape == (96, 128)
    ids = np.unique(a_lab)
    assert ids[0] == 0 and len(ids) >= 2
    np.testing.assert_array_equal(ids, np.arange(len(ids)))  # relabelled 1..N
    assert np.bincount(a_lab.ravel())[1:].min() >= 12  # no tiny leftovers


def test_scenes_cover_output_types_and_reject_bad_arguments():
    kinds = set()
    for seed in range(30):
        image, _ = make_training_scene(np.random.default_rng(seed), 64)
        kinds.add((image.dtype.name, image.ndim))
    assert ("uint16", 2) in kinds and ("float32", 2) in kinds and ("float32", 3) in kinds
    with pytest.raises(ValueError, match="kind"):
        make_training_scene(np.random.default_rng(0), 64, kind="galaxies")
    with pytest.raises(ValueError, match="size"):
        make_training_scene(np.random.default_rng(0), 16)


def test_closeups_are_larger_views_of_the_same_kind_of_scene():
    """A close-up keeps the scene kinds' look but its objects fill far more of the frame;
    animals stay one connected body (no tail broken into dots); bad zooms are refused."""
    largest = {1.0: [], 3.0: []}
    for seed in range(12):
        for zoom in largest:
            _, labels = make_training_scene(np.random.default_rng(seed), 96, kind="nuclei", zoom=zoom)
            largest[zoom].append(np.bincount(labels.ravel())[1:].max() / labels.size)
    assert np.median(largest[3.0]) > 4 * np.median(largest[1.0])
    for seed in range(6):
        image, labels = make_training_scene(np.random.default_rng(seed), (96, 128), kind="animals", zoom=4.0)
        assert image.shape[:2] == labels.shape == (96, 128)
        ids = np.unique(labels)
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
        for i in ids[1:]:
            # a body cut by the frame's edge may leave in pieces; what is left of it is
            # still a body, not a dotted line: pieces are few and none is a lone disc
            pieces, n = ndi.label(labels == i)
            assert n <= 3 and np.bincount(pieces.ravel())[1:].min() >= 12
    a = make_training_scene(np.random.default_rng(4), 64, zoom=2.5)
    b = make_training_scene(np.random.default_rng(4), 64, zoom=2.5)
    np.testing.assert_array_equal(a[1], b[1])
    for zoom in (0.5, 9.0):
        with pytest.raises(ValueError, match="zoom"):
            make_training_scene(np.random.default_rng(0), 64, zoom=zoom)


def test_scene_stream_closeups_share_and_default():
    # the default stream is the plain one (earlier runs' scenes are unchanged)
    plain = SceneStream(9, size=64)
    for i in range(3):
        np.testing.assert_array_equal(plain[i][1], make_training_scene(np.random.default_rng([9, i]), 64)[1])
    all_close, none_close = SceneStream(9, size=64, closeups=1.0), SceneStream(9, size=64, closeups=0.0)
    frac = lambda labels: np.bincount(labels.ravel())[1:].max() / labels.size  # noqa: E731
    assert np.median([frac(all_close[i][1]) for i in range(10)]) > 2 * np.median(
        [frac(none_close[i][1]) for i in range(10)])
    bank = SceneBank(9, 2, size=64, closeups=1.0)
    np.testing.assert_array_equal(bank[8][1], all_close[1][1])
    with pytest.raises(ValueError, match="share"):
        SceneStream(0, closeups=1.5)
    with pytest.raises(ValueError, match="zoom"):
        SceneStream(0, closeups=0.5, zoom=(3.0, 2.0))


def test_tissue_scenes_are_stained_slides_with_the_nuclei_labelled():
    """Brightfield RGB (uint8 as scanners write it, or float32) whose nuclei unmix to
    more haematoxylin than the tissue around them; close-ups work; the kind is drawn
    only when asked for."""
    from skimage import color

    dtypes = set()
    for seed in range(8):
        image, labels = make_training_scene(np.random.default_rng([11, seed]), 128, kind="tissue")
        assert image.shape == (128, 128, 3) and labels.shape == (128, 128)
        dtypes.add(image.dtype.name)
        assert labels.max() >= 3
        haematoxylin = color.rgb2hed(image)[..., 0]  # unmixed back from the RGB
        ring = ndi.binary_dilation(labels > 0, iterations=3) & (labels == 0)
        assert np.median(haematoxylin[labels > 0]) > 1.3 * np.median(haematoxylin[ring])
    assert dtypes == {"uint8", "float32"}
    image, labels = make_training_scene(np.random.default_rng(2), 96, kind="tissue", zoom=3.0)
    assert image.shape == (96, 96, 3) and labels.max() >= 1
    stream, plain = SceneStream(4, size=64, tissue=1.0), SceneStream(4, size=64, tissue=0.0)
    assert all(stream[i][0].ndim == 3 for i in range(4))
    for i in range(3):  # no tissue asked for: the stream earlier runs trained on
        np.testing.assert_array_equal(plain[i][1], make_training_scene(np.random.default_rng([4, i]), 64)[1])
    np.testing.assert_array_equal(SceneBank(4, 1, size=64, tissue=1.0)[0][1], stream[0][1])
    with pytest.raises(ValueError, match="share"):
        SceneStream(0, tissue=-0.1)


# -- data ---------------------------------------------------------------------------------


def test_scene_bank_is_the_stream_under_flips_and_rotations():
    bank, stream = SceneBank(5, 3, size=64), SceneStream(5, size=64)
    assert len(bank) == 24
    for scene in range(3):
        image, labels = stream[scene]
        views = [bank[8 * scene + k] for k in range(8)]
        np.testing.assert_array_equal(views[0][0], image)
        np.testing.assert_array_equal(views[0][1], labels)
        for k, (view_image, view_labels) in enumerate(views):
            # the same transform on image and labels: the object under each pixel is kept
            assert view_image.shape[:2] == view_labels.shape and view_image.flags.c_contiguous
            assert sorted(np.unique(view_labels)) == sorted(np.unique(labels))
            turned = np.rot90(labels, k % 4)
            np.testing.assert_array_equal(view_labels, turned[:, ::-1] if k >= 4 else turned)
        # eight different views of one non-symmetric scene
        assert len({v[1].tobytes() for v in views}) == 8
    with pytest.raises(ValueError, match="at least one scene"):
        SceneBank(5, 0)


def test_prepare_sample_resizes_filters_and_limits_masks():
    rng = np.random.default_rng(0)
    labels = np.zeros((100, 200), np.int32)
    labels[10:30, 10:30] = 1
    labels[50:90, 100:180] = 2
    labels[60:62, 20:22] = 3  # 4 pixels, 1 after resizing: dropped
    image = labels.astype(np.float32)
    sample = prepare_sample(image, labels, 128, rng)
    assert sample.image.shape == (3, 128, 128) and sample.masks.shape == (2, 128, 128)
    assert not sample.masks[:, 64:].any()  # 100 x 200 -> 64 x 128, padded below
    assert prepare_sample(image, labels, 128, rng, max_masks=1).masks.shape[0] == 1
    # a mask covering more than 90% of the image is dropped (seed's filter)
    big = np.ones((50, 50), np.int32)
    assert prepare_sample(big.astype(float), big, 128, rng) is None
    jittered = prepare_sample(image, labels, 128, np.random.default_rng(1), jitter=(0.1, 2.0))
    assert jittered is None or jittered.image.shape == (3, 128, 128)


def test_jitter_is_applied_to_the_configured_share_of_samples():
    labels = np.zeros((128, 128), np.int32)  # a grid of 6 x 6 squares: 36 pixels each
    for i in range(10):
        for j in range(10):
            labels[3 + 12 * i : 9 + 12 * i, 3 + 12 * j : 9 + 12 * j] = 1 + 10 * i + j
    image = (labels > 0).astype(np.float32)
    source = ArrayPairs(image[None], labels[None])

    def jittered(config):  # scale 2 shows a quarter of the image, each square 144 pixels
        samples = Trainer(small_model(), source, config)._next_samples()
        return [np.median(s.masks.sum(axis=(1, 2))) > 100 for s in samples]

    some = jittered(TrainConfig(batch_size=40, jitter=(2.0, 2.0), jitter_probability=0.25, seed=4))
    assert 4 <= sum(some) <= 18, sum(some)  # about 10 of 40
    assert all(jittered(TrainConfig(batch_size=8, jitter=(2.0, 2.0), seed=4)))
    assert not any(jittered(TrainConfig(batch_size=8, seed=4)))
    with pytest.raises(ValueError, match="share of the samples"):
        Trainer(small_model(), source, TrainConfig(jitter=(1.0, 2.0), jitter_probability=1.5))
    with pytest.raises(ValueError, match="0 or more"):
        Trainer(small_model(), source, TrainConfig(correction_rounds=-1))


def test_folder_pairs_both_layouts(tmp_path):
    image, labels = nuclei_pair()
    (tmp_path / "a" / "images").mkdir(parents=True)
    (tmp_path / "a" / "labels").mkdir()
    tifffile.imwrite(tmp_path / "a" / "images" / "x.tif", image)
    tifffile.imwrite(tmp_path / "a" / "labels" / "x.tif", labels)
    pairs = FolderPairs(tmp_path / "a")
    assert len(pairs) == 1
    np.testing.assert_array_equal(pairs[0][1], labels)
    (tmp_path / "b").mkdir()
    tifffile.imwrite(tmp_path / "b" / "cell.tif", image)
    tifffile.imwrite(tmp_path / "b" / "cell_labels.tif", labels)
    tifffile.imwrite(tmp_path / "b" / "lonely.tif", image)
    assert [p[0].name for p in FolderPairs(tmp_path / "b").pairs] == ["cell.tif"]


def test_bad_training_data_is_refused_clearly(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image/label pairs"):
        FolderPairs(tmp_path / "empty")
    with pytest.raises(FileNotFoundError):
        open_training_data(tmp_path / "missing")
    image, labels = nuclei_pair()
    with pytest.raises(ValueError, match="size of the image"):
        ArrayPairs(image, labels[:50])
    with pytest.raises(ValueError, match="no objects"):
        ArrayPairs(image, np.zeros_like(labels))
    with pytest.raises(ValueError, match="integers"):
        ArrayPairs(image, labels.astype(float))
    (tmp_path / "m" / "images").mkdir(parents=True)
    (tmp_path / "m" / "labels").mkdir()
    tifffile.imwrite(tmp_path / "m" / "images" / "x.tif", image)
    with pytest.raises(ValueError, match="has no label image"):
        FolderPairs(tmp_path / "m")
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([image, image]))
    with pytest.raises(ValueError, match="--labels"):
        open_training_data(stack)
    tifffile.imwrite(tmp_path / "lab.tif", np.stack([labels]))
    with pytest.raises(ValueError, match="pair up"):
        open_training_data(stack, tmp_path / "lab.tif")


# -- simulation and loss ------------------------------------------------------------------


def test_prompts_come_from_the_ground_truth():
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 64, 64), bool)
    masks[0, 10:20, 30:50] = True
    masks[1, 40:60, 5:15] = True
    points = sample_points(masks, rng)
    for mask, (x, y) in zip(masks, points[:, 0]):
        assert mask[int(y), int(x)]
    boxes = sample_boxes(masks, rng, noise=0.0)
    np.testing.assert_array_equal(boxes, [[30, 10, 50, 20], [5, 40, 15, 60]])
    # corrective clicks land on the error: a missed region gives a positive click
    predicted = masks.copy()
    predicted[0, 10:20, 40:50] = False  # missed the right half
    predicted[1, 0:5, 0:5] = True  # included something outside
    predicted[1, 40:60, 5:15] = True
    coords, labels = corrective_points(predicted, masks, rng)
    x, y = coords[0, 0]
    assert 40 <= x < 50 and 10 <= y < 20 and labels[0, 0] == 1
    error = predicted[1] != masks[1]
    assert error[int(coords[1, 0, 1]), int(coords[1, 0, 0])] and labels[1, 0] == 0


def test_corrective_clicks_in_torch_follow_the_same_rule():
    masks = torch.zeros(3, 64, 48, dtype=torch.bool)
    masks[0, 10:20, 30:46] = True
    masks[1, 40:60, 5:15] = True
    masks[2, 5:9, 5:9] = True
    predicted = masks.clone()
    predicted[0, 10:20, 40:46] = False  # missed the right part
    predicted[1, 0:5, 0:5] = True  # included something outside
    generator = torch.Generator().manual_seed(0)
    coords, labels = corrective_points_torch(predicted, masks, generator)
    assert coords.shape == (3, 1, 2) and labels.shape == (3, 1)
    x, y = coords[0, 0].tolist()
    assert 40 <= x < 46 and 10 <= y < 20 and labels[0, 0] == 1
    x, y = coords[1, 0].tolist()
    assert x < 5 and y < 5 and labels[1, 0] == 0
    x, y = coords[2, 0].tolist()  # perfect prediction: a positive click inside the object
    assert 5 <= x < 9 and 5 <= y < 9 and labels[2, 0] == 1
    # the same seed gives the same clicks; the click is uniform over the error region
    again, _ = corrective_points_torch(predicted, masks, torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, coords)
    truth = torch.zeros(2000, 8, 8, dtype=torch.bool)
    truth[:, 2:4, 2:4] = True
    coords, labels = corrective_points_torch(torch.zeros_like(truth), truth, generator)
    cells = ((coords[:, 0, 1] - 2.5) * 2 + (coords[:, 0, 0] - 2.5)).long()
    counts = torch.bincount(cells, minlength=4)
    assert len(counts) == 4 and counts.min() > 400 and bool(labels.all()), counts
    with pytest.raises(ValueError, match="must be equal"):
        corrective_points_torch(predicted[:2], masks)


def test_loss_prefers_the_truth_and_trains_only_the_best_candidate():
    truth = torch.zeros(1, 32, 32, dtype=torch.bool)
    truth[0, 8:24, 8:24] = True
    good = torch.where(truth, 10.0, -10.0)[:, None]
    bad = -good
    iou = torch.tensor([[1.0]])
    low, actual = focal_dice_iou_loss(good, truth, iou)
    high, _ = focal_dice_iou_loss(bad, truth, torch.tensor([[0.0]]))
    assert low < 0.01 < high and actual.item() == 1.0
    # with three candidates, a good one among bad ones gives the good one's mask loss
    mixed, _ = focal_dice_iou_loss(torch.cat([bad, good, bad], 1), truth, torch.tensor([[0.0, 1.0, 0.0]]))
    assert mixed < 0.01


# -- recipe ---------------------------------------------------------------------------------


def test_learning_rate_schedule_and_layer_decay():
    config = TrainConfig(steps=900, lr=8e-4, warmup=250, decay_at=(2 / 3, 8 / 9), decay_factor=0.1)
    assert config.lr_at(0) == pytest.approx(8e-4 / 250)
    assert config.lr_at(249) == pytest.approx(8e-4)
    assert config.lr_at(599) == pytest.approx(8e-4)
    assert config.lr_at(600) == pytest.approx(8e-5)
    assert config.lr_at(800) == pytest.approx(8e-6)
    model = small_model()
    groups = parameter_groups(model, TrainConfig(layer_decay=0.5, weight_decay=0.1))
    scales = {}
    for group in groups:
        for p in group["params"]:
            scales[id(p)] = (group["lr_scale"], group["weight_decay"])
    depth = len(model.image_encoder.blocks)
    assert scales[id(model.image_encoder.patch_embed.proj.weight)] == (0.5 ** (depth + 1), 0.1)
    assert scales[id(model.image_encoder.blocks[0].attn.qkv.weight)] == (0.5**depth, 0.1)
    assert scales[id(model.mask_decoder.iou_token.weight)] == (1.0, 0.1)
    assert scales[id(model.image_encoder.blocks[0].norm1.weight)][1] == 0.0  # no decay on norms
    assert scales[id(model.image_encoder.pos_embed)][1] == 0.0


def test_drop_path_only_while_training():
    model = small_model()
    Trainer(model, ArrayPairs(*nuclei_pair()), TrainConfig(drop_path=0.4))
    assert model.image_encoder.blocks[-1].drop_path == pytest.approx(0.4)
    x = torch.randn(1, 3, 128, 128)
    model.eval()
    with torch.no_grad():
        a, b = model.image_encoder(x), model.image_encoder(x)
    torch.testing.assert_close(a, b)


def _fixed_batch_loss(model, pair) -> float:
    """Loss on one fixed sample with fixed prompts (no gradient)."""
    trainer = Trainer(model, ArrayPairs(*pair), TrainConfig(batch_size=1, masks_per_image=8, correction_rounds=0, box_probability=1.0, drop_path=0.0, seed=123))
    model.eval()
    with torch.no_grad():
        sample = trainer._next_samples()[0]
        images = torch.from_numpy(sample.image[None])
        embedding = model.image_encoder(model.preprocess(images))
        loss, _ = trainer._simulate(embedding, sample, torch.autocast("cpu", enabled=False))
    return float(loss)


def test_a_short_run_lowers_the_loss_on_a_fixed_batch():
    pair = nuclei_pair(seed=5)
    model = small_model()
    before = _fixed_batch_loss(model, pair)
    config = TrainConfig(steps=25, batch_size=1, masks_per_image=8, lr=1e-3, warmup=2, drop_path=0.0, layer_decay=1.0, seed=1)
    losses = Trainer(model, ArrayPairs(*pair), config).train()
    assert len(losses) == 25 and all(np.isfinite(losses))
    after = _fixed_batch_loss(model, pair)
    assert after < 0.7 * before, (before, after)


def test_checkpoint_resume_continues_exactly(tmp_path):
    pair = nuclei_pair(seed=2)
    config = dict(steps=6, batch_size=1, masks_per_image=4, lr=5e-4, warmup=2, drop_path=0.1, seed=7, checkpoint_every=3)
    straight = small_model()
    Trainer(straight, ArrayPairs(*pair), TrainConfig(**config)).train()

    out = tmp_path / "model.pth"
    first = small_model()
    run = Trainer(first, ArrayPairs(*pair), TrainConfig(**config), output=out).run()
    for _ in range(4):  # interrupted after step 4; the last save was at step 3
        next(run)
    run.close()
    resumed = Trainer(small_model(seed=99), ArrayPairs(*pair), TrainConfig(**config), output=out)
    resumed.resume()
    assert resumed.step == 3
    resumed.train()
    for (name, a), b in zip(straight.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)


def test_step_seeded_batches_are_the_same_for_any_number_of_workers(tmp_path):
    """With ``data_workers`` set, a step's batch depends on (seed, step) only: one run
    in this process and one with two DataLoader workers train the same weights, a
    resumed run continues exactly, and the batches differ from step to step."""
    pair = ArrayPairs(*nuclei_pair(seed=4))
    config = dict(steps=4, batch_size=2, masks_per_image=3, lr=5e-4, warmup=2, drop_path=0.1, seed=11,
                  correction_rounds=2, box_probability=0.5, checkpoint_every=2)
    a = prepare_step(pair, TrainConfig(**config), 128, 0)
    b = prepare_step(pair, TrainConfig(**config), 128, 0)
    c = prepare_step(pair, TrainConfig(**config), 128, 1)
    assert len(a) == 2 and all(p.sample.masks.shape[1:] == (128, 128) for p in a)
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p.sample.image, q.sample.image)
        np.testing.assert_array_equal(p.prompts, q.prompts)
        assert (p.use_box, p.rounds, p.click_seed) == (q.use_box, q.rounds, q.click_seed)
    assert [p.click_seed for p in a] != [p.click_seed for p in c]
    for p in a:
        assert p.prompts.shape == ((len(p.sample.masks), 4) if p.use_box else (len(p.sample.masks), 1, 2))

    in_process = small_model()
    records = list(Trainer(in_process, pair, TrainConfig(**config, data_workers=0)).run())
    assert len(records) == 4 and all(np.isfinite(r["loss"]) for r in records)
    two_workers = small_model()
    out = tmp_path / "model.pth"
    run = Trainer(two_workers, pair, TrainConfig(**config, data_workers=2), output=out).run()
    for _ in range(3):  # interrupted after step 3; the last save was at step 2
        next(run)
    run.close()
    resumed = Trainer(small_model(seed=5), pair, TrainConfig(**config, data_workers=2), output=out)
    resumed.resume()
    assert resumed.step == 2
    resumed.train()
    for (name, x), y in zip(in_process.state_dict().items(), resumed.model.state_dict().values()):
        torch.testing.assert_close(x, y, msg=name)
    legacy = small_model()
    Trainer(legacy, pair, TrainConfig(**config)).train()  # the trainer's own stream: other batches
    assert any(not torch.equal(x, y) for x, y in zip(legacy.state_dict().values(), in_process.state_dict().values()))
    for bad, message in ((dict(data_workers=-1), "data_workers"), (dict(data_workers=1, prefetch=0), "prefetch")):
        with pytest.raises(ValueError, match=message):
            Trainer(small_model(), pair, TrainConfig(**config, **bad))


def test_checkpoint_is_in_the_official_layout(tmp_path):
    out = tmp_path / "tiny.pth"
    model = build_sam_from_config(MODEL_CONFIGS["vit_tiny"])
    config = TrainConfig(steps=1, batch_size=1, masks_per_image=2, drop_path=0.0, bf16=True)
    Trainer(model, SceneStream(0, size=128), config, output=out).train()
    state = torch.load(out, weights_only=True)
    assert set(state) == set(build_sam_from_config(MODEL_CONFIGS["vit_tiny"]).state_dict())
    loaded = build_sam("vit_tiny", checkpoint=out, device="cpu")
    torch.testing.assert_close(loaded.state_dict()["mask_decoder.iou_token.weight"], model.state_dict()["mask_decoder.iou_token.weight"])


def test_checkpoints_load_at_the_input_size_they_were_trained_at(tmp_path):
    """The built-in vit_tiny is 512 px now; a vit_tiny checkpoint of 256 px (the
    earlier built-in model, or a fine-tuned copy of it) still loads, at 256 px."""
    from tiny_geometry import TINY_256

    from src_core.model.build import config_for_weights
    from src_core.predictor import SamPredictor

    assert MODEL_CONFIGS["vit_tiny"].image_size == 512
    torch.manual_seed(0)
    path = tmp_path / "tiny256.pth"
    torch.save(build_sam_from_config(TINY_256).state_dict(), path)
    for model_type in ("vit_tiny", "auto"):
        loaded = build_sam(model_type, checkpoint=path, device="cpu")
        assert loaded.image_encoder.img_size == 256
        assert loaded.prompt_encoder.image_embedding_size == (16, 16)
    predictor = SamPredictor(loaded)
    predictor.set_image(np.zeros((300, 200), np.uint8))
    masks, scores, low_res = predictor.predict(point_coords=np.array([[50.0, 60.0]]), point_labels=np.array([1]))
    assert masks.shape == (3, 300, 200) and low_res.shape == (3, 64, 64)
    official = MODEL_CONFIGS["vit_b"]
    assert config_for_weights(official, {"image_encoder.pos_embed": torch.zeros(1, 64, 64, 768)}) is official
    assert config_for_weights(official, {}) is official


def test_position_tables_resize_to_another_input():
    """--init-from-shipped at another --image-size: the absolute embedding and the
    global blocks' relative tables are resized, the windowed blocks' kept."""
    from tiny_geometry import TINY_256

    from src_core.model.build import resize_position_tables

    torch.manual_seed(0)
    state = build_sam_from_config(TINY_256).state_dict()
    state["image_encoder.pos_embed"] = torch.full_like(state["image_encoder.pos_embed"], 0.25)
    for key in [k for k in state if "rel_pos" in k]:  # zeros when untrained
        state[key] = torch.randn_like(state[key])
    resized = resize_position_tables(state, MODEL_CONFIGS["vit_tiny"])
    build_sam_from_config(MODEL_CONFIGS["vit_tiny"]).load_state_dict(resized, strict=True)
    assert resized["image_encoder.pos_embed"].shape == (1, 32, 32, 192)
    torch.testing.assert_close(resized["image_encoder.pos_embed"], torch.full((1, 32, 32, 192), 0.25))
    for block in range(6):
        key = f"image_encoder.blocks.{block}.attn.rel_pos_h"
        if block in TINY_256.encoder_global_attn_indexes:
            assert state[key].shape[0] == 31 and resized[key].shape[0] == 63
            # the ends of the table (the largest offsets either way) stay where they were
            torch.testing.assert_close(resized[key][[0, -1]], state[key][[0, -1]], atol=0.05, rtol=0)
        else:
            assert resized[key] is state[key]
    unchanged = resize_position_tables(state, TINY_256)
    assert all(unchanged[k] is state[k] for k in state)
    with pytest.raises(ValueError, match="pos_embed"):
        resize_position_tables({}, TINY_256)


def test_divergence_stops_without_replacing_the_good_checkpoint(tmp_path, monkeypatch):
    out = tmp_path / "model.pth"
    pair = nuclei_pair()
    config = TrainConfig(steps=4, batch_size=1, masks_per_image=2, checkpoint_every=1, drop_path=0.0)
    trainer = Trainer(small_model(), ArrayPairs(*pair), config, output=out)
    run = trainer.run()
    next(run)
    good = out.read_bytes()

    def diverged(*args, **kwargs):
        return torch.tensor(float("nan"), requires_grad=True), torch.zeros(1, 1)

    monkeypatch.setattr(trainer_module, "focal_dice_iou_loss", diverged)
    with pytest.raises(TrainingDiverged, match="diverged"):
        next(run)
    assert out.read_bytes() == good
    assert not list(tmp_path.glob("*.partial"))


def test_frozen_encoder_is_not_trained():
    model = small_model()
    before = model.image_encoder.blocks[0].attn.qkv.weight.clone()
    config = TrainConfig(steps=2, batch_size=1, masks_per_image=2, train_encoder=False, warmup=1)
    Trainer(model, ArrayPairs(*nuclei_pair()), config).train()
    torch.testing.assert_close(model.image_encoder.blocks[0].attn.qkv.weight, before)


def test_should_stop_cancels_between_steps():
    from src_core.jobs import Cancelled

    model = small_model()
    trainer = Trainer(model, ArrayPairs(*nuclei_pair()), TrainConfig(steps=5, batch_size=1, masks_per_image=2, warmup=1))
    steps = []
    with pytest.raises(Cancelled, match="training was cancelled"):
        for record in trainer.run(should_stop=lambda: len(steps) >= 2):
            steps.append(record["step"])
    assert len(steps) == 2 and trainer.step == 2 and not model.training  # back in eval mode


# -- evaluation --------------------------------------------------------------------------


def test_click_rules():
    truth = np.zeros((40, 40), bool)
    truth[5:35, 5:35] = True
    assert interior_point(truth) == (19.0, 19.0) or interior_point(truth) == (20.0, 20.0)
    predicted = truth.copy()
    predicted[5:35, 20:35] = False  # the right half is missed
    (x, y), label = next_click(predicted, truth)
    assert label == 1 and x >= 20
    predicted = truth.copy()
    predicted[0:40, 36:40] = True  # an extra strip
    (x, y), label = next_click(predicted, truth)
    assert label == 0 and x >= 36


def test_evaluate_prompts_with_a_perfect_predictor():
    from standin_predictor import StandInPredictor

    labels = np.zeros((80, 80), np.int32)
    labels[10:30, 10:30] = 1
    labels[45:70, 40:75] = 2
    image = (labels > 0).astype(np.float32)
    scores = evaluate_prompts(StandInPredictor(), [(image, labels)], corrections=2)
    assert scores.objects == 2
    assert scores.point == pytest.approx(1.0) and scores.box == pytest.approx(1.0)
    assert len(scores.clicks) == 3
    assert scores.point_best == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no objects"):
        evaluate_prompts(StandInPredictor(), [(image, np.zeros_like(labels))])

    class Misranking(StandInPredictor):  # most confident in the eroded candidate
        def predict(self, *args, **kwargs):
            masks, scores, logits = super().predict(*args, **kwargs)
            return masks, (scores[[1, 0, 2]] if len(scores) == 3 else scores), logits

    ranked = evaluate_prompts(Misranking(), [(image, labels)], corrections=0)
    assert ranked.point < 0.95 and ranked.point_best == pytest.approx(1.0)
    assert ranked.as_dict()["point_best"] == ranked.point_best


def test_embedded_training_script_refuses_the_held_out_scenes():
    script = Path(__file__).resolve().parents[1] / "scripts" / "train_embedded.py"
    for flags, message in ((["--scene-seed", "777"], "held-out"), (["--correction-rounds", "-1"], "0 or more"),
                           (["--closeups", "1.5"], "share"), (["--image-size", "100"], "multiple of 16"),
                           (["--tissue", "2"], "share"), (["--minutes", "0"], "positive"),
                           (["--minutes", "5", "--resume"], "--resume"),
                           (["--minutes", "5", "--warmup", "30"], "warm-up"),
                           (["--data-workers", "-1"], "--data-workers"), (["--batch-size", "0"], "--batch-size"),
                           (["--loss-size", "300"], "--loss-size")):
        done = subprocess.run([sys.executable, str(script), *flags], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr, done.stderr


def test_embedded_training_script_time_budget_and_float16_copy(tmp_path):
    """``--minutes`` times steps 10-40 and fixes the number of steps from it; the run
    then ends at that step, and ``--fp16-copy`` holds the float16 weights it shipped."""
    import re

    script = Path(__file__).resolve().parents[1] / "scripts" / "train_embedded.py"
    out, copy = tmp_path / "run" / "vit_tiny.pth", tmp_path / "fp16.pth"
    done = subprocess.run(
        [sys.executable, str(script), "--out", str(out), "--init-from-shipped", "--image-size", "64",
         "--minutes", "0.05", "--warmup", "50", "--threads", "2", "--fp16-copy", str(copy)],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stderr
    chosen = re.search(r"training for (\d+) steps", done.stdout)
    assert chosen, done.stdout
    steps = int(chosen.group(1))
    assert steps >= 41  # never fewer than the timed steps
    state = torch.load(str(out) + ".state", map_location="cpu", weights_only=False)
    assert state["step"] == steps and state["config"]["steps"] == steps
    half = torch.load(copy, map_location="cpu")
    full = torch.load(out, map_location="cpu")
    assert set(half) == set(full)
    floats = [k for k, v in full.items() if v.is_floating_point()]
    assert floats and all(half[k].dtype == torch.float16 for k in floats)
    for key in floats[:5]:
        torch.testing.assert_close(half[key].float(), full[key], atol=1e-2, rtol=1e-2)


def test_first_round_is_supervised_when_corrective_rounds_follow(monkeypatch):
    """With corrective rounds the lone first prompt gets its own loss (and gradient);
    without ``supervise_first_round`` only the last round is trained."""
    calls = []
    real = trainer_module.focal_dice_iou_loss

    def counting(logits, *args, **kwargs):
        calls.append(logits.requires_grad)
        return real(logits, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "focal_dice_iou_loss", counting)
    pair = ArrayPairs(*nuclei_pair())

    def losses_per_step(supervise: bool, steps: int = 4) -> list[list[bool]]:
        config = TrainConfig(steps=steps, batch_size=1, masks_per_image=2, correction_rounds=3, warmup=1,
                             box_probability=0.0, supervise_first_round=supervise, seed=3)
        trainer, out = Trainer(small_model(), pair, config), []
        for _ in range(steps):
            calls.clear()
            trainer.train_step()
            out.append(list(calls))
        return out

    supervised = losses_per_step(True)
    assert all(c in ([True], [True, True]) for c in supervised), supervised
    assert [True, True] in supervised  # 3 of 4 samples have corrective rounds
    assert losses_per_step(False) == [[True]] * 4


def test_losses_at_a_smaller_side_are_close_and_still_train(monkeypatch):
    """``loss_size`` computes the losses at a fraction of the input: on the same
    sample and prompts the loss is close to the full-size one, the masks it is
    computed against are the truth downsampled by area, corrective clicks still come
    from the full-size prediction, and a short run lowers the full-size loss."""
    pair = nuclei_pair(seed=5)
    shapes = []
    real = trainer_module.focal_dice_iou_loss

    def recording(logits, truth, *args, **kwargs):
        shapes.append((tuple(logits.shape[-2:]), tuple(truth.shape[-2:])))
        return real(logits, truth, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "focal_dice_iou_loss", recording)

    def loss_with(loss_size, rounds=0):
        model = small_model()
        model.eval()
        config = TrainConfig(batch_size=1, masks_per_image=8, correction_rounds=rounds, box_probability=1.0,
                             drop_path=0.0, seed=123, loss_size=loss_size)
        trainer = Trainer(model, ArrayPairs(*pair), config)
        with torch.no_grad():
            sample = trainer._next_samples()[0]
            embedding = model.image_encoder(model.preprocess(torch.from_numpy(sample.image[None])))
            loss, iou = trainer._simulate(embedding, sample, torch.autocast("cpu", enabled=False))
        return float(loss), float(iou), sample

    full, full_iou, sample = loss_with(None)
    assert shapes == [((128, 128), (128, 128))]
    shapes.clear()
    half, half_iou, _ = loss_with(64)
    assert shapes == [((64, 64), (64, 64))]
    assert half == pytest.approx(full, rel=0.1) and half_iou == pytest.approx(full_iou, abs=0.05)
    # the downsampled truth is each mask's area, halved per side
    truth = torch.as_tensor(sample.masks)
    small = torch.nn.functional.interpolate(truth[None].float(), (64, 64), mode="area")[0] >= 0.5
    assert np.allclose(small.flatten(1).sum(1).numpy() * 4, truth.flatten(1).sum(1).numpy(), rtol=0.2)

    clicks = []
    real_clicks = trainer_module.corrective_points

    def recording_clicks(pred, truth, rng):
        clicks.append(pred.shape)
        return real_clicks(pred, truth, rng)

    monkeypatch.setattr(trainer_module, "corrective_points", recording_clicks)
    shapes.clear()
    loss_with(64, rounds=3)
    assert clicks and all(shape[-2:] == (128, 128) for shape in clicks)
    assert all(s == ((64, 64), (64, 64)) for s in shapes)

    model = small_model()
    before = _fixed_batch_loss(model, pair)
    config = TrainConfig(steps=25, batch_size=1, masks_per_image=8, lr=1e-3, warmup=2, drop_path=0.0,
                         layer_decay=1.0, seed=1, loss_size=64)
    losses = Trainer(model, ArrayPairs(*pair), config).train()
    assert len(losses) == 25 and all(np.isfinite(losses))
    assert _fixed_batch_loss(model, pair) < 0.7 * before

    with pytest.raises(ValueError, match="loss_size must divide"):
        Trainer(small_model(), ArrayPairs(*pair), TrainConfig(loss_size=100))


def test_train_command_end_to_end(tmp_path, capsys):
    """``napari-sam train`` on a folder of TIFF pairs from the built-in model: writes a
    loadable checkpoint, resumes it, and refuses bad data with the file named."""
    from src_core.checkpoints import embedded_checkpoint
    from src_core.cli import main

    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 64)" in text and "(default: 0)" in text and "--last-round-only" in text
    data = tmp_path / "data"
    data.mkdir()
    for k in range(2):
        image, labels = nuclei_pair(seed=k)
        tifffile.imwrite(data / f"img{k}.tif", image)
        tifffile.imwrite(data / f"img{k}_labels.tif", labels)
    out = tmp_path / "tuned.pth"
    common = ["--from", "vit_tiny", "--batch-size", "1", "--masks-per-image", "2", "--warmup", "1",
              "--device", "cpu", "--checkpoint-every", "1"]
    assert main(["train", str(data), "-o", str(out), "--steps", "2", *common]) == 0
    tuned = build_sam("vit_tiny", checkpoint=out, device="cpu").state_dict()
    shipped = build_sam("vit_tiny", checkpoint=embedded_checkpoint(), device="cpu").state_dict()
    assert set(tuned) == set(shipped)
    assert any(not torch.equal(tuned[k], shipped[k].to(tuned[k].dtype)) for k in tuned)
    assert torch.load(f"{out}.state", weights_only=False)["step"] == 2
    # resumed with the batches prepared in a DataLoader worker process
    assert main(["train", str(data), "-o", str(out), "--steps", "3", "--resume", "--workers", "1", *common]) == 0
    assert torch.load(f"{out}.state", weights_only=False)["step"] == 3
    capsys.readouterr()
    assert main(["train", str(data), "-o", str(tmp_path / "x.pth"), "--workers", "-1", *common]) == 2
    assert "--workers" in capsys.readouterr().err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", str(empty), "-o", str(tmp_path / "x.pth"), *common]) == 2
    assert str(empty) in capsys.readouterr().err
    tifffile.imwrite(data / "img1_labels.tif", np.zeros((50, 50), np.int32))  # wrong shape
    before = out.read_bytes()
    assert main(["train", str(data), "-o", str(out), "--steps", "2", *common]) == 2
    assert "img1" in capsys.readouterr().err
    # a bad file read in a worker process is named too (a seed whose first batch reads it)
    seed = next(s for s in range(100) if np.random.default_rng([s, 0]).integers(2) == 1)
    worker_out = tmp_path / "w.pth"
    assert main(["train", str(data), "-o", str(worker_out), "--steps", "2", "--workers", "1", "--seed", str(seed),
                 *common]) == 2
    err = capsys.readouterr().err
    assert "img1" in err and "labels must be" in err and "Traceback" not in err
    assert not worker_out.exists()
    assert out.read_bytes() == before  # the good checkpoint is kept
    assert not (tmp_path / "x.pth").exists()
