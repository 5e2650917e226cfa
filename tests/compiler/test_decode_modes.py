"""Compiled decode (graph operations, no sort) keeps what the eager reference keeps, in both modes.

The eager reference is ``depthkv.apply`` (a :class:`BudgetCache`: score, sort, compact); the
compiled path is ``torch.compile(backend=depthkv.backend(plan))`` with a
:class:`StaticBudgetCache`, whose single-token steps are the sort-free decode step emitted as
graph operations and fused by Inductor. For every policy, in evict and append mode, on a batch of
three rows with left padding, over 200 decode steps: the same logits at every step and the same
kept *set* of positions in every layer, batch row and KV head (slot order may differ).
"""

from __future__ import annotations

import pytest
import torch

import depthkv
from depthkv import StaticBudgetCache, backend
from depthkv.policies import POLICIES, PolicyConfig
from tests.helpers import tiny_model

PROMPT, STEPS, BUDGETS = 40, 200, [10, 24, 17]
CHECK_EVERY = 20


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, error_on_recompile=False):
        yield
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _inputs(b: int = 3):
    g = torch.Generator().manual_seed(7)
    lengths = [PROMPT - pad for pad in PADS]
    ids = torch.zeros(b, PROMPT, dtype=torch.long)
    mask = torch.zeros(b, PROMPT + STEPS, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, PROMPT - n :] = torch.randint(1, 97, (n,), generator=g)
        mask[i, PROMPT - n :] = 1
    # the tokens fed at each decode step are fixed, so both paths see the same inputs even where
    # greedy choices would differ
    steps = torch.randint(1, 97, (STEPS, b, 1), generator=g)
    return ids, mask, steps


PADS = [0, 9, 23]


def kept_sets(cache) -> list[list[list[list[int]]]]:
    """Per layer, batch row and KV head: the sorted positions of the real tokens held.

    Padding and empty slots are left out: both are invalid (never attended), and which invalid
    slots fill a budget that the real tokens do not is not part of the contract.
    """
    out = []
    for layer in cache.layers:
        pos = layer.positions
        out.append([[sorted(p for p in head.tolist() if p >= pad) for head in row] for row, pad in zip(pos, PADS)])
    return out


def run_both(model, policy: PolicyConfig, mode: str, inner: str):
    ids, mask, steps = _inputs()
    plan = depthkv.plan_from_budgets(model, BUDGETS, policy=policy)
    eager = depthkv.apply(model, plan, mode=mode)
    ref_cache = eager.new_cache(PROMPT)
    kw = {"mode": "append", "max_new_tokens": STEPS} if mode == "append" else {}
    cache = StaticBudgetCache.for_model(model, plan, batch_size=3, max_len=PROMPT + STEPS, **kw)
    try:
        with torch.inference_mode():
            ref = model(ids, attention_mask=mask[:, :PROMPT], cache=ref_cache, use_cache=True).logits[:, -1]
            got = model(ids, attention_mask=mask, cache=cache, use_cache=True).logits[:, -1]  # eager prefill
            model.set_attn_implementation("sdpa")
            compiled = torch.compile(model, backend=backend(plan, inner=inner), fullgraph=True)
            yield 0, ref, got, ref_cache, cache
            for i in range(STEPS):
                depthkv.runtime.attention.use_depthkv_attention(model)
                ref = model(steps[i], attention_mask=mask[:, : PROMPT + i + 1], cache=ref_cache, use_cache=True)
                model.set_attn_implementation("sdpa")
                got = compiled(steps[i], attention_mask=mask, cache=cache, use_cache=True)
                yield i + 1, ref.logits[:, -1], got.logits[:, -1], ref_cache, cache
    finally:
        eager.remove()
        model.set_attn_implementation("sdpa")


@pytest.mark.parametrize("mode", ["evict", "append"])
@pytest.mark.parametrize("name", POLICIES)
def test_compiled_decode_keeps_the_eager_sets_for_200_steps(llama, name, mode):
    policy = PolicyConfig(name, window=4, kernel=3, sinks=2, seed=3)
    inner = "inductor" if name == "snapkv" else "aot_eager"  # Inductor once per mode: cold compiles cost ~30 s
    for step, ref, got, ref_cache, cache in run_both(llama, policy, mode, inner):
        torch.testing.assert_close(got, ref, rtol=2e-4, atol=2e-4, msg=lambda m, step=step: f"step {step}: {m}")
        if step % CHECK_EVERY == 0 or step == STEPS:
            assert kept_sets(cache) == kept_sets(ref_cache), f"{name}/{mode}: kept sets differ at step {step}"
    held = [max(len(h) for row in layer for h in row) for layer in kept_sets(cache)]
    if mode == "evict":
        assert held == BUDGETS  # the budget held through 200 generated tokens
    else:
        assert held == [b + STEPS for b in BUDGETS]  # the prompt's budget plus every generated token
