"""A deterministic stand-in for SamPredictor, for testing plugin wiring without weights.

It segments by thresholding the image at its mean: a positive point selects the
bright connected component under it, negative points remove their components, a box
keeps the bright pixels inside it. Multimask output gives the mask, an eroded and a
dilated version, with scores that prefer the plain one.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from src_core.preprocess import to_rgb


class StandInPredictor:
    def __init__(self) -> None:
        self.set_image_calls = 0
        self.mask_inputs = []
        self.is_image_set = False

    def set_image(self, image, **kwargs) -> None:
        rgb = to_rgb(image, **{k: v for k, v in kwargs.items() if k != "image_format"}).astype(float)
        gray = rgb.mean(axis=-1)
        self.components, _ = ndi.label(gray > gray.mean())
        self.original_size = gray.shape
        self.set_image_calls += 1
        self.is_image_set = True

    def predict(self, point_coords=None, point_labels=None, box=None, mask_input=None, multimask_output=True, return_logits=False):
        if not self.is_image_set:
            raise RuntimeError("set_image first")
        self.mask_inputs.append(mask_input)
        h, w = self.original_size
        mask = np.zeros((h, w), bool)
        if box is not None:
            x0, y0, x1, y1 = np.round(box).astype(int)
            mask[max(y0, 0) : y1, max(x0, 0) : x1] = self.components[max(y0, 0) : y1, max(x0, 0) : x1] > 0
        if point_coords is not None:
            for (x, y), label in zip(np.asarray(point_coords), np.asarray(point_labels)):
                comp = self.components[min(int(y), h - 1), min(int(x), w - 1)]
                if comp == 0:
                    continue
                if label == 1:
                    mask |= self.components == comp
                else:
                    mask &= self.components != comp
        if multimask_output:
            masks = np.stack([mask, ndi.binary_erosion(mask), ndi.binary_dilation(mask)])
            scores = np.array([0.9, 0.5, 0.4])
        else:
            masks, scores = mask[None], np.array([0.9])
        logits = np.zeros((len(masks), 256, 256), np.float32)
        return masks, scores, logits
