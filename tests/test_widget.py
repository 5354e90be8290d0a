"""The dock widget: layer contract, prompt loop, commit/clear/undo, stacks, scaled layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam import _layers as L
from src_core.prompts import box_from_corners_rc, rc_to_xy
from standin_predictor import StandInPredictor

pytestmark = pytest.mark.gui


def blobs_image(shape=(80, 100)):
    image = np.zeros(shape, np.uint16)
    image[10:30, 10:40] = 3000  # object A
    image[50:70, 60:90] = 2000  # object B
    image[12:18, 60:66] = 2500  # object C
    return image


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget

    def make(image=None, **layer_kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(blobs_image() if image is None else image, name="img", **layer_kwargs)
        w = SegmentAnythingWidget(viewer)
        w.session.set_predictor(StandInPredictor(), "stand-in")
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
        return viewer, w

    return make


def tiny_model_with_weights_id():
    """A tiny random-weights SAM whose weights have an identity, so embeddings get cached."""
    import torch

    from src_core.model.build import SamConfig, build_sam_from_config

    torch.manual_seed(0)
    model = build_sam_from_config(SamConfig(64, 2, 2, (1,)))
    model.weights_id = "tiny-test-weights"
    return model


def wait(qtbot, w):
    qtbot.waitUntil(lambda: w.session.settled, timeout=5000)


def add_point(w, row, col, label=1, plane=()):
    points = w.session.layers[L.POINTS]
    points.feature_defaults["label"] = label
    points.add(np.array([*plane, row, col], dtype=float))
    points.feature_defaults["label"] = 1


def test_rc_to_xy_is_the_one_conversion():
    np.testing.assert_array_equal(rc_to_xy([[5, 7], [1, 2]]), [[7, 5], [2, 1]])
    np.testing.assert_array_equal(box_from_corners_rc([[10, 20], [30, 5]]), [5, 10, 20, 30])


def test_layer_contract(widget):
    viewer, w = widget()
    names = [layer.name for layer in viewer.layers]
    for name in (L.POINTS, L.BOXES, L.PREVIEW, L.LABELS):
        assert name in names
    points = w.session.layers[L.POINTS]
    assert int(points.feature_defaults["label"][0]) == 1
    w.toggle_negative()
    assert int(points.feature_defaults["label"][0]) == 0
    points.add(np.array([20.0, 20.0]))
    assert int(points.features["label"].iloc[-1]) == 0
    np.testing.assert_allclose(points.face_color[-1][:3], [1, 0, 0])  # red for background


def test_point_preview_commit_two_objects_and_undo(widget, qtbot):
    viewer, w = widget()
    add_point(w, 20, 20)
    wait(qtbot, w)
    preview = w.session.layers[L.PREVIEW].data
    assert preview[20, 20] == 1 and preview[60, 70] == 0
    assert preview.sum() == 20 * 30
    w.commit()
    labels = w.session.layers[L.LABELS].data
    assert labels[20, 20] == 1 and (labels == 1).sum() == 600
    assert len(w.session.layers[L.POINTS].data) == 0 and w.session.layers[L.PREVIEW].data.sum() == 0
    assert w.session.segmenter.candidates is None  # no logits leak into the next object
    add_point(w, 60, 70)
    wait(qtbot, w)
    w.commit()
    assert labels[60, 70] == 2 and labels[20, 20] == 1
    w.session.layers[L.LABELS].undo()
    assert w.session.layers[L.LABELS].data[60, 70] == 0 and w.session.layers[L.LABELS].data[20, 20] == 1


def test_negative_point_shrinks_and_box(widget, qtbot):
    viewer, w = widget()
    w.session.layers[L.BOXES].add_rectangles(np.array([[5, 5], [75, 95]]))
    wait(qtbot, w)
    with_box = w.session.layers[L.PREVIEW].data.sum()
    assert with_box == 600 + 600 + 36
    add_point(w, 60, 70, label=0)
    wait(qtbot, w)
    assert w.session.layers[L.PREVIEW].data.sum() == 636
    assert w.session.layers[L.PREVIEW].data[60, 70] == 0


def test_multimask_cycling(widget, qtbot):
    viewer, w = widget()
    add_point(w, 20, 20)
    wait(qtbot, w)
    first = w.session.layers[L.PREVIEW].data.sum()
    w.next_candidate()
    second = w.session.layers[L.PREVIEW].data.sum()
    assert second < first  # the eroded candidate
    w.next_candidate()
    w.next_candidate()
    assert w.session.layers[L.PREVIEW].data.sum() == first


def test_existing_labels_are_not_overwritten(widget, qtbot):
    viewer, w = widget()
    w.session.layers[L.LABELS].data[10:20, 10:40] = 7
    add_point(w, 20, 20)
    wait(qtbot, w)
    w.commit()
    labels = w.session.layers[L.LABELS].data
    assert (labels == 7).sum() == 300 and (labels == 8).sum() == 300


def test_stack_embeds_only_the_shown_plane(widget, qtbot):
    stack = np.stack([blobs_image(), np.roll(blobs_image(), 15, axis=1), blobs_image()])
    viewer, w = widget(stack)
    assert w.session.predictor.set_image_calls == 1
    start = w.session.embedded[1]
    for calls, plane in enumerate([0, 1], start=2):
        viewer.dims.set_current_step(0, plane)
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded[1] == (plane,), timeout=5000)
        assert w.session.predictor.set_image_calls == calls - (start == (0,) and plane == 0)
    calls = w.session.predictor.set_image_calls
    add_point(w, 20, 30, plane=(1,))
    add_point(w, 20, 30, plane=(2,))  # on another plane: ignored here
    wait(qtbot, w)
    assert w.session.predictor.set_image_calls == calls  # decoding never re-embeds
    w.commit()
    labels = w.session.layers[L.LABELS].data
    assert labels.shape == stack.shape
    assert labels[1, 20, 30] == 1 and labels[0].sum() == 0 and labels[2].sum() == 0


def test_scaled_and_translated_layer(widget, qtbot):
    viewer, w = widget(scale=(0.5, 2.0), translate=(10, -20))
    points = w.session.layers[L.POINTS]
    assert tuple(points.scale) == (0.5, 2.0)
    # a click at the world position of pixel (row 60, col 70)
    world = np.array([10 + 60 * 0.5, -20 + 70 * 2.0])
    points.add(points.world_to_data(world))
    wait(qtbot, w)
    assert w.session.layers[L.PREVIEW].data[60, 70] == 1 and w.session.layers[L.PREVIEW].data[20, 20] == 0


def test_sixteen_bit_uses_contrast_limits(widget, qtbot):
    viewer, w = widget()
    assert "contrast_limits" in w.session.normalization(viewer.layers["img"])
    w.image_panel.norm_box.setCurrentText("percentiles")
    assert "percentiles" in w.session.normalization(viewer.layers["img"])


def test_no_image_and_removed_image(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget

    viewer = make_napari_viewer()
    w = SegmentAnythingWidget(viewer)
    w.session.set_predictor(StandInPredictor())
    w.commit()  # nothing to commit: a notification, no exception
    assert w.session.layers == {}
    viewer.add_image(blobs_image(), name="img")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
    add_point(w, 20, 20)
    viewer.layers.remove("img")  # closed while work may be running
    qtbot.waitUntil(lambda: w.session.idle, timeout=5000)
    assert w.session.image_layer is None


def test_real_model_end_to_end(widget, qtbot):
    """Plumbing on the real engine: a tiny random-weights SAM behind the widget."""
    import torch

    from src_core import SamPredictor
    from src_core.model.build import SamConfig, build_sam_from_config

    torch.manual_seed(0)
    viewer, w = widget()
    w.session.set_predictor(SamPredictor(build_sam_from_config(SamConfig(64, 2, 2, (1,)))), "tiny")
    qtbot.waitUntil(lambda: w.session.idle and isinstance(w.session.predictor, SamPredictor) and w.session.predictor.is_image_set, timeout=20000)
    add_point(w, 20, 20)
    wait(qtbot, w)
    cands = w.session.segmenter.candidates
    assert cands is not None and cands.masks.shape == (3, 80, 100)
    np.testing.assert_array_equal(w.session.layers[L.PREVIEW].data == 1, cands.mask)
    add_point(w, 60, 70, label=0)
    wait(qtbot, w)
    assert w.session.segmenter.candidates.masks.shape == (1, 80, 100)  # refined with the previous logits
    w.commit()
    assert w.session.segmenter.candidates is None


def test_embedding_cache_hit_on_reopen(widget, qtbot, tmp_path):
    """A reopened image loads its embedding from the disk cache instead of recomputing."""
    from src_core import EmbeddingCache, SamPredictor

    model = tiny_model_with_weights_id()
    cache = EmbeddingCache(tmp_path)
    viewer, w = widget()
    predictor = SamPredictor(model)
    calls = []
    original = predictor.set_image
    predictor.set_image = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    w.session.set_predictor(predictor, "tiny", cache=cache)
    qtbot.waitUntil(lambda: w.session.idle and predictor.is_image_set, timeout=20000)
    assert len(calls) == 1 and len(cache) == 1
    first = predictor.get_image_embedding().clone()
    w.session.set_predictor(predictor, "tiny", cache=cache)  # as if the image were reopened
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    assert len(calls) == 1  # served from the cache
    assert predictor.get_image_embedding().equal(first)


def test_screenshot_of_docked_widget(make_napari_viewer, qtbot, tmp_path):
    """A real shown window with the dock widget and committed objects.

    Set NAPARI_SAM_SCREENSHOT=path.png to keep the picture (docs/ has one). The masks
    come from the test stand-in predictor: the picture shows the plugin, not SAM.
    """
    import os

    import imageio.v3 as iio

    from napari_sam._widget import SegmentAnythingWidget
    from src_core.synthetic import make_nuclei_2d

    viewer = make_napari_viewer(show=True)
    image, truth = make_nuclei_2d(seed=0)
    viewer.add_image(image, name="nuclei 2D", colormap="gray")
    w = SegmentAnythingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment Anything", area="right")
    viewer.window._qt_window.resize(1500, 850)
    w.session.set_predictor(StandInPredictor(), "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
    ids = [i for i in np.unique(truth) if i][5:8]
    for i in ids:
        rows, cols = np.nonzero(truth == i)
        add_point(w, rows[len(rows) // 2], cols[len(cols) // 2])
        wait(qtbot, w)
        w.commit()
    rows, cols = np.nonzero(truth == ids[-1] + 1)
    add_point(w, rows[len(rows) // 2], cols[len(cols) // 2])
    wait(qtbot, w)
    assert w.session.layers[L.LABELS].data.max() >= 2
    viewer.layers.selection.active = viewer.layers["nuclei 2D"]
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.std() > 5
    out = os.environ.get("NAPARI_SAM_SCREENSHOT", str(tmp_path / "widget.png"))
    iio.imwrite(out, shot)


def test_embed_all_slices_then_browse_without_recomputing(widget, qtbot, tmp_path):
    from src_core import EmbeddingCache, SamPredictor

    model = tiny_model_with_weights_id()
    stack = np.stack([np.roll(blobs_image(), 7 * i, axis=1) for i in range(4)])
    viewer, w = widget(stack)
    predictor = SamPredictor(model)
    calls = []
    original = predictor.set_image
    predictor.set_image = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    cache = EmbeddingCache(tmp_path)
    w.session.set_predictor(predictor, "tiny", cache=cache)
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    w.session.embed_all_slices()
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=60000)
    assert len(cache) == 4 and len(calls) == 4  # the shown plane was cached already
    for plane in range(4):
        viewer.dims.set_current_step(0, plane)
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded[1] == (plane,), timeout=20000)
    assert len(calls) == 4  # browsing the stack loads every plane from the cache


def test_embed_all_slices_can_be_cancelled(widget, qtbot, tmp_path):
    from src_core import EmbeddingCache, SamPredictor

    model = tiny_model_with_weights_id()
    stack = np.stack([np.roll(blobs_image(), 3 * i, axis=1) for i in range(30)])
    viewer, w = widget(stack)
    cache = EmbeddingCache(tmp_path)
    w.session.set_predictor(SamPredictor(model), "tiny", cache=cache)
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    w.session.embed_all_slices()
    qtbot.waitUntil(lambda: len(cache) >= 2, timeout=60000)
    w.cancel()
    qtbot.waitUntil(lambda: w.session.idle, timeout=60000)
    assert 2 <= len(cache) < 30


def test_embed_all_slices_cancelled_inside_an_encoding(widget, qtbot, tmp_path):
    """Cancel while the encoder runs: the worker still finishes and the widget is usable."""
    import threading

    from src_core import EmbeddingCache, SamPredictor

    model = tiny_model_with_weights_id()
    stack = np.stack([np.roll(blobs_image(), 3 * i, axis=1) for i in range(5)])
    viewer, w = widget(stack)
    w.session.set_predictor(SamPredictor(model), "tiny", cache=EmbeddingCache(tmp_path))
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    inside, release = threading.Event(), threading.Event()

    def slow_block(*args):
        inside.set()
        release.wait(5)

    hook = model.image_encoder.blocks[0].register_forward_hook(slow_block)
    w.session.embed_all_slices()
    assert inside.wait(10)
    w.cancel()
    release.set()
    qtbot.waitUntil(lambda: w.session.idle, timeout=30000)
    hook.remove()
    assert len(EmbeddingCache(tmp_path)) < 5
    add_point(w, 20, 20, plane=L.current_plane(viewer.layers["img"], viewer))
    qtbot.waitUntil(lambda: w.session.idle and w.session.segmenter.candidates is not None, timeout=30000)


def test_model_loads_in_a_worker_and_errors_become_notifications(make_napari_viewer, qtbot, monkeypatch):
    import napari_sam._session as session_module
    import napari_sam._widget as widget_module
    from napari_sam._widget import SegmentAnythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(blobs_image(), name="img")
    w = SegmentAnythingWidget(viewer)
    assert w.session.predictor is None  # nothing loads in the constructor
    shown = []
    monkeypatch.setattr(session_module, "show_error", shown.append)

    def offline(choice):
        raise RuntimeError(f"could not download {choice.model_type}: put the file at /some/where")

    monkeypatch.setattr(widget_module, "load_predictor", offline)
    w.load_model()
    qtbot.waitUntil(lambda: w.session.idle, timeout=5000)
    assert w.session.predictor is None and shown and "/some/where" in shown[0]
    assert "/some/where" in w.status.text()
    monkeypatch.setattr(widget_module, "load_predictor", lambda *a: StandInPredictor())
    w.load_model()
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
    assert isinstance(w.session.predictor, StandInPredictor)


def test_status_tells_where_official_weights_go(make_napari_viewer, monkeypatch, tmp_path):
    from napari_sam._widget import SegmentAnythingWidget

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    w = SegmentAnythingWidget(make_napari_viewer())
    # nothing cached: the built-in model is the default, and the widget says what it is
    assert w.model_panel.model_box.currentText() == "vit_tiny"
    assert "built-in" in w.status.text() and "not Meta's" in w.status.text()
    w.model_panel.model_box.setCurrentText("vit_b")
    assert "sam_vit_b_01ec64.pth" in w.status.text() and str(tmp_path) in w.status.text()


def test_rgba_time_series(widget, qtbot):
    movie = np.zeros((3, 40, 50, 4), np.uint8)
    movie[..., 3] = 255
    for t in range(3):
        movie[t, 10:20, 10 + 5 * t : 25 + 5 * t, :3] = 220
    viewer, w = widget(movie)
    assert viewer.layers["img"].rgb
    viewer.dims.set_current_step(0, 2)
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded[1] == (2,), timeout=5000)
    add_point(w, 15, 30, plane=(2,))
    wait(qtbot, w)
    w.commit()
    labels = w.session.layers[L.LABELS].data
    assert labels.shape == (3, 40, 50) and labels[2, 15, 30] == 1 and labels[2, 15, 12] == 0


def test_multichannel_layers_combined(widget, qtbot):
    """napari splits channels into layers; ticking two more gives SAM a 3-channel image."""
    nuclei = blobs_image()
    membrane = np.zeros_like(nuclei)
    membrane[40:75, 5:45] = 1000  # an object only the second channel shows
    viewer, w = widget(nuclei)
    viewer.add_image(membrane, name="membrane")
    viewer.add_image(np.zeros((10, 10)), name="other size")
    items = [w.image_panel.channel_list.item(i).text() for i in range(w.image_panel.channel_list.count())]
    assert items == ["membrane"]
    w.image_panel.set_channel_layers(["membrane"])
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and len(w.session.embedded[3]) == 1, timeout=5000)
    assert w.session.normalization(viewer.layers["img"])["channels"] == [0, 1]
    add_point(w, 60, 20)  # dark in the first channel, bright in the second
    wait(qtbot, w)
    assert w.session.layers[L.PREVIEW].data[60, 20] == 1


@pytest.mark.slow
def test_load_local_checkpoint_file_through_the_ui(make_napari_viewer, qtbot, tmp_path, monkeypatch):
    """The real loading path: a vit_b weights file (random values), loaded in a worker."""
    import torch

    from napari_sam._widget import SegmentAnythingWidget
    from src_core import SamPredictor
    from src_core.device import bfloat16_is_fast
    from src_core.model.build import MODEL_CONFIGS, build_sam_from_config

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    torch.manual_seed(0)
    path = tmp_path / "my_finetuned_vit_b.pth"
    torch.save({"model": build_sam_from_config(MODEL_CONFIGS["vit_b"]).state_dict()}, path)
    viewer = make_napari_viewer()
    viewer.add_image(blobs_image(), name="img")
    w = SegmentAnythingWidget(viewer)
    w.model_panel.checkpoint_edit.setText(str(path))
    # bfloat16 where this CPU runs it natively; emulated, a vit_b embedding takes minutes
    fast = bfloat16_is_fast(torch.device("cpu"))
    w.model_panel.dtype_box.setCurrentText("bfloat16" if fast else "float32")
    w.load_model()
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=180000)
    assert isinstance(w.session.predictor, SamPredictor)
    assert w.session.predictor.model.weights_id.startswith("vit_b-file-")
    assert w.session.predictor.model.encoder_dtype == (torch.bfloat16 if fast else torch.float32)
    assert len(list((tmp_path / "cache" / "embeddings").glob("*.npz"))) == 1
    add_point(w, 20, 20)
    wait(qtbot, w)
    assert w.session.segmenter.candidates.masks.shape == (3, 80, 100)


def test_cancel_a_running_embedding(widget, qtbot):
    """Cancel stops a slow embedding; it is not restarted until a prompt asks for it."""
    import threading

    from src_core import SamPredictor

    viewer, w = widget()
    model = tiny_model_with_weights_id()
    model.weights_id = None  # no disk cache here
    predictor = SamPredictor(model)
    started, release = threading.Event(), threading.Event()

    def slow_block(*args):
        started.set()
        release.wait(5)

    hook = model.image_encoder.blocks[0].register_forward_hook(slow_block)
    w.session.set_predictor(predictor, "tiny")
    assert started.wait(5)
    w.cancel()
    release.set()
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)
    hook.remove()
    assert "cancelled" in w.status.text() and w.session.embedded is None and not predictor.is_image_set
    qtbot.wait(300)
    assert w.session.idle and w.session.embedded is None  # not restarted by itself
    add_point(w, 20, 20)  # a prompt asks for the embedding again
    qtbot.waitUntil(lambda: w.session.settled and w.session.embedded is not None, timeout=20000)
    assert predictor.is_image_set and w.session.segmenter.candidates is not None


def test_shift_click_adds_one_background_point(widget, qtbot):
    from types import SimpleNamespace

    viewer, w = widget()
    points = w.session.layers[L.POINTS]
    press = SimpleNamespace(modifiers=["Shift"], type="mouse_press")
    next(points.mouse_drag_callbacks[0](points, press))  # napari runs the layer's callbacks, then adds
    points.add(np.array([60.0, 70.0]))
    qtbot.wait(50)  # the next click is a later event
    points.add(np.array([20.0, 20.0]))  # a plain click afterwards is an object point again
    assert list(points.features["label"]) == [0, 1]
    wait(qtbot, w)
    assert w.session.layers[L.PREVIEW].data[20, 20] == 1 and w.session.layers[L.PREVIEW].data[60, 70] == 0


def test_large_images_are_tiled_not_refused(make_napari_viewer, qtbot, monkeypatch):
    import napari_sam._session as session_module
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.tiling import TiledObjectSegmenter

    errors, warnings_ = [], []
    monkeypatch.setattr(session_module, "show_error", errors.append)
    monkeypatch.setattr(session_module, "show_warning", warnings_.append)
    viewer = make_napari_viewer()
    huge = np.broadcast_to(np.zeros(1, np.uint8), (12000, 9000))  # 108 Mpx, no memory
    viewer.add_image(huge, name="huge", contrast_limits=(0, 255))
    w = SegmentAnythingWidget(viewer)
    predictor = StandInPredictor()
    w.session.set_predictor(predictor)
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=10000)
    assert isinstance(w.session.segmenter, TiledObjectSegmenter) and predictor.set_image_calls == 0
    viewer.layers.clear()
    viewer.add_image(np.zeros((5000, 300), np.uint8), name="tall")  # > 4 x 1024 px: tiled too
    w.image_panel.image_box.setCurrentText("tall")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and w.session.embedded[0] == id(viewer.layers["tall"]), timeout=10000)
    assert isinstance(w.session.segmenter, TiledObjectSegmenter) and predictor.set_image_calls == 0
    assert not errors and not warnings_


def test_a_blank_plane_is_refused_with_a_warning(make_napari_viewer, qtbot, monkeypatch):
    """Issue 28: a click on an all-zero 16-bit image used to give a mask of almost every pixel."""
    import napari_sam._session as session_module
    from napari_sam._widget import SegmentAnythingWidget

    warnings_ = []
    monkeypatch.setattr(session_module, "show_warning", warnings_.append)
    viewer = make_napari_viewer()
    stack = np.zeros((2, 80, 100), np.uint16)
    stack[1] = blobs_image()
    viewer.add_image(stack, name="img", contrast_limits=(0, 4000))
    w = SegmentAnythingWidget(viewer)
    predictor = StandInPredictor()
    w.session.set_predictor(predictor, "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
    assert len(warnings_) == 1 and "is blank (every pixel is 0)" in warnings_[0]
    add_point(w, 20, 20, plane=(0,))
    wait(qtbot, w)
    assert not w.session.layers[L.PREVIEW].data.any() and "blank" in w.status.text()
    assert len(predictor.mask_inputs) == 0  # SAM was never asked
    viewer.dims.current_step = (1, 0, 0)  # the next plane has objects: prompts work there
    add_point(w, 20, 20, plane=(1,))
    wait(qtbot, w)
    assert w.session.layers[L.PREVIEW].data[1, 20, 20] == 1 and len(warnings_) == 1


def test_ctrl_z_with_the_points_layer_selected_undoes_the_commit(widget, qtbot):
    """Issue 28: Ctrl+Z did nothing with 'SAM points' selected, and the status kept saying 'committed'."""
    viewer, w = widget()
    add_point(w, 20, 20)
    wait(qtbot, w)
    w.commit()
    assert w.session.layers[L.LABELS].data[20, 20] == 1 and "committed object 1" in w.status.text()
    viewer.layers.selection.active = w.session.layers[L.POINTS]
    handler = viewer.window._qt_viewer._key_map_handler  # the viewer's own key dispatch
    handler.press_key("Control-Z")
    handler.release_key("Control-Z")
    assert w.session.layers[L.LABELS].data[20, 20] == 0
    assert "undid the commit of object 1" in w.status.text()


def test_a_click_before_any_model_says_what_to_do(make_napari_viewer, qtbot, monkeypatch):
    import napari_sam._widget as widget_module
    from napari_sam._widget import SegmentAnythingWidget

    infos = []
    monkeypatch.setattr(widget_module, "show_info", infos.append)
    viewer = make_napari_viewer()
    viewer.add_image(blobs_image(), name="img")
    w = SegmentAnythingWidget(viewer)  # never shown: nothing loads by itself
    add_point(w, 20, 20)
    assert w.session.predictor is None and len(infos) == 1 and "Load model" in infos[0]
    assert "No model is loaded yet" in w.status.text()


def test_the_shown_widget_loads_the_default_model_and_uses_an_early_click(
        make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """Issue 28: the built-in model (or a cached official one) loads when the widget first shows."""
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.checkpoints import EMBEDDED_MODEL

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))  # nothing official cached: the built-in model
    viewer = make_napari_viewer(show=True)
    viewer.add_image(blobs_image(), name="img", contrast_limits=(0, 4000))
    w = SegmentAnythingWidget(viewer)
    assert w.model_panel.model_box.currentText() == EMBEDDED_MODEL and w.session.predictor is None
    viewer.window.add_dock_widget(w, name="Segment Anything", area="right")
    add_point(w, 20, 20)  # clicked while the model loads
    qtbot.waitUntil(lambda: w.session.predictor is not None, timeout=30000)
    assert w.model_panel.choice().model_type == EMBEDDED_MODEL and w.session.predictor.model.weights_id is not None
    qtbot.waitUntil(lambda: w.session.settled and w.session.layers[L.PREVIEW].data.any(), timeout=30000)
    assert w.session.layers[L.PREVIEW].data[20, 20] == 1  # the early click was segmented, not dropped


def test_each_image_keeps_its_own_layers(widget, qtbot):
    """Issue 28: switching images made 'SAM labels [1]', then '[3]' on the way back, and the
    objects committed on the first image were left in a layer no longer used."""
    viewer, w = widget()
    first = viewer.layers["img"]
    add_point(w, 20, 20)
    wait(qtbot, w)
    w.commit()
    mine = dict(w.session.layers)
    assert mine[L.LABELS].data[20, 20] == 1
    viewer.add_image(blobs_image((60, 90)), name="second")  # opened later: on top of everything
    w.image_panel.image_box.setCurrentText("second")  # the user picks it in the widget
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and w.session.embedded[0] == id(viewer.layers["second"]),
                    timeout=5000)
    theirs = dict(w.session.layers)
    assert all(theirs[k] is not mine[k] for k in mine) and theirs[L.LABELS].data.shape == (60, 90)
    assert theirs[L.POINTS].name == "SAM points [second]"
    order = [layer.name for layer in viewer.layers]
    assert order.index("SAM points [second]") > order.index("second")  # clicks are visible
    assert w.finetune.labels_box.currentText() == theirs[L.LABELS].name  # the panels follow the image
    w.image_panel.image_box.setCurrentText("img")  # and back
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None and w.session.embedded[0] == id(first), timeout=5000)
    assert all(w.session.layers[k] is mine[k] for k in mine)  # found again, objects included
    assert w.session.layers[L.LABELS].data[20, 20] == 1
    assert w.finetune.labels_box.currentText() == L.LABELS
    assert len(viewer.layers) == 2 + 8  # two images, four SAM layers each: nothing was made twice


def test_ready_is_signalled_when_the_shown_plane_is_embedded(widget, qtbot):
    stack = np.stack([blobs_image(), blobs_image()])
    viewer, w = widget(stack)
    with qtbot.waitSignal(w.session.ready, timeout=5000) as ready:
        viewer.dims.current_step = (1, 0, 0)
    assert ready.args[0][1] == (1,) and w.session.embedded == ready.args[0]
