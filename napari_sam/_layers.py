"""The layer contract: napari layers <-> prompts and masks, with no Qt and no model.

Layers (names are part of the contract, documented in README):

- "SAM points" (Points): prompts; the ``label`` feature is 1 (object, green) or 0
  (background, red). Never inferred from colour.
- "SAM boxes" (Shapes): rectangles.
- "SAM preview" (Labels): the current object's mask, rewritten on every decode.
- "SAM labels" (Labels): committed objects, one new id each.

All four share the image layer's spatial dimensions, scale and translate, so data
coordinates of every layer are pixel coordinates of the image.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels

from src_core.prompts import Prompt, box_from_corners_rc, rc_to_xy

POINTS = "SAM points"
BOXES = "SAM boxes"
PREVIEW = "SAM preview"
LABELS = "SAM labels"
POSITIVE_COLOR = "lime"
NEGATIVE_COLOR = "red"


def spatial_shape(image_layer) -> tuple[int, ...]:
    """Shape of the image layer without its RGB(A) axis."""
    shape = tuple(image_layer.data.shape)
    return shape[:-1] if image_layer.rgb else shape


def _geometry(image_layer) -> dict:
    ndim = len(spatial_shape(image_layer))
    return {
        "scale": tuple(image_layer.scale)[:ndim],
        "translate": tuple(image_layer.translate)[:ndim],
    }


def point_colors(labels: np.ndarray) -> list[str]:
    return [POSITIVE_COLOR if int(v) == 1 else NEGATIVE_COLOR for v in labels]


#: metadata keys that bind a SAM layer to its image (found again when the user comes back)
OWNER, ROLE = "napari_sam_image", "napari_sam_role"


def owner_id(image_layer) -> str:
    """The image's identity as stored in its SAM layers' metadata."""
    return str(image_layer.unique_id)


def layer_name(role: str, image_layer, viewer) -> str:
    """``role`` ("SAM points", ...) for the first image that has SAM layers; for the next
    ones ``role [image name]``, so each image's layers are told apart in the layer list."""
    taken = {layer.name for layer in viewer.layers}
    mine = f"{role} [{image_layer.name}]"
    return role if role not in taken else mine


def ensure_layers(viewer, image_layer) -> dict:
    """The four SAM layers of ``image_layer``: its own, found again by their metadata
    (or created), prompt layers kept above the image. Returns them by role.

    A layer named for a role with no owner (made by an earlier version, or by hand)
    that fits the image is adopted by it.
    """
    shape = spatial_shape(image_layer)
    geometry = _geometry(image_layer)
    ndim = len(shape)
    me = owner_id(image_layer)

    def fits(layer) -> bool:
        # prompt layers need the image's dimensions; mask layers its exact shape
        if isinstance(layer, Labels):
            return tuple(layer.data.shape) == shape
        return layer.ndim == ndim

    def find(role: str):
        for layer in viewer.layers:
            if layer.metadata.get(OWNER) == me and layer.metadata.get(ROLE) == role and fits(layer):
                return layer
        orphan = next((layer for layer in viewer.layers if layer.name == role), None)
        if orphan is not None and OWNER not in orphan.metadata and fits(orphan):
            orphan.metadata.update({OWNER: me, ROLE: role})
            return orphan
        return None

    def mark(layer, role: str):
        layer.metadata.update({OWNER: me, ROLE: role})
        return layer

    layers = {}
    points = find(POINTS) or mark(viewer.add_points(
        np.zeros((0, ndim)),
        name=layer_name(POINTS, image_layer, viewer),
        features={"label": np.zeros(0, dtype=int)},
        feature_defaults={"label": 1},
        face_color=POSITIVE_COLOR,
        border_color="white",
        size=max(3.0, 0.012 * max(shape[-2:])),
        **geometry,
    ), POINTS)
    layers[POINTS] = points
    boxes = find(BOXES) or mark(viewer.add_shapes(
        name=layer_name(BOXES, image_layer, viewer),
        ndim=ndim,
        edge_color="yellow",
        face_color="transparent",
        edge_width=max(1.0, 0.004 * max(shape[-2:])),
        **geometry,
    ), BOXES)
    layers[BOXES] = boxes
    for name, opacity in ((LABELS, 0.5), (PREVIEW, 0.6)):
        layer = find(name) or mark(viewer.add_labels(
            np.zeros(shape, dtype=np.uint32), name=layer_name(name, image_layer, viewer), opacity=opacity,
            **geometry), name)
        layers[name] = layer
    raise_above(viewer, image_layer, [layers[LABELS], layers[PREVIEW], boxes, points])
    return layers


def raise_above(viewer, image_layer, layers: list) -> None:
    """Keep ``layers`` (in this order, the last on top) above ``image_layer`` in the layer list."""
    below = viewer.layers.index(image_layer)
    if all(viewer.layers.index(layer) > below for layer in layers):
        return
    for layer in layers:
        viewer.layers.move(viewer.layers.index(layer), len(viewer.layers))


def current_plane(image_layer, viewer) -> tuple[int, ...]:
    """Index of the displayed 2D plane in the image's leading (z/t) axes."""
    shape = spatial_shape(image_layer)
    lead = len(shape) - 2
    if lead <= 0:
        return ()
    world = np.asarray(viewer.dims.point)[-len(shape):]
    data = np.asarray(image_layer.world_to_data(world))[-len(shape):]
    return tuple(int(np.clip(round(v), 0, n - 1)) for v, n in zip(data[:lead], shape[:lead]))


def plane_of(image_layer, plane: tuple[int, ...]) -> np.ndarray:
    """The 2D (or 2D RGB) image data of one plane, as a numpy array."""
    return np.asarray(image_layer.data[plane] if plane else image_layer.data)


def collect_prompt(points_layer, boxes_layer, plane: tuple[int, ...]) -> Prompt:
    """The prompts that lie on ``plane``, as image-pixel x, y."""
    lead = len(plane)
    data = np.asarray(points_layer.data, dtype=float).reshape(-1, points_layer.ndim)
    labels = np.asarray(points_layer.features["label"], dtype=int) if len(data) else np.zeros(0, int)
    on_plane = np.all(np.round(data[:, :lead]) == np.asarray(plane), axis=1) if lead else np.ones(len(data), bool)
    points = rc_to_xy(data[on_plane, lead:])
    box = None
    for shape_type, corners in zip(boxes_layer.shape_type, boxes_layer.data):
        corners = np.asarray(corners, dtype=float)
        if shape_type != "rectangle":
            continue
        if lead and not np.all(np.round(corners[:, :lead]) == np.asarray(plane)):
            continue
        box = box_from_corners_rc(corners[:, lead:])  # the last rectangle drawn wins
    return Prompt(points, labels[on_plane], box)


def commit_mask(labels_layer, mask: np.ndarray, plane: tuple[int, ...], *, overwrite: bool = False) -> int:
    """Write ``mask`` into ``labels_layer`` on ``plane`` with a new id, through napari's
    undo history (Ctrl+Z). Existing labels are kept unless ``overwrite``. Returns the id
    (0 when nothing was written)."""
    data = labels_layer.data
    current = np.asarray(data[plane] if plane else data)
    target = mask if overwrite else mask & (current == 0)
    if not target.any():
        return 0
    new_id = int(np.asarray(data).max()) + 1
    rows, cols = np.nonzero(target)
    index = tuple(np.full(rows.shape, p) for p in plane) + (rows, cols)
    with labels_layer.block_history():
        labels_layer.data_setitem(index, new_id)
    return new_id


def show_preview(
    preview_layer, mask: np.ndarray | None, plane: tuple[int, ...], previous: tuple[int, ...] | None = None
) -> None:
    """Show ``mask`` (label 1) on ``plane``, clearing the plane shown before; None clears."""
    data = preview_layer.data
    for where in {previous, plane} - {None}:
        if where:
            data[where] = 0
        else:
            data[...] = 0
    if mask is not None:
        view = data[plane] if plane else data
        view[mask] = 1
    preview_layer.refresh()
