"""``depthkv demo``: the whole pipeline, on the embedded default or on a user's model and data.

Calibrates the model, runs the permutation and Friedman tests, allocates each global budget with
every strategy, evaluates full cache, uniform SnapKV, PyramidKV, DepthKV and each DepthKV plan's
controls (:mod:`depthkv.evaluation.controls`) on examples disjoint from the calibration ones, and
writes the report folder (:func:`depthkv.evaluation.report.write_report`).

The examples: by default the calibration and evaluation splits of the built-in tasks the model's
card lists as learned. With ``--workload my.jsonl`` the file's examples are split by a seeded hash
of each one (:func:`depthkv.cli.common.split_examples`; ``--calib-fraction``, default 1/3, for
calibration), and the two parts are written into the report folder as ``calibration.jsonl`` and
``evaluation.jsonl``; with ``--eval-workload other.jsonl`` too, the first file is all calibration
and the second all evaluation.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from depthkv.cli.common import (
    CALIB_FRACTION,
    DEMO_BUDGETS,
    DEMO_STRATEGIES,
    MIN_CALIBRATION,
    add_comparison_args,
    add_placement_args,
    add_policy_args,
    baselines_from_args,
    builtin_for,
    card,
    decoding,
    default_context,
    default_tasks,
    fraction_arg,
    load,
    mean_context_tokens,
    policy_from_args,
    print_table,
    report_folder,
    run_info,
    split_examples,
)

QUICK_BUDGETS = (0.1, 0.2)


def add_parser(sub: Any) -> None:
    demo = sub.add_parser("demo", help="calibrate, test, allocate and evaluate: the embedded default or your data")
    demo.add_argument("--model", default="tiny-llama", help="shipped model name or a local HF checkpoint dir")
    add_placement_args(demo)
    demo.add_argument(
        "--workload", default=None,
        help="your JSONL file, split into calibration and evaluation examples (default: the built-in tasks)",
    )
    demo.add_argument(
        "--eval-workload", default=None,
        help="a JSONL file of evaluation examples; then --workload is all calibration",
    )
    demo.add_argument(
        "--calib-fraction", type=float, default=None,
        help="share of --workload's examples for calibration, chosen by a hash of each example and --seed (1/3)",
    )
    demo.add_argument("--out", default="reports/demo", help="report folder (default: reports/demo)")
    demo.add_argument("--budget", type=fraction_arg, default=0.2, help="primary global KV budget, a fraction (0.2)")
    demo.add_argument("--context-length", type=int, default=None, help="built-in context length in tokens")
    demo.add_argument("--n-calib", type=int, default=None, help="built-in calibration examples per task (12; --quick 3)")
    demo.add_argument("--n-eval", type=int, default=None, help="built-in evaluation examples per task (32; --quick 4)")
    add_policy_args(demo)
    demo.add_argument("--metric", default="nll", choices=["nll", "kl", "score"])
    demo.add_argument("--seed", type=int, default=0, help="seed of the workload, the tests, the split and the controls")
    demo.add_argument("--budgets", type=fraction_arg, nargs="+", default=None, help="global budgets to evaluate (fractions)")
    demo.add_argument("--strategies", nargs="+", default=None, help="DepthKV strategies to evaluate")
    demo.add_argument(
        "--compress", choices=["context", "prompt"], default=None,
        help="compress after the context, the question coming later (multi-turn, RAG), or after context + "
        "question (SnapKV's query-aware setting, the published baselines'); default: the model's card's, else "
        "context",
    )
    demo.add_argument(
        "--mode", choices=["evict", "append"], default="evict",
        help="decode mode while answering: evict (every generated token keeps each layer at its budget; "
        "long sessions) or append (generated tokens are appended; what the KV-compression papers evaluate)",
    )
    demo.add_argument(
        "--controls-at", choices=["all", "primary"], default=None,
        help="controls for the DepthKV plans of every budget or of the primary --budget only "
        "(default: all; a real model's card: primary, to keep the demo within minutes)",
    )
    add_comparison_args(demo)
    demo.add_argument("--quick", action="store_true", help="small run for CI (under 2 minutes)")
    demo.add_argument("--no-progress", action="store_true")
    demo.set_defaults(run=run_demo)


def _check_args(args: argparse.Namespace) -> None:
    """Options that do not go together, refused before the model is loaded."""
    if args.eval_workload and not args.workload:
        raise ValueError("--eval-workload needs --workload, the file of calibration examples")
    if args.eval_workload and args.calib_fraction is not None:
        raise ValueError("--calib-fraction splits --workload; with --eval-workload the whole file calibrates")
    if args.workload:
        builtin = [opt for opt, value in (("--context-length", args.context_length), ("--n-calib", args.n_calib),
                                          ("--n-eval", args.n_eval)) if value is not None]
        if builtin:
            raise ValueError(f"{', '.join(builtin)} size(s) the built-in workload; with --workload the file's examples are used")
    elif args.calib_fraction is not None:
        raise ValueError("--calib-fraction splits a --workload file; the built-in tasks have their own splits")


def _canonical(example: Any) -> str:
    return json.dumps(example.to_dict(), sort_keys=True, ensure_ascii=False)


def _user_workloads(args: argparse.Namespace, out: Path) -> tuple[Any, Any, dict[str, Any]]:
    """``(calibration, evaluation, record)`` from ``--workload`` (and ``--eval-workload``)."""
    from depthkv.workload import from_jsonl, save_jsonl

    source = from_jsonl(args.workload)
    if args.eval_workload:
        calib, evalw = source, from_jsonl(args.eval_workload)
        if len(calib) < MIN_CALIBRATION:
            raise ValueError(
                f"{args.workload}: {len(calib)} example(s); calibration needs at least {MIN_CALIBRATION}"
            )
        shared = {_canonical(ex) for ex in calib} & {_canonical(ex) for ex in evalw}
        if shared:
            print(f"depthkv demo: warning: {len(shared)} example(s) are in both files; the evaluation is not "
                  "on examples unseen by calibration")
        record = {"workload": args.workload, "eval_workload": args.eval_workload}
    else:
        fraction = CALIB_FRACTION if args.calib_fraction is None else args.calib_fraction
        parts = split_examples(source.examples, fraction, args.seed, source=args.workload)
        out.mkdir(parents=True, exist_ok=True)
        calib = from_jsonl(save_jsonl(parts[0], out / "calibration.jsonl"), name=f"{source.name}-calibration")
        evalw = from_jsonl(save_jsonl(parts[1], out / "evaluation.jsonl"), name=f"{source.name}-evaluation")
        record = {
            "workload": args.workload,
            "workload_sha256": source.description["sha256"],
            "calib_fraction": fraction,
            "split_seed": args.seed,
            "split": "example in calibration iff sha256('depthkv-split/<seed>/' + canonical JSON)[:8] / 2**64 < fraction",
        }
    calib.split, evalw.split = "calibration", "evaluation"
    return calib, evalw, record


def _eval_source(args: argparse.Namespace) -> str:
    if args.eval_workload:
        return f"file {args.eval_workload}"
    return f"the evaluation part of {args.workload}, evaluation.jsonl"


def run_demo(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from depthkv.calibration import calibrate
    from depthkv.evaluation import evaluate, method_plans
    from depthkv.evaluation.report import summary_rows, write_report

    start = time.time()
    _check_args(args)
    baselines = baselines_from_args(args)
    out = report_folder(args.out)
    torch.manual_seed(args.seed)
    sizes = card(args.model).get("demo", {})  # a real model's card sizes its demo to finish in minutes
    if args.quick:
        n_calib, n_eval, budgets = args.n_calib or 3, args.n_eval or 4, list(QUICK_BUDGETS)
        strategies, ablation = ("proportional", "greedy"), [args.budget, 0.5]
        n_perm = 999
    else:
        n_calib, n_eval = args.n_calib or sizes.get("n_calib", 12), args.n_eval or sizes.get("n_eval", 32)
        budgets, strategies = list(DEMO_BUDGETS), tuple(sizes.get("strategies", DEMO_STRATEGIES))
        ablation = [args.budget, 0.1, 0.5]
        n_perm = 10_000
    budgets = list(args.budgets or budgets)
    strategies = tuple(args.strategies or strategies)
    controls_at = args.controls_at or sizes.get("controls_at", "all")
    compress = args.compress or sizes.get("compress", "context")
    if args.budget not in budgets:
        budgets = sorted({*budgets, args.budget})
    ablation = list(dict.fromkeys(ablation))
    if args.workload:  # a user's file is read and split before the model loads: its errors come first
        calib, evalw, split_record = _user_workloads(args, out)
        tasks = calib.tasks + [t for t in evalw.tasks if t not in calib.tasks]
    model, tokenizer = load(args.model, args)
    if args.workload:
        ctx = round(mean_context_tokens(tokenizer, evalw))
    else:
        tasks = default_tasks(args.model, tokenizer)
        ctx = args.context_length or default_context(args.model)
        calib = builtin_for(tokenizer, tasks, n_calib, ctx, "calibration", args.seed)
        evalw = builtin_for(tokenizer, tasks, n_eval, ctx, "evaluation", args.seed)
        split_record = {}
    out.mkdir(parents=True, exist_ok=True)
    print(f"depthkv demo: model {args.model}, {len(calib.examples)} calibration / {len(evalw.examples)} "
          f"evaluation examples, context {ctx} tokens{' (mean)' if args.workload else ''}, tasks {', '.join(tasks)}")
    profile = calibrate(
        model,
        tokenizer,
        calib,
        ablation_budget=ablation,
        metric=args.metric,
        policy=policy_from_args(args),
        compress=compress,
        checkpoint=out / "profile.partial.json",
        n_permutations=n_perm,
        seed=args.seed,
        progress=not args.no_progress,
    )
    methods = method_plans(
        model, profile, budgets, strategies=strategies, baselines=baselines, controls=not args.no_controls,
        control_budgets=None if controls_at == "all" else [args.budget], seed=args.seed,
    )
    results = evaluate(
        model, tokenizer, evalw, methods, compress=compress, **decoding(evalw), progress=not args.no_progress,
        mode=args.mode,
    )
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
        **({"eval_source": _eval_source(args), "data": split_record} if args.workload else {}),
        controls=not args.no_controls,
        controls_at=controls_at,
        compress=compress,
        mode=args.mode,
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
    width = max((len(name) for name in plans), default=0)
    for name, plan in plans.items():
        print(f"Budgets {name:>{width}} @ {b}: {plan.budgets}")
    print()
    print_table(["method"] + [f"acc@{x:g}" for x in budgets], summary_rows(summaries, budgets))
    print(f"\nReport: {files['report']}  ({time.time() - start:.0f} s)")
    return {"files": files, "summaries": summaries, "profile": profile}
