"""The ``depthkv`` command. ``depthkv demo`` is the main job on the embedded default.

Subcommands: ``demo``, ``calibrate``, ``allocate``, ``plan``, ``tune-floor``, ``evaluate``, ``card``
(``depthkv <command> --help`` for each one's options). A bad input exits with status 2 and a
message that says what was wrong; no partial output file is left behind.
"""

from __future__ import annotations

import argparse
import sys

from depthkv.cli import allocate, calibrate, card, demo, evaluate, tune_floor
from depthkv.files import FileLockedError

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthkv", description="Layer-dependent KV-cache budgets.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    calibrate.add_parser(sub)
    allocate.add_parsers(sub)
    tune_floor.add_parser(sub)
    evaluate.add_parser(sub)
    card.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        args.run(args)
    except (ValueError, FileNotFoundError, FileLockedError) as exc:  # CorruptFileError is a ValueError
        print(f"depthkv: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
