"""Decode step time: compiled depthkv at 10% and 20% budgets vs compiled full static cache (CPU).

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
from depthkv.backend import backend
from depthkv.static_cache import StaticBudgetCache

LAYERS, ROUNDS, WARMUP = 6, 30, 3
CONTEXTS = (4096, 8192)


def _model():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=320, hidden_size=128, intermediate_size=384, num_hidden_layers=LAYERS,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384,
    )
    return tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()


@pytest.fixture(scope="module")
def model():
    torch._dynamo.reset()
    return _model()


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
    depthkv.attention.register()
    model.set_attn_implementation("depthkv")
    try:
        with torch.inference_mode():
            model(_ids(ctx), cache=cache, use_cache=True)  # eager prefill with eviction
        model.set_attn_implementation("sdpa")
        compiled = torch.compile(model, backend=backend(plan), fullgraph=True)
        _run(benchmark, compiled, cache, ctx)
    finally:
        model.set_attn_implementation("sdpa")
