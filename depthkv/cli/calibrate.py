"""``depthkv calibrate``: a profile of a model on a workload (resumable: the output is the checkpoint)."""

from __future__ import annotations

import argparse
from typing import Any

from depthkv.cli.common import (
    add_placement_args,
    add_policy_args,
    add_workload_args,
    budget_arg,
    load,
    policy_from_args,
    workload_from_args,
)


def add_parser(sub: Any) -> None:
    cal = sub.add_parser("calibrate", help="calibrate a model on a workload and write a profile")
    cal.add_argument("--model", default="tiny-llama", help="shipped model name or a local HF checkpoint dir")
    add_placement_args(cal)
    add_workload_args(cal, split="calibration", n_per_task=8)
    cal.add_argument(
        "--ablation-budget", type=budget_arg, nargs="+", default=[0.2],
        help="budget(s) of the ablated layer: fractions (0.2) or tokens (64); the first is the primary one",
    )
    cal.add_argument("--metric", default="nll", choices=["nll", "kl", "score"])
    add_policy_args(cal)
    cal.add_argument("--compress", default="context", choices=["context", "prompt"])
    cal.add_argument("--extra-tokens", type=int, default=0, help="tokens generated beyond the answer (metric score)")
    cal.add_argument("--n-permutations", type=int, default=10_000)
    cal.add_argument("--out", required=True, help="profile JSON path (also the resume checkpoint)")
    cal.add_argument("--no-progress", action="store_true")
    cal.set_defaults(run=run_calibrate)


def run_calibrate(args: argparse.Namespace) -> None:
    from depthkv.calibration import calibrate
    from depthkv.distributed import world

    model, tokenizer = load(args.model, args)
    profile = calibrate(
        model,
        tokenizer,
        workload_from_args(args, tokenizer),
        ablation_budget=args.ablation_budget,
        metric=args.metric,
        policy=policy_from_args(args),
        compress=args.compress,
        extra_tokens=args.extra_tokens,
        n_permutations=args.n_permutations,
        seed=args.seed,
        checkpoint=args.out,
        progress=not args.no_progress,
    )
    if world()[0] != 0:
        return  # rank 0 wrote the profile and reports it
    perm = profile.stats["by_budget"][0]["permutation"] if profile.stats else None
    print(f"profile written to {args.out}" + (f"; permutation p = {perm['pvalue']:.4g}" if perm else ""))
