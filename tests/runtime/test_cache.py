"""BudgetCache + depthkv attention (eager reference): the invariants of issue 2."""

from __future__ import annotations

import pytest
import torch

import depthkv
from depthkv import BudgetCache, DepthKVUsageError
from depthkv.policies import PolicyConfig
from tests.helpers import FAMILIES, set_attention_scale, tiny_model

DETERMINISTIC = ("snapkv", "h2o", "streaming", "tova", "knorm")


@pytest.fixture(scope="module")
def models():
    return {f: tiny_model(f) for f in FAMILIES}


def _ids(b: int, s: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, 97, (b, s), generator=g)


GENERATE = dict(max_new_tokens=8, do_sample=False, output_logits=True, return_dict_in_generate=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_budget_reproduces_unpruned_model(models, family):
    """Full layers keep every token during decoding too: the logits of every generated step match."""
    model = models[family]
    ids = _ids(1, 37)
    with torch.no_grad():
        ref_logits = model(ids).logits
        ref = model.generate(ids, **GENERATE)
    handle = depthkv.apply(model, depthkv.plan_from_budgets(model, [None] * 3))
    try:
        with torch.no_grad():
            logits = handle(ids).logits
            out = handle.generate(ids, **GENERATE)
    finally:
        handle.remove()
    torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
    assert torch.equal(out.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), rtol=0, atol=1e-5)


def test_attention_uses_the_model_s_softmax_scale():
    """Models whose attention scale is not head_dim ** -0.5 (Gemma 2/3's query_pre_attn_scalar)
    get their own scale: a full-budget run matches the unmodified model at a changed scale."""
    model = tiny_model("llama")
    set_attention_scale(model, 0.9)  # head_dim 16: the default would be 0.25
    ids = _ids(1, 30)
    with torch.no_grad():
        ref = model.generate(ids, **GENERATE)
    handle = depthkv.apply(model, depthkv.plan_from_budgets(model, [None] * 3))
    try:
        with torch.no_grad():
            out = handle.generate(ids, **GENERATE)
    finally:
        handle.remove()
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), rtol=0, atol=1e-5)


@pytest.mark.parametrize("policy", depthkv.POLICIES)
def test_budget_leaves_exactly_n_tokens_in_storage(models, policy):
    model = models["llama"]
    budgets = [12, 20, 16]
    plan = depthkv.plan_from_budgets(model, budgets, policy=policy)
    handle = depthkv.apply(model, plan)
    cache = handle.new_cache()
    try:
        with torch.no_grad():
            handle(_ids(2, 50), cache=cache)
            assert cache.held_tokens() == budgets
            for layer, n in zip(cache.layers, budgets):
                b, hkv, held, d = layer.keys.shape
                assert held == n
                # really freed: the storage behind the tensors is the kept tokens only
                assert layer.keys.untyped_storage().nbytes() == b * hkv * n * d * layer.keys.element_size()
                assert layer.values.untyped_storage().nbytes() == b * hkv * n * d * layer.values.element_size()
            # decoding keeps the budget
            nxt = torch.tensor([[5], [7]])
            for _ in range(5):
                handle(nxt, cache=cache)
            assert cache.held_tokens() == budgets
            assert cache.get_seq_length() == 55
    finally:
        handle.remove()


def _rotary_positions(model, run):
    seen = []
    rotary = model.model.rotary_emb
    hook = rotary.register_forward_hook(lambda m, args, out: seen.append(args[1].clone()))
    try:
        run()
    finally:
        hook.remove()
    return seen


def test_positions_after_pruning_equal_unpruned(models):
    model = models["qwen2"]
    ids = _ids(1, 40)
    ref = _rotary_positions(model, lambda: model.generate(ids, max_new_tokens=6, do_sample=False))
    handle = depthkv.apply(model, depthkv.uniform_plan(model, 10))
    try:
        got = _rotary_positions(model, lambda: handle.generate(ids, max_new_tokens=6, do_sample=False))
    finally:
        handle.remove()
    assert len(got) == len(ref)
    for a, b in zip(got, ref):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    "family, policy",
    [("llama", p) for p in DETERMINISTIC] + [("gemma", "snapkv"), ("qwen3", "h2o"), ("gemma3", "snapkv"), ("gemma3", "h2o")],
)
def test_batched_left_padded_equals_one_by_one(models, family, policy):
    model = models[family]
    lengths = [30, 41, 23]
    prompts = [_ids(1, n, seed=i)[0] for i, n in enumerate(lengths)]
    width = max(lengths)
    batch = torch.zeros(len(prompts), width, dtype=torch.long)
    mask = torch.zeros(len(prompts), width, dtype=torch.long)
    for i, p in enumerate(prompts):
        batch[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    plan = depthkv.plan_from_budgets(model, [12, 16, 20], policy=policy)
    handle = depthkv.apply(model, plan)
    try:
        with torch.no_grad():
            kw = dict(max_new_tokens=12, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
            out = handle.generate(batch, attention_mask=mask, **kw)
            full_handle = depthkv.apply(model, depthkv.plan_from_budgets(model, [None] * 3))
            full = full_handle.generate(batch, attention_mask=mask, **kw)
            # non-vacuous: pruning changes the logits
            assert (torch.stack(out.logits) - torch.stack(full.logits)).abs().max() > 1e-3
            for i, p in enumerate(prompts):
                single = handle.generate(p[None], **kw)
                assert torch.equal(out.sequences[i, width:], single.sequences[0, len(p) :]), f"row {i} differs"
                torch.testing.assert_close(
                    torch.stack(out.logits)[:, i], torch.stack(single.logits)[:, 0], rtol=1e-4, atol=1e-4
                )
    finally:
        handle.remove()


def test_padding_never_kept_over_real_tokens(models):
    model = models["llama"]
    batch = torch.cat([torch.zeros(1, 20, dtype=torch.long), _ids(1, 30)], dim=1)
    batch = torch.cat([batch, _ids(1, 50, seed=3)])
    mask = (batch != 0).long()
    mask[1] = 1
    plan = depthkv.plan_from_budgets(model, [16, 16, 16], policy="h2o")
    handle = depthkv.apply(model, plan)
    cache = handle.new_cache()
    try:
        with torch.no_grad():
            handle(batch, cache=cache, attention_mask=mask)
    finally:
        handle.remove()
    for layer in cache.layers:
        assert layer.valid.all()
        assert (layer.positions[0] >= 20).all()


def test_recorded_cache_pruned_equals_running_with_budget(models):
    model = models["mistral"]
    ids = _ids(1, 45)
    budgets = [9, 30, 14]
    handle = depthkv.apply(model, depthkv.plan_from_budgets(model, budgets))
    try:
        with torch.no_grad():
            run = handle.new_cache()
            handle(ids, cache=run)
            full = BudgetCache([None] * 3, PolicyConfig(), record=True)
            handle(ids, cache=full)
    finally:
        handle.remove()
    pruned = full.pruned(budgets)
    for a, b in zip(run.layers, pruned.layers):
        assert torch.equal(a.positions, b.positions)
        assert torch.equal(a.keys, b.keys)
        assert torch.equal(a.scores, b.scores)


def test_cache_without_depthkv_attention_raises(models):
    model = models["llama"]
    cache = BudgetCache([16, 16, 16])
    with torch.no_grad():
        model(_ids(1, 20), cache=cache)
        with pytest.raises(DepthKVUsageError, match="depthkv.apply"):
            model(_ids(1, 1), cache=cache)


def test_budget_below_floor_is_rejected(models):
    with pytest.raises(ValueError, match="floor"):
        BudgetCache([4, 16, 16], PolicyConfig(window=8))
    with pytest.raises(ValueError, match="floor"):
        depthkv.uniform_plan(models["llama"], 5)


def test_apply_rejects_plan_for_other_model(models):
    plan = depthkv.uniform_plan(models["llama"], 16)
    with pytest.raises(depthkv.FingerprintMismatch, match="model_type"):
        depthkv.apply(models["qwen2"], plan)
