"""The "Track" panel: prompts per object, propagation in a worker, key frames, cancel,
exports, z-stacks, lazy video, the real model, and a screenshot.

Masks come from the engine's deterministic stand-in segmenter on synthetic scenes with
ground truth, so the assertions measure the panel's plumbing, not a model.
"""

from __future__ import annotations

import csv
import threading
import time

import numpy as np
import pytest

from napari_sam import _track_layers as T
from src_core.propagate import evaluate, read_table
from src_core.propagate.standin import StandInSegmenter, ground_truth_lookup
from src_core.propagate.synthetic import make_scene

pytestmark = pytest.mark.gui


@pytest.fixture(scope="module")
def scene():
    return make_scene("crossing")


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget

    def make(frames, predictor, name="video", **layer_kwargs):
        viewer = make_napari_viewer()
        viewer.add_image(frames, name=name, **layer_kwargs)
        w = SegmentAnythingWidget(viewer)
        w.set_predictor(predictor, "stand-in")
        qtbot.waitUntil(lambda: w.idle and w._embedded is not None, timeout=10000)
        assert w.track.prepare()
        return viewer, w

    return make


def prompt_scene(w, scene, frame, obj_ids=None, kind="point"):
    """Click (or box) every ground-truth object of ``frame`` as its own object, via the panel."""
    panel = w.track
    points, boxes = panel.layers[T.PROMPTS], panel.layers[T.BOXES]
    for p in scene.prompts(frame, kind, obj_ids):
        panel.object_box.setValue(p.obj_id)
        if kind == "point":
            x, y = p.points[0]
            points.add(np.array([[frame, y, x]], float))
        else:
            x0, y0, x1, y1 = p.box
            corners = [[frame, y0, x0], [frame, y0, x1], [frame, y1, x1], [frame, y1, x0]]
            boxes.add_rectangles(np.array(corners, float))


def wait_done(qtbot, w, timeout=30000):
    qtbot.waitUntil(lambda: w.idle and w.track.run_button.isEnabled(), timeout=timeout)


def test_prompts_per_object_ids_colours_and_new_object(widget, scene):
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    panel = w.track
    prompt_scene(w, scene, 5, [1, 2])
    points, labels = panel.layers[T.PROMPTS], panel.layers[T.TRACKS]
    assert labels.data.shape == (60, 128, 128)
    assert list(points.features["obj_id"]) == [1, 2]
    np.testing.assert_allclose(points.face_color[1], T.object_color(labels, 2))
    panel.new_object()
    assert panel.object_box.value() == 3
    panel.background_check.setChecked(True)
    points.add(np.array([[5, 10.0, 20.0]]))
    assert int(points.features["label"].iloc[-1]) == 0 and int(points.features["obj_id"].iloc[-1]) == 3
    assert list(points.border_color[-1][:3]) == [1, 0, 0]  # background click: red border
    # object 3 has only a background click: refused with a message
    with pytest.raises(ValueError, match="object 3 on frame 5 has no positive point"):
        T.collect_track_prompts(points, panel.layers[T.BOXES], labels, ())
    points.selected_data = {2}
    points.remove_selected()
    prompts = T.collect_track_prompts(points, panel.layers[T.BOXES], labels)
    truth = scene.prompts(5, "point", [1, 2])
    assert [(p.frame, p.obj_id) for p in prompts] == [(5, 1), (5, 2)]
    for got, want in zip(prompts, truth):
        np.testing.assert_allclose(got.points, want.points)  # napari (row, col) -> SAM (x, y)


def test_propagate_both_ways_matches_ground_truth(widget, scene, qtbot):
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    panel = w.track
    prompt_scene(w, scene, 30)
    seen = []
    panel_results = lambda result: seen.append(result.frame)  # noqa: E731
    panel.run()
    assert not w.idle and panel.cancel_button.isEnabled()
    w._worker.yielded.connect(panel_results)
    wait_done(qtbot, w)
    assert len(seen) >= 50  # frames arrived one by one
    labels = panel.layers[T.TRACKS].data
    scores = evaluate(scene.ground_truth(), labels)
    assert scores.mean_j >= 0.85, scores.summary()
    assert scores.id_switches == 0
    assert scores.pairing == {1: 1, 2: 2, 3: 3}
    tracks = viewer.layers[T.TRAJECTORIES]
    assert set(np.unique(tracks.data[:, 0])) == {1, 2, 3}
    assert tracks.data[:, 1].min() == 0 and tracks.data[:, 1].max() == 59
    # the predictor holds other frames now: the shown one is embedded again
    qtbot.waitUntil(lambda: w.idle and w._embedded is not None, timeout=10000)


def test_corrected_frame_is_a_key_frame_and_kept(widget, scene, qtbot):
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    panel = w.track
    prompt_scene(w, scene, 0, kind="box")
    panel.direction_box.setCurrentText("forward")
    panel.run()
    wait_done(qtbot, w)
    labels_layer = panel.layers[T.TRACKS]
    # the user corrects frame 20: paints object 1 bigger (a napari paint stroke)
    labels_layer.selected_label = 1
    labels_layer.brush_size = 9
    ys, xs = np.nonzero(labels_layer.data[20] == 1)
    labels_layer.paint((20, ys.min() - 3, xs.min() - 3), 1)
    assert panel.key_frames == {20}
    corrected = labels_layer.data[20].copy()
    viewer.dims.current_step = (20, 0, 0)
    panel.first_box.setValue(panel.current_frame())  # what 'from shown frame' does
    assert panel.first_box.value() == 20
    panel.run()
    wait_done(qtbot, w)
    np.testing.assert_array_equal(labels_layer.data[20], corrected)  # never overwritten
    scores = evaluate(scene.ground_truth(21, 60), labels_layer.data[21:])
    assert scores.mean_j >= 0.85 and scores.id_switches == 0
    table = panel.table()
    rows = table[table["frame"] == 20]
    assert set(rows["status"]) == {"key"} and set(rows["id"]) == {1, 2, 3}
    panel.unmark_key_frame(20)
    assert panel.key_frames == set()


class SlowSegmenter(StandInSegmenter):
    """The stand-in, slowed down so a run can be cancelled half way."""

    def __init__(self, *args, started=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.started = started or threading.Event()

    def set_image(self, image, **kwargs):
        time.sleep(0.03)
        super().set_image(image, **kwargs)
        self.started.set()


def test_cancel_keeps_the_frames_done(widget, scene, qtbot):
    viewer, w = widget(scene[:], SlowSegmenter(scene.labels_for_image))
    panel = w.track
    prompt_scene(w, scene, 0)
    panel.direction_box.setCurrentText("forward")
    panel.follow_check.setChecked(False)
    panel.run()
    qtbot.waitUntil(lambda: panel.progress_bar.value() >= 5, timeout=10000)
    panel.cancel()
    wait_done(qtbot, w)
    assert panel.outcome.status == "cancelled"
    done = sorted(set(panel.table()["frame"].tolist()))
    assert 5 <= len(done) < 60
    labels = panel.layers[T.TRACKS].data
    assert all(labels[t].any() for t in done)
    assert not labels[done[-1] + 2 :].any()  # nothing past the cancel
    # the widget's own Cancel stops it too
    panel.run()
    qtbot.waitUntil(lambda: panel.progress_bar.value() >= 2, timeout=10000)
    w.cancel()
    wait_done(qtbot, w)
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()


def test_exports_written_and_readable(widget, scene, qtbot, tmp_path):
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    panel = w.track
    prompt_scene(w, scene, 0, [1, 2])
    panel.direction_box.setCurrentText("forward")
    panel.last_box.setValue(19)
    panel.run()
    wait_done(qtbot, w)
    table = read_table(panel.export_table(tmp_path / "table.csv"))
    assert set(table["id"]) == {1, 2} and set(table["frame"]) == set(range(20))
    assert (table["status"][table["frame"] == 0] == "key").all()
    with open(panel.export_trajectories(tmp_path / "traj.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["frame", "x1", "y1", "x2", "y2"] and len(rows) == 61
    x1 = float(rows[1 + 10][1])
    centroid = table[(table["frame"] == 10) & (table["id"] == 1)]["centroid_x"][0]
    assert abs(x1 - centroid) < 0.01
    assert rows[1 + 30][1] == "NaN"  # not tracked there
    worker = panel.export_video(tmp_path / "overlay.mp4")
    assert worker is not None
    qtbot.waitUntil(lambda: w.idle, timeout=30000)
    from src_core.video import VideoFrames

    video = VideoFrames(tmp_path / "overlay.mp4")
    assert video.shape == (60, 128, 128, 3)
    frame = np.asarray(video[10]).astype(int)
    # object 1 is drawn in colour over the grey frame
    mask = panel.layers[T.TRACKS].data[10] == 1
    assert np.ptp(frame[mask], axis=1).mean() > 30 and np.ptp(frame[~mask], axis=1).mean() < 15


def test_z_stack_propagates_up_and_down_into_3d_labels(widget, qtbot):
    z, size = 21, 64
    zz, yy, xx = np.mgrid[0:z, 0:size, 0:size]
    truth = np.zeros((z, size, size), np.int32)
    truth[(zz - 10) ** 2 / 64 + ((yy - 20) ** 2 + (xx - 20) ** 2) / 144 <= 1] = 1  # ends at z 2 and 18
    truth[(zz - 8) ** 2 / 16 + ((yy - 44) ** 2 + (xx - 40) ** 2) / 100 <= 1] = 2  # z 4 to 12
    rng = np.random.default_rng(0)
    stack = (np.where(truth > 0, 60, 170) + rng.normal(0, 4, truth.shape)).clip(0, 255).astype(np.uint8)
    segmenter = StandInSegmenter(ground_truth_lookup(list(stack), list(truth)), failure_rate=0.0)
    viewer, w = widget(stack, segmenter, name="volume")
    panel = w.track
    panel.axis_box.setCurrentIndex(1)
    assert not panel.direction_box.isEnabled()
    viewer.dims.current_step = (10, 0, 0)
    points = panel.layers[T.PROMPTS]
    panel.object_box.setValue(1)
    points.add(np.array([[10, 20, 20.0]]))
    panel.object_box.setValue(2)
    points.add(np.array([[8, 44, 40.0]]))
    panel.run()
    wait_done(qtbot, w)
    labels = panel.layers[T.TRACKS].data
    for obj_id in (1, 2):
        a, b = labels == obj_id, truth == obj_id
        assert (a & b).sum() / (a | b).sum() >= 0.85
    assert not labels[:2].any() and not labels[19:].any()  # stops where the objects end
    assert T.TRAJECTORIES not in viewer.layers  # no trajectories through z


def test_video_frames_are_read_lazily(widget, qtbot, tmp_path, monkeypatch):
    from scipy import ndimage as ndi

    from napari_sam._reader import read_video
    from src_core.video import VideoFrames, write_video

    scene = make_scene("turning")
    write_video(tmp_path / "clip.mp4", (np.repeat(scene[t][..., None], 3, axis=2) for t in range(20)), fps=10)
    data, kwargs, _ = read_video(str(tmp_path / "clip.mp4"))[0]
    reads = []
    original = VideoFrames.__getitem__

    def spy(self, key):
        reads.append(key)
        return original(self, key)

    monkeypatch.setattr(VideoFrames, "__getitem__", spy)

    def dark_blobs(image):  # the video's own ground truth: its dark animals
        return ndi.label(np.asarray(image)[..., 0] < 115)[0]

    viewer, w = widget(data, StandInSegmenter(dark_blobs), **kwargs)
    panel = w.track
    prompt_scene(w, scene, 0)
    panel.direction_box.setCurrentText("forward")
    reads.clear()
    panel.run()
    wait_done(qtbot, w)
    labels = panel.layers[T.TRACKS].data
    assert all(labels[t].any() for t in range(20))
    scores = evaluate(scene.ground_truth(0, 20), labels)
    assert scores.mean_j >= 0.7 and scores.id_switches == 0
    assert reads
    for key in reads:  # one frame at a time, never the whole video
        first = key[0] if isinstance(key, tuple) else key
        n = len(range(*first.indices(20))) if isinstance(first, slice) else 1
        assert n == 1, key


def test_bad_input_is_explained(widget, make_napari_viewer, scene, qtbot, monkeypatch):
    errors = []
    monkeypatch.setattr("napari_sam._track_panel.show_error", errors.append)
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    w.track.run()
    assert "no object is prompted" in errors[-1] and w.idle
    points = w.track.layers[T.PROMPTS]
    points.add(np.array([[3, 5.0, 5.0]]))
    w.track.first_box.setValue(10)
    w.track.run()
    assert "no prompt lies in frames 10 to 59" in errors[-1] and w.idle
    with pytest.raises(ValueError, match="tracking needs a video"):
        T.check_stack(viewer.add_image(np.zeros((32, 32), np.uint8), name="flat"))


def test_real_model_end_to_end(widget, scene, qtbot):
    """Plumbing on the real engine: the vit_tiny geometry with random weights."""
    import torch

    from src_core import SamPredictor
    from src_core.model.build import MODEL_CONFIGS, build_sam_from_config

    torch.manual_seed(0)
    predictor = SamPredictor(build_sam_from_config(MODEL_CONFIGS["vit_tiny"]).eval())
    viewer, w = widget(scene[:], predictor)
    panel = w.track
    prompt_scene(w, scene, 0, [1, 2])
    panel.direction_box.setCurrentText("forward")
    panel.last_box.setValue(3)
    panel.run()
    wait_done(qtbot, w, timeout=120000)
    table = panel.table()
    assert set(table["frame"]) == {0, 1, 2, 3} and set(table["id"]) == {1, 2}
    assert set(table["status"]) <= {"key", "tracked", "lost", "re-found"}
    labels = panel.layers[T.TRACKS].data
    assert labels.shape == (60, 128, 128) and labels[0].any()
    assert set(np.unique(labels[:4])) <= {0, 1, 2} and not labels[4:].any()
    qtbot.waitUntil(lambda: w.idle and w._embedded is not None, timeout=60000)


def test_screenshot_of_track_panel(make_napari_viewer, scene, qtbot, tmp_path):
    """A shown window: a tracked synthetic video, its tracks and the panel.

    Set NAPARI_SAM_TRACK_SCREENSHOT=path.png to keep the picture (docs/track.png). The
    masks come from the engine's stand-in segmenter: it shows the plugin, not SAM.
    """
    import os

    import imageio.v3 as iio

    from napari_sam._widget import SegmentAnythingWidget

    viewer = make_napari_viewer(show=True)
    viewer.add_image(scene[:], name="crossing (synthetic)", colormap="gray")
    w = SegmentAnythingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment Anything", area="right")
    viewer.window._qt_window.resize(1500, 1000)
    w.set_predictor(StandInSegmenter(scene.labels_for_image), "stand-in")
    qtbot.waitUntil(lambda: w.idle and w._embedded is not None, timeout=10000)
    assert w.track.prepare()
    prompt_scene(w, scene, 30)
    w.track.run()
    wait_done(qtbot, w)
    viewer.dims.current_step = (38, 0, 0)
    viewer.layers.selection.active = viewer.layers[T.PROMPTS]
    viewer.reset_view()
    qtbot.wait(300)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.std() > 5
    out = os.environ.get("NAPARI_SAM_TRACK_SCREENSHOT", str(tmp_path / "track.png"))
    iio.imwrite(out, shot)
