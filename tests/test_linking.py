"""Linking per-slice labels into 3D instances (src_core.automatic.linking)."""

from __future__ import annotations

import numpy as np
import pytest

from src_core.automatic.linking import label_overlaps, link_slices


def disk(shape, center, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def stack_of(slices):
    return np.stack(slices).astype(np.int32)


def ids_at(linked, z, row, col):
    return int(linked[z, row, col])


def test_label_overlaps_counts_pixels():
    a = np.zeros((4, 6), int)
    b = np.zeros((4, 6), int)
    a[:, :3] = 5  # 12 px
    b[:, 2:4] = 9  # 8 px, 4 shared with 5
    b[0, 5] = 2  # overlaps nothing
    prev, cur, iou = label_overlaps(a, b)
    np.testing.assert_array_equal(prev, [5])
    np.testing.assert_array_equal(cur, [9])
    np.testing.assert_allclose(iou, [4 / (12 + 8 - 4)])
    with pytest.raises(ValueError, match="shape"):
        label_overlaps(a, b[:2])
    with pytest.raises(ValueError, match="integer"):
        label_overlaps(a.astype(float), b)


def test_persisting_shifting_object_keeps_its_id_and_numbers_start_at_one():
    shape = (40, 40)
    # per-slice ids differ on purpose: linking must not rely on them
    slices = [disk(shape, (20, 10 + 2 * z), 6) * (z + 3) for z in range(5)]
    linked = link_slices(stack_of(slices))
    assert linked.dtype == np.uint32 and linked.shape == (5, 40, 40)
    assert set(np.unique(linked)) == {0, 1}
    for z in range(5):
        np.testing.assert_array_equal(linked[z] == 1, slices[z] > 0)


def test_appearing_and_disappearing_objects():
    shape = (30, 60)
    a, b = disk(shape, (15, 10), 5), disk(shape, (15, 45), 5)
    slices = [a * 1, a * 1 + b * 2, b * 1, b * 7, a * 4]
    linked = link_slices(stack_of(slices))
    first, second = ids_at(linked, 0, 15, 10), ids_at(linked, 1, 15, 45)
    assert (first, second) == (1, 2)
    assert ids_at(linked, 1, 15, 10) == 1
    assert ids_at(linked, 2, 15, 45) == 2 and ids_at(linked, 3, 15, 45) == 2
    # 'a' left at slice 2 and returns at slice 4: without a gap allowance it is new
    assert ids_at(linked, 4, 15, 10) == 3


def test_side_by_side_objects_are_not_merged():
    shape = (20, 40)
    left = np.zeros(shape, int)
    left[5:15, 5:19] = 1
    left[5:15, 21:35] = 2
    swapped = np.where(left == 1, 2, np.where(left == 2, 1, 0))  # ids swapped in the next slice
    linked = link_slices(stack_of([left, swapped, left]))
    for z in range(3):
        assert ids_at(linked, z, 10, 10) == 1 and ids_at(linked, z, 10, 30) == 2


def test_split_keeps_the_id_on_the_larger_overlap():
    shape = (20, 40)
    whole = np.zeros(shape, int)
    whole[5:15, 5:35] = 1
    split = np.zeros(shape, int)
    split[5:15, 5:24] = 1  # the larger part
    split[5:15, 26:35] = 2
    linked = link_slices(stack_of([whole, split]))
    assert ids_at(linked, 1, 10, 10) == 1  # continues the object
    assert ids_at(linked, 1, 10, 30) == 2  # the smaller part starts a new one
    # a merge is the mirror image: the merged object continues the better partner
    merged = link_slices(stack_of([split, whole]))
    assert ids_at(merged, 1, 10, 10) == 1 and 2 not in merged[1]


def test_small_overlap_below_min_iou_is_a_new_object():
    shape = (20, 40)
    a = np.zeros(shape, int)
    a[5:15, 5:15] = 1
    b = np.zeros(shape, int)
    b[5:15, 13:23] = 1  # IoU 20 / 180
    assert ids_at(link_slices(stack_of([a, b])), 1, 10, 20) == 2
    assert ids_at(link_slices(stack_of([a, b]), min_iou=0.1), 1, 10, 20) == 1


def test_empty_slices_and_gap_of_one():
    shape = (30, 30)
    a = disk(shape, (15, 15), 6).astype(int)
    empty = np.zeros(shape, int)
    volume = stack_of([empty, a, empty, a * 2, empty, empty, a])
    plain = link_slices(volume)
    assert plain[0].max() == 0 and plain[2].max() == 0
    assert [ids_at(plain, z, 15, 15) for z in (1, 3, 6)] == [1, 2, 3]
    bridged = link_slices(volume, max_gap=1)
    # one missing slice is bridged; two are not
    assert [ids_at(bridged, z, 15, 15) for z in (1, 3, 6)] == [1, 1, 2]
    assert link_slices(np.zeros((3, 5, 5), np.uint16)).max() == 0
    assert link_slices(np.zeros((0, 5, 5), np.uint16)).shape == (0, 5, 5)


def test_gap_only_revives_objects_that_ended():
    shape = (20, 40)
    a = np.zeros(shape, int)
    a[5:15, 5:15] = 1
    b = np.zeros(shape, int)
    b[5:15, 25:35] = 1
    # 'b' is missing from slice 1 and comes back at slice 2; 'a' simply continues
    volume = stack_of([a + 2 * b, a, a + 2 * b])
    linked = link_slices(volume, max_gap=1)
    assert ids_at(linked, 2, 10, 10) == 1 and ids_at(linked, 2, 10, 30) == 2


def test_many_objects_are_linked_without_mixing():
    rng = np.random.default_rng(0)
    shape = (64, 64)
    base = np.zeros(shape, int)
    for k in range(16):
        r, c = divmod(k, 4)
        base[r * 16 + 2 : r * 16 + 14, c * 16 + 2 : c * 16 + 14] = k + 1
    slices = []
    for z in range(4):
        perm = np.concatenate([[0], rng.permutation(16) + 1])  # new per-slice numbering
        slices.append(perm[np.roll(base, z % 2, axis=1)])
    linked = link_slices(stack_of(slices))
    assert len(np.unique(linked)) == 17
    for z in range(1, 4):
        for k in range(16):
            r, c = divmod(k, 4)
            assert ids_at(linked, z, r * 16 + 8, c * 16 + 8) == ids_at(linked, 0, r * 16 + 8, c * 16 + 8)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((5, 5), int), "3D"),
        (np.zeros((2, 5, 5), float), "integer"),
        (np.zeros((2, 5, 5), bool), "integer"),
        (-np.ones((2, 5, 5), int), "negative"),
    ],
)
def test_bad_input_is_a_clear_value_error(bad, message):
    with pytest.raises(ValueError, match=message):
        link_slices(bad)


def test_bad_settings_are_value_errors():
    volume = np.zeros((2, 5, 5), int)
    with pytest.raises(ValueError, match="min_iou"):
        link_slices(volume, min_iou=0)
    with pytest.raises(ValueError, match="max_gap"):
        link_slices(volume, max_gap=-1)


def test_huge_label_values_link_the_same_as_small_ones():
    """Sparse large ids take the sorting path instead of counting: same result."""
    shape = (30, 60)
    a, b = disk(shape, (15, 10), 5), disk(shape, (15, 45), 5)
    small = stack_of([a * 1 + b * 2, a * 2 + b * 1, b * 3])
    huge = np.where(small > 0, small.astype(np.int64) * 1_000_000_007, 0)
    np.testing.assert_array_equal(link_slices(huge), link_slices(small))
    np.testing.assert_array_equal(link_slices(huge.astype(np.uint64)), link_slices(small))
