"""Compiled decode step on the CPU: full static cache vs depthkv evict and append mode, side by side.

One benchmark per (model shape, context): ``test_decode_ratios[tiny-llama-8192]`` etc. Each compiles
five variants of the same random-weight model with Inductor — the full ``StaticCache``, depthkv
evict mode at 10% and 20%, append mode at 10% and 20% (uniform budgets, SnapKV, the default
window) — with caches pre-filled with random K/V as if ``context`` tokens had been read (the cost
of a decode step does not depend on the values; no long prefill is run). Each variant is compiled
alone (a fresh Dynamo) and timed over ``ROUNDS`` decode steps after a warm-up, one variant after
the other in one run; medians and ratios go to ``extra_info``. Run it on an otherwise idle
machine.

For the SmolLM2-135M shape (30 layers, 9 query / 3 KV heads, head dim 64) a step also reads the
135M weights, so the benchmark reports the *floor* that bytes read imply: (weight bytes + the
bytes of the KV buffers the step reads) / measured read bandwidth (a one-thread sum over a
512 MiB tensor, the same thread count as the steps), and how far each variant is above it. The
``no-kv`` variant (the full cache holding 16 tokens) measures what the step costs with almost no
attention: how fast this CPU reads the weights through PyTorch's matrix-vector products.

Run: ``pytest benchmarks/test_decode_step.py --benchmark-only
--benchmark-json=benchmarks/results/decode-cpu.json``, then ``python -m benchmarks.decode_report``
for the tables in docs/results.md. One thread: on a small shared CPU, OpenMP spin-waits between
tiny kernels otherwise dominate.
"""

from __future__ import annotations

import platform
import statistics
import time

import pytest
import torch

import depthkv
from depthkv import backend

from .decode_setup import fill_budget_cache, fill_static_cache, llama_shaped, weight_bytes

CASES = [("tiny-llama", 8192), ("tiny-llama", 32768), ("smollm2-135m", 8192), ("smollm2-135m", 32768)]
FRACTIONS = (0.1, 0.2)
ROUNDS = {"tiny-llama": 40, "smollm2-135m": 15}
WARMUP, NEW = 3, 64  # NEW > WARMUP + rounds: append mode's tail never fills during a run


def read_bandwidth(nbytes: int = 512 << 20, reps: int = 5) -> float:
    """Bytes per second one thread reads (a sum over a large fp32 tensor; best of ``reps``)."""
    x = torch.ones(nbytes // 4)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t0)
    return nbytes / best


def kv_read_bytes(cache) -> int:
    """Bytes a decode step reads from the cache: every K/V slot, plus positions/scores for depthkv."""
    total = 0
    for layer in cache.layers:
        for name in ("keys", "values", "positions", "scores"):
            t = getattr(layer, name, None)
            if t is not None:
                total += t.numel() * t.element_size()
    return total


def caches(model, context: int):
    """(name, plan or None, pre-filled cache) of the variants: the five compared, and ``no-kv`` (the
    full cache holding 16 tokens: the step's cost without attention to speak of)."""
    max_len = context + NEW
    out = [("full", None, fill_static_cache(model, context, max_len)), ("no-kv", None, fill_static_cache(model, 16, 16 + NEW))]
    for mode in ("evict", "append"):
        for fraction in FRACTIONS:
            plan = depthkv.uniform_plan(model, int(fraction * context))
            tail = {"max_new_tokens": NEW} if mode == "append" else {}
            out.append((f"{mode}@{fraction:g}", plan, fill_budget_cache(model, plan, context, max_len, mode=mode, **tail)))
    return out


def time_steps(model, plan, cache, rounds: int) -> list[float]:
    """Seconds of ``rounds`` decode steps of one variant, compiled alone (a fresh Dynamo: with several
    compiled variants of one model class, Dynamo checks the guards of every earlier entry first,
    which would charge the later variants for the earlier ones)."""
    torch._dynamo.reset()
    if plan is None:
        fn = torch.compile(model, fullgraph=True, dynamic=False)
    else:
        fn = torch.compile(model, backend=backend(plan, impl="reference"), fullgraph=True, dynamic=False)
    tok = torch.tensor([[7]])
    times = []
    with torch.inference_mode():
        for i in range(WARMUP + rounds):
            t0 = time.perf_counter()
            fn(tok, cache=cache, use_cache=True)
            if i >= WARMUP:
                times.append(time.perf_counter() - t0)
    return times


@pytest.mark.parametrize(("shape", "context"), CASES, ids=[f"{s}-{c}" for s, c in CASES])
def test_decode_ratios(benchmark, shape, context):
    torch.set_num_threads(1)
    benchmark.group = f"decode-{shape}-{context}"
    model = llama_shaped(shape, max_positions=context + NEW)
    runs = caches(model, context)
    rounds = ROUNDS[shape]
    times: dict[str, list[float]] = {}

    def all_variants():
        for name, plan, cache in runs:
            times[name] = time_steps(model, plan, cache, rounds)

    benchmark.pedantic(all_variants, rounds=1, iterations=1)
    med = {k: statistics.median(v) for k, v in times.items()}
    bandwidth = read_bandwidth()
    weights = weight_bytes(model)
    kv = {name: kv_read_bytes(cache) for name, _, cache in runs}
    floor = {name: (weights + kv[name]) / bandwidth for name in kv}
    benchmark.extra_info.update(
        {
            "shape": shape,
            "context": context,
            "layers": model.config.num_hidden_layers,
            "threads": torch.get_num_threads(),
            "rounds": rounds,
            "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
            "torch": torch.__version__,
            "median_s": med,
            "ratio_vs_full": {k: v / med["full"] for k, v in med.items()},
            "weight_bytes": weights,
            "kv_read_bytes": kv,
            "read_bandwidth_gbs": bandwidth / 1e9,
            "floor_s": floor,
            "over_floor": {k: med[k] / floor[k] for k in med},
        }
    )
