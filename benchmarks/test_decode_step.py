"""Decode step time: compiled depthkv at 10% and 20% budgets vs compiled full static cache (CPU).

``test_decode_ratios`` times the three variants *interleaved* (one step of each per round), so load
from other processes hits them alike; its ``extra_info`` holds per-variant medians and the ratios.

Run: ``pytest benchmarks/test_decode_step.py --benchmark-only``. All variants run in one session on
the same model (tiny Llama shape: 6 layers, hidden 128, 4 query / 2 KV heads, head dim 32), with
Inductor; the cache is prefilled eagerly (as ``generate`` does) and each round times one decode
step. Compare the means within a context-length group as ratios. ``extra_info`` records the KV
bytes each cache holds.
"""

from __future__ import annotations

import pytest
import torch

import depthkv
from depthkv import StaticBudgetCache, backend
from depthkv.runtime.attention import use_depthkv_attention

from .tiny import tiny_llama

LAYERS, ROUNDS, WARMUP = 6, 30, 3
CONTEXTS = (4096, 8192)




@pytest.fixture(scope="module")
def model():
    # One thread: on a small shared CPU, OpenMP spin-waits between tiny kernels otherwise dominate.
    torch.set_num_threads(1)
    torch._dynamo.reset()
    return tiny_llama(LAYERS, intermediate=384)


def _ids(n: int) -> torch.Tensor:
    return torch.randint(0, 256, (1, n), generator=torch.Generator().manual_seed(n))


def _kv_bytes(cache) -> int:
    if hasattr(cache, "kv_nbytes"):
        return cache.kv_nbytes()
    return sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in cache.layers)


def _run(benchmark, compiled, cache, ctx):
    tok = torch.tensor([[7]])
    with torch.inference_mode():
        for _ in range(WARMUP):
            compiled(tok, cache=cache, use_cache=True)
        benchmark.pedantic(lambda: compiled(tok, cache=cache, use_cache=True), rounds=ROUNDS, iterations=1)
    benchmark.extra_info.update({"context": ctx, "kv_bytes": _kv_bytes(cache), "layers": LAYERS})


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_decode_full_static_cache(benchmark, model, ctx):
    from transformers import StaticCache

    benchmark.group = f"decode-step-{ctx}"
    cache = StaticCache(config=model.config, max_cache_len=ctx + ROUNDS + WARMUP + 1)
    with torch.inference_mode():
        model(_ids(ctx), cache=cache, use_cache=True)
    compiled = torch.compile(model, fullgraph=True)
    _run(benchmark, compiled, cache, ctx)


@pytest.mark.parametrize("fraction", [0.1, 0.2])
@pytest.mark.parametrize("ctx", CONTEXTS)
def test_decode_depthkv(benchmark, model, ctx, fraction):
    benchmark.group = f"decode-step-{ctx}"
    plan = depthkv.uniform_plan(model, int(fraction * ctx))
    cache = StaticBudgetCache.for_model(model, plan, max_len=ctx + ROUNDS + WARMUP + 1)
    use_depthkv_attention(model)
    try:
        with torch.inference_mode():
            model(_ids(ctx), cache=cache, use_cache=True)  # eager prefill with eviction
        model.set_attn_implementation("sdpa")
        compiled = torch.compile(model, backend=backend(plan), fullgraph=True)
        _run(benchmark, compiled, cache, ctx)
    finally:
        model.set_attn_implementation("sdpa")


def _variants(model, ctx):
    """(name, compiled forward, cache) for the full static cache and depthkv at 10% and 20%."""
    from transformers import StaticCache

    max_len = ctx + 4 * ROUNDS + WARMUP + 8
    full = StaticCache(config=model.config, max_cache_len=max_len)
    with torch.inference_mode():
        model(_ids(ctx), cache=full, use_cache=True)
    out = [("full", torch.compile(model, fullgraph=True), full)]
    for fraction in (0.1, 0.2):
        plan = depthkv.uniform_plan(model, int(fraction * ctx))
        cache = StaticBudgetCache.for_model(model, plan, max_len=max_len)
        use_depthkv_attention(model)
        with torch.inference_mode():
            model(_ids(ctx), cache=cache, use_cache=True)
        model.set_attn_implementation("sdpa")
        out.append((f"depthkv@{fraction}", torch.compile(model, backend=backend(plan), fullgraph=True), cache))
    return out


@pytest.mark.parametrize("ctx", CONTEXTS)
def test_decode_ratios(benchmark, model, ctx):
    import time

    torch._dynamo.reset()
    benchmark.group = f"decode-interleaved-{ctx}"
    variants = _variants(model, ctx)
    tok = torch.tensor([[7]])
    times = {name: [] for name, _, _ in variants}

    def one_round():
        for name, fn, cache in variants:
            t0 = time.perf_counter()
            fn(tok, cache=cache, use_cache=True)
            times[name].append(time.perf_counter() - t0)

    with torch.inference_mode():
        for _ in range(WARMUP):
            one_round()
        for v in times.values():
            v.clear()
        benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    med = {k: float(torch.tensor(v).median()) for k, v in times.items()}
    benchmark.extra_info.update(
        {
            "context": ctx,
            "median_s": med,
            "speedup_vs_full": {k: med["full"] / v for k, v in med.items()},
            "kv_bytes": {name: _kv_bytes(cache) for name, _, cache in variants},
        }
    )
