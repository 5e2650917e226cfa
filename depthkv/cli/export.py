"""``depthkv export``: a plan as an engine-neutral JSON file for a serving engine (:mod:`depthkv.serving`)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: Any) -> None:
    from depthkv.runtime.modes import MODES

    export = sub.add_parser("export", help="write a plan as an engine-neutral JSON file for a serving engine")
    export.add_argument("--plan", required=True, help="plan JSON path (from allocate, plan or tune-floor)")
    export.add_argument("--out", required=True, help="engine plan JSON path")
    export.add_argument(
        "--context-length", type=int, default=None,
        help="prompt length in tokens to resolve a relative plan's budgets for (default: the plan's own)",
    )
    export.add_argument("--mode", default="evict", choices=MODES, help="decode mode (evict)")
    export.add_argument(
        "--max-new-tokens", type=int, default=None, help="append mode's reserved tail per layer (required with append)"
    )
    export.set_defaults(run=run_export)


def run_export(args: argparse.Namespace) -> None:
    from depthkv.profile import Plan
    from depthkv.serving import engine_plan, save_engine_plan

    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out} is a folder; give the path of the engine plan JSON file to write")
    if out.exists() and out.resolve() == Path(args.plan).resolve():
        raise ValueError(f"--out {args.out} is the plan itself; write the engine plan to another file")
    if args.mode == "append" and args.max_new_tokens is None:
        raise ValueError("--mode append reserves a tail for the generated tokens: give --max-new-tokens N (N >= 1)")
    data = engine_plan(
        Plan.load(args.plan),
        context_length=args.context_length,
        mode=args.mode,
        max_new_tokens=0 if args.max_new_tokens is None else args.max_new_tokens,
    )
    save_engine_plan(out, data)
    summary = {
        "out": str(out),
        "layers": len(data["layers"]),
        "mode": data["mode"],
        "budgets": [layer["budget"] for layer in data["layers"]],
        **data["totals"],
    }
    print(json.dumps(summary))
