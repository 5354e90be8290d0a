"""The dock widget's model box: models by group with one line each, the default, and a
microscopy model chosen and loaded as a user would (random weights in the cache)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_files import MICROSCOPY, random_state
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QStyleOptionViewItem

from napari_sam import _layers as L

pytestmark = pytest.mark.gui


def _rows(box):
    model = box.model()
    return [model.item(i) for i in range(model.rowCount())]


def test_box_groups_the_models_with_one_line_each(make_napari_viewer, monkeypatch, tmp_path):
    from napari_sam._widget import SegmentAnythingWidget

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    w = SegmentAnythingWidget(make_napari_viewer())
    box = w.model_panel.model_box
    rows = _rows(box)
    titles = [r.text() for r in rows if not r.isSelectable()]
    assert titles == ["Meta's SAM", "microscopy fine-tunes (micro-sam)", "small and fast", "built-in",
                      "video (SAM 2.1)"]
    names = [r.text() for r in rows if r.isSelectable()]
    sam2 = [f"sam2.1_hiera_{size}" for size in ("tiny", "small", "base_plus", "large")]
    assert names == ["vit_h", "vit_l", "vit_b", *MICROSCOPY, "vit_t", "vit_tiny", *sam2]
    assert all(r.toolTip() for r in rows if r.isSelectable())

    # the open list shows each model's line, the closed box its name
    option = QStyleOptionViewItem()
    index = box.model().index(names.index("vit_b_lm") + 2, 0)  # two titles above it
    box.itemDelegate().initStyleOption(option, index)
    assert option.text.startswith("vit_b_lm  -  light microscopy")
    title_option = QStyleOptionViewItem()
    box.itemDelegate().initStyleOption(title_option, box.model().index(0, 0))
    assert title_option.text == "Meta's SAM" and title_option.font.bold()

    # nothing cached: the built-in model; a title cannot be chosen
    assert box.currentText() == "vit_tiny"
    box.setCurrentIndex(0)
    assert box.currentText() != "Meta's SAM"
    box.setCurrentText("vit_b_lm")
    status = w.status.text()
    assert "light microscopy" in status and "about 375 MB" in status
    assert str(tmp_path / "checkpoints" / "vit_b_lm.pt") in status
    box.setCurrentText("vit_t")
    assert "MobileSAM" in w.status.text() and "mobile_sam.pt" in w.status.text()


def test_cached_microscopy_model_is_the_default_and_loads(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    """A micro-sam file in the cache (vit_t_lm, MobileSAM's architecture, as micro-sam
    publishes it): chosen by default, loaded with Load model, and it segments a click."""
    from napari_sam._widget import SegmentAnythingWidget
    from src_core.checkpoints import checkpoint_path

    monkeypatch.setenv("NAPARI_SAM_CACHE", str(tmp_path))
    path = checkpoint_path("vit_t_lm")
    path.parent.mkdir(parents=True)
    torch.save(random_state("vit_t", seed=4), path)

    viewer = make_napari_viewer()
    image = np.zeros((64, 64), np.uint16)
    image[20:40, 20:40] = 3000
    viewer.add_image(image, name="cells")
    w = SegmentAnythingWidget(viewer)
    panel = w.model_panel
    assert panel.model_box.currentText() == "vit_t_lm"
    assert "are cached" in w.status.text() and "light microscopy on a CPU" in w.status.text()
    panel.device_box.setCurrentText("cpu")
    panel.dtype_box.setCurrentText("float32")
    qtbot.mouseClick(panel.load_button, Qt.MouseButton.LeftButton)
    qtbot.waitUntil(lambda: w.session.predictor is not None and w.session.idle, timeout=60000)
    model = w.session.predictor.model
    assert type(model.image_encoder).__name__ == "TinyViT"
    assert model.weights_id.startswith("vit_t_lm-xxh128-")
    assert panel.choice().model_type == "vit_t_lm"

    w.session.layers[L.POINTS].add(np.array([30.0, 30.0]))
    qtbot.waitUntil(lambda: w.session.settled and w.session.embedded is not None, timeout=60000)
    preview = w.session.layers[L.PREVIEW].data
    assert preview.shape == image.shape  # the click went through the TinyViT model
