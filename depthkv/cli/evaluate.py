"""``depthkv evaluate``: plan files (and the full cache) scored side by side on a workload.

The default workload is the built-in evaluation split of the tasks the model's card lists as
learned, at its trained length, 32 examples per task (the demo's evaluation split), so a plan
made from a demo profile is measured on the examples the demo reports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from depthkv.cli.common import add_workload_args, load, print_table, run_info, workload_from_args


def add_parser(sub: Any) -> None:
    ev = sub.add_parser("evaluate", help="score plan files (and the full cache) on a workload")
    ev.add_argument("--model", default="tiny-llama", help="shipped model name or a local HF checkpoint dir")
    ev.add_argument("--plans", nargs="+", default=[], help="plan files, each PATH or NAME=PATH (name: the file's stem)")
    ev.add_argument("--no-full", action="store_true", help="leave out the full-cache baseline")
    add_workload_args(ev, split="evaluation", n_per_task=32)
    ev.add_argument("--out", required=True, help="results JSON path (accuracy with CIs per method and task)")
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(run=run_evaluate)


def _named(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    return (name, Path(path)) if sep else (Path(spec).stem, Path(spec))


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from depthkv.evaluation import evaluate
    from depthkv.files import atomic_write_json
    from depthkv.profile import Plan

    start = time.time()
    named = [_named(spec) for spec in args.plans]
    names = [name for name, _ in named]
    if len(set(names)) != len(names) or "full" in names:
        raise ValueError(f"plan names must be distinct and not 'full'; got {names} (name them NAME=PATH)")
    if not named and args.no_full:
        raise ValueError("nothing to evaluate: give --plans, or leave out --no-full")
    model, tokenizer = load(args.model)
    methods: dict[str, Plan | None] = {} if args.no_full else {"full": None}
    methods.update({name: Plan.load(path, model=model) for name, path in named})
    workload = workload_from_args(args)
    results = evaluate(model, tokenizer, workload, methods, progress=not args.no_progress)
    summaries = {name: r.summary() for name, r in results.items()}
    out = {
        "info": run_info(args, start, workload=workload.describe()),
        "methods": summaries,
        "plans": {
            name: {"path": str(path), "budgets": methods[name].budgets, "strategy": methods[name].strategy,
                   "floor": methods[name].floor, "global_budget": methods[name].global_budget}
            for name, path in named
        },
    }
    atomic_write_json(args.out, out)
    tasks = sorted({t for s in summaries.values() for t in s["per_task"]})
    rows = [
        [name, f"{s['mean']:.3f} [{s['low']:.2f}, {s['high']:.2f}]", f"{s.get('mean_kv_tokens', 0):.0f}"]
        + [f"{s['per_task'][t]['mean']:.3f}" for t in tasks]
        for name, s in summaries.items()
    ]
    print_table(["method", "accuracy [95% CI]", "KV tokens", *tasks], rows)
    print(f"results written to {args.out}  ({time.time() - start:.0f} s, {len(workload)} examples)")
    return out
