"""What the ``napari-sam`` commands share: errors, status lines, one progress bar, prompt
syntax, checked outputs, reading images and writing labels, and the model from arguments.

Every command module imports from here and nothing from :mod:`.main`. Mistakes a user
can make end with one ``napari-sam: error: ...`` line (:class:`UsageError`, exit code
2). torch is imported only inside the functions that need it, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import checkpoints

PROG = "napari-sam"
EXIT_USAGE = 2
#: Some work is done and kept, some failed (images of a batch, frames past a damaged one, an export).
EXIT_PARTIAL = 1
TIFF_SUFFIXES = (".tif", ".tiff")
#: What the engine raises for a user's mistake or the machine's state (shown as one line).
ENGINE_ERRORS = (ValueError, FileNotFoundError, RuntimeError, OSError)


class UsageError(Exception):
    """A mistake the user can fix; shown as one line on stderr, exit code 2."""


def status(message: str) -> None:
    """A line for the user on stderr (stdout carries the results)."""
    print(message, file=sys.stderr, flush=True)


def plain_text(docstring: str) -> str:
    """A module docstring's body (after its first paragraph) as ``--help`` text: no reST markup."""
    import re

    body = docstring.split("\n\n", 1)[1] if "\n\n" in docstring else docstring
    body = re.sub(r":(?:mod|class|func|meth|attr|data):`~?([^`]+)`", lambda m: m.group(1).split(".")[-1], body)
    return body.replace("``", "")


class ProgressBar:
    """A tqdm bar on stderr, drawn at the first update: ``bar(done, total, **postfix)``.

    The one progress bar of the command line: bytes downloaded (``unit="B"``), images
    labelled, frames tracked, training steps. A callable, so it can be handed to the
    engine's ``progress(done, total)`` callbacks as it is.
    """

    def __init__(self, description: str, unit: str = "it", *, initial: int = 0) -> None:
        self.description, self.unit, self.initial = description, unit, initial
        self.bar = None

    def __call__(self, done: int, total: int | None = None, **postfix: Any) -> None:
        if self.bar is None:
            from tqdm import tqdm

            scaled = {"unit_scale": True, "unit_divisor": 1024} if self.unit == "B" else {}
            self.bar = tqdm(total=total, initial=self.initial, unit=self.unit, desc=self.description,
                            file=sys.stderr, dynamic_ncols=True, **scaled)
        if total is not None and self.bar.total != total:
            self.bar.total = total
        if postfix:
            self.bar.set_postfix(refresh=False, **postfix)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# --------------------------------------------------------------------------
# Prompt syntax
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


# --------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------


def check_output_file(path: str | os.PathLike, suffixes: tuple[str, ...] = TIFF_SUFFIXES,
                      what: str = "the labels are written as a uint16 TIFF") -> Path:
    """Refuse an output file that cannot be written, before time is spent on the model."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UsageError(
            f"output {path} is a folder; give a file name, e.g. {path / ('labels' + suffixes[0])}"
        )
    if path.suffix.lower() not in suffixes:
        raise UsageError(f"output {path} must end in {' or '.join(suffixes)} ({what})")
    parent = path.parent
    if not parent.is_dir():
        raise UsageError(
            f"cannot write {path}: the folder {parent} does not exist; create it first"
        )
    if not os.access(parent, os.W_OK):
        raise UsageError(f"cannot write {path}: the folder {parent} is not writable")
    return path


def read_image(path: Path) -> Any:
    """Read an image with tifffile (.tif/.tiff, memory-mapped when it can be) or imageio."""
    if not path.exists():
        raise UsageError(f"image file {path} does not exist")
    if path.is_dir():
        raise UsageError(f"{path} is a folder, not an image file")
    try:
        if path.suffix.lower() in TIFF_SUFFIXES:
            from ..tiling import open_image_lazily

            return open_image_lazily(path)  # memory-mapped when uncompressed (large images)
        import imageio.v3 as iio

        return iio.imread(path)
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UsageError(
            f"cannot read {path} as an image ({detail}); expected a TIFF, PNG, JPEG "
            "or another format imageio reads"
        ) from exc


def write_labels(path: Path, labels: Any) -> None:
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


def select_plane(image: Any, index: int | None, name: str) -> Any:
    """Plane ``index`` of a stack's first axis (``--slice``); a 2D image as it is."""
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


def image_size(image: Any, channel_axis: int | None, channels: list[int] | None) -> tuple[int, int]:
    """(height, width) as SAM will see it; validates the image before the model loads."""
    from ..preprocess import to_rgb

    try:
        rgb = to_rgb(image, channel_axis=channel_axis, channels=channels)
    except ValueError as exc:
        raise UsageError(
            f"{exc} On the command line: --channel-axis N, --channels I,J,K, or "
            "--slice N to pick one plane of a stack."
        ) from exc
    return int(rgb.shape[0]), int(rgb.shape[1])


def check_not_blank(image: Any, name: Any) -> None:
    """Refuse a blank plane (one value everywhere): SAM's mask there would be arbitrary."""
    from ..preprocess import blank_value

    value = blank_value(image)
    if value is not None:
        raise UsageError(f"{name} is blank: every pixel is {value:g}, so there is nothing "
                         "to segment (check the file, --slice or --channels)")


# --------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------


def check_model_name(name: str, *, sam2: bool = False) -> str:
    """``name`` if the registry knows it (SAM 2.1's too with ``sam2``), else a UsageError listing the names."""
    known = list(checkpoints.sam_checkpoints())  # looked up now: tests may swap the registry
    if sam2:
        known += list(checkpoints.SAM2_CHECKPOINTS)
    if name not in known:
        raise UsageError(
            f"unknown model {name!r}; expected one of {', '.join(known)} "
            f"(see '{PROG} models')"
        )
    return name


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, ``--checkpoint``, ``--no-download``, ``--device`` and ``--dtype``."""
    parser.add_argument(
        "--model", default=None, metavar="NAME",
        help="vit_b, vit_l, vit_h, vit_t, a microscopy model (vit_b_lm, ...: see 'napari-sam "
        "models') or vit_tiny (default: inferred from --checkpoint, else a cached published "
        "model, else the built-in vit_tiny); segment and track also take SAM 2.1 "
        "(sam2.1_hiera_tiny, ...), and track then follows objects with its memory",
    )
    parser.add_argument(
        "--checkpoint", default=None, metavar="FILE",
        help="local weights file (default: the official weights from the cache, downloaded if missing)",
    )
    parser.add_argument("--no-download", action="store_true",
                        help="fail instead of downloading official weights that are not cached")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1 or mps")
    parser.add_argument(
        "--dtype", default="auto",
        help="image encoder precision: auto (default: bfloat16 where the hardware runs it natively), "
        "float32 or bfloat16",
    )


def build_model(args: argparse.Namespace) -> Any:
    """The SAM model the arguments of :func:`add_model_arguments` name (downloaded if needed)."""
    from ..checkpoints import load_state_dict
    from ..model.build import build_sam, describe_state_dict, infer_model_type

    checkpoint: Any = args.checkpoint
    model = args.model
    bar = ProgressBar(f"downloading {model or 'the model'}", "B")
    try:
        if model is None and checkpoint is not None:
            # Infer the geometry from the file so that --model is only needed to override.
            checkpoint = load_state_dict(checkpoint)
            model = infer_model_type(checkpoint)
            if model is None:
                raise UsageError(
                    f"{args.checkpoint} does not look like a vit_b, vit_l, vit_h, vit_t or vit_tiny "
                    f"SAM checkpoint (it holds {describe_state_dict(checkpoint)}); pass --model if it is one"
                )
        model = model or checkpoints.default_model_type()
        status(f"loading the {model} model...")
        return build_sam(
            model, checkpoint, device=args.device, dtype=args.dtype,
            download=not args.no_download, progress=bar,
        )
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()


def sam2_model_name(args: argparse.Namespace) -> str | None:
    """The SAM 2.1 model the arguments name (``--model sam2.1_hiera_*``, or a SAM 2
    ``--checkpoint`` without ``--model``), else None (a SAM 1 model)."""
    from ..model.sam2.build import infer_sam2_size

    if args.model is not None:
        return args.model if args.model in checkpoints.SAM2_CHECKPOINTS else None
    if args.checkpoint is None or not checkpoints.holds_sam2(args.checkpoint):
        return None
    try:  # memory-mapped: only the keys and shapes are read here, the builder loads the file
        state = checkpoints.load_state_dict(args.checkpoint, mmap=True)
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    size = infer_sam2_size(state)
    if size is None:
        raise UsageError(f"{args.checkpoint} holds a SAM 2 model of an unknown size")
    return f"sam2.1_hiera_{size}"


def _load_sam2(args: argparse.Namespace, name: str, builder: Any) -> Any:
    """``builder(name, checkpoint, device=, dtype=, download=, progress=)`` with the
    command line's progress bar, status and one-line errors."""
    bar = ProgressBar(f"downloading {name}", "B")
    try:
        status(f"loading the {name} model...")
        return builder(
            name, args.checkpoint, device=args.device, dtype=args.dtype,
            download=not args.no_download, progress=bar,
        )
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()


def build_sam2_image_predictor(args: argparse.Namespace, name: str) -> Any:
    """SAM 2.1's image predictor (:class:`~src_core.sam2_predictor.SAM2ImagePredictor`)
    for the model ``name``."""
    from ..model.sam2.build import build_sam2
    from ..sam2_predictor import SAM2ImagePredictor

    return SAM2ImagePredictor(_load_sam2(args, name, build_sam2))


def build_video_predictor(args: argparse.Namespace, name: str) -> Any:
    """SAM 2.1's video predictor (:mod:`src_core.sam2_video`) for the model ``name``."""
    from ..sam2_video import build_sam2_video_predictor

    return _load_sam2(args, name, build_sam2_video_predictor)


def build_predictor(args: argparse.Namespace) -> Any:
    """The image predictor the arguments name: SAM 2.1's (:func:`sam2_model_name`), else a
    :class:`~src_core.predictor.SamPredictor` on :func:`build_model`'s model."""
    from ..predictor import SamPredictor

    sam2_name = sam2_model_name(args)
    if sam2_name is not None:
        return build_sam2_image_predictor(args, sam2_name)
    return SamPredictor(build_model(args))


def resolve_weights(args: argparse.Namespace) -> tuple[str, str]:
    """(model type or "auto", weights path) the arguments name, found or downloaded now.

    For work that loads the model elsewhere (batch workers, maybe on other machines):
    the path is absolute.
    """
    from ..model.build import MODEL_CONFIGS

    model = args.model
    known = [*MODEL_CONFIGS, *(name for name in checkpoints.sam_checkpoints() if name not in MODEL_CONFIGS),
             *checkpoints.SAM2_CHECKPOINTS]
    if model is not None and model not in known:
        raise UsageError(f"unknown model {model!r}; expected one of {', '.join(known)}")
    if args.checkpoint is not None:
        path = Path(args.checkpoint).expanduser().resolve()  # workers may run elsewhere
        if not path.is_file():
            raise UsageError(f"checkpoint {args.checkpoint} does not exist or is not a file")
        return model or "auto", str(path)
    model = model or checkpoints.default_model_type()
    bar = ProgressBar(f"downloading {model}", "B")
    try:
        path = checkpoints.resolve_checkpoint(model, None, download=not args.no_download, progress=bar)
    except ENGINE_ERRORS as exc:
        raise UsageError(str(exc)) from exc
    finally:
        bar.close()
    return model, str(path)
