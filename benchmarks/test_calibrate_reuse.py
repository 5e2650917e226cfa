"""Calibration cost: reuse of the full run (shared prefill + replayed lower layers) vs recomputing.

Run: ``make bench`` (or ``pytest benchmarks/test_calibrate_reuse.py --benchmark-only``). Both variants
run in the same session on the same model and workload; compare the means as a ratio. ``naive`` is
what an ablation costs without any reuse: a full prefill with only layer l pruned, then the answer.
"""

from __future__ import annotations

import random

import pytest
import torch

import depthkv

from .tiny import tiny_llama

LAYERS = 8
CONTEXT = 768




def _workload(n=2):
    r = random.Random(0)
    return [
        {"context": "".join(r.choice("abcdefgh \n") for _ in range(CONTEXT)), "question": "\n?abcd:", "answer": "1234"}
        for _ in range(n)
    ]


@pytest.fixture(scope="module")
def setup():
    from depthkv.workload import ByteTokenizer

    return tiny_llama(LAYERS), ByteTokenizer(), _workload()


def _naive(model, tok, wl):
    """Every ablation from scratch: prefill with layer l pruned + answer through all layers."""
    plan_full = depthkv.plan_from_budgets(model, [None] * LAYERS)
    with torch.inference_mode():
        for ex in wl:
            ctx = torch.tensor([tok(ex["context"])["input_ids"]])
            tail = torch.tensor([tok(ex["question"] + ex["answer"])["input_ids"][:-1]])
            for layer in range(LAYERS):
                budgets = [None] * LAYERS
                budgets[layer] = int(0.2 * ctx.shape[1])
                h = depthkv.apply(model, depthkv.plan_from_budgets(model, budgets))
                cache = h.new_cache()
                h(ctx, cache=cache)
                h(tail, cache=cache)
                h.remove()
            h = depthkv.apply(model, plan_full)
            cache = h.new_cache()
            h(ctx, cache=cache)
            h(tail, cache=cache)
            h.remove()


@pytest.mark.benchmark(group="calibrate-8-layers-768-tokens")
def test_calibrate_with_reuse(benchmark, setup):
    model, tok, wl = setup
    benchmark.pedantic(lambda: depthkv.calibrate(model, tok, wl, progress=False, n_permutations=9), rounds=3)


@pytest.mark.benchmark(group="calibrate-8-layers-768-tokens")
def test_calibrate_replay_off(benchmark, setup):
    model, tok, wl = setup
    benchmark.pedantic(
        lambda: depthkv.calibrate(model, tok, wl, progress=False, n_permutations=9, reuse=False), rounds=3
    )


@pytest.mark.benchmark(group="calibrate-8-layers-768-tokens")
def test_calibrate_naive_no_reuse(benchmark, setup):
    model, tok, wl = setup
    benchmark.pedantic(lambda: _naive(model, tok, wl), rounds=3)
