"""``depthkv card``: a model's full-cache accuracy per built-in task and context length.

What a model does with its whole KV cache decides what its budgets can be measured on: the demo's
default workload is the tasks the card lists as learned (at least 0.8 at the default length), the
rule the shipped tiny models' cards follow. The card is written as JSON; for the real models the
committed cards are ``depthkv/models/cards/<name>.json``::

    depthkv card --model smollm2-135m --lengths 2048 4096 --n-per-task 12 \\
        --out depthkv/models/cards/smollm2-135m.json

Examples come from the evaluation split (disjoint from every calibration split); greedy decoding,
scored per example (``"contains"`` for the natural-text tasks). The card measures the model itself:
the unmodified model with transformers' own attention and cache (:func:`full_cache_scores`),
prompted exactly as :func:`depthkv.evaluate` prompts it (the context, then the question, then the
answer generated token by token), which is what evaluation's ``full`` method reproduces
(``tests/runtime/test_cache.py::test_full_budget_reproduces_unpruned_model``) at a fraction of the
cost: depthkv's recording prefill and eviction machinery are not needed where nothing is evicted.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from depthkv.cli.common import (
    DEMO_STRATEGIES,
    add_placement_args,
    builtin_for,
    decoding,
    load,
    print_table,
    run_info,
)

LEARNED = 0.8


def add_parser(sub: Any) -> None:
    card = sub.add_parser("card", help="full-cache accuracy per built-in task and context length")
    card.add_argument("--model", required=True, help="shipped or real model name, a local HF checkpoint or a .gguf")
    add_placement_args(card)
    card.add_argument("--tasks", nargs="+", default=None, help="built-in tasks (default: the natural-text tasks)")
    card.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096], help="context lengths in tokens")
    card.add_argument("--n-per-task", type=int, default=12, help="evaluation examples per task and length (12)")
    card.add_argument("--default-length", type=int, default=None, help="length of the learned tasks (the first)")
    card.add_argument("--seed", type=int, default=0)
    card.add_argument("--demo-n-calib", type=int, default=4, help="calibration examples per task of its demo (4)")
    card.add_argument("--demo-n-eval", type=int, default=12, help="evaluation examples per task of its demo (12)")
    card.add_argument(
        "--demo-strategies", nargs="+", default=list(DEMO_STRATEGIES), help="its demo's strategies (all four)"
    )
    card.add_argument(
        "--demo-controls-at", choices=["all", "primary"], default="primary",
        help="its demo's controls: for every budget's DepthKV plans or the primary budget's (primary)",
    )
    card.add_argument(
        "--demo-compress", choices=["context", "prompt"], default="prompt",
        help="its demo's compression point (prompt: SnapKV's query-aware setting, which the published "
        "baselines use)",
    )
    card.add_argument("--out", required=True, help="card JSON path")
    card.add_argument("--no-progress", action="store_true")
    card.set_defaults(run=run_card)


def full_cache_scores(
    model: Any,
    tokenizer: Any,
    workload: Any,
    *,
    extra_tokens: int,
    stop_at_newline: bool,
    scorer: Any = None,
    progress: bool = True,
) -> tuple[list[float], list[str]]:
    """Score of every example of ``workload`` (and its task) with the unmodified model and a
    ``transformers.DynamicCache``: the context prefilled (special tokens added), the question sent
    after it, then ``len(answer) + extra_tokens`` greedy tokens, stopped as :func:`depthkv.evaluate`
    stops them and scored by ``scorer(example, prediction)`` (default: the example's own,
    :func:`depthkv.workload.score`)."""
    import torch
    import transformers
    from tqdm import tqdm

    from depthkv.calibration.engine import encode_example, workload_items
    from depthkv.evaluation.comparison import stop_tokens
    from depthkv.runtime import greedy_decode
    from depthkv.runtime.devices import input_device
    from depthkv.runtime.generation import until_stop
    from depthkv.workload import score

    scorer = scorer or score
    items, _ = workload_items(workload)
    stop = stop_tokens(tokenizer, stop_at_newline)
    device = input_device(model)
    scores, tasks = [], []

    def forward(ids: list[int] | torch.Tensor, cache: Any) -> torch.Tensor:
        ids = ids if isinstance(ids, torch.Tensor) else torch.tensor([ids], device=device, dtype=torch.long)
        return model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1]

    with torch.inference_mode():
        for item in tqdm(items, desc="card", unit="example", disable=not progress):
            ctx, prefix, answer = encode_example(tokenizer, item.context, item.question, item.answer, "context")
            cache = transformers.DynamicCache(config=model.config)
            logits = forward(ctx, cache)
            if prefix:
                logits = forward(prefix, cache)
            tokens, _ = greedy_decode(lambda t, c=cache: forward(t, c), logits, len(answer) + extra_tokens, stop_tokens=stop)
            prediction = tokenizer.decode(until_stop(tokens[0].tolist(), stop), skip_special_tokens=True)
            scores.append(float(scorer(item.source, prediction)))
            tasks.append(item.task)
    return scores, tasks


def run_card(args: argparse.Namespace) -> dict[str, Any]:
    from depthkv.files import atomic_write_json
    from depthkv.workload import NATURAL_TASKS

    start = time.time()
    model, tokenizer = load(args.model, args)
    tasks = list(args.tasks or NATURAL_TASKS)
    default_length = args.default_length or args.lengths[0]
    if default_length not in args.lengths:
        raise ValueError(f"--default-length {default_length} is not one of --lengths {args.lengths}")
    cells: dict[str, Any] = {}
    workloads = {}
    for length in args.lengths:
        workload = builtin_for(tokenizer, tasks, args.n_per_task, length, "evaluation", args.seed)
        workloads[length] = workload.describe()
        all_scores, all_tasks = full_cache_scores(
            model, tokenizer, workload, **decoding(workload), progress=not args.no_progress
        )
        for task in tasks:
            scores = [s for s, t in zip(all_scores, all_tasks) if t == task]
            cells[f"{task}@{length}"] = {"accuracy": sum(scores) / len(scores), "n": len(scores), "scores": scores}
    learned = [t for t in tasks if cells[f"{t}@{default_length}"]["accuracy"] >= LEARNED]
    card = {
        "model": args.model,
        "tasks": tasks,
        "lengths": list(args.lengths),
        "n": args.n_per_task,
        "seed": args.seed,
        "split": "evaluation",
        "learned_threshold": LEARNED,
        "default_length": default_length,
        "learned_tasks": learned,
        "demo": {"n_calib": args.demo_n_calib, "n_eval": args.demo_n_eval, "strategies": list(args.demo_strategies),
                 "controls_at": args.demo_controls_at, "compress": args.demo_compress},
        "cells": cells,
        "workloads": {str(k): v for k, v in workloads.items()},
        "info": run_info(args, start),
    }
    atomic_write_json(args.out, card)
    rows = [[t] + [f"{cells[f'{t}@{n}']['accuracy']:.3f}" for n in args.lengths] for t in tasks]
    print_table(["task"] + [f"acc@{n}" for n in args.lengths], rows)
    print(f"learned at {default_length} tokens (>= {LEARNED}): {', '.join(learned) or 'none'}")
    print(f"card written to {args.out}  ({time.time() - start:.0f} s)")
    return card
