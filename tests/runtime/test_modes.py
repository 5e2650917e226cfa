"""Decode modes on the eager paths: append grows by the generated tokens only, a new turn compresses
back to the budget, the tail's end is a clear error, memory is what the docs say."""

from __future__ import annotations

import pytest
import torch

import depthkv
from depthkv import BudgetCache, StaticBudgetCache
from depthkv.runtime.attention import depthkv_attention_enabled
from tests.helpers import tiny_model

BUDGETS = [10, 24, 17]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def _kept(cache) -> list[list[int]]:
    return [sorted(p for p in layer.positions[0, 0].tolist() if p >= 0) for layer in cache.layers]


def test_bad_modes_are_errors_naming_the_choices(llama):
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    with pytest.raises(ValueError, match="unknown decode mode 'grow'; choose one of evict, append"):
        depthkv.apply(llama, plan, mode="grow")
    with pytest.raises(ValueError, match="unknown decode mode"):
        BudgetCache(BUDGETS, mode="grow")
    with pytest.raises(ValueError, match="mode='append' needs max_new_tokens"):
        StaticBudgetCache.for_model(llama, plan, max_len=64, mode="append")
    with pytest.raises(ValueError, match="with mode='evict' leave it out"):
        StaticBudgetCache.for_model(llama, plan, max_len=64, max_new_tokens=8)


@pytest.mark.parametrize("static", [False, True])
def test_append_holds_budget_plus_generated_then_a_new_turn_compresses(llama, static):
    """Both eager caches: after the prompt each layer holds its budget; every generated token adds
    one; a new multi-token turn compresses everything back to the budget (static: the tail empties).
    The two caches keep the same tokens throughout."""
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    eager = BudgetCache.from_plan(plan, mode="append")
    cache = StaticBudgetCache.for_model(llama, plan, max_len=128, mode="append", max_new_tokens=12) if static else eager
    other = eager if static else None
    with depthkv_attention_enabled(llama), torch.inference_mode():
        for c in filter(None, (cache, other)):
            llama(_ids(40), cache=c, use_cache=True)
        assert cache.held_tokens() == BUDGETS
        for step in range(5):
            for c in filter(None, (cache, other)):
                llama(_ids(1, seed=step + 1), cache=c, use_cache=True)
        assert cache.held_tokens() == [b + 5 for b in BUDGETS]
        if other is not None:
            assert _kept(cache) == _kept(other)
        for c in filter(None, (cache, other)):
            llama(_ids(20, seed=9), cache=c, use_cache=True)  # a new turn
        assert cache.held_tokens() == BUDGETS
        if other is not None:
            assert _kept(cache) == _kept(other)
    if static:
        assert cache.slots() == [b + 12 for b in BUDGETS]


def test_eager_static_append_refuses_past_its_tail(llama):
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    cache = StaticBudgetCache.for_model(llama, plan, max_len=128, mode="append", max_new_tokens=2)
    with depthkv_attention_enabled(llama), torch.inference_mode():
        llama(_ids(40), cache=cache, use_cache=True)
        for step in range(2):
            llama(_ids(1, seed=step), cache=cache, use_cache=True)
        before = [layer.positions.clone() for layer in cache.layers]
        with pytest.raises(ValueError, match="reserved tail .* is full .* larger max_new_tokens, or use mode='evict'"):
            llama(_ids(1, seed=5), cache=cache, use_cache=True)
    assert all(torch.equal(a, layer.positions) for a, layer in zip(before, cache.layers))


def test_memory_per_mode(llama):
    """KV bytes: evict = 2·Hkv·D·4·Σ budgets; append adds the tail to every budgeted layer."""
    plan = depthkv.plan_from_budgets(llama, [10, None, 17])
    fp = depthkv.fingerprint(llama)
    per_token = 2 * fp.num_kv_heads * fp.head_dim * 4
    evict = StaticBudgetCache.for_model(llama, plan, max_len=64)
    append = StaticBudgetCache.for_model(llama, plan, max_len=64, mode="append", max_new_tokens=8)
    assert evict.kv_nbytes() == per_token * (10 + 64 + 17)  # a full layer has max_len slots
    assert append.kv_nbytes() == per_token * (10 + 8 + 64 + 17 + 8)  # ... and no tail
    assert append.slots() == [18, 64, 25] and append.mode == "append"


def test_prompt_longer_than_the_static_cache_is_refused(llama):
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    cache = StaticBudgetCache.for_model(llama, plan, max_len=32)
    with depthkv_attention_enabled(llama), torch.inference_mode():
        with pytest.raises(ValueError, match="layer 0: 40 tokens exceed the cache's max_len 32; make the StaticBudgetCache"):
            llama(_ids(40), cache=cache, use_cache=True)
