"""The ``depthkv`` command. ``depthkv demo`` is the main job on the embedded default.

Subcommands: ``demo``, ``calibrate``, ``allocate``, ``plan``, ``tune-floor``, ``evaluate``, ``card``,
``export`` (``depthkv <command> --help`` for each one's options). A bad input exits with status 2 and a
message that says what was wrong; no partial output file is left behind.

Under ``torchrun --nproc-per-node N -m depthkv``, ``calibrate`` and ``evaluate`` split the examples
over the N processes (:mod:`depthkv.distributed`); rank 0 writes the output.
"""

from __future__ import annotations

import argparse
import os
import sys

from torch.distributed import destroy_process_group

from depthkv.cli import allocate, calibrate, card, demo, evaluate, export, tune_floor
from depthkv.distributed import RankFailedError, init_from_env, launched_world_size
from depthkv.files import FileLockedError

__all__ = ["build_parser", "main"]

DISTRIBUTED = ("calibrate", "evaluate")  # the commands that shard their examples under torchrun


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthkv", description="Layer-dependent KV-cache budgets.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo.add_parser(sub)
    calibrate.add_parser(sub)
    allocate.add_parsers(sub)
    tune_floor.add_parser(sub)
    evaluate.add_parser(sub)
    card.add_parser(sub)
    export.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        joined = _join_torchrun(args.command)
        try:
            args.run(args)
        finally:
            if joined:
                destroy_process_group()
    except (ValueError, FileNotFoundError, FileLockedError, RankFailedError) as exc:  # CorruptFileError is a ValueError
        rank = f" (rank {os.environ['RANK']})" if launched_world_size() > 1 and "RANK" in os.environ else ""
        print(f"depthkv: error{rank}: {exc}", file=sys.stderr)
        return 2
    return 0


def _join_torchrun(command: str) -> bool:
    """Under ``torchrun`` with several processes, join its process group (gloo) so that
    ``calibrate`` and ``evaluate`` split the examples over the ranks; other commands refuse."""
    if launched_world_size() <= 1:
        return False
    if command not in DISTRIBUTED:
        raise ValueError(
            f"`depthkv {command}` runs as one process; only {' and '.join(DISTRIBUTED)} split their examples over "
            "torchrun's processes (run it without torchrun, or with --nproc-per-node 1)"
        )
    return init_from_env()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
