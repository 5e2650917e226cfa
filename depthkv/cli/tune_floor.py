"""``depthkv tune-floor``: a strategy's floor chosen by measuring each plan whole on the calibration workload."""

from __future__ import annotations

import argparse
from typing import Any

from depthkv.cli.common import add_placement_args, budget_arg, calibration_workload, load


def add_parser(sub: Any) -> None:
    from depthkv.allocation import DEFAULT_STRATEGY, STRATEGIES

    tune = sub.add_parser("tune-floor", help="allocate at several floors, measure each plan whole, keep the best")
    tune.add_argument("profile")
    tune.add_argument("--model", required=True, help="the calibrated model: shipped name or local HF checkpoint")
    add_placement_args(tune)
    tune.add_argument(
        "--budget", type=budget_arg, required=True, help="global budget: a fraction (0.2) or tokens per layer (512)"
    )
    tune.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES)
    tune.add_argument("--workload", default=None, help="calibration JSONL (default: rebuilt from a built-in profile)")
    tune.add_argument("--floors", type=int, nargs="+", default=None, help="floors to try (default 8 16 32 ...)")
    tune.add_argument("--metric", default="score", choices=["score", "nll", "kl"], help="what is compared")
    tune.add_argument("--out", required=True, help="plan JSON path (the best plan, with every floor's result)")
    tune.add_argument("--no-progress", action="store_true")
    tune.set_defaults(run=run_tune_floor)


def run_tune_floor(args: argparse.Namespace) -> None:
    from depthkv.evaluation import tune_floor
    from depthkv.profile import Profile

    profile = Profile.load(args.profile)
    model, tokenizer = load(args.model, args)
    profile.check_model(model)
    workload = calibration_workload(profile, args.workload, tokenizer)
    search = tune_floor(
        model, tokenizer, workload, profile, args.budget, args.strategy, floors=args.floors, metric=args.metric,
        progress=not args.no_progress,
    )
    plan, record = search.plan, search.to_dict()
    plan.metadata["floor_search"] = record
    plan.save(args.out)
    for row in record["floors"]:
        mark = "  <- kept" if row["floor"] == plan.floor else ""
        print(f"floor {row['floor']:>5}: mean {args.metric} degradation {row['mean_degradation']:+.4f}  "
              f"{' '.join(map(str, row['budgets']))}{mark}")
    print(f"plan written to {args.out}")
