"""SAM 2.1 in the plugin: chosen in the model box or from a file, clicks on it, and the
Track panel following objects with its memory.

Random weights (the presence head biased so objects are seen): what is asserted is
plumbing a user would notice (the model loads, a click gives a mask, a run fills every
frame with the object's id, the SAM 1-only tools say so).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from qtpy.QtCore import Qt

from napari_sam import _layers as L
from napari_sam import _track_layers as T

pytestmark = [pytest.mark.gui, pytest.mark.usefixtures("one_torch_thread")]


def _sam2_model(image_size: int = 1024):
    from src_core.model.sam2.sam2_base import build_sam2_model

    torch.manual_seed(0)
    model = build_sam2_model("tiny", image_size=image_size)
    with torch.no_grad():
        model.sam_mask_decoder.pred_obj_score_head.layers[-1].bias += 5.0
    return model.eval()


def test_sam2_file_loads_from_the_model_panel_and_segments_a_click(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.sam2_predictor import SAM2ImagePredictor

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "my_sam2.pt"
    torch.save({"model": {k: v.half() for k, v in _sam2_model().state_dict().items()}}, path)
    viewer = make_napari_viewer()
    image = np.zeros((80, 96), np.uint16)
    image[20:50, 30:70] = 2000
    viewer.add_image(image, name="cells")
    w = SegmentAnythingWidget(viewer)
    panel = w.model_panel
    rows = [panel.model_box.model().item(i) for i in range(panel.model_box.model().rowCount())]
    names = [r.text() for r in rows]
    assert names[-5:] == ["video (SAM 2.1)", "sam2.1_hiera_tiny", "sam2.1_hiera_small",
                          "sam2.1_hiera_base_plus", "sam2.1_hiera_large"]
    panel.model_box.setCurrentText("sam2.1_hiera_tiny")
    assert "SAM 2.1 tiny" in w.status.text()
    panel.checkpoint_edit.setText(str(path))
    panel.device_box.setCurrentText("cpu")
    panel.dtype_box.setCurrentText("float32")
    qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.session.predictor is not None and w.session.idle, timeout=60000)
    assert isinstance(w.session.predictor, SAM2ImagePredictor)
    w.session.layers[L.POINTS].add(np.array([35.0, 50.0]))
    qtbot.waitUntil(lambda: w.session.settled and w.session.embedded is not None, timeout=60000)
    qtbot.waitUntil(lambda: w.session.layers[L.PREVIEW].data.any(), timeout=30000)
    assert w.session.layers[L.PREVIEW].data.shape == image.shape


def test_track_panel_follows_objects_with_sam2_memory(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.sam2_predictor import SAM2ImagePredictor

    frames = np.zeros((5, 64, 80), np.uint8)
    for t in range(5):
        frames[t, 16:40, 10 + 3 * t : 34 + 3 * t] = 200
    viewer = make_napari_viewer()
    viewer.add_image(frames, name="video")
    w = SegmentAnythingWidget(viewer)
    w.session.set_predictor(SAM2ImagePredictor(_sam2_model(256)), "sam2.1 tiny (random)")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=30000)
    panel = w.track
    assert panel.prepare()
    panel.object_box.setValue(4)
    panel.layers[T.PROMPTS].add(np.array([[2, 28.0, 24.0]]))  # frame 2, (row, col)
    panel.run()
    qtbot.waitUntil(lambda: w.session.idle and panel.run_button.isEnabled(), timeout=60000)
    labels = np.asarray(panel.layers[T.TRACKS].data)
    assert set(np.unique(labels)) <= {0, 4}
    assert all((labels[t] == 4).any() for t in range(5)), [int((labels[t] == 4).sum()) for t in range(5)]


def test_segment_everything_runs_sam2s_generator(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.sam2_predictor import SAM2ImagePredictor

    image = np.zeros((64, 80), np.uint8)
    image[10:40, 10:50] = 200
    viewer = make_napari_viewer()
    viewer.add_image(image, name="blobs")
    w = SegmentAnythingWidget(viewer)
    w.session.set_predictor(SAM2ImagePredictor(_sam2_model(256)), "sam2.1 tiny (random)")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=30000)
    w.everything.form.points_per_side.value = 3
    w.everything.form.pred_iou_thresh.value = 0.0
    w.everything.form.stability_score_thresh.value = 0.0
    w.everything.run_button.click()
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=60000)
    data = w.session.layers[L.LABELS].data
    assert data.shape == image.shape and data.max() >= 1


def test_sam2_embeddings_kept_on_disk(make_napari_viewer, qtbot, tmp_path):
    """With SAM 2.1, 'Embed all slices' stores every plane (the embedding and its
    high-resolution features), browsing loads them back, and a click on a reloaded
    plane gives the mask a fresh embedding gives."""
    import functools

    from napari_sam._widget import SegmentAnythingWidget
    from src_core import EmbeddingCache
    from src_core.sam2_predictor import SAM2ImagePredictor

    model = _sam2_model(image_size=256)
    model.weights_id = "sam2-test-weights"
    predictor = SAM2ImagePredictor(model)
    calls = []
    original = predictor.set_image

    @functools.wraps(original)
    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    predictor.set_image = counted
    stack = np.zeros((3, 64, 80), np.uint8)
    for z in range(3):
        stack[z, 15:45, 10 + 8 * z : 40 + 8 * z] = 200
    viewer = make_napari_viewer()
    viewer.add_image(stack, name="stack")
    w = SegmentAnythingWidget(viewer)
    cache = EmbeddingCache(tmp_path)
    w.session.set_predictor(predictor, "sam2 tiny", cache=cache)
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=30000)
    w.session.embed_all_slices()
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=60000)
    assert len(cache) == 3 and len(calls) == 3
    for plane in (2, 1, 0, 2):
        viewer.dims.set_current_step(0, plane)
        qtbot.waitUntil(lambda plane=plane: w.session.idle and w.session.embedded[1] == (plane,), timeout=30000)
    assert len(calls) == 3  # every plane came back from the disk
    w.session.layers[L.POINTS].add(np.array([2.0, 30.0, 40.0]))
    qtbot.waitUntil(lambda: w.session.settled and w.session.layers[L.PREVIEW].data[2].any(), timeout=30000)
    reloaded = w.session.layers[L.PREVIEW].data[2].copy()
    fresh = SAM2ImagePredictor(model)
    fresh.set_image(stack[2])
    masks, scores, _ = fresh.predict(point_coords=np.array([[40.0, 30.0]]), point_labels=np.array([1]))
    assert np.array_equal(reloaded > 0, masks[np.argmax(scores)] > 0)


def test_sam2_prompts_a_large_plane_tile_by_tile(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """A plane more than 4x SAM 2.1's input is prompted tile by tile, as with SAM 1: only
    the tiles the click reaches are embedded (with their high-resolution features, kept
    in memory and on disk), and the mask is painted where it was predicted."""
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.sam2_predictor import SAM2ImagePredictor
    from src_core.tiling import TiledObjectSegmenter

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    model = _sam2_model(image_size=256)
    model.weights_id = "sam2-test-weights"
    image = np.zeros((300, 1100), np.uint8)
    image[100:180, 700:800] = 220
    viewer = make_napari_viewer()
    viewer.add_image(image, name="wide")
    w = SegmentAnythingWidget(viewer)
    w.session.set_predictor(SAM2ImagePredictor(model), "sam2 tiny (256 px)")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=30000)
    segmenter = w.session.segmenter
    assert isinstance(segmenter, TiledObjectSegmenter) and "256-px tiles" in w.session.status
    w.session.layers[L.POINTS].add(np.array([140.0, 750.0]))
    qtbot.waitUntil(lambda: w.session.settled and w.session.layers[L.PREVIEW].data.any(), timeout=60000)
    tiled = segmenter.tiled
    assert 1 <= tiled.embeddings_computed <= 4  # the tiles this click reached, not all 15
    result = segmenter.candidates.tiled
    window = result.window
    preview = w.session.layers[L.PREVIEW].data
    assert preview.sum() == result.area
    outside = preview.copy()
    outside[window.y0 : window.y1, window.x0 : window.x1] = 0
    assert outside.sum() == 0  # painted inside the window it was predicted in
    w.commit()
    assert (w.session.layers[L.LABELS].data > 0).sum() == result.area
