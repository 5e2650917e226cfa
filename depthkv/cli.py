"""The ``depthkv`` command. ``depthkv demo`` is the main job on the embedded default."""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

DEMO_BUDGETS = (0.1, 0.2, 0.3)
QUICK_BUDGETS = (0.1, 0.2)


def _parse_budget(text: str) -> float | int:
    value = float(text)
    return int(value) if value >= 1 and value.is_integer() else value


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="depthkv", description="Layer-dependent KV-cache budgets.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="calibrate, test, allocate and evaluate on the embedded default")
    demo.add_argument("--model", default="tiny-llama", help="shipped model name or a local HF checkpoint dir")
    demo.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    demo.add_argument("--budget", type=float, default=0.2, help="global KV budget as a fraction (default 0.2)")
    demo.add_argument("--context-length", type=int, default=None, help="context length in tokens")
    demo.add_argument("--n-calib", type=int, default=None, help="calibration examples per task (12; --quick 3)")
    demo.add_argument("--n-eval", type=int, default=None, help="evaluation examples per task (32; --quick 4)")
    demo.add_argument("--policy", default="snapkv", help="eviction policy inside each layer")
    demo.add_argument("--metric", default="nll", choices=["nll", "kl", "score"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--budgets", type=float, nargs="+", default=None, help="global budgets to evaluate")
    demo.add_argument("--strategies", nargs="+", default=None, help="DepthKV strategies to evaluate")
    demo.add_argument("--quick", action="store_true", help="small run for CI (under 2 minutes)")
    demo.add_argument("--no-progress", action="store_true")

    cal = sub.add_parser("calibrate", help="calibrate a model on a workload and write a profile")
    cal.add_argument("--model", default="tiny-llama")
    cal.add_argument("--workload", default=None, help="JSONL file (default: built-in calibration split)")
    cal.add_argument("--context-length", type=int, default=1024)
    cal.add_argument("--n-per-task", type=int, default=8)
    cal.add_argument("--ablation-budget", type=_parse_budget, nargs="+", default=[0.2])
    cal.add_argument("--metric", default="nll", choices=["nll", "kl", "score"])
    cal.add_argument("--policy", default="snapkv")
    cal.add_argument("--out", required=True, help="profile JSON path (also the resume checkpoint)")

    from depthkv.allocation import STRATEGIES

    alloc = sub.add_parser("allocate", help="turn a profile into a plan")
    alloc.add_argument("profile")
    alloc.add_argument("--budget", type=_parse_budget, required=True, help="fraction in (0,1] or tokens per layer")
    alloc.add_argument("--strategy", default="proportional", choices=STRATEGIES)
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

    tune = sub.add_parser("tune-floor", help="allocate at several floors, measure each plan whole, keep the best")
    tune.add_argument("profile")
    tune.add_argument("--model", required=True, help="the calibrated model: shipped name or local HF checkpoint")
    tune.add_argument("--budget", type=_parse_budget, required=True, help="fraction in (0,1] or tokens per layer")
    tune.add_argument("--strategy", default="proportional", choices=STRATEGIES)
    tune.add_argument("--workload", default=None, help="calibration JSONL (default: rebuilt from a built-in profile)")
    tune.add_argument("--floors", type=int, nargs="+", default=None, help="floors to try (default 8 16 32 ...)")
    tune.add_argument("--metric", default="score", choices=["score", "nll", "kl"], help="what is compared")
    tune.add_argument("--out", required=True, help="plan JSON path (the best plan, with every floor's result)")
    return parser


def _model(name: str):
    from depthkv.models import load_model

    return load_model(name)


def _card(name: str) -> dict[str, Any]:
    """A shipped model's measured card (``evaluation.json`` beside its weights), or {}."""
    path = Path(__file__).parent / "models" / str(name) / "evaluation.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _default_tasks(name: str) -> list[str]:
    """The tasks the model's card lists as learned (full-cache accuracy at the trained length at
    least the card's ``learned_threshold``, 0.8): a task the model has not learned is left out of
    the default workload, as the card says. The built-in defaults for a model without a card."""
    from depthkv.workload import DEFAULT_TASKS

    card = _card(name)
    return list(card.get("learned_tasks") or DEFAULT_TASKS)


def _default_context(name: str) -> int:
    """The model's trained context length (1024 for models without a card)."""
    return int(_card(name).get("trained_length", 1024))


def _print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    import depthkv
    from depthkv.evaluation import evaluate, method_plans
    from depthkv.evaluation.report import summary_rows, write_report
    from depthkv.workload import builtin_workload

    start = time.time()
    torch.manual_seed(args.seed)
    model, tokenizer = _model(args.model)
    tasks = _default_tasks(args.model)
    ctx = args.context_length or _default_context(args.model)
    if args.quick:
        n_calib, n_eval, budgets = args.n_calib or 3, args.n_eval or 4, list(QUICK_BUDGETS)
        strategies, ablation = ("proportional", "greedy"), [args.budget, 0.5]
        n_perm = 999
    else:
        n_calib, n_eval, budgets = args.n_calib or 12, args.n_eval or 32, list(DEMO_BUDGETS)
        strategies, ablation = ("proportional", "softmax", "rank", "greedy"), [args.budget, 0.1, 0.5]
        n_perm = 10_000
    budgets = list(args.budgets or budgets)
    strategies = tuple(args.strategies or strategies)
    if args.budget not in budgets:
        budgets = sorted({*budgets, args.budget})
    ablation = list(dict.fromkeys(ablation))
    calib = builtin_workload(tasks, n_per_task=n_calib, context_length=ctx, split="calibration", seed=args.seed)
    evalw = builtin_workload(tasks, n_per_task=n_eval, context_length=ctx, split="evaluation", seed=args.seed)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"depthkv demo: model {args.model}, {len(calib.examples)} calibration / {len(evalw.examples)} "
          f"evaluation examples, context {ctx} tokens, tasks {', '.join(tasks)}")
    profile = depthkv.calibrate(
        model,
        tokenizer,
        calib,
        ablation_budget=ablation,
        metric=args.metric,
        policy=args.policy,
        checkpoint=out / "profile.partial.json",
        n_permutations=n_perm,
        seed=args.seed,
        progress=not args.no_progress,
    )
    methods = method_plans(model, profile, budgets, strategies=strategies)
    results = evaluate(model, tokenizer, evalw, methods, progress=not args.no_progress)
    summaries = {name: r.summary(seed=args.seed) for name, r in results.items()}
    b = args.budget
    every = {name: plan for name, plan in methods.items() if plan is not None}  # all but the full cache
    plans = {name.split("@")[0]: plan for name, plan in every.items() if name.endswith(f"@{b}")}
    info = {
        "model": args.model,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()} {platform.system()}, {torch.get_num_threads()} threads, torch {torch.__version__}",
        "context_length": ctx,
        "tasks": list(tasks),
        "n_calib": len(calib.examples),
        "n_eval": len(evalw.examples),
        "budgets": budgets,
        "global_budget": b,
        "quick": bool(args.quick),
        "wall_s": time.time() - start,
    }
    files = write_report(out, profile, plans, summaries, budgets, info, all_plans=every)
    (out / "profile.partial.json").unlink(missing_ok=True)
    perm = profile.stats["by_budget"][0]["permutation"] if profile.stats else None
    fried = profile.stats["by_budget"][0]["friedman"] if profile.stats else None
    print()
    if perm:
        print(f"Layers differ? permutation test p = {perm['pvalue']:.4g}, Friedman p = {fried['pvalue']:.4g}")
    sens = profile.sensitivity()
    print("Per-layer sensitivity:", " ".join(f"L{i}:{s:+.3f}" for i, s in enumerate(sens)))
    for name, plan in plans.items():
        print(f"Budgets {name:>22} @ {b}: {plan.budgets}")
    print()
    _print_table(["method"] + [f"acc@{x:g}" for x in budgets], summary_rows(summaries, budgets))
    print(f"\nReport: {files['report']}  ({time.time() - start:.0f} s)")
    return {"files": files, "summaries": summaries, "profile": profile}


def run_calibrate(args: argparse.Namespace) -> None:
    import depthkv
    from depthkv.workload import builtin_workload, from_jsonl

    model, tokenizer = _model(args.model)
    if args.workload:
        workload = from_jsonl(args.workload)
    else:
        workload = builtin_workload(
            _default_tasks(args.model), n_per_task=args.n_per_task, context_length=args.context_length
        )
    profile = depthkv.calibrate(
        model,
        tokenizer,
        workload,
        ablation_budget=args.ablation_budget,
        metric=args.metric,
        policy=args.policy,
        checkpoint=args.out,
    )
    perm = profile.stats["by_budget"][0]["permutation"] if profile.stats else None
    print(f"profile written to {args.out}" + (f"; permutation p = {perm['pvalue']:.4g}" if perm else ""))


def run_allocate(args: argparse.Namespace) -> None:
    import depthkv

    profile = depthkv.Profile.load(args.profile)
    plan = depthkv.allocate(
        profile,
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


def _calibration_workload(profile: Any, path: str | None) -> Any:
    """The workload ``profile`` was calibrated on: ``path`` (JSONL), or the built-in split rebuilt
    from the profile's description and checked against its examples' digest."""
    from depthkv.workload import builtin_workload, from_jsonl

    if path:
        return from_jsonl(path)
    desc = profile.workload or {}
    if desc.get("source") != "builtin":
        raise ValueError(
            "the profile was calibrated on a custom workload; pass the same file with --workload my.jsonl"
        )
    workload = builtin_workload(
        list(desc["tasks"]),
        n_per_task=desc["n_per_task"],
        context_length=desc["target_context_length"],
        split=desc["split"],
        seed=desc["seed"],
    )
    if workload.fingerprint() != desc.get("examples_sha256"):
        raise ValueError(
            "the built-in workload rebuilt from the profile's description differs from the one it was "
            "calibrated on (another depthkv version?); pass the calibration examples with --workload"
        )
    return workload


def run_tune_floor(args: argparse.Namespace) -> None:
    import depthkv

    profile = depthkv.Profile.load(args.profile)
    model, tokenizer = _model(args.model)
    profile.check_model(model)
    workload = _calibration_workload(profile, args.workload)
    search = depthkv.tune_floor(
        model, tokenizer, workload, profile, args.budget, args.strategy, floors=args.floors, metric=args.metric
    )
    plan, record = search.plan, search.to_dict()
    plan.metadata["floor_search"] = record
    plan.save(args.out)
    for row in record["floors"]:
        mark = "  <- kept" if row["floor"] == plan.floor else ""
        print(f"floor {row['floor']:>5}: mean {args.metric} degradation {row['mean_degradation']:+.4f}  "
              f"{' '.join(map(str, row['budgets']))}{mark}")
    print(f"plan written to {args.out}")


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            run_demo(args)
        elif args.command == "calibrate":
            run_calibrate(args)
        elif args.command == "allocate":
            run_allocate(args)
        elif args.command == "tune-floor":
            run_tune_floor(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"depthkv: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
