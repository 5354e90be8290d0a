"""Text prompts on the command line: ``napari-sam segment IMAGE --text ...`` and
``napari-sam track VIDEO --text ... --text-frame N``.

The options are shared by both subcommands; :func:`find_objects` runs
:func:`src_core.text.segment_text` on one image with them. CLIP is made by
:func:`make_scorer` (tests replace it with a stand-in). Needs the optional
``napari-sam[text]`` extra; without it the commands end with a one-line error
saying how to install it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..automatic.settings import DEFAULTS
from .common import (
    ENGINE_ERRORS,
    ProgressBar,
    UsageError,
    build_predictor,
    check_not_blank,
    check_output_file,
    image_size,
    parse_channels,
    read_image,
    select_plane,
    status,
    write_labels,
)

__all__ = ["add_text_arguments", "check_text_args", "find_objects", "make_scorer", "text_fingerprint"]


def add_text_arguments(parser: argparse.ArgumentParser, *, track: bool = False) -> None:
    """The text-prompt options (``--text`` and the ones that go with it)."""
    g = parser.add_argument_group(
        "text prompt (needs the napari-sam[text] extra; see the README)",
        "Segment the objects TEXT names: segment everything proposes masks, CLIP (OpenAI's "
        "ViT-B/32, downloaded on first use) scores each against TEXT and the negative texts, "
        "the best are refined by SAM from their boxes."
        + (" The objects found on --text-frame start the tracking, with ids 1, 2, ... (best "
           "first); their boxes are saved in OUT/text_prompts.json." if track else
           " Label 1 is the best match."),
    )
    g.add_argument("--text", default=None, metavar="TEXT", help='what to find, e.g. "nucleus" or "a fly"')
    g.add_argument("--negative-text", action="append", default=[], metavar="TEXT",
                   help="a text the objects should look less like (repeatable), e.g. debris")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="keep at most K objects, best first")
    g.add_argument("--threshold", type=float, default=0.5, metavar="P",
                   help="keep objects CLIP finds at least this likely (0..1) to show TEXT rather than "
                   "a negative text (default 0.5; 0 keeps all, then --top-k chooses)")
    g.add_argument("--background", default="blur", choices=("blur", "blank", "none"),
                   help="what CLIP sees around each mask: blurred (default), blanked to grey, or as it is")
    g.add_argument("--clip-checkpoint", default=None, metavar="FILE",
                   help="CLIP weights file (default: OpenAI's ViT-B-32.pt from the cache, downloaded if missing)")
    g.add_argument("--points-per-side", type=int, default=DEFAULTS.points_per_side, metavar="N",
                   help=f"segment everything: grid points per side (default {DEFAULTS.points_per_side})")
    g.add_argument("--pred-iou-thresh", type=float, default=DEFAULTS.pred_iou_thresh, metavar="X",
                   help="segment everything: keep masks whose predicted IoU is above this "
                   f"(default {DEFAULTS.pred_iou_thresh})")
    g.add_argument("--stability-score-thresh", type=float, default=DEFAULTS.stability_score_thresh, metavar="X",
                   help=f"segment everything: keep masks at least this stable (default {DEFAULTS.stability_score_thresh})")
    if track:
        g.add_argument("--text-frame", type=int, default=0, metavar="N",
                       help="the frame (or slice) the text is looked for in (default 0)")


def check_text_args(args: argparse.Namespace) -> str:
    """The stripped text; UsageError for what can be checked before anything loads."""
    text = " ".join(str(args.text).split())
    if not text:
        raise UsageError('--text is empty: give what to find, e.g. --text "nucleus"')
    for neg in args.negative_text:
        if not neg.strip():
            raise UsageError("--negative-text is empty: give a text or leave the option out")
    if not 0.0 <= args.threshold <= 1.0:
        raise UsageError(f"--threshold must be between 0 and 1 (a probability), got {args.threshold}")
    if args.top_k is not None and args.top_k < 1:
        raise UsageError(f"--top-k must be 1 or more, got {args.top_k}")
    if args.points_per_side < 1:
        raise UsageError(f"--points-per-side must be 1 or more, got {args.points_per_side}")
    from ..text import TextExtraMissing, import_open_clip

    try:
        import_open_clip()  # before the SAM model loads: say at once that the extra is missing
    except TextExtraMissing as exc:
        raise UsageError(str(exc)) from exc
    return text


def text_fingerprint(args: argparse.Namespace) -> bytes:
    """What decides the objects a text finds (``track`` resumes only with the same)."""
    keys = ("text", "negative_text", "top_k", "threshold", "background", "clip_checkpoint",
            "points_per_side", "pred_iou_thresh", "stability_score_thresh", "text_frame")
    return json.dumps({k: getattr(args, k, None) for k in keys}, sort_keys=True).encode()


def make_scorer(args: argparse.Namespace) -> Any:
    """CLIP (downloaded on first use unless --no-download), on --device."""
    from ..device import resolve_device
    from ..text import load_clip

    bar = ProgressBar("downloading CLIP ViT-B-32", "B")
    try:
        return load_clip(args.clip_checkpoint, download=not args.no_download, progress=bar,
                         device=resolve_device(args.device))
    finally:
        bar.close()


def find_objects(
    predictor: Any, image: Any, args: argparse.Namespace, normalization: dict | None = None,
    plan: tuple[int, int] | None = None,
) -> list:
    """The objects ``args.text`` names in ``image`` (best first), as TextMatch records;
    with a tiling ``plan`` (tile size, overlap), tile by tile, as TiledTextMatch records."""
    from ..automatic import mask_generator_for
    from ..text import TextPromptError, segment_text, segment_text_tiled

    status("loading CLIP ...")
    try:
        scorer = make_scorer(args)
    except ENGINE_ERRORS as exc:  # no network, not cached with --no-download, bad file
        raise UsageError(str(exc)) from exc
    except ImportError as exc:  # TextExtraMissing
        raise UsageError(str(exc)) from exc
    generator = mask_generator_for(  # SAM 1's or SAM 2.1's candidates
        predictor.model, points_per_side=args.points_per_side, pred_iou_thresh=args.pred_iou_thresh,
        stability_score_thresh=args.stability_score_thresh,
        output_mode="binary_mask" if plan is None else "uncompressed_rle",
    )
    status(f"looking for {args.text!r}: segment everything, then CLIP ...")
    try:
        if plan is not None:
            from ..tiling import TiledPredictor

            return segment_text_tiled(
                TiledPredictor(predictor, *plan), image, args.text, scorer=scorer, generator=generator,
                negatives=args.negative_text, threshold=args.threshold, top_k=args.top_k,
                background=args.background, **(normalization or {}),
            )
        return segment_text(
            predictor, image, args.text, scorer=scorer, negatives=args.negative_text,
            threshold=args.threshold, top_k=args.top_k, generator=generator,
            background=args.background, normalization=normalization,
        )
    except TextPromptError as exc:
        raise UsageError(str(exc)) from exc


def cmd_segment_text(args: argparse.Namespace) -> int:
    """``napari-sam segment IMAGE --text TEXT -o OUT.tif``."""

    if args.point or args.box:
        raise UsageError("--text finds the objects itself: leave out --point and --box (or run without --text)")
    check_text_args(args)
    channels = parse_channels(args.channels) if args.channels is not None else None
    output = check_output_file(args.output)
    image_path = Path(args.image).expanduser()
    image = select_plane(read_image(image_path), args.slice, str(image_path))
    from ..tiling import model_input_size, tiling_plan
    from ..tiling.large import large_plane_shape

    try:
        large = large_plane_shape(image, args.channel_axis, channels)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    height, width = large or image_size(image, args.channel_axis, channels)
    if large is None:  # small enough to look at whole
        check_not_blank(image, image_path)
    predictor = build_predictor(args)  # SAM 1's or SAM 2.1's
    plan = tiling_plan((height, width), model_input_size(predictor))
    import numpy as np

    from ..text import matches_to_labels

    normalization = {"channel_axis": args.channel_axis, "channels": channels}
    if plan is not None:
        from ..tiling.large import write_large_labels

        status(f"{width}x{height} px: looking tile by tile ({plan[0]}-px tiles, overlap {plan[1]} px)")
        matches = find_objects(predictor, image, args, normalization, plan=plan)
        # label 1 is the best match and wins where matches overlap: painted last
        areas = write_large_labels(output, (height, width), matches, range(len(matches) - 1, -1, -1))
    else:
        matches = find_objects(predictor, np.asarray(image), args, normalization)
        labels = matches_to_labels(matches, (height, width))
        write_labels(output, labels)
        areas = [int((labels == k + 1).sum()) for k in range(len(matches))]
    for k, m in enumerate(matches):
        area = areas[k]
        raw = int(np.count_nonzero(m.mask))
        overlap = f" ({raw} before overlaps)" if raw != area else ""
        print(f"label {k + 1}: area {area} px{overlap}, text score {m.score:.3f} (similarity "
              f"{m.similarity:.3f}), predicted IoU {m.predicted_iou:.3f}")
    n = len(matches)
    status(f"wrote {output} ({width}x{height}, {n} object{'s' * (n != 1)} matching {args.text!r})")
    return 0


def track_prompts_from_text(predictor: Any, frames: Any, args: argparse.Namespace, out: Path) -> list:
    """Box prompts (ids 1, 2, ... best first) of the objects found on ``--text-frame``,
    saved as ``out/text_prompts.json`` (reused when the run resumes)."""
    import numpy as np

    from ..propagate import ObjectPrompt, save_prompts

    frame = args.text_frame
    matches = find_objects(predictor, np.asarray(frames[frame]), args)
    prompts = [ObjectPrompt(frame=frame, obj_id=k + 1, box=m.box) for k, m in enumerate(matches)]
    save_prompts(out / "text_prompts.json", prompts)
    for p, m in zip(prompts, matches):
        x0, y0, x1, y1 = p.box
        print(f"object {p.obj_id}: box {x0:g},{y0:g},{x1:g},{y1:g} on frame {frame}, text score {m.score:.3f}")
    return prompts
