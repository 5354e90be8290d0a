"""The "Fine-tune on my annotations" panel: a real (small, random) model trained in a
worker on the image and its labels, then used; cancel; bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_sam import _finetune_panel as F
from napari_sam import _layers as L

pytestmark = pytest.mark.gui


def blobs(shape=(96, 128)):
    image = np.full(shape, 200, np.uint16)
    labels = np.zeros(shape, np.int32)
    image[10:40, 12:50] = 3000
    labels[10:40, 12:50] = 1
    image[55:85, 70:115] = 2200
    labels[55:85, 70:115] = 2
    return image, labels


def tiny_predictor():
    from src_core.model.build import build_sam_from_config
    from tiny_geometry import TINY_256
    from src_core.predictor import SamPredictor

    torch.manual_seed(0)
    return SamPredictor(build_sam_from_config(TINY_256))


@pytest.fixture
def setup(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    from napari_sam._widget import SegmentAnythingWidget

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path / "cache"))
    errors = []
    monkeypatch.setattr(F, "show_error", errors.append)
    monkeypatch.setattr(F, "show_warning", errors.append)
    infos = []
    monkeypatch.setattr(F, "show_info", infos.append)

    def make(image=None, labels=None):
        viewer = make_napari_viewer()
        default_image, default_labels = blobs()
        viewer.add_image(default_image if image is None else image, name="img")
        w = SegmentAnythingWidget(viewer)
        w.session.set_predictor(tiny_predictor(), "tiny")
        qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
        w.session.layers[L.LABELS].data = default_labels if labels is None else labels
        return viewer, w

    make.infos = infos
    return make, errors


def test_finetune_trains_saves_and_uses_the_model(setup, qtbot, tmp_path):
    make, errors = setup
    viewer, w = make()
    panel = w.finetune
    old_model = w.session.predictor.model
    before = {k: v.clone() for k, v in old_model.state_dict().items()}
    out = tmp_path / "tuned.pth"
    panel.form.steps.value = 3
    panel.output_edit.setText(str(out))
    assert panel.labels_box.currentText() == L.LABELS
    panel.run()
    qtbot.waitUntil(lambda: w.session.idle and panel.run_button.isEnabled(), timeout=60000)
    assert not errors
    assert out.is_file()
    assert panel.progress_bar.value() == 3
    # the fine-tuned model is in use, loaded from the file, and the loaded one was not touched
    from src_core.checkpoints import load_state_dict
    from src_core.model.build import infer_model_type

    assert w.session.predictor.model is not old_model
    assert infer_model_type(load_state_dict(out)) == "vit_tiny"
    assert w.session.predictor.model.weights_id is not None  # a file identity: embeddings can be cached
    for key, value in old_model.state_dict().items():
        assert torch.equal(value, before[key]), key
    new = w.session.predictor.model.state_dict()
    decoder = [k for k in new if k.startswith("mask_decoder.")]
    encoder = [k for k in new if k.startswith("image_encoder.")]
    assert any(not torch.equal(new[k], before[k]) for k in decoder)  # trained
    assert all(torch.equal(new[k], before[k]) for k in encoder)  # frozen by default
    assert str(out) in make.infos[-1]
    assert w.model_panel.choice().checkpoint == str(out)  # the model box says which weights are in use
    assert "left" in panel.progress_bar.format()  # an estimate of the time left was shown
    # the image is embedded again with the new weights, ready for clicks
    qtbot.waitUntil(lambda: w.session.idle and w.session.embedded is not None, timeout=20000)
    assert "ready" in w.status.text().lower()


def test_cancel_writes_nothing_and_keeps_the_model(setup, qtbot, tmp_path):
    make, errors = setup
    viewer, w = make()
    panel = w.finetune
    model = w.session.predictor.model
    out = tmp_path / "never.pth"
    panel.form.steps.value = 10_000
    panel.output_edit.setText(str(out))
    panel.run()
    qtbot.waitUntil(lambda: panel.progress_bar.value() >= 1, timeout=60000)
    w.cancel()
    qtbot.waitUntil(lambda: w.session.idle and panel.run_button.isEnabled(), timeout=60000)
    assert not out.exists()
    assert w.session.predictor.model is model
    assert "cancelled" in w.status.text()
    assert not errors


def test_bad_input_is_explained_and_nothing_starts(setup, qtbot, tmp_path):
    make, errors = setup
    viewer, w = make(labels=np.zeros((96, 128), np.int32))
    panel = w.finetune
    panel.run()
    assert w.session.idle and "no objects" in errors[-1]
    # labels of another image
    viewer.add_labels(np.ones((10, 10), np.int32), name="other")
    panel.refresh_labels()
    panel.labels_box.setCurrentText("other")
    panel.run()
    assert w.session.idle and "has shape (10, 10)" in errors[-1]
    # output is a folder
    panel.labels_box.setCurrentText(L.LABELS)
    w.session.layers[L.LABELS].data = blobs()[1]
    panel.output_edit.setText(str(tmp_path))
    panel.run()
    assert w.session.idle and "is a folder" in errors[-1]
    # no model loaded
    w.session.predictor = None
    panel.output_edit.setText("")
    panel.run()
    assert w.session.idle and "load a model" in errors[-1]


def test_training_pairs_take_the_labelled_planes_of_a_stack():
    stack = np.stack([np.full((20, 30), v, np.uint16) for v in (100, 2000, 4000)])
    labels = np.zeros((3, 20, 30), np.int32)
    labels[2, 5:10, 5:10] = 7
    images, masks = F.training_pairs(lambda plane: stack[plane], {"contrast_limits": (0, 4000)}, labels, (3,))
    assert images.shape == (1, 20, 30, 3) and images.dtype == np.uint8
    assert images[0, 0, 0, 0] == 255  # plane 2, scaled by the contrast limits
    assert masks.shape == (1, 20, 30) and masks.max() == 7
    with pytest.raises(ValueError, match="no objects"):
        F.training_pairs(lambda plane: stack[plane], {}, np.zeros_like(labels), (3,))
