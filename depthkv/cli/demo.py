"""``depthkv demo``: the main job on the embedded default (the bundled tiny model and its tasks).

Calibrates the model on the calibration split of the tasks its card lists as learned, runs the
permutation and Friedman tests, allocates each global budget with every strategy, evaluates full
cache, uniform SnapKV, PyramidKV and DepthKV on the disjoint evaluation split, and writes the
report folder (:func:`depthkv.evaluation.report.write_report`).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from depthkv.cli.common import default_context, default_tasks, fraction_arg, load, print_table, run_info

DEMO_BUDGETS = (0.1, 0.2, 0.3)
QUICK_BUDGETS = (0.1, 0.2)


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="calibrate, test, allocate and evaluate on the embedded default")
    demo.add_argument("--model", default="tiny-llama", help="shipped model name or a local HF checkpoint dir")
    demo.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    demo.add_argument("--budget", type=fraction_arg, default=0.2, help="primary global KV budget, a fraction (0.2)")
    demo.add_argument("--context-length", type=int, default=None, help="context length in tokens")
    demo.add_argument("--n-calib", type=int, default=None, help="calibration examples per task (12; --quick 3)")
    demo.add_argument("--n-eval", type=int, default=None, help="evaluation examples per task (32; --quick 4)")
    demo.add_argument("--policy", default="snapkv", help="eviction policy inside each layer")
    demo.add_argument("--metric", default="nll", choices=["nll", "kl", "score"])
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--budgets", type=fraction_arg, nargs="+", default=None, help="global budgets to evaluate (fractions)")
    demo.add_argument("--strategies", nargs="+", default=None, help="DepthKV strategies to evaluate")
    demo.add_argument("--quick", action="store_true", help="small run for CI (under 2 minutes)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=run_demo)


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from depthkv.calibration import calibrate
    from depthkv.evaluation import evaluate, method_plans
    from depthkv.evaluation.report import summary_rows, write_report
    from depthkv.workload import builtin_workload

    start = time.time()
    torch.manual_seed(args.seed)
    model, tokenizer = load(args.model)
    tasks = default_tasks(args.model)
    ctx = args.context_length or default_context(args.model)
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
    profile = calibrate(
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
    info = run_info(
        args,
        start,
        context_length=ctx,
        tasks=list(tasks),
        n_calib=len(calib.examples),
        n_eval=len(evalw.examples),
        budgets=budgets,
        global_budget=b,
        quick=bool(args.quick),
    )
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
    print_table(["method"] + [f"acc@{x:g}" for x in budgets], summary_rows(summaries, budgets))
    print(f"\nReport: {files['report']}  ({time.time() - start:.0f} s)")
    return {"files": files, "summaries": summaries, "profile": profile}
