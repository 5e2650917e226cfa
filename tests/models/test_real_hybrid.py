"""The real Gemma-3-270M (15 sliding-window layers of window 512, a full-attention layer every sixth)
on depthkv's paths: a full budget gives the unmodified model's logits with a prompt longer than the
window, and the compiled model equals the eager one under a pruned plan. Skipped, with the install
command, when the model's package is absent (``make`` installs it). Loads from the default cache
(``$DEPTHKV_CACHE`` or ``~/.cache/depthkv``): converted once per machine."""

from __future__ import annotations

import pytest
import torch

import depthkv
from depthkv.models import registry

PROMPT, NEW = 560, 6


@pytest.fixture(scope="module")
def gemma():
    try:
        registry.find_source("gemma3-270m")
        registry.require_gguf()
    except (ValueError, FileNotFoundError) as exc:
        pytest.skip(str(exc))
    model, _ = depthkv.load_model("gemma3-270m")
    return model


@pytest.fixture(scope="module")
def prompt():
    return torch.randint(1000, 20000, (1, PROMPT), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(min(before, 2))
    yield
    torch.set_num_threads(before)


def test_the_windows_come_from_the_gguf(gemma):
    windows = depthkv.fingerprint(gemma).layer_windows
    assert windows == tuple(None if (i + 1) % 6 == 0 else 512 for i in range(18))


def test_a_full_budget_is_the_unmodified_model_past_the_window(gemma, prompt):
    kw = dict(max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True)
    with torch.inference_mode():
        ref = gemma.generate(prompt, **kw)
    with depthkv.apply(gemma, depthkv.plan_from_budgets(gemma, [None] * 18)) as handle, torch.inference_mode():
        cache = handle.new_cache(PROMPT)
        got = handle.generate(prompt, cache=cache, **kw)
    assert torch.equal(got.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(got.logits), torch.stack(ref.logits), rtol=1e-4, atol=1e-4)
    held = cache.held_tokens()
    assert all(h <= 512 for i, h in enumerate(held) if (i + 1) % 6) and held[5] == PROMPT + NEW - 1


def test_compiled_equals_eager_under_a_pruned_plan(gemma, prompt):
    plan = depthkv.plan_from_budgets(gemma, [48 if (i + 1) % 6 else 96 for i in range(18)])
    with depthkv.apply(gemma, plan) as handle:
        ref = depthkv.greedy_generate(gemma, prompt, handle.new_cache(PROMPT), NEW)
    torch._dynamo.reset()
    try:
        backend = depthkv.backend(plan, inner="eager")
        cache = backend.new_cache(gemma, max_len=PROMPT + NEW)
        compiled = torch.compile(gemma, backend=backend, fullgraph=True)
        tokens, logits = depthkv.greedy_generate(gemma, prompt, cache, NEW, forward=compiled)
    finally:
        torch._dynamo.reset()
    assert all(len(r.rewritten) == 18 for r in backend.reports)
    assert torch.equal(tokens, ref[0])
    # The eager cache keeps its slots in another order than the static buffers: sums run in another
    # order. Over 262K logits of magnitude ~10-30, a few differ by ~1e-4.
    torch.testing.assert_close(logits, ref[1], rtol=1e-4, atol=1e-3)
    assert cache.held_tokens() == plan.budgets_for(None)
