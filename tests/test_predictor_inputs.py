"""SamPredictor on what scientists have, and clear errors for what it can't take."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src_core.device import resolve_device, resolve_dtype
from src_core.model.build import SamConfig, build_sam_from_config
from src_core.predictor import ImageNotSetError, SamPredictor

TINY = SamConfig(64, 2, 2, (1,))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_sam_from_config(TINY)


@pytest.fixture
def predictor(model):
    pred = SamPredictor(model)
    pred.set_image(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    return pred


def test_predict_before_set_image(model):
    pred = SamPredictor(model)
    with pytest.raises(ValueError, match="set_image"):
        pred.predict(point_coords=np.array([[1, 1]]), point_labels=np.array([1]))
    with pytest.raises(RuntimeError, match="set_image"):  # what the reference raises
        pred.get_image_embedding()
    assert issubclass(ImageNotSetError, RuntimeError) and issubclass(ImageNotSetError, ValueError)


@pytest.mark.parametrize(
    "image, message",
    [
        (np.zeros((0, 10), np.uint8), "empty"),
        (np.zeros((1, 1), np.uint8), "1x1|2x2|at least"),
        (np.zeros(10, np.uint8), "1D"),
        (np.zeros((2, 3, 20, 20), np.uint8), "dimension|slice"),
        (np.full((20, 20), np.nan, np.float32), "finite|NaN"),
    ],
    ids=["empty", "1x1", "1d", "4d", "all-nan"],
)
def test_bad_images(model, image, message):
    pred = SamPredictor(model)
    with pytest.raises(ValueError, match=message):
        pred.set_image(image)
    assert not pred.is_image_set


@pytest.mark.parametrize(
    "prompt, message",
    [
        (dict(point_coords=np.array([[100.0, 10.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[-1.0, 10.0]]), point_labels=np.array([1])), "outside"),
        (dict(point_coords=np.array([[10.0, 10.0], [20, 20]]), point_labels=np.array([1])), "one label per point"),
        (dict(point_coords=np.array([[10.0, 10.0]])), "together"),
        (dict(point_coords=np.array([10.0, 10.0]), point_labels=np.array([1])), r"\(N, 2\)"),
        (dict(point_coords=np.array([[10.0, np.nan]]), point_labels=np.array([1])), "NaN"),
        (dict(point_coords=np.array([[10.0, 10.0]]), point_labels=np.array([3])), "1 \\(foreground\\) or 0"),
        (dict(box=np.array([50.0, 10, 20, 40])), "inverted|zero area"),
        (dict(box=np.array([10.0, 10, 10, 40])), "inverted|zero area"),
        (dict(box=np.array([10.0, 10, 40])), "x0, y0, x1, y1"),
        (dict(mask_input=np.zeros((1, 64, 64))), "low-resolution"),
        (
            dict(box=np.array([[1.0, 1, 20, 20], [5, 5, 30, 30]]), point_coords=np.zeros((3, 1, 2)), point_labels=np.ones((3, 1))),
            "batch size",
        ),
    ],
    ids=[
        "point-right-of-image",
        "point-negative",
        "labels-length",
        "labels-missing",
        "coords-1d",
        "coords-nan",
        "label-value",
        "box-inverted",
        "box-zero-area",
        "box-3-values",
        "mask-wrong-size",
        "batch-mismatch",
    ],
)
def test_bad_prompts(predictor, prompt, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompt)


def test_points_on_the_border_are_accepted(predictor):
    masks, iou, low = predictor.predict(
        point_coords=np.array([[0.0, 0.0], [80.0, 60.0]]), point_labels=np.array([1, 0])
    )
    assert masks.shape == (3, 60, 80) and masks.dtype == bool


@pytest.mark.parametrize(
    "image, kwargs",
    [
        (np.random.default_rng(1).integers(0, 65535, (50, 70), dtype=np.uint16), {}),
        (np.random.default_rng(2).random((50, 70)).astype(np.float32) * 1e-3, {}),
        (np.random.default_rng(3).integers(0, 4000, (5, 50, 70), dtype=np.uint16), dict(channels=[0, 2, 4], channel_axis=0)),
        (np.random.default_rng(4).integers(0, 255, (50, 70, 4), dtype=np.uint8), {}),
        (np.random.default_rng(5).integers(0, 4000, (50, 70), dtype=np.int32), dict(contrast_limits=(100, 3000))),
    ],
    ids=["uint16", "float", "multichannel-first", "rgba", "int32-contrast-limits"],
)
def test_scientific_images(model, image, kwargs):
    pred = SamPredictor(model)
    pred.set_image(image, **kwargs)
    assert pred.original_size == (50, 70)
    assert pred.input_size == (731, 1024)
    masks, iou, low = pred.predict(point_coords=np.array([[35, 25]]), point_labels=np.array([1]))
    assert masks.shape == (3, 50, 70) and iou.shape == (3,) and low.shape == (3, 256, 256)


def test_nan_pixels_do_not_poison_the_embedding(model):
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    image[5:10, 5:10] = np.nan
    image[0, 0] = np.inf
    pred = SamPredictor(model)
    pred.set_image(image)
    assert torch.isfinite(pred.get_image_embedding()).all()


def test_bgr_is_reversed(model):
    rgb = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    a, b = SamPredictor(model), SamPredictor(model)
    a.set_image(rgb)
    b.set_image(np.ascontiguousarray(rgb[..., ::-1]), image_format="BGR")
    assert torch.equal(a.get_image_embedding(), b.get_image_embedding())
    with pytest.raises(ValueError, match="image_format"):
        a.set_image(rgb, image_format="HSV")


def test_set_embedding_reuses_features(model, predictor):
    other = SamPredictor(model)
    other.set_embedding(predictor.get_image_embedding(), predictor.original_size)
    prompt = dict(point_coords=np.array([[30, 20]]), point_labels=np.array([1]))
    np.testing.assert_array_equal(other.predict(**prompt)[2], predictor.predict(**prompt)[2])


def test_new_image_clears_cached_decoder_inputs(model):
    pred = SamPredictor(model)
    prompt = dict(point_coords=np.array([[10, 10]]), point_labels=np.array([1]))
    pred.set_image(np.zeros((32, 32, 3), np.uint8))
    first = pred.predict(**prompt, return_logits=True)[0]
    pred.set_image(np.full((32, 32, 3), 200, np.uint8))
    second = pred.predict(**prompt, return_logits=True)[0]
    fresh = SamPredictor(model)
    fresh.set_image(np.full((32, 32, 3), 200, np.uint8))
    np.testing.assert_array_equal(second, fresh.predict(**prompt, return_logits=True)[0])
    assert not np.array_equal(first, second)


def test_set_torch_image_shape_check(model):
    pred = SamPredictor(model)
    with pytest.raises(ValueError, match="longest side"):
        pred.set_torch_image(torch.zeros(1, 3, 100, 100), (100, 100))


def test_device_and_dtype_resolution():
    assert resolve_device(None).type in {"cpu", "cuda", "mps"}
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA"):
            resolve_device("cuda")
    cpu = torch.device("cpu")
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bfloat16", cpu) == torch.bfloat16
    assert resolve_dtype("auto", cpu) in {torch.float32, torch.bfloat16}
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float16", cpu)


def test_cancel_stops_set_image_between_encoder_blocks(model):
    from src_core.jobs import Cancelled

    pred = SamPredictor(model)
    image = np.zeros((40, 40, 3), np.uint8)
    blocks_run = []
    hooks = [
        block.register_forward_hook(lambda *a: (blocks_run.append(1), pred.cancel()))
        for block in model.image_encoder.blocks
    ]
    try:
        with pytest.raises(Cancelled):
            pred.set_image(image)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(blocks_run) == 1  # stopped right after the first block
    assert not pred.is_image_set
    pred.set_image(image)  # a cancel does not stick to the next image
    assert pred.is_image_set
