"""Long runs at flat memory: 2,000 decode steps eagerly and compiled, and a 50-turn session.

Every 100 steps the process's resident memory (RSS, psutil) and the cache's tensor bytes are
sampled; after a warm-up the RSS may not grow by more than ``RSS_MARGIN`` (allocator noise), the
cache's bytes not at all, every layer holds exactly its plan's budget (evict) or budget + generated
tokens (append, in its preallocated tail) and the logical length counts every token. The longer
version is ``python benchmarks/soak.py``.
"""

from __future__ import annotations

import psutil
import pytest
import torch

import depthkv
from depthkv import BudgetCache, StaticBudgetCache, backend
from depthkv.runtime.attention import depthkv_attention_enabled
from tests.helpers import tiny_model

PROMPT, STEPS, EVERY = 32, 2000, 100
BUDGETS = [12, 24, 16]
RSS_MARGIN = 8 << 20  # bytes of RSS growth tolerated after the warm-up (allocator and Python noise)


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def soak(step, cache, expected_held, done: int = 0) -> dict:
    """Run decode steps up to ``STEPS`` (``done`` already run); asserts the invariants every
    ``EVERY`` steps and returns the samples."""
    proc = psutil.Process()
    rss, kv = [], []
    with torch.inference_mode():
        tok = torch.tensor([[5]])
        for i in range(done + 1, STEPS + 1):
            logits = step(tok)
            tok = logits[:, -1:].argmax(-1) % 90 + 1
            if i % EVERY == 0:
                rss.append(proc.memory_info().rss)
                kv.append(cache.kv_nbytes())
                assert cache.held_tokens() == expected_held(i), f"step {i}"
                assert int(cache.get_seq_length()) == PROMPT + i
    drift = max(rss[1:]) - rss[1]  # from the second sample: the first 100 steps warm the allocator up
    assert drift <= RSS_MARGIN, f"RSS grew by {drift / 2**20:.1f} MiB over {STEPS} steps"
    assert len(set(kv)) == 1, f"cache bytes changed: {kv}"
    return {"rss_drift": drift, "kv_bytes": kv[0]}


def test_eager_evict_2000_steps_flat(llama):
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    cache = BudgetCache.from_plan(plan)
    ids = torch.randint(1, 97, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    with depthkv_attention_enabled(llama):
        with torch.inference_mode():
            llama(ids, cache=cache, use_cache=True)
        soak(lambda t: llama(t, cache=cache, use_cache=True).logits, cache, lambda i: BUDGETS)


@pytest.mark.parametrize("mode", ["evict", "append"])
def test_compiled_2000_steps_flat(llama, mode):
    torch._dynamo.reset()
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    kw = {"mode": "append", "max_new_tokens": STEPS} if mode == "append" else {}
    cache = StaticBudgetCache.for_model(llama, plan, max_len=PROMPT + STEPS + 1, **kw)
    compiled = torch.compile(llama, backend=backend(plan, inner="aot_eager"), fullgraph=True)
    ids = torch.randint(1, 97, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        compiled(ids, cache=cache, use_cache=True)
        compiled(torch.tensor([[5]]), cache=cache, use_cache=True)  # compiles the decode graph
    held = (lambda i: [b + i for b in BUDGETS]) if mode == "append" else (lambda i: BUDGETS)
    with torch._dynamo.config.patch(error_on_recompile=True):  # ... and no other graph for 2,000 steps
        soak(lambda t: compiled(t, cache=cache, use_cache=True).logits, cache, held, done=1)
    torch._dynamo.reset()


def test_fifty_turn_session_stays_within_budget(llama):
    """One BudgetCache continued over 50 turns (40 new tokens of context, then 4 generated each):
    after every turn each layer holds its budget, and the logical length counts every token."""
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    cache = BudgetCache.from_plan(plan)
    g = torch.Generator().manual_seed(1)
    seen = 0
    proc = psutil.Process()
    rss = []
    with depthkv_attention_enabled(llama), torch.inference_mode():
        for turn in range(50):
            out = llama(torch.randint(1, 97, (1, 40), generator=g), cache=cache, use_cache=True)
            seen += 40
            tok = out.logits[:, -1:].argmax(-1)
            for _ in range(4):
                tok = llama(tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
                seen += 1
            assert cache.held_tokens() == BUDGETS, f"turn {turn}"
            assert cache.get_seq_length() == seen
            rss.append(proc.memory_info().rss)
    assert max(rss[5:]) - rss[5] <= RSS_MARGIN
