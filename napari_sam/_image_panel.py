"""The image part of the dock widget: which layer, which extra channels, which scaling.

It turns the choice into what the engine needs: a function reading one plane, and the
keyword arguments of ``SamPredictor.set_image``.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import Qt
from qtpy.QtWidgets import QComboBox, QFormLayout, QListWidget, QListWidgetItem, QWidget

from . import _layers as L


class ImagePanel(QWidget):
    """Image layer, up to two extra channel layers, and the normalization choice."""

    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        self.image_box = QComboBox()
        self.channel_list = QListWidget()
        self.channel_list.setMaximumHeight(70)
        self.channel_list.setToolTip(
            "Tick up to two more image layers of the same size (e.g. the other channels of "
            "a multichannel image): SAM then sees the image as red, these as green and blue."
        )
        self.norm_box = QComboBox()
        self.norm_box.addItems(["contrast limits", "percentiles"])
        self.norm_box.setToolTip(
            "How 16-bit and float images become 0-255 for SAM: the layer's contrast limits "
            "(what you see is what SAM sees) or the 0.5-99.5 percentiles of the slice."
        )
        form.addRow("image", self.image_box)
        form.addRow("+ channels", self.channel_list)
        form.addRow("normalize by", self.norm_box)

    def refresh(self, images: list) -> bool:
        """Offer ``images``; keep the current choice. True when nothing was chosen before."""
        current = self.image_box.currentText()
        names = [layer.name for layer in images]
        self.image_box.blockSignals(True)
        self.image_box.clear()
        self.image_box.addItems(names)
        if current in names:
            self.image_box.setCurrentText(current)
        self.image_box.blockSignals(False)
        self.refresh_channels(images)
        return not current and bool(names)

    def image(self, images: list):
        name = self.image_box.currentText()
        return next((layer for layer in images if layer.name == name), None)

    def refresh_channels(self, images: list) -> None:
        image = self.image(images)
        ticked = {layer.name for layer in self.channel_layers(images)}
        self.channel_list.blockSignals(True)
        self.channel_list.clear()
        if image is not None and not image.rgb:
            shape = L.spatial_shape(image)
            for layer in images:
                if layer is image or layer.rgb or L.spatial_shape(layer) != shape:
                    continue
                item = QListWidgetItem(layer.name)
                item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                checked = Qt.CheckState.Checked if layer.name in ticked else Qt.CheckState.Unchecked
                item.setCheckState(checked)
                self.channel_list.addItem(item)
        self.channel_list.blockSignals(False)

    def channel_layers(self, images: list) -> list:
        """The extra channel layers ticked by the user (at most two are used)."""
        names = {
            self.channel_list.item(i).text()
            for i in range(self.channel_list.count())
            if self.channel_list.item(i).checkState() == Qt.CheckState.Checked
        }
        return [layer for layer in images if layer.name in names][:2]

    def set_channel_layers(self, names) -> None:
        """Tick the given layer names (for scripts and tests)."""
        for i in range(self.channel_list.count()):
            item = self.channel_list.item(i)
            item.setCheckState(Qt.CheckState.Checked if item.text() in names else Qt.CheckState.Unchecked)

    def normalization(self, image, images: list) -> dict:
        """``set_image`` keyword arguments for ``image`` and the ticked channels."""
        by_limits = self.norm_box.currentText() == "contrast limits"
        extra = self.channel_layers(images)
        if extra:
            layers = [image, *extra]
            kwargs: dict = {"channel_axis": -1, "channels": list(range(len(layers)))}
            if by_limits:
                kwargs["contrast_limits"] = [tuple(float(v) for v in layer.contrast_limits) for layer in layers]
            else:
                kwargs["percentiles"] = (0.5, 99.5)
            return kwargs
        if image.rgb and np.dtype(image.data.dtype) == np.uint8:
            return {}  # photographs go in untouched, exactly as in Meta's SAM
        if by_limits:
            return {"contrast_limits": tuple(float(v) for v in image.contrast_limits)}
        return {"percentiles": (0.5, 99.5)}

    def plane_reader(self, image, images: list):
        """A function plane -> the array SAM embeds (the image's plane with the ticked
        channels stacked on). Made on the UI thread, called in workers."""
        layers = [image, *self.channel_layers(images)]

        def read(plane: tuple) -> np.ndarray:
            planes = [L.plane_of(layer, plane) for layer in layers]
            return planes[0] if len(planes) == 1 else np.stack(planes, axis=-1)

        return read
