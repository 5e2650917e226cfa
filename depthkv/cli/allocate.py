"""``depthkv allocate`` (a profile's plan for a global budget) and ``depthkv plan`` (explicit budgets)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from depthkv.cli.common import budget_arg, load


def add_parsers(sub: Any) -> None:
    from depthkv.allocation import DEFAULT_STRATEGY, STRATEGIES

    alloc = sub.add_parser("allocate", help="turn a profile into a plan")
    alloc.add_argument("profile")
    alloc.add_argument(
        "--budget", type=budget_arg, required=True,
        help="global budget: a fraction of the context (0.2; 1.0 = all of it) or tokens per layer (512)",
    )
    alloc.add_argument("--strategy", default=DEFAULT_STRATEGY, choices=STRATEGIES)
    alloc.add_argument(
        "--floor", type=int, default=None, help="smallest budget of any layer (default and minimum: window + sinks)"
    )
    alloc.add_argument("--max-tokens", type=int, default=None, help="largest budget of any layer (default: context)")
    alloc.add_argument("--temperature", type=float, default=1.0, help="for --strategy softmax (default 1.0)")
    alloc.add_argument("--policy", default=None, help="eviction policy inside each layer (default: calibration's)")
    alloc.add_argument(
        "--context-length", type=float, default=None, help="reference length for fractions (default: calibration's)"
    )
    alloc.add_argument("--budget-index", type=int, default=0, help="which ablation budget's sensitivities (default 0)")
    alloc.add_argument("--out", required=True, help="plan JSON path")
    alloc.set_defaults(run=run_allocate)

    plan = sub.add_parser("plan", help="a plan with explicit per-layer budgets (no profile)")
    plan.add_argument("--model", required=True, help="shipped model name or a local HF checkpoint dir")
    plan.add_argument(
        "--budgets", nargs="+", required=True, help="tokens per layer, one per layer; 'full' keeps a layer whole"
    )
    plan.add_argument("--policy", default="snapkv", help="eviction policy inside each layer")
    plan.add_argument("--out", required=True, help="plan JSON path")
    plan.set_defaults(run=run_plan)


def run_allocate(args: argparse.Namespace) -> None:
    from depthkv.allocation import allocate
    from depthkv.profile import Profile

    plan = allocate(
        Profile.load(args.profile),
        args.budget,
        args.strategy,
        policy=args.policy,
        floor=args.floor,
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        context_length=args.context_length,
        budget_index=args.budget_index,
    )
    plan.save(args.out)
    print(json.dumps({"budgets": plan.budgets, "total": plan.total, "strategy": plan.strategy}))


def _layer_budget(text: str) -> int | None:
    if text == "full":
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"a layer budget is a whole number of tokens or 'full'; got {text!r}") from None


def run_plan(args: argparse.Namespace) -> None:
    from depthkv.allocation import plan_from_budgets

    model, _ = load(args.model)
    plan = plan_from_budgets(model, [_layer_budget(b) for b in args.budgets], policy=args.policy)
    plan.save(args.out)
    print(json.dumps({"budgets": plan.budgets, "total": plan.total, "strategy": plan.strategy}))
