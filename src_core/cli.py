"""The ``napari-sam`` command: segment an image from the shell, list and download models.

Subcommands
-----------
``napari-sam segment IMAGE -o LABELS.tif [--point X,Y[,LABEL]]... [--box X0,Y0,X1,Y1]...``
    Run SAM on one 2D image and write a uint16 label image (0 = background).
    Coordinates are pixels of the original image, x = column, y = row (SAM's
    convention; napari shows (row, col)). Points and at most one box describe
    one object (label 1); several boxes without points are several objects
    (labels 1..B in the order given), where they overlap the object with the
    higher predicted IoU wins. A stack (3D without a channel axis, or 4D and
    more) needs ``--slice N`` to pick plane N of its first axis.
``napari-sam segment IMAGE --text TEXT -o LABELS.tif``
    The objects TEXT names, found by CLIP among SAM's masks (the optional
    ``napari-sam[text]`` extra; :mod:`src_core.cli_text`).
``napari-sam models``
    The known models, their size, whether they are cached, and the cache folder.
``napari-sam download MODEL``
    Download and verify a model's official weights into the cache.

Mistakes a user can make (bad file, bad prompt syntax, no network, ...) end
with one line ``napari-sam: error: ...`` on stderr and exit code 2. torch is
imported only by the subcommands that need it, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import checkpoints

__all__ = ["main", "parse_point", "parse_box", "parse_channels"]

PROG = "napari-sam"
_EXIT_USAGE = 2
_TIFF_SUFFIXES = (".tif", ".tiff")
_ENGINE_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


class UsageError(Exception):
    """A mistake the user can fix; shown as one line on stderr, exit code 2."""


# --------------------------------------------------------------------------
# Parsing prompt syntax
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Point:
    """One point prompt in original image pixels; label 1 = object, 0 = background."""

    x: float
    y: float
    label: int = 1


@dataclass(frozen=True)
class Box:
    """One box prompt (x0, y0, x1, y1) in original image pixels."""

    x0: float
    y0: float
    x1: float
    y1: float


def _numbers(text: str) -> list[float] | None:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError:
        return None
    return values if all(v == v and abs(v) != float("inf") for v in values) else None


def parse_point(text: str) -> Point:
    """Parse ``X,Y`` or ``X,Y,LABEL`` (LABEL 1 = object, 0 = background)."""
    values = _numbers(text)
    if values is None or len(values) not in (2, 3) or (len(values) == 3 and values[2] not in (0, 1)):
        raise UsageError(
            f"--point expects X,Y or X,Y,LABEL with LABEL 0 or 1, got {text!r}"
        )
    label = int(values[2]) if len(values) == 3 else 1
    return Point(values[0], values[1], label)


def parse_box(text: str) -> Box:
    """Parse ``X0,Y0,X1,Y1`` with x1 > x0 and y1 > y0."""
    values = _numbers(text)
    if values is None or len(values) != 4:
        raise UsageError(
            f"--box expects X0,Y0,X1,Y1 (four numbers: left, top, right, bottom), got {text!r}"
        )
    box = Box(*values)
    if box.x1 <= box.x0 or box.y1 <= box.y0:
        raise UsageError(
            f"--box {text} is inverted or empty: expected X0,Y0,X1,Y1 with X1 > X0 "
            "and Y1 > Y0 (left, top, right, bottom)"
        )
    return box


def parse_channels(text: str) -> list[int]:
    """Parse ``I`` / ``I,J`` / ``I,J,K`` channel indices."""
    try:
        channels = [int(part) for part in text.split(",")]
    except ValueError:
        channels = []
    if not 1 <= len(channels) <= 3:
        raise UsageError(
            f"--channels expects 1 to 3 comma-separated channel indices (I, I,J or "
            f"I,J,K), got {text!r}"
        )
    return channels


def _check_model_name(name: str) -> str:
    known = list(checkpoints.CHECKPOINTS)  # looked up now: tests may swap the registry
    if name not in known:
        raise UsageError(
            f"unknown model {name!r}; expected one of {', '.join(known)} "
            f"(see '{PROG} models')"
        )
    return name


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def _check_output(text: str) -> Path:
    """Refuse outputs that cannot be written before spending time on the model."""
    path = Path(text).expanduser()
    if path.is_dir():
        raise UsageError(
            f"output {path} is a folder; give a file name, e.g. {path / 'labels.tif'}"
        )
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        raise UsageError(
            f"output {path} must end in .tif or .tiff (the labels are written as a "
            "uint16 TIFF)"
        )
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(
            f"cannot write {path}: the folder {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: the folder {parent} is not writable")
    return path


def _read_image(path: Path) -> Any:
    """Read an image with tifffile (.tif/.tiff) or imageio (anything else)."""
    if not path.exists():
        raise UsageError(f"image file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file")
    try:
        if path.suffix.lower() in _TIFF_SUFFIXES:
            from .tiling import open_image_lazily

            return open_image_lazily(path)  # memory-mapped when uncompressed (large images)
        import imageio.v3 as iio

        return iio.imread(path)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"cannot read {path} as an image ({detail}); expected a TIFF, PNG, JPEG "
            "or another format imageio reads"
        ) from exc


def _write_labels(path: Path, labels: Any) -> None:
    """Write a TIFF atomically: a temporary file in the same folder, then os.replace."""
    import tifffile

    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:  # default permissions, unlike mkstemp's 0600
            tifffile.imwrite(f, labels, compression="zlib")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise UsageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------


class _DownloadBar:
    """A ``progress(done, total)`` callback drawing a tqdm bar on stderr once bytes flow."""

    def __init__(self, description: str) -> None:
        self.description = description
        self.bar = None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, initial=0, unit="B", unit_scale=True, unit_divisor=1024,
                desc=self.description, file=sys.stderr, dynamic_ncols=True,
            )
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _status(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# segment
# --------------------------------------------------------------------------


def _select_plane(image: Any, index: int | None, name: str) -> Any:
    if index is None:
        if image.ndim >= 4:
            raise UsageError(
                f"{name} is a stack of shape {image.shape}; pass --slice N to segment "
                "plane N of its first axis"
            )
        return image
    if image.ndim < 3:
        raise UsageError(
            f"--slice {index} needs a stack, but {name} is 2D with shape {image.shape}"
        )
    n = image.shape[0]
    if not -n <= index < n:
        raise UsageError(
            f"--slice {index} is out of range: the first axis of {name} "
            f"(shape {image.shape}) has {n} planes (0..{n - 1})"
        )
    return image[index]


def _image_size(image: Any, channel_axis: int | None, channels: list[int] | None) -> tuple[int, int]:
    """(height, width) as SAM will see it; validates the image before the model loads."""
    from .preprocess import to_rgb

    try:
        rgb = to_rgb(image, channel_axis=channel_axis, channels=channels)
    except ValueError as exc:
        raise UsageError(
            f"{exc} On the command line: --channel-axis N, --channels I,J,K, or "
            "--slice N to pick one plane of a stack."
        ) from exc
    return int(rgb.shape[0]), int(rgb.shape[1])


def _check_prompts_inside(points: list[Point], boxes: list[Box], height: int, width: int) -> None:
    for p in points:
        if not (0 <= p.x <= width and 0 <= p.y <= height):
            raise UsageError(
                f"--point {p.x:g},{p.y:g} lies outside the {width}x{height} image "
                f"(x is the column, 0..{width}; y is the row, 0..{height})"
            )
    for b in boxes:
        if b.x1 <= 0 or b.y1 <= 0 or b.x0 >= width or b.y0 >= height:
            raise UsageError(
                f"--box {b.x0:g},{b.y0:g},{b.x1:g},{b.y1:g} lies outside the "
                f"{width}x{height} image (x is the column, y the row)"
            )


def _build_model(args: argparse.Namespace) -> Any:
    from .checkpoints import load_state_dict
    from .model.build import build_sam, infer_model_type

    checkpoint: Any = args.checkpoint
    model = args.model
    bar = _DownloadBar(f"downloading {model or 'the model'}")
    try:
        if model is None and checkpoint is not None:
            # Infer the geometry from the file so that --model is only needed to override.
            checkpoint = load_state_dict(checkpoint)
            model = infer_model_type(checkpoint)
            if model is None:
                raise UsageError(
                    f"{args.checkpoint} does not look like a vit_b, vit_l, vit_h or vit_tiny SAM "
                    "checkpoint; pass --model if it is one"
                )
        model = model or checkpoints.default_model_type()
        _status(f"loading the {model} model...")
        return build_sam(
            model, checkpoint, device=args.device, dtype=args.dtype,
            download=not args.no_download, progress=bar,
        )
    except _ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()


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
    best = np.argmax(iou, axis=1)
    rows = np.arange(len(best))
    return masks[rows, best], iou[rows, best]


def _paint_labels(masks: Any, iou: Any) -> Any:
    """uint16 labels 1..K; where objects overlap, the higher predicted IoU wins."""
    import numpy as np

    from .automatic import masks_to_label_image

    records = [{"segmentation": m, "predicted_iou": float(s)} for m, s in zip(masks, iou)]
    labels = masks_to_label_image(records, masks.shape[1:], order="predicted_iou")
    return labels.astype(np.uint16)


def _cmd_segment(args: argparse.Namespace) -> int:
    if args.model is not None:
        _check_model_name(args.model)
    if args.text is not None:
        from .cli_text import cmd_segment_text

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
    output = _check_output(args.output)
    image_path = Path(args.image).expanduser()
    image = _select_plane(_read_image(image_path), args.slice, str(image_path))
    from .cli_tiled import large_plane_shape, segment_large
    from .tiling import tiling_plan

    try:
        size = large_plane_shape(image, args.channel_axis, channels)  # checked lazily when large
    except ValueError as exc:
        raise UsageError(f"{exc} On the command line: --channel-axis N, --channels I,J,K, or --slice N.") from exc
    height, width = size or _image_size(image, args.channel_axis, channels)
    _check_prompts_inside(points, boxes, height, width)

    sam = _build_model(args)
    plan = tiling_plan((height, width), sam.image_encoder.img_size)
    if plan is not None:  # large: tile by tile, labels through a memmap into a tiled TIFF
        try:
            objects = segment_large(sam, image, plan, points, boxes, output, channel_axis=args.channel_axis,
                                    channels=channels, multimask=args.multimask, status=_status)
        except (ValueError, OSError) as exc:
            raise UsageError(str(exc)) from exc
        for k, (area, raw, score) in enumerate(objects):
            overlap = f" ({raw} before overlaps)" if raw != area else ""
            print(f"label {k + 1}: area {area} px{overlap}, predicted IoU {score:.3f}")
        _status(f"wrote {output} ({width}x{height}, {len(objects)} object{'s' * (len(objects) != 1)})")
        return 0

    from .predictor import SamPredictor

    predictor = SamPredictor(sam)
    _status("computing the image embedding...")
    try:
        predictor.set_image(image, channel_axis=args.channel_axis, channels=channels)
        masks, iou = _predict(predictor, points, boxes, args.multimask)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    labels = _paint_labels(masks, iou)
    _write_labels(output, labels)

    for k in range(len(iou)):
        area = int((labels == k + 1).sum())
        raw = int(masks[k].sum())
        overlap = f" ({raw} before overlaps)" if raw != area else ""
        print(f"label {k + 1}: area {area} px{overlap}, predicted IoU {float(iou[k]):.3f}")
    _status(f"wrote {output} ({width}x{height}, {len(iou)} object{'s' * (len(iou) != 1)})")
    return 0


# --------------------------------------------------------------------------
# models, download
# --------------------------------------------------------------------------


def _cmd_models(args: argparse.Namespace) -> int:
    rows = [("model", "size", "cached", "path")]
    for name, info in checkpoints.CHECKPOINTS.items():
        path = checkpoints.checkpoint_path(info)
        part = path.with_name(path.name + ".part")
        if checkpoints.cached_checkpoint(info) is not None:
            cached = "yes"
        elif part.is_file():
            cached = f"partial {100 * part.stat().st_size // info.size}%"
        else:
            cached = "no"
        rows.append((name, f"{info.size / 1e6:.0f} MB", cached, str(path)))
    try:
        embedded = checkpoints.embedded_checkpoint()
        rows.append((checkpoints.EMBEDDED_MODEL, f"{embedded.stat().st_size / 1e6:.0f} MB", "built-in", str(embedded)))
    except FileNotFoundError:
        pass
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row[:3], widths)) + "  " + row[3])
    env = checkpoints._CACHE_ENV_VAR
    source = f"set by {env}" if os.environ.get(env) else f"set {env} to use another folder"
    print(f"\ncache folder: {checkpoints.cache_dir()} ({source})")
    print(f"default model: {checkpoints.default_model_type()}")
    return 0


def _cmd_download(args: argparse.Namespace) -> int:
    name = _check_model_name(args.model)
    if checkpoints.cached_checkpoint(name) is not None:
        _status(f"{name} is already cached; verifying its checksum...")
    bar = _DownloadBar(name)
    try:
        path = checkpoints.download_checkpoint(name, url=args.url, progress=bar)
    except _ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()
    print(path)
    return 0


# --------------------------------------------------------------------------
# Parser and entry point
# --------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Report syntax errors through UsageError, so main() returns 2 like every user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``napari-sam``."""
    parser = _Parser(
        prog=PROG,
        description="Segment Anything (SAM) from the command line.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    seg = sub.add_parser(
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
    seg.add_argument(
        "--model", default=None, metavar="NAME",
        help="vit_b, vit_l, vit_h or vit_tiny (default: inferred from --checkpoint, else a "
        "cached official model, else the built-in vit_tiny)",
    )
    seg.add_argument(
        "--checkpoint", default=None, metavar="PATH",
        help="local weights file (default: the official weights from the cache, "
        "downloaded if missing)",
    )
    seg.add_argument(
        "--no-download", action="store_true",
        help="fail instead of downloading official weights that are not cached",
    )
    seg.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 or mps")
    seg.add_argument(
        "--dtype", default="auto",
        help="image encoder precision: auto (default: bfloat16 where the hardware runs "
        "it natively), float32 or bfloat16",
    )
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
    from .cli_text import add_text_arguments  # here: cli_text imports this module

    add_text_arguments(seg)
    seg.set_defaults(func=_cmd_segment)

    models = sub.add_parser(
        "models", help="list the known models and the checkpoint cache",
        description="List the known SAM models, their download size, whether they are "
        f"cached, and the cache folder ({checkpoints._CACHE_ENV_VAR} overrides it).",
    )
    models.set_defaults(func=_cmd_models)

    download = sub.add_parser(
        "download", help="download a model's official weights into the cache",
        description="Download, verify (size and sha256) and cache a model's official "
        "weights; an interrupted download resumes. Prints the file's path.",
    )
    download.add_argument("model", metavar="MODEL", help="vit_b, vit_l or vit_h")
    download.add_argument("--url", default=None, help=argparse.SUPPRESS)  # mirrors, tests
    download.set_defaults(func=_cmd_download)

    from .cli_label import add_label_parser  # here: cli_label imports this module

    add_label_parser(sub)
    from .cli_train import add_train_parser  # here: cli_train imports this module

    add_train_parser(sub)
    from .cli_track import add_track_parser  # here: cli_track imports this module

    add_track_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``napari-sam`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        if args.command is None:
            parser.print_help(sys.stderr)
            raise UsageError("choose a command: segment, label, train, models or download")
        return args.func(args)
    except UsageError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return _EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
