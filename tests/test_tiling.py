"""Large images by overlapping tiles: geometry, contrast, prompting, segment everything, memory."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from src_core.automatic import SamAutomaticMaskGenerator
from src_core.embedding_cache import EmbeddingCache
from src_core.model.build import build_sam_from_config
from tiny_geometry import TINY_256
from src_core.predictor import SamPredictor
from src_core.preprocess import to_rgb
from src_core.rle import decode_segmentation, rle_to_crop
from src_core.tiling import (
    Tile,
    TiledImage,
    TiledPredictor,
    TileGrid,
    generate_tiled,
    record_crop,
    tile_starts,
    write_label_image,
)
from standin_predictor import StandInPredictor


@pytest.fixture(scope="module")
def tiny_sam():
    torch.manual_seed(0)
    return build_sam_from_config(TINY_256)


def disk(shape, centre, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


class ComponentGenerator:
    """Stand-in for SamAutomaticMaskGenerator: one record per bright connected component."""

    def __init__(self, rle: bool = False) -> None:
        self.rle = rle
        self.tiles_seen = []
        self.records_made = 0

    def generate(self, rgb):
        self.tiles_seen.append(rgb.shape)
        assert rgb.dtype == np.uint8 and rgb.shape[-1] == 3
        labels, _ = ndi.label(rgb[..., 0] > 100)
        records = []
        for i, (rows, cols) in enumerate(ndi.find_objects(labels), start=1):
            mask = labels == i
            ys, xs = np.nonzero(mask)
            records.append(
                {
                    "segmentation": mask,
                    "area": int(mask.sum()),
                    "bbox": [cols.start, rows.start, cols.stop - cols.start - 1, rows.stop - rows.start - 1],
                    "predicted_iou": 0.9,
                    "point_coords": [[float(xs[0]), float(ys[0])]],
                    "stability_score": 0.95,
                    "crop_box": [0, 0, rgb.shape[1], rgb.shape[0]],
                }
            )
        self.records_made += len(records)
        return records


class CountingArray:
    """A lazy array-like: numpy slicing on a backing array, counting the bytes handed out."""

    def __init__(self, backing) -> None:
        self.backing = backing
        self.shape, self.dtype, self.ndim = backing.shape, backing.dtype, backing.ndim
        self.bytes_read = 0

    def __getitem__(self, index):
        out = np.asarray(self.backing[index])
        self.bytes_read += out.nbytes
        return out

    def __array__(self, *args, **kwargs):
        raise AssertionError("the whole image was requested")


# -- geometry ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(600, 700), (256, 1000), (100, 90), (1031, 257), (5000, 3)])
@pytest.mark.parametrize("tile, overlap", [(256, 64), (256, 0), (300, 200)])
def test_grid_covers_the_image_with_full_tiles_and_the_overlap(shape, tile, overlap):
    grid = TileGrid(shape, tile, overlap)
    covered = np.zeros(shape, dtype=np.int32)
    for t in grid:
        assert t.shape == (min(tile, shape[0]), min(tile, shape[1]))  # full size, or the whole side
        assert 0 <= t.y0 < t.y1 <= shape[0] and 0 <= t.x0 < t.x1 <= shape[1]
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert covered.min() >= 1
    for starts, length in ((grid.row_starts, shape[0]), (grid.col_starts, shape[1])):
        assert starts[0] == 0 and min(starts[-1] + tile, length) == length  # edge tiles end at the border
        for a, b in zip(starts, starts[1:]):
            assert a + tile - b >= overlap  # neighbours overlap by at least `overlap`
    assert grid.tile_at(len(grid.row_starts) - 1, 0) is grid.tiles[(len(grid.row_starts) - 1) * len(grid.col_starts)]


def test_tile_starts_spread_evenly():
    assert tile_starts(100, 256, 64) == [0]
    assert tile_starts(256, 256, 64) == [0]
    assert tile_starts(600, 256, 64) == [0, 172, 344]
    starts = tile_starts(20_000, 1024, 128)
    gaps = np.diff(starts)
    assert gaps.max() - gaps.min() <= 1 and gaps.max() <= 1024 - 128


def test_interior_sides_margins_and_neighbours():
    grid = TileGrid((600, 600), 256, 64)
    corner, middle = grid.tile_at(0, 0), grid.tile_at(1, 1)
    assert corner.interior_sides(grid.shape) == (False, True, False, True)
    assert middle.interior_sides(grid.shape) == (True, True, True, True)
    assert corner.margin((10, 10, 20, 20), grid.shape) == 236  # image sides do not count
    assert middle.margin((10, 10, 20, 20), grid.shape) < 0
    assert len(grid.neighbours(middle)) == 8 and len(grid.neighbours(corner)) == 3
    assert TileGrid((50, 50), 256, 64).tiles[0].margin((0, 0, 50, 50), (50, 50)) == np.inf
    # routing per axis agrees with trying every tile
    grid = TileGrid((1000, 1300), 256, 80)
    rng = np.random.default_rng(5)
    for x, y, w, h in zip(rng.uniform(0, 1300, 50), rng.uniform(0, 1000, 50), rng.uniform(0, 300, 50), rng.uniform(0, 300, 50)):
        extent = (x, y, min(x + w, 1300), min(y + h, 1000))
        tile, margin = grid.route(extent)
        assert margin == max(t.margin(extent, grid.shape) for t in grid) == tile.margin(extent, grid.shape)


# -- contrast -----------------------------------------------------------------------------


def test_global_contrast_matches_to_rgb_and_is_the_same_in_every_tile():
    rng = np.random.default_rng(1)
    image = (rng.gamma(2.0, 500.0, (300, 420))).astype(np.uint16)
    whole = TiledImage(image)
    tile = Tile(0, 0, 300, 420)
    assert np.array_equal(whole.read_rgb(tile), np.rint(to_rgb(image)).astype(np.uint8))
    a, b = Tile(0, 0, 300, 256), Tile(0, 164, 300, 420)
    rgb_a, rgb_b = whole.read_rgb(a), whole.read_rgb(b)
    assert np.array_equal(rgb_a[:, 164:], rgb_b[:, :92])  # same pixels look the same in both tiles
    # a subsample estimates the same limits closely
    sampled = TiledImage(image, max_samples=5000)
    assert np.allclose(sampled.contrast_limits, whole.contrast_limits, rtol=0.1)


def test_uint8_passes_through_and_channels_first_and_nan_tiles():
    rgb = np.random.default_rng(2).integers(0, 255, (50, 60, 3), dtype=np.uint8)
    source = TiledImage(rgb)
    assert source.contrast_limits is None
    assert np.array_equal(source.read_rgb(Tile(0, 0, 50, 60)), rgb)
    chw = np.moveaxis(rgb, -1, 0).astype(np.float32)
    source = TiledImage(chw, channel_axis=0, contrast_limits=(0, 255))
    assert np.array_equal(source.read_rgb(Tile(5, 7, 30, 40)), rgb[5:30, 7:40])
    image = np.full((100, 100), np.nan, dtype=np.float32)
    image[60:, 60:] = np.arange(1600, dtype=np.float32).reshape(40, 40)
    source = TiledImage(image)
    assert not source.read_rgb(Tile(0, 0, 50, 50)).any()  # all-NaN tile: black, no error
    assert source.read_rgb(Tile(50, 50, 100, 100)).max() == 255


# -- bad input ----------------------------------------------------------------------------


def test_bad_input_gives_clear_value_errors(tiny_sam):
    image = np.zeros((600, 600), np.uint8)
    with pytest.raises(ValueError, match="smaller than the model's input"):
        TiledPredictor(SamPredictor(tiny_sam), tile_size=128)
    with pytest.raises(ValueError, match="overlap .* must be smaller than tile_size"):
        TiledPredictor(StandInPredictor(), tile_size=256, overlap=256)
    with pytest.raises(ValueError, match="whole number"):
        TileGrid((10, 10), 256.0, 10)
    with pytest.raises(ValueError, match="model_id"):
        TiledPredictor(StandInPredictor(), 256, cache=object())
    tp = TiledPredictor(StandInPredictor(), 256, 64)
    with pytest.raises(ValueError, match="set_image"):
        tp.predict(np.array([[1.0, 1.0]]), np.array([1]))
    with pytest.raises(ValueError, match="non-empty"):
        tp.set_image(np.zeros((0, 600), np.uint16))
    with pytest.raises(ValueError, match="2D image"):
        tp.set_image(np.zeros((3, 600, 600, 2), np.uint16))
    with pytest.raises(ValueError, match="real numeric"):
        tp.set_image(np.zeros((60, 60), np.complex64))
    with pytest.raises(ValueError, match="channel"):
        tp.set_image(np.zeros((60, 60, 7), np.uint16))
    tp.set_image(image)
    with pytest.raises(ValueError, match="outside the 600x600 image"):
        tp.predict(np.array([[650.0, 10.0]]), np.array([1]))
    with pytest.raises(ValueError, match="outside the 600x600 image"):
        tp.predict(box=np.array([700, 700, 800, 800]))
    with pytest.raises(ValueError, match="foreground point"):
        tp.predict(np.array([[10.0, 10.0]]), np.array([0]))
    with pytest.raises(ValueError, match="point_labels"):
        tp.predict(np.array([[10.0, 10.0]]), np.array([1, 1]))
    with pytest.raises(ValueError, match="x1 > x0"):
        tp.predict(box=np.array([50, 50, 40, 60]))
    with pytest.raises(ValueError, match="output_mode"):
        generate_tiled(ComponentGenerator(), image, 256, 64, output_mode="binary_mask")
    with pytest.raises(ValueError, match="smaller than the model's input"):
        generate_tiled(SamAutomaticMaskGenerator(tiny_sam), image, 200, 50)
    with pytest.raises(ValueError, match="integer array"):
        write_label_image([], np.zeros((5, 5), np.float32))


# -- interactive prompts --------------------------------------------------------------------


def test_point_near_a_tile_border_goes_to_the_tile_where_it_is_interior():
    image = np.zeros((600, 600), np.uint8)
    image[disk(image.shape, (100, 250), 10)] = 200  # crosses x = 256, the first column's right side
    grid = TileGrid(image.shape, 256, 64)
    tile, margin = grid.route((250, 100, 250, 100))
    assert tile.index == (0, 1) and margin == 78
    tp = TiledPredictor(StandInPredictor(), 256, 64)
    tp.set_image(image)
    result = tp.predict(np.array([[250.0, 100.0]]), np.array([1]))
    assert result.window.index == (0, 1) and tp.embeddings_computed == 1  # whole there: no second window
    assert result.box == (240, 90, 261, 111) and result.area == image.astype(bool).sum()


def test_object_across_a_tile_border_comes_back_whole():
    image = np.zeros((600, 600), np.uint8)
    truth = disk(image.shape, (300, 190), 70)  # 141 px across, overlap 64: every grid tile cuts it
    image[truth] = 200
    image[disk(image.shape, (300, 400), 20)] = 180  # a neighbour that must stay out
    predictor = StandInPredictor()
    tp = TiledPredictor(predictor, 256, 64)
    tp.set_image(image)
    result = tp.predict(np.array([[240.0, 300.0]]), np.array([1]))
    assert result.window.index is None and tp.embeddings_computed == 2  # re-centred once
    pasted = np.zeros(image.shape, bool)
    result.paste(pasted)
    assert np.array_equal(pasted, truth)
    # more points on the same object: same window, the previous logits as the mask prompt
    refined = tp.predict(np.array([[240.0, 300.0], [150.0, 290.0]]), np.array([1, 1]), previous=result)
    assert refined.window == result.window and tp.embeddings_computed == 2
    assert predictor.mask_inputs[-1] is not None and np.array_equal(refined.mask, result.mask)
    # a box larger than a tile is seen whole at reduced resolution
    big = np.zeros((900, 900), np.uint8)
    truth = disk(big.shape, (450, 450), 200)
    big[truth] = 220
    tp.set_image(big)
    result = tp.predict(box=np.array([240, 240, 660, 660]))
    assert result.window.step > 1
    pasted = np.zeros(big.shape, bool)
    result.paste(pasted)
    assert (pasted & truth).sum() / (pasted | truth).sum() > 0.97


def test_one_tile_image_gives_exactly_the_untiled_masks(tiny_sam):
    rng = np.random.default_rng(0)
    image = (rng.random((200, 230, 3)) * 255).astype(np.uint8)
    reference = SamPredictor(tiny_sam)
    reference.set_image(image)
    tp = TiledPredictor(SamPredictor(tiny_sam))  # tile_size = the model input, 256
    tp.set_image(image)
    for points, labels, box in [
        (np.array([[100.0, 80.0]]), np.array([1]), None),
        (np.array([[30.0, 150.0], [60.0, 20.0]]), np.array([1, 0]), np.array([10, 100, 90, 190])),
    ]:
        masks, scores, logits = reference.predict(points, labels, box)
        best = int(np.argmax(scores))
        result = tp.predict(points, labels, box)
        pasted = np.zeros(image.shape[:2], bool)
        result.paste(pasted)
        assert np.array_equal(pasted, masks[best])
        assert result.score == pytest.approx(float(scores[best]), abs=0)
        assert np.array_equal(result.low_res_logits, logits[best])
    assert tp.embeddings_computed == 1


def test_real_model_on_an_image_larger_than_one_tile(tiny_sam, tmp_path):
    rng = np.random.default_rng(3)
    image = rng.normal(1000, 50, (600, 700)).astype(np.uint16)
    for centre in [(150, 200), (300, 420), (480, 600)]:
        image[disk(image.shape, centre, 30)] += 3000
    tp = TiledPredictor(SamPredictor(tiny_sam), tile_size=256, overlap=64)
    tp.set_image(image)
    point, label = np.array([[420.0, 300.0]]), np.array([1])
    first = tp.predict(point, label)
    x0, y0, x1, y1 = first.window.box
    assert x0 <= 420 <= x1 and y0 <= 300 <= y1
    fx0, fy0, fx1, fy1 = first.box
    assert 0 <= fx0 <= fx1 <= 700 and 0 <= fy0 <= fy1 <= 600 and np.isfinite(first.score)
    computed = tp.embeddings_computed
    again = tp.predict(point, label)  # every window it needs is in the in-memory LRU
    assert tp.embeddings_computed == computed
    assert again.offset == first.offset and np.array_equal(again.mask, first.mask)
    # tile embeddings on disk: a fresh predictor encodes nothing
    cache = EmbeddingCache(tmp_path / "embeddings")
    for expected_loaded in (0, computed):
        cached = TiledPredictor(SamPredictor(tiny_sam), 256, 64, cache=cache, model_id="vit_tiny-random0")
        cached.set_image(image)
        result = cached.predict(point, label)
        assert cached.embeddings_loaded == expected_loaded
        assert result.offset == first.offset and np.array_equal(result.mask, first.mask)
    # segment everything with the real generator over 3 x 4 tiles
    generator = SamAutomaticMaskGenerator(
        tiny_sam, points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, output_mode="uncompressed_rle"
    )
    done = []
    records = generate_tiled(generator, image, 256, 64, progress=lambda d, t: done.append((d, t)))
    assert done[0] == (0, 12) and done[-1] == (12, 12) and records
    for record in records:
        crop, (r0, c0) = rle_to_crop(record["segmentation"])
        assert record["segmentation"]["size"] == [600, 700]
        assert record["bbox"] == [c0, r0, crop.shape[1] - 1, crop.shape[0] - 1]
        assert record["area"] == crop.sum() > 0


# -- segment everything ---------------------------------------------------------------------


def test_one_tile_image_gives_exactly_the_untiled_records(tiny_sam):
    rng = np.random.default_rng(0)
    image = (rng.random((200, 230, 3)) * 255).astype(np.uint8)
    settings = dict(points_per_side=6, pred_iou_thresh=0.0, stability_score_thresh=0.0, box_nms_thresh=1.0)
    expected = SamAutomaticMaskGenerator(tiny_sam, **settings).generate(image)
    generator = SamAutomaticMaskGenerator(tiny_sam, output_mode="uncompressed_rle", **settings)
    records = generate_tiled(generator, image)
    assert len(records) == len(expected) > 50
    for ours, theirs in zip(records, expected):
        assert np.array_equal(decode_segmentation(ours["segmentation"]), theirs["segmentation"])
        for key in ("area", "bbox", "predicted_iou", "point_coords", "stability_score", "crop_box"):
            assert ours[key] == theirs[key], key


def seam_image():
    """Objects in overlaps, across tile sides and corners, at the border, and larger than a tile.

    Tiles of 256 px with 96 px overlap start at rows 0, 148, 296, 444 and columns
    0, 128, 257, 386, 515, 644.
    """
    shape = (700, 900)
    image = np.zeros(shape, np.uint8)
    centres = [
        (320, 60),  # in the middle of an overlap: whole in two tiles
        (320, 202),  # in a four-tile overlap: whole in four
        (257, 330),  # on a tile's left side: cut there, whole in its neighbour
        (8, 300), (890, 690), (450, 5),  # at the image border
    ]
    for x, y in centres:
        image[disk(shape, (y, x), 15)] = 200
    image[480:500, 300:800] = 200  # longer than a tile: united from pieces
    image[20:460, 820:835] = 200
    image[150:250, 560:570] = 200  # cut in both tiles that hold it
    image[300:312, 100:213] = 200  # an arch: its legs are two pieces in the bottom tiles
    image[300:690, 100:113] = 200
    image[300:690, 200:213] = 200
    return image, TileGrid(shape, 256, 96)


@pytest.mark.parametrize("output_mode", ["uncompressed_rle", "crop"])
def test_tiled_everything_gives_each_object_once_with_its_full_image_box(output_mode, tmp_path):
    image, grid = seam_image()
    truth, count = ndi.label(image > 0)
    generator = ComponentGenerator()
    records = generate_tiled(generator, image, 256, 96, output_mode=output_mode)
    assert len(generator.tiles_seen) == len(grid) == 24
    assert count == 10 and generator.records_made > 2 * count  # duplicates and pieces to merge
    assert len(records) == count
    found = set()
    for record in records:
        crop, (r0, c0) = record_crop(record)
        label = truth[r0, c0 + np.argmax(crop[0])]
        assert label > 0 and label not in found
        found.add(label)
        rows, cols = ndi.find_objects(truth)[label - 1]
        assert np.array_equal(crop, truth[rows, cols] == label)
        assert record["bbox"] == [cols.start, rows.start, cols.stop - cols.start - 1, rows.stop - rows.start - 1]
        assert record["area"] == (truth == label).sum()
        x, y = record["point_coords"][0]
        assert truth[int(y), int(x)] == label  # the prompt point moved with its tile
    labels = np.lib.format.open_memmap(tmp_path / "labels.npy", mode="w+", dtype=np.uint16, shape=image.shape)
    write_label_image(records, labels)
    labels.flush()
    painted = np.load(tmp_path / "labels.npy")
    assert np.array_equal(painted > 0, truth > 0)
    assert len(np.unique(painted)) == count + 1


# -- memory --------------------------------------------------------------------------------


def test_large_uint16_image_is_never_copied_whole(tiny_sam, tmp_path):
    side = 20_000  # 800 MB as uint16, 1.6 GB as float32, 4.8 GB as float32 RGB
    path = tmp_path / "slide.u16"
    writer = np.memmap(path, dtype=np.uint16, mode="w+", shape=(side, side))  # sparse file
    writer[9_940:10_061, 9_940:10_061][disk((121, 121), (60, 60), 60)] = 3000  # only these pages are written
    writer.flush()
    del writer
    image = CountingArray(np.memmap(path, dtype=np.uint16, mode="r", shape=(side, side)))
    tp = TiledPredictor(SamPredictor(tiny_sam), tile_size=1024, overlap=128)
    tracemalloc.start()
    try:
        tp.set_image(image)
        result = tp.predict(np.array([[10_000.0, 10_000.0]]), np.array([1]))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert tp.source.contrast_limits == [(0.0, 3000.0)]  # the sparse bright disk was sampled
    assert peak < 200e6, f"peak {peak / 1e6:.0f} MB"
    assert image.bytes_read < 0.1 * side * side * 2  # read < 10% of the file
    assert result.mask.size < 0.01 * side * side  # a crop, not a full-size mask


@pytest.mark.parametrize("lazy", ["dask"])
def test_lazy_arrays_give_the_same_masks(lazy):
    da = pytest.importorskip("dask.array")
    image = np.zeros((600, 600), np.uint16)
    image[disk(image.shape, (300, 190), 70)] = 4000
    results = []
    for data in (image, da.from_array(image, chunks=(128, 128))):
        tp = TiledPredictor(StandInPredictor(), 256, 64)
        tp.set_image(data)
        results.append(tp.predict(np.array([[240.0, 300.0]]), np.array([1])))
    assert results[0].offset == results[1].offset and np.array_equal(results[0].mask, results[1].mask)
