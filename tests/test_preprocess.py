"""src_core.preprocess: conversion to RGB, resize and prompt transforms."""

import warnings

import numpy as np
import pytest
import torch
from segment_anything.utils.transforms import ResizeLongestSide

from src_core.preprocess import (
    image_to_tensor,
    preprocess_shape,
    resize_longest_side,
    to_rgb,
    transform_boxes,
    transform_coords,
)

SIZES = [(300, 500), (1024, 1024), (77, 1200), (1500, 600)]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# --- parity with Meta's reference -------------------------------------------


@pytest.mark.parametrize("h, w", SIZES)
def test_uint8_resize_matches_reference(rng, h, w):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours = resize_longest_side(to_rgb(image), 1024)
    theirs = ResizeLongestSide(1024).apply_image(image)
    assert ours.dtype == np.uint8
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("h, w", SIZES + [(1, 1), (7, 3), (1023, 1)])
@pytest.mark.parametrize("long_side", [1024, 256])
def test_preprocess_shape_matches_reference(h, w, long_side):
    assert preprocess_shape(h, w, long_side) == ResizeLongestSide.get_preprocess_shape(
        h, w, long_side
    )


@pytest.mark.parametrize("h, w", SIZES)
def test_coords_and_boxes_match_reference(rng, h, w):
    ref = ResizeLongestSide(1024)
    coords = rng.uniform(0, 500, (2, 5, 2))
    boxes = rng.uniform(0, 500, (6, 4))
    coords_before, boxes_before = coords.copy(), boxes.copy()
    np.testing.assert_array_equal(
        transform_coords(coords, (h, w), 1024), ref.apply_coords(coords, (h, w))
    )
    np.testing.assert_array_equal(
        transform_boxes(boxes, (h, w), 1024), ref.apply_boxes(boxes, (h, w))
    )
    np.testing.assert_array_equal(coords, coords_before)
    np.testing.assert_array_equal(boxes, boxes_before)


def test_single_box_and_integer_coords():
    box = transform_boxes(np.array([10, 20, 30, 40]), (512, 256), 1024)
    assert box.shape == (4,) and box.dtype == np.float64
    np.testing.assert_array_equal(box, [20.0, 40.0, 60.0, 80.0])
    np.testing.assert_array_equal(transform_coords([[1, 2]], (512, 256), 1024), [[2.0, 4.0]])


# --- to_rgb: layouts --------------------------------------------------------


def test_uint8_rgb_is_unchanged_copy(rng):
    image = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    out = to_rgb(image)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


def test_gray_becomes_three_identical_channels(rng):
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    out = to_rgb(gray)
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)
    np.testing.assert_array_equal(to_rgb(gray[..., None]), out)


def test_rgba_drops_alpha(rng):
    rgba = rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(rgba), rgba[..., :3])


def test_channels_first_rgb_is_detected(rng):
    chw = rng.integers(0, 256, (3, 20, 30), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb(chw), np.moveaxis(chw, 0, -1))


def test_channel_selection_last_axis(rng):
    image = rng.uniform(0, 1000, (20, 30, 5)).astype(np.float32)
    one = to_rgb(image, channel_axis=-1, channels=[4])
    assert one.dtype == np.float32 and one.shape == (20, 30, 3)
    assert np.array_equal(one[..., 0], one[..., 1]) and np.array_equal(one[..., 0], one[..., 2])
    two = to_rgb(image, channel_axis=-1, channels=[1, 3])
    assert np.all(two[..., 2] == 0)
    # Per-channel percentiles: each shown channel spans the full range.
    for c in range(2):
        assert two[..., c].min() == 0 and two[..., c].max() == 255
    three = to_rgb(image, channel_axis=-1, channels=(0, 2, 4))
    np.testing.assert_array_equal(three[..., 1], to_rgb(image, channel_axis=-1, channels=[2])[..., 0])


def test_channel_selection_first_axis(rng):
    image = rng.integers(0, 4000, (5, 20, 30), dtype=np.uint16)
    first = to_rgb(image, channel_axis=0, channels=[1, 2, 4])
    last = to_rgb(np.moveaxis(image, 0, -1), channel_axis=-1, channels=[1, 2, 4])
    np.testing.assert_array_equal(first, last)


def test_uint8_channel_selection_keeps_values(rng):
    image = rng.integers(0, 256, (20, 30, 5), dtype=np.uint8)
    out = to_rgb(image, channel_axis=-1, channels=[3, 0])
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out[..., :2], image[..., [3, 0]])
    assert np.all(out[..., 2] == 0)


# --- to_rgb: intensities ----------------------------------------------------


def test_uint16_percentiles_span_full_range(rng):
    image = rng.integers(1000, 3000, (64, 64), dtype=np.uint16)
    out = to_rgb(image)
    assert out.dtype == np.float32
    assert out.min() == 0 and out.max() == 255
    assert 0 < np.median(out) < 255


def test_contrast_limits_respected():
    image = np.array([[100, 200], [300, 400]], dtype=np.uint16)
    out = to_rgb(image, contrast_limits=(200, 300))
    np.testing.assert_array_equal(out[..., 0], [[0, 0], [255, 255]])
    mid = to_rgb(np.array([[100, 150], [200, 50]], dtype=np.float64), contrast_limits=(100, 200))
    np.testing.assert_allclose(mid[..., 0], [[0, 127.5], [255, 0]])


def test_contrast_limits_on_uint8_rescale():
    image = np.full((4, 4, 3), 128, dtype=np.uint8)
    out = to_rgb(image, contrast_limits=(0, 128))
    assert out.dtype == np.float32 and np.all(out == 255)


def test_contrast_limits_per_channel():
    image = np.stack([np.full((4, 4), 10.0), np.full((4, 4), 20.0)], axis=-1)
    out = to_rgb(image, channels=[0, 1], contrast_limits=[(0, 20), (0, 40)])
    np.testing.assert_allclose(out[0, 0], [127.5, 127.5, 0])


def test_nan_and_inf_do_not_poison():
    image = np.linspace(0, 100, 64, dtype=np.float64).reshape(8, 8)
    image[0, 0], image[0, 1], image[0, 2] = np.nan, np.inf, -np.inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb(image, percentiles=(0, 100))
    assert np.isfinite(out).all()
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 255 and out[0, 2, 0] == 0
    # Percentiles ignore non-finite values: the finite maximum maps to 255.
    assert out[7, 7, 0] == 255 and out[0, 3, 0] == 0


def test_constant_image_is_zero():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = to_rgb(np.full((8, 8), 7.5, dtype=np.float32))
        ints = to_rgb(np.full((8, 8), 300, dtype=np.uint16))
    assert np.all(out == 0) and np.all(ints == 0)


def test_sparse_bright_spots_stay_visible():
    image = np.zeros((100, 100), dtype=np.uint16)
    image[50, 50] = 1000
    out = to_rgb(image)
    assert out[50, 50, 0] == 255 and out[0, 0, 0] == 0


def test_bool_becomes_0_255():
    mask = np.zeros((4, 5), dtype=bool)
    mask[1, 2] = True
    out = to_rgb(mask)
    assert out.dtype == np.uint8
    assert out[1, 2].tolist() == [255, 255, 255] and out.sum() == 3 * 255


@pytest.mark.parametrize("dtype", [np.int8, np.int16, np.int32, np.int64, np.uint32,
                                   np.float16, np.float32, np.float64])
def test_other_dtypes_give_float_in_range(rng, dtype):
    image = rng.integers(-100, 100, (16, 16, 3)).astype(dtype)
    if np.dtype(dtype).kind == "u":
        image = np.abs(rng.integers(0, 100, (16, 16, 3))).astype(dtype)
    out = to_rgb(image)
    assert out.dtype == np.float32 and out.shape == (16, 16, 3)
    assert out.min() == 0 and out.max() == 255


# --- to_rgb: bad input ------------------------------------------------------


@pytest.mark.parametrize(
    "image, kwargs, fragment",
    [
        (None, {}, "got None"),
        ("not an image", {}, "numeric image"),
        ({"a": 1}, {}, "numeric image"),
        ([[1, 2], [3]], {}, "array-like"),
        (np.zeros((0, 5)), {}, "non-empty"),
        (np.zeros((1, 1)), {}, "at least 2x2"),
        (np.zeros((1, 8, 3)), {}, "at least 2x2"),
        (np.zeros(10), {}, "got 1D"),
        (np.zeros((3, 8, 8, 3)), {}, "one 2D slice at a time"),
        (np.full((4, 4), np.nan), {}, "no finite pixel"),
        (np.full((4, 4, 3), np.inf), {}, "no finite pixel"),
        (np.zeros((4, 4), dtype=np.complex64), {}, "complex"),
        (np.zeros((8, 8, 5)), {}, "Pass channel_axis"),
        (np.zeros((8, 8, 5)), {"channel_axis": -1}, "Pass channels="),
        (np.zeros((8, 8, 2)), {}, "Pass channels="),
        (np.zeros((8, 8, 5)), {"channel_axis": -1, "channels": [5]}, "out of range"),
        (np.zeros((5, 8, 8)), {"channel_axis": 0, "channels": [0, -6]}, "out of range"),
        (np.zeros((8, 8, 5)), {"channel_axis": -1, "channels": [0, 1, 2, 3]}, "1 to 3"),
        (np.zeros((8, 8, 5)), {"channel_axis": -1, "channels": []}, "1 to 3"),
        (np.zeros((8, 8, 5)), {"channel_axis": -1, "channels": [0.5]}, "1 to 3"),
        (np.zeros((8, 8, 3)), {"channel_axis": 3}, "out of range"),
        (np.zeros((8, 8)), {"channel_axis": -1}, "grayscale"),
        (np.zeros((8, 8)), {"contrast_limits": (5, 5)}, "low < high"),
        (np.zeros((8, 8)), {"contrast_limits": (1, 2, 3)}, "contrast_limits must be"),
        (np.zeros((8, 8)), {"percentiles": (99, 1)}, "percentiles must"),
    ],
)
def test_bad_input_raises_helpful_error(image, kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        to_rgb(image, **kwargs)


# --- resize and tensor ------------------------------------------------------


@pytest.mark.parametrize("h, w", [(300, 500), (40, 20)])
def test_float_resize_follows_uint8_resize(rng, h, w):
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    as_float = resize_longest_side(image.astype(np.float32), 256)
    as_uint8 = resize_longest_side(image, 256)
    assert as_float.dtype == np.float32 and as_float.shape == as_uint8.shape
    assert as_float.min() >= 0 and as_float.max() <= 255
    assert np.abs(as_float - as_uint8.astype(np.float32)).mean() < 1.0


def test_resize_same_size_is_copy(rng):
    image = rng.integers(0, 256, (1024, 600, 3), dtype=np.uint8)
    out = resize_longest_side(image, 1024)
    np.testing.assert_array_equal(out, image)
    assert not np.shares_memory(out, image)


@pytest.mark.parametrize(
    "image, fragment",
    [(np.zeros((8, 8), np.uint8), r"\(H, W, 3\)"), (np.zeros((8, 8, 3), np.uint16), "uint8 or float32")],
)
def test_resize_rejects_unconverted_images(image, fragment):
    with pytest.raises(ValueError, match=fragment):
        resize_longest_side(image, 64)


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_bad_long_side(bad):
    with pytest.raises(ValueError, match="positive integer"):
        preprocess_shape(10, 10, bad)


def test_image_to_tensor(rng):
    image = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    tensor = image_to_tensor(image)
    assert tensor.shape == (1, 3, 6, 7) and tensor.dtype == torch.float32
    assert tensor.device.type == "cpu"
    np.testing.assert_array_equal(tensor[0].permute(1, 2, 0).numpy(), image.astype(np.float32))
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        image_to_tensor(np.zeros((3, 6, 7)))
