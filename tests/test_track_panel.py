"""The "Track" panel: prompts per object, propagation in a worker, key frames, cancel,
re-runs, settings, exports, z-stacks, (T, Z, Y, X) stacks, lazy video, the real model,
and a screenshot.

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
from src_core.propagate import DEFAULT_RECIPE, VOLUME_QC, QualityControl, evaluate, read_table
from src_core.propagate.standin import StandInSegmenter, ground_truth_lookup
from src_core.synthetic.videos import make_scene

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
        w.session.set_predictor(predictor, "stand-in")
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=10000)
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
    qtbot.waitUntil(lambda: w.session.idle and w.track.run_button.isEnabled(), timeout=timeout)


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
    assert not w.session.idle and panel.cancel_button.isEnabled()
    w.session.current_job.yielded.connect(panel_results)
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
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=10000)


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


class GatedSegmenter(StandInSegmenter):
    """The stand-in, held before its ``after``-th image until ``gate`` is set (the test acts meanwhile)."""

    def __init__(self, *args, after=10, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate, self.after, self.images = threading.Event(), after, 0

    def set_image(self, image, **kwargs):
        self.images += 1
        if self.images == self.after:
            assert self.gate.wait(20)
        super().set_image(image, **kwargs)


def test_key_frames_are_never_painted_even_mid_run(widget, scene, qtbot):
    segmenter = GatedSegmenter(scene.labels_for_image, after=10**9)
    viewer, w = widget(scene[:], segmenter)
    panel = w.track
    prompt_scene(w, scene, 0)
    panel.direction_box.setCurrentText("forward")
    panel.follow_check.setChecked(False)
    panel.last_box.setValue(29)
    panel.run()
    wait_done(qtbot, w)
    labels_layer = panel.layers[T.TRACKS]
    # the user erases object 3 on frame 20 (a napari fill with 0): a key frame without it
    viewer.dims.current_step = (20, 0, 0)
    ys, xs = np.nonzero(labels_layer.data[20] == 3)
    labels_layer.fill((20, ys[len(ys) // 2], xs[len(xs) // 2]), 0)
    assert panel.key_frames == {20} and not (labels_layer.data[20] == 3).any()
    corrected = labels_layer.data[20].copy()
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)  # the shown frame is embedded
    # propagate again from frame 0: at every frame done, frame 20 is as the user left it
    segmenter.images, segmenter.after = 0, 12
    seen = []
    panel.run()
    w.session.current_job.yielded.connect(lambda r: seen.append(np.array_equal(labels_layer.data[20], corrected)))
    qtbot.waitUntil(lambda: segmenter.images >= 12, timeout=10000)
    # mid-run, the user paints object 7 on frame 27, not reached yet: a key frame too
    labels_layer.selected_label = 7
    labels_layer.brush_size = 7
    labels_layer.paint((27, 6, 6), 7)
    painted = labels_layer.data[27].copy()
    assert panel.key_frames == {20, 27}
    segmenter.gate.set()
    wait_done(qtbot, w)
    assert len(seen) == 30 and all(seen)
    np.testing.assert_array_equal(labels_layer.data[27], painted)  # the run went past it: not painted
    table = panel.table()
    assert 3 not in table[table["frame"] == 20]["id"]
    assert set(table[table["frame"] == 27]["id"]) == {7}
    # erased on frame 20 only: object 3 is lost there, then searched for and found on
    assert (labels_layer.data[21] == 3).any() and (labels_layer.data[29] == 3).any()


def test_rerun_replaces_the_previous_results_in_its_range(widget, scene, qtbot):
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    panel = w.track
    prompt_scene(w, scene, 15)
    panel.follow_check.setChecked(False)
    panel.last_box.setValue(29)
    panel.run()
    wait_done(qtbot, w)
    labels = panel.layers[T.TRACKS].data
    assert all((labels[t] == 2).any() for t in range(30))
    before = labels[20:].copy()
    # object 2 was a mistake: its click goes, and frames 0-19 are tracked again
    points = panel.layers[T.PROMPTS]
    points.selected_data = {int(np.flatnonzero(points.features["obj_id"] == 2)[0])}
    points.remove_selected()
    panel.last_box.setValue(19)
    panel.run()
    wait_done(qtbot, w)
    assert not (labels[:20] == 2).any()  # nothing left of the first run in the range
    assert all((labels[t] == 1).any() and (labels[t] == 3).any() for t in range(20))
    np.testing.assert_array_equal(labels[20:], before)  # outside the range: as it was
    table = panel.table()
    assert set(table[table["frame"] < 20]["id"]) == {1, 3}
    assert set(table[table["frame"] >= 20]["id"]) == {1, 2, 3}


def test_settings_reach_the_engine(widget, scene, qtbot, monkeypatch):
    from napari_sam import _track_panel

    calls = []

    def spy(real):
        def call(*args, **kwargs):
            calls.append(kwargs)
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(_track_panel, "propagate", spy(_track_panel.propagate))
    monkeypatch.setattr(_track_panel, "propagate_volume", spy(_track_panel.propagate_volume))
    viewer, w = widget(scene[:], StandInSegmenter(scene.labels_for_image))
    panel = w.track
    # folded at first; the engine's defaults
    assert panel.settings_panel.settings_area.isHidden()
    panel.settings_panel.settings_button.setChecked(True)
    assert not panel.settings_panel.settings_area.isHidden()
    qc = QualityControl()
    assert panel.settings_panel.recipe_box.currentText() == DEFAULT_RECIPE.name
    assert (panel.settings_panel.min_score_box.value(), panel.settings_panel.min_stability_box.value()) == (qc.min_score, qc.min_stability)
    assert panel.settings_panel.max_area_box.value() == qc.max_area_change and panel.settings_panel.search_box.value() == 30
    panel.settings_panel.recipe_box.setCurrentText("full")
    panel.settings_panel.min_score_box.setValue(0.5)
    panel.settings_panel.min_stability_box.setValue(0.65)
    panel.settings_panel.max_area_box.setValue(2.2)
    panel.settings_panel.search_box.setValue(7)
    prompt_scene(w, scene, 0, [1])
    panel.direction_box.setCurrentText("forward")
    panel.last_box.setValue(4)
    panel.run()
    wait_done(qtbot, w)
    got = calls[-1]
    assert got["recipe"] == "full" and got["search_frames"] == 7
    assert (got["qc"].min_score, got["qc"].min_stability, got["qc"].max_area_change) == (0.5, 0.65, 2.2)
    assert got["qc"].refind_area_change == qc.refind_area_change  # the others stay the engine's
    # along z: the volume's defaults, no search
    panel.axis_box.setCurrentIndex(1)
    assert not panel.settings_panel.search_box.isEnabled() and panel.settings_panel.max_area_box.value() == 2.2  # the user's value stays
    panel.reset_settings()
    assert panel.settings_panel.max_area_box.value() == VOLUME_QC.max_area_change
    assert panel.settings_panel.recipe_box.currentText() == DEFAULT_RECIPE.name
    panel.settings_panel.recipe_box.setCurrentText("box")
    panel.run()
    wait_done(qtbot, w)
    got = calls[-1]
    assert got["recipe"] == "box" and got["qc"] == VOLUME_QC and "search_frames" not in got


def test_divisions_setting_gives_daughters_and_a_lineage(widget, qtbot):
    """'detect divisions' (off by default, time only): the dividing cell's daughters get
    new ids, and the Trajectories layer links them to their mother."""
    cells = make_scene("cells", size=128)
    viewer, w = widget(cells[:], StandInSegmenter(cells.labels_for_image))
    panel, settings = w.track, w.track.settings_panel
    assert not settings.divisions_check.isChecked() and panel.settings()["divisions"] is False
    prompt_scene(w, cells, 0)
    panel.direction_box.setCurrentText("forward")

    def run(divide: bool) -> np.ndarray:
        settings.divisions_check.setChecked(divide)
        panel.run()
        wait_done(qtbot, w)
        return np.asarray(panel.layers[T.TRACKS].data)

    tracked = run(False)
    assert set(np.unique(tracked)) == {0, 1, 2, 3, 4, 5}  # no daughters without it
    tracked = run(True)
    assert set(np.unique(tracked)) == {0, 1, 2, 3, 4, 5, 6, 7}
    assert viewer.layers[T.TRAJECTORIES].graph == {6: [1], 7: [1]}
    scores = evaluate(cells.ground_truth(), tracked)
    assert scores.mean_j >= 0.9 and scores.id_switches == 0, scores.summary()
    panel.axis_box.setCurrentIndex(1)  # along z there are no divisions
    assert not settings.divisions_check.isEnabled() and "divisions" not in panel.settings()


def test_ticked_channel_layers_are_tracked_with_the_image(widget, qtbot):
    """"+ channels" reach tracking: an object seen only in a second channel layer is
    followed (with the image layer alone it is lost on the first frame)."""
    from scipy import ndimage as ndi

    def components(image):  # the objects of any channel, as SAM would see them
        image = np.asarray(image)
        return ndi.label(image.reshape(*image.shape[:2], -1).max(axis=-1) > 0)[0]

    n, size = 6, 64
    nuclei = np.zeros((n, size, size), np.uint16)
    nuclei[:, 40:56, 40:56] = 3000  # a still object in the first channel
    membrane = np.zeros((n, size, size), np.uint16)
    for t in range(n):
        membrane[t, 8:24, 4 + 4 * t : 20 + 4 * t] = 3000  # a moving one only in the second
    viewer, w = widget(nuclei, StandInSegmenter(components, boundary_noise=0, failure_rate=0), name="nuclei")
    viewer.add_image(membrane, name="membrane")
    panel = w.track
    points = panel.layers[T.PROMPTS]

    def run() -> np.ndarray:
        panel.layers[T.TRACKS].data[:] = 0
        points.data = np.zeros((0, 3))
        panel.object_box.setValue(1)
        points.add(np.array([[0, 16, 12]], float))  # on the membrane-only object
        panel.direction_box.setCurrentText("forward")
        panel.run()
        wait_done(qtbot, w)
        return np.asarray(panel.layers[T.TRACKS].data)

    alone = run()
    assert not (alone[1:] == 1).any()  # the image layer alone shows nothing there
    w.image_panel.set_channel_layers(["membrane"])
    assert [layer.name for layer in w.session.channel_layers()] == ["membrane"]
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)  # the shown plane is embedded again
    together = run()
    for t in range(n):
        truth = membrane[t] > 0
        assert (together[t] == 1).sum() == truth.sum() and (together[t][truth] == 1).all()


def test_time_through_a_tzyx_stack_at_the_shown_z(widget, qtbot, tmp_path):
    scene = make_scene("crossing", size=64)
    n, nz = 8, 3
    # z 1 holds frames 0-7 of the scene, z 0 and 2 other frames (other positions)
    source = [[t + (0 if z == 1 else 20 + 10 * z) for z in range(nz)] for t in range(n)]
    stack = np.stack([np.stack([scene[source[t][z]] for z in range(nz)]) for t in range(n)])
    truth = np.stack([np.stack([scene.labels(source[t][z]) for z in range(nz)]) for t in range(n)])
    segmenter = StandInSegmenter(
        ground_truth_lookup(list(stack.reshape(-1, 64, 64)), list(truth.reshape(-1, 64, 64))), failure_rate=0.0
    )
    viewer, w = widget(stack, segmenter, name="tzyx")
    panel = w.track
    labels_layer = panel.layers[T.TRACKS]
    assert labels_layer.data.shape == (n, nz, 64, 64) and panel.layers[T.PROMPTS].ndim == 4
    viewer.dims.current_step = (0, 1, 0, 0)
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)  # the shown plane is embedded
    assert panel.last_box.value() == n - 1
    points = panel.layers[T.PROMPTS]
    for p in scene.prompts(0, "point"):
        panel.object_box.setValue(p.obj_id)
        x, y = p.points[0]
        points.add(np.array([[0, 1, y, x]], float))
    points.add(np.array([[0, 2, 5.0, 5.0]]))  # on another z: not part of this run
    panel.direction_box.setCurrentText("forward")
    panel.run()
    wait_done(qtbot, w)
    labels = labels_layer.data
    scores = evaluate(truth[:, 1], labels[:, 1])
    assert scores.mean_j >= 0.85 and scores.id_switches == 0, scores.summary()
    assert not labels[:, 0].any() and not labels[:, 2].any()  # the other planes are untouched
    assert viewer.dims.current_step[:2] == (n - 1, 1)  # followed through t, stayed at z 1
    tracks = viewer.layers[T.TRAJECTORIES].data
    assert tracks.shape[1] == 5 and set(tracks[:, 2]) == {1.0}  # (id, t, z, y, x)
    # a correction there is a key frame of that z only
    labels_layer.paint((3, 1, 5, 5), 9)
    assert panel.key_frames == {3}
    viewer.dims.current_step = (3, 0, 0, 0)
    assert panel.key_frames == set()
    # along z at the shown t: the slices of t 6 only
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)
    viewer.dims.current_step = (6, 1, 0, 0)
    panel.axis_box.setCurrentIndex(1)
    assert (panel.first_box.value(), panel.last_box.value()) == (0, nz - 1)
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)
    before = np.array(labels)
    points.selected_data = set(range(len(points.data)))
    points.remove_selected()
    x, y = scene.prompts(6, "point", [1])[0].points[0]
    panel.object_box.setValue(1)
    points.add(np.array([[6, 1, y, x]]))
    panel.run()
    wait_done(qtbot, w)
    assert (labels[6, 1] == 1).any()
    changed = np.flatnonzero((labels != before).any(axis=(1, 2, 3)))
    assert set(changed.tolist()) <= {6}
    # through time again, at z 0: the trajectories show both z tracked through time
    panel.axis_box.setCurrentIndex(0)
    viewer.dims.current_step = (0, 0, 0, 0)
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)
    points.selected_data = set(range(len(points.data)))
    points.remove_selected()
    for p in scene.prompts(source[0][0], "point"):
        panel.object_box.setValue(p.obj_id)
        x, y = p.points[0]
        points.add(np.array([[0, 0, y, x]], float))
    panel.run()
    wait_done(qtbot, w)
    assert evaluate(truth[:, 0], labels[:, 0]).mean_j >= 0.85
    layer = viewer.layers[T.TRAJECTORIES]
    tracks = layer.data
    assert set(tracks[:, 2]) == {0.0, 1.0}
    pairs = {(int(z), int(o)) for z, o in zip(layer.features["z"], layer.features["obj_id"])}
    assert len(np.unique(tracks[:, 0])) == len(pairs) >= 4  # one track per object and z
    for z in (0, 1):  # each z's track sits on that z's objects
        rows = tracks[tracks[:, 2] == z]
        t, y, x = rows[0, 1].astype(int), int(round(rows[0, 3])), int(round(rows[0, 4]))
        assert labels[t, z, y, x] > 0
    # the exports hold every z tracked through time, with a z column
    table, zs = read_table(panel.export_table(tmp_path / "table.csv"), position="z")
    assert set(zs.tolist()) == {0, 1} and set(table["frame"][zs == 0].tolist()) == set(range(n))
    for z in (0, 1):
        row = table[(zs == z) & (table["frame"] == 2)][0]
        y, x = int(round(row["centroid_y"])), int(round(row["centroid_x"]))
        assert labels[2, z, y, x] == row["id"]
    with pytest.raises(ValueError, match="missing columns"):
        read_table(tmp_path / "table.csv", position="t")
    with open(panel.export_trajectories(tmp_path / "traj.csv"), newline="") as f:
        rows = list(csv.reader(f))
    assert {"x1_z0", "y1_z0", "x1_z1", "y1_z1"} <= set(rows[0]) and len(rows) == 1 + n
    column = rows[0].index("x1_z0")
    first = table[(zs == 0) & (table["id"] == 1) & (table["frame"] == 0)][0]
    assert abs(float(rows[1][column]) - first["centroid_x"]) < 0.01


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
    # the widget's own Cancel stops it too, through the panel's
    asked = []
    cancel = panel.cancel
    panel.cancel = lambda: (asked.append(True), cancel())
    panel.run()
    qtbot.waitUntil(lambda: panel.progress_bar.value() >= 2, timeout=10000)
    w.cancel()
    wait_done(qtbot, w)
    assert asked and panel.outcome.status == "cancelled" and panel.outcome.frames >= 2
    assert panel.run_button.isEnabled() and not panel.cancel_button.isEnabled()
    assert 2 <= len(set(panel.table()["frame"].tolist())) < 60  # a re-run replaced the first run's frames


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
    qtbot.waitUntil(lambda: w.session.idle, timeout=30000)
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
    labels = np.asarray(panel.layers[T.TRACKS].data)
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
    assert "no object is prompted" in errors[-1] and w.session.idle
    points = w.track.layers[T.PROMPTS]
    points.add(np.array([[3, 5.0, 5.0]]))
    w.track.first_box.setValue(10)
    w.track.run()
    assert "no prompt lies in frames 10 to 59" in errors[-1] and w.session.idle
    with pytest.raises(ValueError, match="tracking needs a video"):
        T.check_stack(viewer.add_image(np.zeros((32, 32), np.uint8), name="flat"))
    with pytest.raises(ValueError, match=r"\(T, Z, Y, X\) stack"):
        T.check_stack(viewer.add_image(np.zeros((2, 2, 2, 8, 8), np.uint8), name="5d"))


def test_real_model_end_to_end(widget, scene, qtbot):
    """Plumbing on the real engine: the vit_tiny geometry with random weights."""
    import torch

    from src_core import SamPredictor
    from src_core.model.build import build_sam_from_config
    from tiny_geometry import TINY_256

    torch.manual_seed(0)
    predictor = SamPredictor(build_sam_from_config(TINY_256).eval())
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
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=60000)


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
    w.session.set_predictor(StandInSegmenter(scene.labels_for_image), "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=10000)
    assert w.track.prepare()
    prompt_scene(w, scene, 30)
    w.tabs.setCurrentWidget(w.track)
    w.track.settings_panel.settings_button.setChecked(True)  # show the settings too
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


class _DoubtfulFrom(StandInSegmenter):
    """The stand-in, doubting every mask (predicted IoU halved) on frames from ``first`` on."""

    def __init__(self, scene, first):
        super().__init__(scene.labels_for_image, failure_rate=0.0)
        self.frames, self.first = scene[:], first

    def set_image(self, image, *args, **kwargs):
        self.frame = next(t for t in range(len(self.frames)) if np.array_equal(self.frames[t], image))
        return super().set_image(image, *args, **kwargs)

    def predict(self, *args, **kwargs):
        masks, scores, logits = super().predict(*args, **kwargs)
        return masks, scores * (0.5 if self.frame >= self.first else 1.0), logits


def test_tracks_live_on_disk_and_the_panel_says_why_objects_were_lost(widget, scene, qtbot):
    import zarr

    viewer, w = widget(scene[:], _DoubtfulFrom(scene, 40))
    panel = w.track
    layer = panel.layers[T.TRACKS]
    assert isinstance(layer.data, zarr.Array) and layer.data.shape == (60, 128, 128)  # not in memory
    prompt_scene(w, scene, 30)
    panel.direction_box.setCurrentText("forward")
    panel.run()
    wait_done(qtbot, w)
    on_disk = zarr.open_array(layer.data.store, mode="r")  # what another reader of the store sees
    assert on_disk[35].max() > 0 and not on_disk[45].any()
    viewer.dims.current_step = (35, 0, 0)
    assert panel.lost_label.text() == ""
    viewer.dims.current_step = (40, 0, 0)
    lost = panel.lost_on_shown_frame()
    assert set(lost) == {1, 2, 3} and all("low predicted IoU" in why for why in lost.values())
    assert "object 1 lost: low predicted IoU" in panel.lost_label.text()
    table = panel.table()
    assert set(table[(table["frame"] == 40)]["reason"]) == {"low-iou"}
    # painting a correction goes to the store too
    layer.paint((44, 60, 60), 7)
    assert zarr.open_array(layer.data.store, mode="r")[44, 60, 60] == 7

    # lenient: the doubted masks are kept
    panel.settings_panel.lenient_check.setChecked(True)
    assert not panel.settings_panel.min_score_box.isEnabled()
    qtbot.waitUntil(lambda: w.session.idle, timeout=10000)  # the shown frame's embedding
    panel.run()
    wait_done(qtbot, w)
    assert all(set(np.unique(layer.data[t])) >= {1, 2, 3} for t in range(40, 44))  # up to the key frame 44
    assert panel.lost_on_shown_frame() == {}



def test_track_labels_open_in_napari_as_a_lazy_labels_layer(make_napari_viewer, tmp_path):
    """What `napari-sam track` wrote (labels.zarr) opens through the plugin's reader, backed by the store."""
    import zarr

    from napari_sam._reader import get_labels_reader
    from src_core.propagate import LabelStore

    store = LabelStore(tmp_path / "run" / "labels.zarr", (30, 64, 80))
    frame = np.zeros((64, 80), np.uint8)
    frame[10:20, 30:40] = 2
    store[17] = frame
    other = zarr.create_array(store=str(tmp_path / "image.zarr"), shape=(4, 4), dtype=np.uint8)
    assert get_labels_reader(str(tmp_path / "image.zarr")) is None and other is not None  # not ours
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(tmp_path / "run" / "labels.zarr"), plugin="napari-sam")
    assert layer._type_string == "labels" and layer.name == "run labels"
    assert isinstance(layer.data, zarr.Array) and layer.data.shape == (30, 64, 80)
    np.testing.assert_array_equal(layer.data[17], frame)
    layer.paint((3, 5, 5), 4)  # a correction goes into the store
    assert LabelStore(tmp_path / "run" / "labels.zarr")[3][5, 5] == 4


def test_opening_the_track_tab_makes_its_layers_ready_for_clicks(make_napari_viewer, scene, qtbot):
    """Issue 28: the tab showed "frames 0 to 0", clicks went to the ordinary preview, and the
    prompts layer started in pan mode until Propagate had failed once."""
    from napari_sam._widget import SegmentAnythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(scene[:], name="video")
    w = SegmentAnythingWidget(viewer)
    w.session.set_predictor(StandInSegmenter(scene.labels_for_image), "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=10000)
    assert T.PROMPTS not in viewer.layers
    w.tabs.setCurrentWidget(w.track)  # the user opens the tab
    points = viewer.layers[T.PROMPTS]
    assert viewer.layers.selection.active is points and points.mode == "add"
    assert (w.track.first_box.value(), w.track.last_box.value()) == (0, len(scene) - 1)
    assert "Click on an object" in w.track.hint_label.text() and "Propagate" in w.track.hint_label.text()
    points.add(np.array([[5, 40.0, 40.0]]))  # a click lands on the track prompts, object 1
    assert list(points.features["obj_id"]) == [1] and not w.session.layers["SAM points"].data.size


def test_the_track_tab_on_a_2d_image_says_what_it_needs(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget

    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="plane")
    w = SegmentAnythingWidget(viewer)
    w.tabs.setCurrentWidget(w.track)
    assert T.PROMPTS not in viewer.layers and "video or a stack" in w.track.hint_label.text()
