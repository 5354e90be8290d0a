"""The "Segment everything" panel: run, progress, cancel, stacks, errors, real engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from scipy import ndimage as ndi

from napari_sam import _layers as L
from src_core.jobs import Cancelled
from standin_predictor import StandInPredictor

pytestmark = pytest.mark.gui


def blobs_image(shape=(80, 100), shift=0):
    image = np.zeros(shape, np.uint16)
    image[10:30, 10 + shift : 40 + shift] = 3000  # object A, 600 px
    image[50:70, 60:90] = 2000  # object B, 600 px
    image[12:18, 60:66] = 2500  # object C, 36 px: below the stand-in's minimum area
    return image


class StandInGenerator:
    """SamAutomaticMaskGenerator's interface, deterministic: one record per bright
    connected component of at least ``min_area`` pixels, reported in 4 batches.

    ``hold`` (an Event) makes it wait after the first batch until cancelled.
    """

    def __init__(self, min_area=100, hold=None, fail=None):
        self.min_area, self.hold, self.fail = min_area, hold, fail
        self._stop = threading.Event()
        self.images = []
        self.reports = []

    def cancel(self):
        self._stop.set()

    def generate(self, image, progress=None, should_stop=None):
        self._stop.clear()
        self.images.append(image)
        if self.fail is not None:
            raise self.fail
        gray = image.astype(float).mean(axis=-1)
        components, count = ndi.label(gray > gray.mean())
        records = []
        for batch in range(4):
            if self._stop.is_set() or (should_stop is not None and should_stop()):
                raise Cancelled("mask generation was cancelled")
            if progress is not None:
                progress(batch, 4)
                self.reports.append((batch, 4))
            if batch == 1 and self.hold is not None:
                self.hold.set()
                self._stop.wait(10)
        for k in range(1, count + 1):
            mask = components == k
            if mask.sum() >= self.min_area:
                records.append({"segmentation": mask, "predicted_iou": 0.9, "area": int(mask.sum())})
        if progress is not None:
            progress(4, 4)
        return records


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_sam._widget import SegmentAnythingWidget

    def make(image=None, generator=None):
        viewer = make_napari_viewer()
        viewer.add_image(blobs_image() if image is None else image, name="img")
        w = SegmentAnythingWidget(viewer)
        w.session.set_predictor(StandInPredictor(), "stand-in")
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
        generator = StandInGenerator() if generator is None else generator
        w.everything.generator_factory = lambda predictor, settings: generator
        return viewer, w, generator

    return make


def run_and_wait(qtbot, w):
    w.everything.run()
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=20000)


def test_run_fills_labels_with_progress_and_commits_go_above(widget, qtbot):
    viewer, w, generator = widget()
    labels = w.session.layers[L.LABELS]
    labels.data[0:3, 0:3] = 7  # an earlier object elsewhere: kept, new ids go above
    labels.refresh()
    run_and_wait(qtbot, w)
    data = labels.data
    assert data[20, 20] == 8 and data[60, 70] == 9 and data[15, 62] == 0
    assert (data == 7).sum() == 9 and set(np.unique(data)) == {0, 7, 8, 9}
    bar = w.everything.progress_bar
    assert bar.maximum() == 4 and bar.value() == 4
    assert generator.reports[0] == (0, 4)
    assert generator.images[0].dtype == np.uint8 and generator.images[0].shape == (80, 100, 3)
    assert "2 objects" in w.status.text()
    # correct the result with a point prompt: the object it missed gets a new id
    w.session.layers[L.POINTS].add(np.array([15.0, 62.0]))
    qtbot.waitUntil(lambda: w.session.idle and w.session.segmenter.candidates is not None, timeout=5000)
    w.commit()
    assert labels.data[15, 62] == 10 and labels.data[20, 20] == 8
    labels.undo()  # the commit
    labels.undo()  # segment everything, in one step
    assert labels.data[15, 62] == 0 and labels.data[20, 20] == 0 and labels.data[1, 1] == 7


def test_cancel_stops_and_leaves_labels_unchanged(widget, qtbot):
    hold = threading.Event()
    viewer, w, generator = widget(generator=StandInGenerator(hold=hold))
    before = w.session.layers[L.LABELS].data.copy()
    w.everything.run()
    assert w.everything.cancel_button.isEnabled() and not w.everything.run_button.isEnabled()
    assert hold.wait(10)
    w.everything.cancel()
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=10000)
    np.testing.assert_array_equal(w.session.layers[L.LABELS].data, before)
    assert "cancelled" in w.status.text()
    assert not w.everything.cancel_button.isEnabled()
    # the widget is usable afterwards: run again to the end
    generator.hold = None
    run_and_wait(qtbot, w)
    assert w.session.layers[L.LABELS].data[20, 20] == 1


def test_widget_cancel_button_also_stops_it(widget, qtbot):
    hold = threading.Event()
    viewer, w, generator = widget(generator=StandInGenerator(hold=hold))
    w.everything.run()
    assert hold.wait(10)
    w.cancel()
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=10000)
    assert w.session.layers[L.LABELS].data.max() == 0 and "cancelled" in w.status.text()


def test_all_slices_gives_linked_3d_labels(widget, qtbot):
    stack = np.stack([blobs_image(shift=2 * z) for z in range(4)])
    stack[2, 50:70, 60:90] = 0  # B is missing from slice 2: it comes back with a new id
    viewer, w, generator = widget(stack)
    viewer.dims.set_current_step(0, 1)
    w.everything.form.all_slices.value = True
    run_and_wait(qtbot, w)
    data = w.session.layers[L.LABELS].data
    assert data.shape == stack.shape and len(generator.images) == 4
    a_ids = {int(data[z, 20, 25]) for z in range(4)}
    assert a_ids == {1}  # A shifts a little: one 3D object
    assert [int(data[z, 60, 70]) for z in range(4)] == [2, 2, 0, 3]
    bar = w.everything.progress_bar
    assert bar.maximum() == 16 and bar.value() == 16
    # current-plane mode on a stack writes only the shown plane
    w.session.layers[L.LABELS].data[...] = 0
    w.everything.form.all_slices.value = False
    run_and_wait(qtbot, w)
    data = w.session.layers[L.LABELS].data
    assert data[0].max() == 0 and data[2].max() == 0 and data[1, 20, 25] == 1


def test_errors_become_notifications(make_napari_viewer, qtbot, monkeypatch):
    import napari_sam._everything_panel as panel_module
    import napari_sam._job as job_module
    import napari_sam._session as session_module
    from napari_sam._widget import SegmentAnythingWidget

    warnings, errors = [], []
    monkeypatch.setattr(panel_module, "show_warning", warnings.append)
    monkeypatch.setattr(job_module, "show_warning", warnings.append)  # the checks every panel runs
    monkeypatch.setattr(panel_module, "show_error", errors.append)
    monkeypatch.setattr(session_module, "show_error", errors.append)
    viewer = make_napari_viewer()
    w = SegmentAnythingWidget(viewer)
    w.everything.run()  # no image
    assert "image" in warnings[-1]
    viewer.add_image(blobs_image(), name="img")
    w.everything.run()  # no model
    assert "model" in warnings[-1] and w.session.idle
    w.session.set_predictor(StandInPredictor(), "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
    w.everything.run()  # the stand-in predictor has no SAM model for the real generator
    assert "SAM model" in errors[-1] and w.session.idle
    w.everything.generator_factory = lambda p, s: StandInGenerator(fail=ValueError("image too odd"))
    w.everything.run()  # an error inside the worker
    qtbot.waitUntil(lambda: w.session.idle and w.everything.run_button.isEnabled(), timeout=10000)
    assert "image too odd" in errors[-1] and w.session.layers[L.LABELS].data.max() == 0


def test_real_generator_on_vit_tiny_writes_labels(widget, qtbot):
    """End to end through SamAutomaticMaskGenerator on random vit_tiny weights."""
    import torch

    from src_core import SamPredictor
    from src_core.model.build import build_sam_from_config
    from tiny_geometry import TINY_256

    torch.manual_seed(0)
    viewer, w, _ = widget(blobs_image((64, 64)))
    w.session.set_predictor(SamPredictor(build_sam_from_config(TINY_256)), "vit_tiny")
    qtbot.waitUntil(lambda: w.session.idle and w.session.predictor.is_image_set, timeout=20000)
    from napari_sam._everything_panel import make_generator

    w.everything.generator_factory = make_generator
    w.everything.form.points_per_side.value = 4
    w.everything.form.pred_iou_thresh.value = 0.0
    w.everything.form.stability_score_thresh.value = 0.0
    run_and_wait(qtbot, w)
    data = w.session.layers[L.LABELS].data
    assert data.max() >= 1 and data.shape == (64, 64)
    assert w.everything.progress_bar.value() == w.everything.progress_bar.maximum() == 1


def test_screenshot_of_segment_everything(make_napari_viewer, qtbot, tmp_path):
    """A shown window with the panel and a result. NAPARI_SAM_EVERYTHING_SCREENSHOT=path.png
    keeps the picture (docs/everything.png). Masks come from the stand-in generator."""
    import os

    import imageio.v3 as iio

    from napari_sam._widget import SegmentAnythingWidget
    from src_core.synthetic import make_nuclei_2d

    viewer = make_napari_viewer(show=True)
    image, _ = make_nuclei_2d(seed=0)
    viewer.add_image(image, name="nuclei 2D", colormap="gray")
    w = SegmentAnythingWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment Anything", area="right")
    viewer.window._qt_window.resize(1500, 1000)
    w.session.set_predictor(StandInPredictor(), "stand-in")
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=5000)
    w.everything.generator_factory = lambda p, s: StandInGenerator(min_area=20)
    run_and_wait(qtbot, w)
    assert w.session.layers[L.LABELS].data.max() >= 10
    viewer.layers.selection.active = viewer.layers["nuclei 2D"]
    viewer.reset_view()
    qtbot.wait(200)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    assert shot.ndim == 3 and shot.shape[0] > 200 and shot.std() > 5
    iio.imwrite(os.environ.get("NAPARI_SAM_EVERYTHING_SCREENSHOT", str(tmp_path / "everything.png")), shot)


def test_time_series_of_stacks_links_along_the_last_slider(widget, qtbot, monkeypatch):
    """(T, Z, Y, X): 'all slices' links along Z at the shown time point. Large results
    skip the undo history (here: a tiny limit)."""
    import napari_sam._everything_panel as panel_module

    monkeypatch.setattr(panel_module, "UNDO_LIMIT", 10)
    movie = np.stack([np.stack([blobs_image(shift=z) for z in range(3)])] * 2)
    viewer, w, generator = widget(movie)
    viewer.dims.set_current_step(0, 1)
    qtbot.waitUntil(lambda: w.session.idle, timeout=5000)
    w.everything.form.all_slices.value = True
    run_and_wait(qtbot, w)
    data = w.session.layers[L.LABELS].data
    assert data[0].max() == 0 and len(generator.images) == 3
    assert [int(data[1, z, 20, 25]) for z in range(3)] == [1, 1, 1]
    assert "too large to undo" in w.status.text()


def test_settings_form_is_magicgui_with_the_engine_defaults(widget, qtbot):
    """The form starts at segment everything's defaults (one home: automatic.settings),
    reads what the user types into its widgets, and enables linking only for stacks."""
    from magicgui.widgets import Container

    from napari_sam._everything_panel import EverythingSettings
    from src_core.automatic.settings import DEFAULTS

    viewer, w, generator = widget()
    panel = w.everything
    assert isinstance(panel.form, Container)
    assert panel.settings() == EverythingSettings()
    assert panel.settings().points_per_side == DEFAULTS.points_per_side
    assert not panel.form.link_min_iou.enabled
    panel.form.points_per_side.native.setValue(12)  # typed into the spin box
    panel.form.all_slices.native.setCurrentIndex(1)  # "all slices (3D, linked)" chosen
    assert panel.form.link_min_iou.enabled
    panel.form.link_min_iou.native.setValue(0.0)
    settings = panel.settings()
    assert (settings.points_per_side, settings.all_slices, settings.link_min_iou) == (12, True, 0.01)
    seen = []
    w.everything.generator_factory = lambda predictor, s: seen.append(s) or generator
    run_and_wait(qtbot, w)
    assert seen and seen[0].points_per_side == 12  # the run used the form's values
