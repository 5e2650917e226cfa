"""``depthkv evaluate``: plan files, and a profile's plans, scored side by side on a workload.

``--plans`` are plan files (``depthkv allocate``, ``depthkv plan``, ``depthkv tune-floor``).
With ``--profile``, plans are also allocated from the profile at each ``--budgets`` value with
each of ``--strategies``, next to the ``--baselines`` (uniform SnapKV and PyramidKV) and, unless
``--no-controls``, each DepthKV plan's controls (:mod:`depthkv.evaluation.controls`), as the demo
does. The full cache is always measured too (unless ``--no-full``).

The result is the demo's report folder (:func:`depthkv.evaluation.report.write_report`):
``results.json`` (accuracy per method with CIs and per task, the per-layer budgets of every plan,
the controls' seeds and layer orders), ``report.md``, the plots, one plan file per method at the
primary budget, and with a profile its sensitivities and statistics. An ``--out`` ending in
``.json`` writes only one results file, as earlier versions did (each plan's budgets, strategy,
floor, global budget and path there; scripts that read it keep working).

The default workload is the built-in evaluation split of the tasks the model's card lists as
learned, at its trained length, 32 examples per task (the demo's evaluation split), so a plan
made from a demo profile is measured on the examples the demo reports.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from depthkv.cli.common import (
    DEMO_BUDGETS,
    DEMO_STRATEGIES,
    add_comparison_args,
    add_placement_args,
    add_workload_args,
    baselines_from_args,
    budget_arg,
    decoding,
    load,
    mean_context_tokens,
    print_table,
    report_folder,
    run_info,
    workload_from_args,
)


def add_parser(sub: Any) -> None:
    from depthkv.allocation import STRATEGIES

    ev = sub.add_parser("evaluate", help="score plan files and a profile's plans (and the full cache) on a workload")
    ev.add_argument("--model", default="tiny-llama", help="shipped model name or a local HF checkpoint dir")
    add_placement_args(ev)
    ev.add_argument("--plans", nargs="+", default=[], help="plan files, each PATH or NAME=PATH (name: the file's stem)")
    ev.add_argument("--profile", default=None, help="a profile of this model: plans are allocated from it (below)")
    ev.add_argument(
        "--budgets", type=budget_arg, nargs="+", default=None,
        help="global budgets to allocate at, with --profile: fractions (0.2) or tokens per layer (64) "
             f"(default: {' '.join(map(str, DEMO_BUDGETS))})",
    )
    ev.add_argument(
        "--budget", type=budget_arg, default=None,
        help="primary budget, with --profile: its plans get plan files and the budgets plot (default: the middle "
             "of --budgets)",
    )
    ev.add_argument(
        "--strategies", nargs="+", default=None, choices=STRATEGIES, metavar="STRATEGY",
        help=f"DepthKV strategies, with --profile (default: {' '.join(DEMO_STRATEGIES)}; greedy only if the profile "
             "has curves)",
    )
    add_comparison_args(ev)
    ev.add_argument(
        "--compress", choices=["context", "prompt"], default=None,
        help="where the cache is compressed: after the context (questions come later) or after context + "
        "question (SnapKV's query-aware setting); default: the profile's, else context",
    )
    ev.add_argument(
        "--mode", choices=["evict", "append"], default="evict",
        help="decode mode while answering: evict (every generated token keeps each layer at its budget; "
        "long sessions) or append (generated tokens are appended; what the KV-compression papers evaluate)",
    )
    ev.add_argument("--no-full", action="store_true", help="leave out the full-cache baseline")
    add_workload_args(ev, split="evaluation", n_per_task=32)
    ev.add_argument(
        "--out", required=True,
        help="report folder (results.json, report.md, plots, plans); a path ending in .json writes only the "
             "results file, as earlier versions did",
    )
    ev.add_argument("--no-progress", action="store_true")
    ev.set_defaults(run=run_evaluate)


def _named(spec: str) -> tuple[str, Path]:
    name, sep, path = spec.partition("=")
    return (name, Path(path)) if sep else (Path(spec).stem, Path(spec))


def _profile_methods(args: argparse.Namespace, model: Any, profile: Any) -> tuple[dict[str, Any], list, Any]:
    """The plans allocated from ``profile``: ``(name → plan, budgets, primary budget)``."""
    from depthkv.evaluation import method_plans

    budgets = list(dict.fromkeys(args.budgets or DEMO_BUDGETS))
    primary = args.budget if args.budget is not None else sorted(budgets)[(len(budgets) - 1) // 2]
    if primary not in budgets:
        budgets.append(primary)
    if args.strategies is None:
        strategies = [s for s in DEMO_STRATEGIES if s != "greedy" or len(profile.ablation_budgets) > 1]
    else:
        strategies = list(dict.fromkeys(args.strategies))
        if "greedy" in strategies and len(profile.ablation_budgets) < 2:
            raise ValueError(
                "strategy greedy needs a profile with sensitivity curves (calibrated with several ablation "
                "budgets, e.g. depthkv calibrate --ablation-budget 0.2 0.1 0.5); leave greedy out"
            )
    methods = method_plans(
        model, profile, budgets, strategies=strategies, baselines=baselines_from_args(args),
        controls=not args.no_controls, seed=args.seed,
    )
    methods.pop("full")
    return methods, budgets, primary


def run_evaluate(args: argparse.Namespace) -> dict[str, Any]:
    from depthkv.distributed import world
    from depthkv.evaluation import evaluate
    from depthkv.evaluation.report import accuracy_table, summary_rows, write_report
    from depthkv.files import atomic_write_json
    from depthkv.profile import Plan, Profile

    start = time.time()
    single = args.out.lower().endswith(".json")  # the one results file of earlier versions
    out = Path(args.out) if single else report_folder(args.out)
    named = [_named(spec) for spec in args.plans]
    names = [name for name, _ in named]
    if len(set(names)) != len(names) or "full" in names:
        raise ValueError(f"plan names must be distinct and not 'full'; got {names} (name them NAME=PATH)")
    if args.profile is None:
        given = [opt for opt, value in (("--budgets", args.budgets), ("--budget", args.budget),
                                         ("--strategies", args.strategies), ("--baselines", args.baselines))
                 if value is not None] + (["--no-controls"] if args.no_controls else [])
        if given:
            raise ValueError(f"{', '.join(given)} choose(s) the plans allocated from a profile: give --profile too")
        if not named and args.no_full:
            raise ValueError("nothing to evaluate: give --plans or --profile, or leave out --no-full")
    else:
        baselines_from_args(args)  # an unknown name is an error before the model is loaded
    profile = Profile.load(args.profile) if args.profile else None
    model, tokenizer = load(args.model, args)
    if profile is not None:
        profile.check_model(model)
    methods: dict[str, Plan | None] = {} if args.no_full else {"full": None}
    files = {name: Plan.load(path, model=model) for name, path in named}
    methods.update(files)
    budgets: list = []
    primary = None
    if profile is not None:
        allocated, budgets, primary = _profile_methods(args, model, profile)
        clash = sorted(set(allocated) & set(methods))
        if clash:
            raise ValueError(f"plan file name(s) {clash} are names of the profile's plans; name them NAME=PATH")
        methods.update(allocated)
    workload = workload_from_args(args, tokenizer)
    if profile is not None and (profile.workload or {}).get("examples_sha256") == workload.fingerprint():
        print("depthkv evaluate: warning: this is the workload the profile was calibrated on; "
              "accuracy measured on it overstates what the plans do on new examples")
    compress = args.compress or (profile.settings.get("compress") if profile is not None else None) or "context"
    results = evaluate(
        model, tokenizer, workload, methods, compress=compress, **decoding(workload), progress=not args.no_progress,
        mode=args.mode,
    )
    summaries = {name: r.summary(seed=0) for name, r in results.items()}
    if world()[0] != 0:  # under torchrun every rank has the results; rank 0 writes and prints them
        return {"files": {}, "summaries": summaries, "methods": methods}
    every = {name: plan for name, plan in methods.items() if plan is not None}
    plans = dict(files)
    suffix = f"@{primary}"
    for name, plan in every.items():
        if name.endswith(suffix) and name not in files:
            short = name[: -len(suffix)]
            plans[short if short not in plans else name] = plan
    info = run_info(
        args,
        start,
        workload=workload.describe(),
        eval_source=_source(workload),
        n_eval=len(workload),
        context_length=mean_context_tokens(tokenizer, workload),
        profile=args.profile,
        budgets=budgets,
        global_budget=primary,
        controls=bool(profile is not None and not args.no_controls),
        compress=compress,
        mode=args.mode,
        seed=args.seed,
    )
    extra = {
        "plan_files": {
            name: {"path": str(path), "budgets": files[name].budgets, "strategy": files[name].strategy,
                   "floor": files[name].floor, "global_budget": files[name].global_budget}
            for name, path in named
        }
    }
    if single:
        written = {"report": atomic_write_json(out, _results_file(info, summaries, every, dict(named)))}
    else:
        written = write_report(out, profile, plans, summaries, budgets, info, all_plans=every, extra=extra)
    tasks = sorted({t for s in summaries.values() for t in s["per_task"]})
    rows = [
        [name, f"{s['mean']:.3f} [{s['low']:.2f}, {s['high']:.2f}]", f"{s.get('mean_kv_tokens', 0):.0f}"]
        + [f"{s['per_task'][t]['mean']:.3f}" for t in tasks]
        for name, s in summaries.items()
    ]
    print_table(["method", "accuracy [95% CI]", "KV tokens", *tasks], rows)
    if accuracy_table(summaries) and budgets:
        print()
        print_table(["method"] + [f"acc@{x:g}" for x in budgets], summary_rows(summaries, budgets))
    print(f"{'results' if single else 'report'} written to {written['report']}  ({time.time() - start:.0f} s, {len(workload)} examples)")
    return {"files": written, "summaries": summaries, "methods": methods}


def _results_file(info: dict, summaries: dict, plans: dict, paths: dict) -> dict[str, Any]:
    """The single results file (``--out results.json``): run information, every method's accuracy,
    and each plan's budgets, strategy, floor, global budget (and its path, for plan files)."""
    from depthkv.evaluation.controls import is_control

    return {
        "info": info,
        "methods": summaries,
        "plans": {
            name: {**({"path": str(paths[name])} if name in paths else {}), "budgets": plan.budgets,
                   "strategy": plan.strategy, "floor": plan.floor, "global_budget": plan.global_budget,
                   **({"control": {k: plan.metadata.get(k) for k in ("control", "control_of", "seed", "layer_order")}}
                      if is_control(plan) else {})}
            for name, plan in plans.items()
        },
    }


def _source(workload: Any) -> str:
    desc = workload.description
    if desc.get("source") == "jsonl":
        return f"file {desc.get('path')}"
    return f"built-in {workload.split} split"
