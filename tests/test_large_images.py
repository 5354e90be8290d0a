"""Large images end to end: the widget, segment everything, the CLI, and memory."""

from __future__ import annotations

import threading
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage as ndi

from src_core.tiling import tiling_plan
from standin_predictor import StandInPredictor

SIZE = 3000
# bright squares: (row, col, side); the second crosses the border of the first tiles (256, overlap 64)
BLOBS = [(2500, 2600, 30), (170, 230, 40), (1200, 700, 25), (40, 2900, 20)]


def large_image(size=SIZE, dtype=np.uint16):
    image = np.zeros((size, size), dtype)
    for k, (r, c, side) in enumerate(BLOBS):
        image[r : r + side, c : c + side] = 1000 + 500 * k
    return image


class SizedStandIn(StandInPredictor):
    """The stand-in, declaring a 256-px model input (tests/tiny_geometry.py), and recording what it embeds."""

    model = SimpleNamespace(image_encoder=SimpleNamespace(img_size=256))

    def __init__(self):
        super().__init__()
        self.shapes = []

    def set_image(self, image, **kwargs):
        self.shapes.append(np.shape(image))
        super().set_image(image, **kwargs)


def test_tiling_plan_keeps_normal_images_whole():
    assert tiling_plan((4096, 4096), 1024) is None  # SAM's models: as before up to 4096 px
    assert tiling_plan((4097, 100), 1024) == (1024, 256)
    assert tiling_plan((1024, 1024), 256) is None
    assert tiling_plan((3000, 3000), 256) == (256, 64)
    assert tiling_plan((5000, 300), None) == (1024, 256)  # unknown input size: SAM's 1024


# -- the widget ---------------------------------------------------------------------------


def _widget(make_napari_viewer, qtbot, image, predictor, **layer_kwargs):
    from napari_sam._widget import SegmentAnythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(image, name="big", **layer_kwargs)
    w = SegmentAnythingWidget(viewer)
    w.use_cache.setChecked(False)
    w.session.set_predictor(predictor, "test")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    return viewer, w


def _click(w, qtbot, row, col, label=1):
    from napari_sam import _layers as L

    points = w.session.layers[L.POINTS]
    points.feature_defaults["label"] = label
    points.add(np.array([row, col], dtype=float))
    points.feature_defaults["label"] = 1
    qtbot.waitUntil(lambda: w.session.settled, timeout=60000)


@pytest.mark.gui
def test_widget_prompts_a_large_plane_tile_by_tile(make_napari_viewer, qtbot):
    from napari_sam import _layers as L
    from src_core.tiling import TiledObjectSegmenter

    predictor = SizedStandIn()
    viewer, w = _widget(make_napari_viewer, qtbot, large_image(), predictor)
    assert isinstance(w.session.segmenter, TiledObjectSegmenter)
    assert predictor.set_image_calls == 0  # nothing embedded before a prompt
    assert "tiles" in w.status.text()
    _click(w, qtbot, 2510, 2610)
    preview = w.session.layers[L.PREVIEW].data
    assert preview.shape == (SIZE, SIZE)
    assert preview[2510, 2610] == 1 and preview.sum() == 30 * 30
    assert predictor.shapes == [(256, 256, 3)]  # one tile, never the whole plane
    # "Next mask" cycles through SAM's three proposals on a tiled plane too
    assert "mask 1/3" in w.status.text()
    w.next_candidate()
    assert w.session.layers[L.PREVIEW].data.sum() == 28 * 28 and "mask 2/3" in w.status.text()  # eroded
    w.next_candidate()
    assert w.session.layers[L.PREVIEW].data.sum() == 32 * 32 - 4  # dilated (a cross-shaped element)
    w.next_candidate()
    assert w.session.layers[L.PREVIEW].data.sum() == 30 * 30 and "mask 1/3" in w.status.text()
    assert predictor.shapes == [(256, 256, 3)]  # cycling decodes nothing again
    w.commit()
    labels = w.session.layers[L.LABELS].data
    assert (labels == 1).sum() == 900 and labels[2510, 2610] == 1
    assert w.session.layers[L.PREVIEW].data.sum() == 0
    # an object cut by the first tile's border: the mask follows it into a re-centred window
    _click(w, qtbot, 180, 240)
    assert w.session.layers[L.PREVIEW].data.sum() == 40 * 40
    assert all(shape == (256, 256, 3) for shape in predictor.shapes)
    w.commit()
    assert (labels == 2).sum() == 1600
    w.session.layers[L.LABELS].undo()
    assert (w.session.layers[L.LABELS].data == 2).sum() == 0 and (w.session.layers[L.LABELS].data == 1).sum() == 900


@pytest.mark.gui
def test_widget_normal_planes_still_embed_whole(make_napari_viewer, qtbot):
    from src_core.interactive import ObjectSegmenter

    predictor = SizedStandIn()
    image = large_image(1000)  # 1000 px <= 4 x 256: embedded whole, as before
    viewer, w = _widget(make_napari_viewer, qtbot, image, predictor)
    assert isinstance(w.session.segmenter, ObjectSegmenter) and predictor.shapes == [(1000, 1000)]
    viewer.add_image(large_image(), name="bigger")
    w.image_panel.image_box.setCurrentText("bigger")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and w.session.embedded[0] == id(viewer.layers["bigger"]), timeout=20000)
    assert not isinstance(w.session.segmenter, ObjectSegmenter)
    w.image_panel.image_box.setCurrentText("big")  # and back: the whole-plane segmenter again
    qtbot.waitUntil(lambda: w.session.idle and isinstance(w.session.segmenter, ObjectSegmenter), timeout=20000)


@pytest.mark.gui
def test_widget_large_image_with_a_real_model(make_napari_viewer, qtbot):
    import torch

    from napari_sam import _layers as L
    from src_core.model.build import SamConfig, build_sam_from_config
    from src_core.predictor import SamPredictor

    torch.manual_seed(0)
    model = build_sam_from_config(SamConfig(32, 1, 2, (0,), image_size=256, patch_size=16, window_size=8))
    predictor = SamPredictor(model)
    viewer, w = _widget(make_napari_viewer, qtbot, large_image(), predictor)
    _click(w, qtbot, 1210, 710)
    tiled = w.session.segmenter.tiled
    assert 1 <= tiled.embeddings_computed <= 4  # the tiles this prompt reached, not 256
    result = w.session.segmenter.candidates.tiled
    options = w.session.segmenter.candidates.options
    assert len(options) == 3 and result is options[0]  # a single click: SAM's three, best first
    assert [o.score for o in options] == sorted((o.score for o in options), reverse=True)
    assert all(o.window is result.window for o in options)
    window = result.window
    preview = w.session.layers[L.PREVIEW].data
    assert preview.sum() == result.area
    outside = preview.copy()
    outside[window.y0 : window.y1, window.x0 : window.x1] = 0
    assert outside.sum() == 0  # painted inside the tile it was predicted in
    before = tiled.embeddings_computed
    _click(w, qtbot, 1215, 715)  # a second point refines the object in the window it is in
    # (random weights cut masks anywhere: at most the re-centred windows are embedded)
    assert tiled.embeddings_computed <= before + tiled.max_recentre
    area = w.session.segmenter.candidates.tiled.area
    w.commit()
    assert (w.session.layers[L.LABELS].data > 0).sum() == area


# -- segment everything -------------------------------------------------------------------


class ComponentsGenerator:
    """One record per bright connected component of a tile (SamAutomaticMaskGenerator's records)."""

    def __init__(self, stop_after=None):
        self.tiles = []
        self.stop_after = stop_after
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()

    def generate(self, rgb):
        self.tiles.append(rgb.shape)
        if self.stop_after is not None and len(self.tiles) == self.stop_after:
            self.on_stop()
        components, count = ndi.label(rgb[..., 0] > 0)
        records = []
        for k in range(1, count + 1):
            mask = components == k
            rows, cols = np.nonzero(mask)
            records.append({
                "segmentation": mask, "area": int(mask.sum()), "predicted_iou": 0.9,
                "bbox": [int(cols.min()), int(rows.min()), int(np.ptp(cols)), int(np.ptp(rows))],
                "point_coords": [[float(cols[0]), float(rows[0])]], "stability_score": 0.95,
                "crop_box": [0, 0, rgb.shape[1], rgb.shape[0]],
            })
        return records


@pytest.mark.gui
def test_everything_panel_on_a_large_plane(make_napari_viewer, qtbot):
    from napari_sam import _layers as L

    viewer, w = _widget(make_napari_viewer, qtbot, large_image(), SizedStandIn())
    generator = ComponentsGenerator()
    w.everything.generator_factory = lambda predictor, settings: generator
    reports = []
    w.everything.progressed.connect(lambda done, total: reports.append((done, total)))
    w.everything.run()
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=60000)
    assert set(generator.tiles) == {(256, 256, 3)} and len(generator.tiles) == 16 * 16
    qtbot.waitUntil(lambda: reports and reports[-1] == (256, 256), timeout=5000)
    labels = w.session.layers[L.LABELS].data
    ids = [int(labels[r + 1, c + 1]) for r, c, _ in BLOBS]
    assert sorted(ids) == [1, 2, 3, 4]  # every blob once, the one across tiles united
    for (r, c, side), i in zip(BLOBS, ids):
        assert (labels == i).sum() == side * side
    assert "4 objects" in w.status.text()
    w.session.layers[L.LABELS].undo()
    assert w.session.layers[L.LABELS].data.max() == 0


@pytest.mark.gui
def test_everything_panel_large_plane_cancel_and_stacks(make_napari_viewer, qtbot, monkeypatch):
    import napari_sam._everything_panel as panel_module
    from napari_sam import _layers as L

    viewer, w = _widget(make_napari_viewer, qtbot, large_image(), SizedStandIn())
    generator = ComponentsGenerator(stop_after=3)
    generator.on_stop = w.everything.cancel
    w.everything.generator_factory = lambda predictor, settings: generator
    w.everything.run()
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=60000)
    assert len(generator.tiles) == 3 and generator.cancelled.is_set()
    assert w.session.layers[L.LABELS].data.max() == 0 and "cancelled" in w.status.text()
    # linking the slices of a stack of large planes is refused with a reason
    errors = []
    monkeypatch.setattr(panel_module, "show_error", errors.append)
    viewer.layers.clear()
    stack = np.broadcast_to(large_image(1100)[None], (3, 1100, 1100))
    viewer.add_image(stack, name="stack")
    w.image_panel.image_box.setCurrentText("stack")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and w.session.embedded[0] == id(viewer.layers["stack"]), timeout=20000)
    w.everything.form.all_slices.value = True
    w.everything.run()
    assert errors and "tile by tile" in errors[0] and "current plane" in errors[0]
