"""The ``napari-sam`` entry point: the parser wires one module per command; nothing imports this."""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Sequence

from .common import EXIT_USAGE, PROG, UsageError
from .label import add_label_parser
from .models import add_model_parsers
from .segment import add_segment_parser
from .track import add_track_parser
from .train import add_train_parser

__all__ = ["build_parser", "main"]

# options whose value may start with "-" (a point left of the image): argparse would take
# "--point -5,20" for two options, so the value is attached ("--point=-5,20") before parsing
_SIGNED_VALUES = ("--point", "--box")


class _Parser(argparse.ArgumentParser):
    """Report syntax errors through UsageError, so main() returns 2 like every user error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``napari-sam``."""
    parser = _Parser(prog=PROG, description="Segment Anything (SAM) from the command line.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_segment_parser(sub)
    add_model_parsers(sub)
    add_label_parser(sub)
    add_train_parser(sub)
    add_track_parser(sub)
    return parser


def _attach_signed_values(argv: list[str]) -> list[str]:
    out = []
    for arg in argv:
        if out and out[-1] in _SIGNED_VALUES and re.match(r"-\.?\d", arg):
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``napari-sam`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    parser = build_parser()
    argv = _attach_signed_values(list(sys.argv[1:] if argv is None else argv))
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help
            return exc.code if isinstance(exc.code, int) else 0
        if args.command is None:
            parser.print_help(sys.stderr)
            raise UsageError("choose a command: segment, label, track, train, models or download")
        return args.func(args)
    except UsageError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
