"""Awkward shapes and budgets: what is an error (before any work) and what simply works."""

from __future__ import annotations

import pytest
import torch

import depthkv
from tests.helpers import tiny_model

BUDGETS = [12, 16, 20]


@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _ids(n: int, seed: int) -> torch.Tensor:
    return torch.randint(1, 97, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("mode", ["evict", "append"])
def test_rows_of_very_different_lengths_equal_one_by_one(llama, mode):
    """A batch of a 3-token row and a 300-token row (297 tokens of left padding): each row's
    generation equals running it alone."""
    prompts = [_ids(3, 0), _ids(300, 1)]
    width = 300
    batch = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    plan = depthkv.plan_from_budgets(llama, BUDGETS)
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    with depthkv.apply(llama, plan, mode=mode) as handle, torch.no_grad():
        out = handle.generate(batch, attention_mask=mask, **kw)
        for i, p in enumerate(prompts):
            single = handle.generate(p[None], **kw)
            assert torch.equal(out.sequences[i, width:], single.sequences[0, len(p) :]), f"row {i}"
            torch.testing.assert_close(torch.stack(out.logits)[:, i], torch.stack(single.logits)[:, 0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("budget", [0, -4, 3])
def test_budgets_below_the_floor_are_errors_before_work(llama, budget):
    """0, negative, or below the policy's floor (window 8): refused when the plan is made."""
    with pytest.raises(ValueError, match=r"budget|floor"):
        depthkv.plan_from_budgets(llama, [budget, 16, 16])
    if budget >= 0:
        with pytest.raises(ValueError, match=r"at least 1 token|floor"):
            depthkv.uniform_plan(llama, budget)


def test_budget_larger_than_the_context_keeps_everything(llama):
    """A budget above the prompt's length is not an error: the layer keeps every token, and the
    model's output equals the unmodified model's."""
    ids = _ids(20, 3)[None]
    plan = depthkv.uniform_plan(llama, 500)
    with torch.no_grad():
        want = llama(ids).logits
        with depthkv.apply(llama, plan) as handle:
            got = handle(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_plan_for_a_model_with_another_layer_count_is_refused(llama):
    plan = depthkv.uniform_plan(tiny_model("llama", layers=4), 16)
    with pytest.raises(ValueError, match="num_layers"):
        depthkv.apply(llama, plan)
