"""``napari-sam segment``: SAM on one 2D image from points, boxes or text, to a uint16 label TIFF.

``napari-sam segment IMAGE -o LABELS.tif [--point X,Y[,LABEL]]... [--box X0,Y0,X1,Y1]...``
runs SAM on one 2D image and writes a uint16 label image (0 = background).
Coordinates are pixels of the original image, x = column, y = row (SAM's
convention; napari shows (row, col)). Points and at most one box describe one
object (label 1); several boxes without points are several objects (labels
1..B in the order given), where they overlap the object with the higher
predicted IoU wins. A stack (3D without a channel axis, or 4D and more) needs
``--slice N`` to pick plane N of its first axis. ``--text TEXT`` segments the
objects TEXT names (:mod:`.text`). Planes larger than 4x the model input go
tile by tile (:mod:`src_core.tiling.large`).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .common import (
    Box,
    Point,
    UsageError,
    add_model_arguments,
    build_predictor,
    check_model_name,
    check_not_blank,
    check_output_file,
    image_size,
    parse_box,
    parse_channels,
    parse_point,
    read_image,
    select_plane,
    status,
    write_labels,
)
from .text import add_text_arguments

__all__ = ["add_segment_parser"]


def add_segment_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``segment`` subcommand to ``napari-sam``'s subparsers; returns its parser."""
    seg = subparsers.add_parser(
        "segment",
        help="segment objects in one image and write a uint16 label image",
        description=(
            "Segment objects in IMAGE with SAM and write a uint16 label TIFF "
            "(0 = background). Coordinates are pixels of the original image: X is the "
            "column, Y the row. --point prompts plus at most one --box describe ONE "
            "object (label 1). Several --box without points are several objects "
            "(labels 1, 2, ... in the order given); where they overlap, the one with "
            "the higher predicted IoU wins. One object line per label is printed: "
            "label, area in pixels, predicted IoU."
        ),
    )
    seg.add_argument("image", metavar="IMAGE", help="2D image: TIFF (tifffile) or anything imageio reads")
    seg.add_argument("-o", "--output", required=True, metavar="OUT.tif", help="label image to write")
    seg.add_argument(
        "--point", action="append", default=[], metavar="X,Y[,LABEL]",
        help="point prompt; LABEL 1 (default) = object, 0 = background. Repeatable",
    )
    seg.add_argument(
        "--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
        help="box prompt (left, top, right, bottom). Repeatable: one object per box",
    )
    add_model_arguments(seg)
    seg.add_argument(
        "--channels", default=None, metavar="I[,J[,K]]",
        help="channels to show SAM: one as gray, two as red+green, three as RGB",
    )
    seg.add_argument(
        "--channel-axis", type=int, default=None, metavar="N",
        help="axis holding channels (default: last if it has <= 4 entries, else first)",
    )
    seg.add_argument(
        "--slice", type=int, default=None, metavar="N",
        help="for a stack: segment plane N of the first axis",
    )
    seg.add_argument(
        "--multimask", action="store_true",
        help="let SAM propose 3 masks per object and keep the one with the highest "
        "predicted IoU (always on for a single point without a box)",
    )
    add_text_arguments(seg)
    seg.set_defaults(func=_cmd_segment)

    return seg


def _check_prompts_inside(points: list[Point], boxes: list[Box], height: int, width: int) -> None:
    for p in points:
        if not (0 <= p.x < width and 0 <= p.y < height):
            raise UsageError(
                f"--point {p.x:g},{p.y:g} lies outside the {width}x{height} image "
                f"(x is the column, 0 to {width - 1}; y is the row, 0 to {height - 1}; pixel centres at +0.5)"
            )
    for b in boxes:
        if b.x1 <= 0 or b.y1 <= 0 or b.x0 >= width or b.y0 >= height:
            raise UsageError(
                f"--box {b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g} lies outside the "
                f"{width}x{height} image (x is the column, y the row)"
            )


def _predict(predictor: Any, points: list[Point], boxes: list[Box], multimask: bool):
    """Masks (K, H, W) bool and predicted IoUs (K,) for the K objects the prompts describe."""
    import numpy as np

    if points:  # points and at most one box: one object
        coords = np.array([[p.x, p.y] for p in points], dtype=np.float64)
        labels = np.array([p.label for p in points], dtype=np.int64)
        box = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes[:1]]).reshape(-1)
        # One point is ambiguous (part or whole?): let SAM propose 3 and keep the best.
        multi = multimask or (len(points) == 1 and not boxes)
        masks, iou, _ = predictor.predict(
            coords, labels, box if boxes else None, multimask_output=multi
        )
        masks, iou = masks[None], iou[None]
    else:  # boxes only: one object per box, all in one batched call
        box = np.array([[b.x0, b.y0, b.x1, b.y1] for b in boxes], dtype=np.float64)
        masks, iou, _ = predictor.predict(box=box, multimask_output=multimask)
        if masks.ndim == 3:  # SAM 2.1's predictor drops the batch axis of a single box, as Meta's
            masks, iou = masks[None], iou[None]
    best = np.argmax(iou, axis=1)
    rows = np.arange(len(best))
    return masks[rows, best] > 0, iou[rows, best]  # SAM 2.1's masks are 0/1 floats


def _paint_labels(masks: Any, iou: Any) -> Any:
    """uint16 labels 1..K; where objects overlap, the higher predicted IoU wins."""
    import numpy as np

    from ..automatic import masks_to_label_image

    records = [{"segmentation": m, "predicted_iou": float(s)} for m, s in zip(masks, iou)]
    labels = masks_to_label_image(records, masks.shape[1:], order="predicted_iou")
    return labels.astype(np.uint16)


def _cmd_segment(args: argparse.Namespace) -> int:
    if args.model is not None:
        check_model_name(args.model, sam2=True)
    if args.text is not None:
        from .text import cmd_segment_text

        return cmd_segment_text(args)
    points = [parse_point(text) for text in args.point]
    boxes = [parse_box(text) for text in args.box]
    channels = parse_channels(args.channels) if args.channels is not None else None
    if not points and not boxes:
        raise UsageError(
            "segment needs a prompt: at least one --point X,Y[,LABEL] or --box X0,Y0,X1,Y1, "
            'or --text "what to find"'
        )
    if points and len(boxes) > 1:
        raise UsageError(
            f"{len(boxes)} --box with --point is ambiguous: points and at most one box "
            "describe one object, several boxes without points describe one object "
            "each. Run segment once per object, or drop the points."
        )
    if points and not boxes and not any(p.label == 1 for p in points):
        raise UsageError(
            "all --point prompts are background (LABEL 0): add at least one object "
            "point (X,Y or X,Y,1) or a --box"
        )
    output = check_output_file(args.output)
    image_path = Path(args.image).expanduser()
    image = select_plane(read_image(image_path), args.slice, str(image_path))
    from ..tiling import model_input_size, tiling_plan
    from ..tiling.large import large_plane_shape, segment_large

    try:
        size = large_plane_shape(image, args.channel_axis, channels)  # checked lazily when large
    except ValueError as exc:
        raise UsageError(f"{exc} On the command line: --channel-axis N, --channels I,J,K, or --slice N.") from exc
    height, width = size or image_size(image, args.channel_axis, channels)
    if size is None:  # small enough to look at whole
        check_not_blank(image, image_path)
    _check_prompts_inside(points, boxes, height, width)

    predictor = build_predictor(args)  # SAM 1's or SAM 2.1's; both tile large planes
    plan = tiling_plan((height, width), model_input_size(predictor))
    if plan is not None:  # large: tile by tile, labels through a memmap into a tiled TIFF
        try:
            objects = segment_large(predictor, image, plan, points, boxes, output, channel_axis=args.channel_axis,
                                    channels=channels, multimask=args.multimask, status=status)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from exc
        for k, (area, raw, score) in enumerate(objects):
            overlap = f" ({raw} before overlaps)" if raw != area else ""
            print(f"label {k + 1}: area {area} px{overlap}, predicted IoU {score:.3f}")
        status(f"wrote {output} ({width}x{height}, {len(objects)} object{'s' * (len(objects) != 1)})")
        return 0

    return _segment_plane(predictor, image, args, channels, points, boxes, output, (height, width))


def _segment_plane(predictor: Any, image: Any, args: argparse.Namespace, channels: Any,
                   points: list[Point], boxes: list[Box], output: Path, hw: tuple[int, int]) -> int:
    """Embed the plane whole with ``predictor`` (SAM 1's or SAM 2.1's), write the labels."""
    height, width = hw
    status("computing the image embedding...")
    try:
        predictor.set_image(image, channel_axis=args.channel_axis, channels=channels)
        masks, iou = _predict(predictor, points, boxes, args.multimask)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    labels = _paint_labels(masks, iou)
    write_labels(output, labels)

    for k in range(len(iou)):
        area = int((labels == k + 1).sum())
        raw = int(masks[k].sum())
        overlap = f" ({raw} before overlaps)" if raw != area else ""
        print(f"label {k + 1}: area {area} px{overlap}, predicted IoU {float(iou[k]):.3f}")
    status(f"wrote {output} ({width}x{height}, {len(iou)} object{'s' * (len(iou) != 1)})")
    return 0
