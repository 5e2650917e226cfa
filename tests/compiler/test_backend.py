"""torch.compile(model, backend=depthkv.backend(plan)): rewriting, equivalence with eager, static shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import CompileConfig

import depthkv
from depthkv import Profile, StaticBudgetCache, backend, greedy_generate
from depthkv.passes import UnsupportedAttentionError
from depthkv.runtime.attention import use_depthkv_attention
from tests.helpers import FAMILIES, HYBRID, WINDOW, set_attention_scale, tiny_model

PROMPT, NEW = 40, 8


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    """A fresh Dynamo per test. Measured: this module takes 79 s with a reset per test and 159 s with
    one reset per module, because without resets Dynamo's automatic dynamic shapes make the later
    graphs symbolic. A test below compiles twice in one session on purpose. Hitting the recompile
    limit fails instead of silently running eagerly."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield
    torch._dynamo.reset()




@pytest.fixture(scope="module")
def llama():
    return tiny_model("llama")


def _batch(b: int):
    g = torch.Generator().manual_seed(b)
    lengths = [PROMPT - 7 * i for i in range(b)]
    ids = torch.zeros(b, PROMPT, dtype=torch.long)
    mask = torch.zeros(b, PROMPT, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, PROMPT - n :] = torch.randint(1, 97, (n,), generator=g)
        mask[i, PROMPT - n :] = 1
    return ids, (mask if b > 1 else None)


def _profile(model):
    rng = np.random.default_rng(1)
    return Profile(
        fingerprint=depthkv.fingerprint(model),
        metric="nll",
        ablation_budgets=[0.2, 0.5],
        degradation=np.abs(rng.normal(size=(2, 6, 3))) * np.array([1.0, 3.0, 0.5]),
        context_lengths=[PROMPT] * 6,
        baseline=[1.0] * 6,
        policy=depthkv.PolicyConfig(),
    )


def eager_reference(model, plan, ids, mask):
    handle = depthkv.apply(model, plan)
    try:
        return greedy_generate(model, ids, handle.new_cache(ids.shape[1]), NEW, attention_mask=mask)
    finally:
        handle.remove()


def compiled_run(model, plan, ids, mask, inner="aot_eager", fullgraph=True):
    be = backend(plan, context_length=ids.shape[1], inner=inner)
    compiled = torch.compile(model, backend=be, fullgraph=fullgraph)
    cache = StaticBudgetCache.for_model(
        model, plan, batch_size=ids.shape[0], max_len=ids.shape[1] + NEW, context_length=ids.shape[1]
    )
    tokens, logits = greedy_generate(model, ids, cache, NEW, attention_mask=mask, forward=compiled)
    return tokens, logits, cache, be


def assert_equivalent(ref, got):
    assert torch.equal(ref[0], got[0])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_pass_rewrites_every_layer_of_real_models(family):
    """Every attention node gets its layer's budget; a sliding-window layer's is capped at its window."""
    model = tiny_model(family)
    plan = depthkv.plan_from_budgets(model, [10, 24, 17])
    budgets = plan.budgets_for(None)
    expected = [min(b, WINDOW) if cap else b for b, cap in zip([10, 24, 17], plan.caps)]
    assert budgets == expected and (expected != [10, 24, 17]) == (family in HYBRID)
    ids, _ = _batch(1)
    tokens, _, cache, be = compiled_run(model, plan, ids, None, inner="eager", fullgraph=True)
    assert len(be.reports) == 2  # prefill graph + decode graph
    for report in be.reports:
        assert report.rewritten == dict(enumerate(budgets))
    assert cache.held_tokens() == budgets
    ref = eager_reference(model, plan, ids, None)
    assert torch.equal(tokens, ref[0])


@pytest.mark.parametrize("policy", ["snapkv", "h2o", "streaming", "tova", "knorm"])
def test_compiled_equals_eager_for_every_policy(llama, policy):
    plan = depthkv.plan_from_budgets(llama, [12, 24, 17], policy=policy)
    ids, mask = _batch(1)
    ref = eager_reference(llama, plan, ids, mask)
    assert_equivalent(ref, compiled_run(llama, plan, ids, mask)[:2])


@pytest.mark.parametrize("strategy", depthkv.STRATEGIES)
def test_compiled_equals_eager_for_every_strategy(llama, strategy):
    plan = depthkv.allocate(_profile(llama), 0.3, strategy)
    ids, mask = _batch(1)
    ref = eager_reference(llama, plan, ids, mask)
    assert_equivalent(ref, compiled_run(llama, plan, ids, mask)[:2])


@pytest.mark.parametrize("policy", ["snapkv", "h2o"])
def test_compiled_equals_eager_batch_of_three_with_padding(llama, policy):
    plan = depthkv.plan_from_budgets(llama, [12, 24, 17], policy=policy)
    ids, mask = _batch(3)
    ref = eager_reference(llama, plan, ids, mask)
    assert_equivalent(ref, compiled_run(llama, plan, ids, mask)[:2])


@pytest.mark.parametrize(
    "budgets, scaling",
    [([PROMPT + NEW] * 3, None), ([None] * 3, None), ([PROMPT + NEW] * 3, 0.9)],
    ids=["budget-at-least-the-context", "full-layers", "own-softmax-scale"],
)
def test_full_budget_matches_unmodified_model(budgets, scaling):
    """Budgets that keep everything (token counts, or ``None``: a buffer of ``max_len`` slots) give the
    unmodified model's tokens and logits; the pass bakes in each attention node's own scale (Gemma
    2/3 do not use head_dim ** -0.5)."""
    model = tiny_model("llama")
    if scaling is not None:
        set_attention_scale(model, scaling)
    plan = depthkv.plan_from_budgets(model, budgets)
    ids, _ = _batch(1)
    with torch.inference_mode():
        ref = model.generate(ids, max_new_tokens=NEW, do_sample=False, output_logits=True, return_dict_in_generate=True)
    tokens, logits, cache, _ = compiled_run(model, plan, ids, None)
    assert torch.equal(tokens, ref.sequences[:, PROMPT:])
    torch.testing.assert_close(logits, torch.stack(ref.logits).float(), rtol=1e-4, atol=1e-4)
    assert cache.budgets == [b if b is not None else PROMPT + NEW for b in budgets]


def test_two_models_of_one_class_with_different_scales_in_one_session():
    """Dynamo turns ``self.scaling`` into a symbolic graph input once it has seen it change for the same
    code (here: a second model of the same class, no reset in between); the pass passes it through."""
    plan_of = lambda m: depthkv.plan_from_budgets(m, [10, 24, 17])  # noqa: E731
    ids, _ = _batch(1)
    for scaling in (None, 0.9):
        model = tiny_model("llama")
        if scaling is not None:
            set_attention_scale(model, scaling)
        ref = eager_reference(model, plan_of(model), ids, None)
        assert_equivalent(ref, compiled_run(model, plan_of(model), ids, None, inner="eager")[:2])


def test_inductor_matches_eager(llama):
    plan = depthkv.plan_from_budgets(llama, [10, 24, 17], policy="snapkv")
    ids, _ = _batch(1)
    ref = eager_reference(llama, plan, ids, None)
    assert_equivalent(ref, compiled_run(llama, plan, ids, None, inner="inductor")[:2])


@pytest.mark.parametrize(
    ("family", "mode"), [("llama", "evict"), ("gemma3", "evict"), ("llama", "append"), ("gemma3", "append")]
)
def test_no_recompiles_over_200_decode_steps_and_static_storage(family, mode):
    """One decode graph for 200 steps (a sliding-window model too: its layers' masks move with the
    window), buffers never reallocated, KV bytes those of the (capped) budgets — plus the reserved
    tail in append mode, which then holds every generated token."""
    llama = tiny_model(family)
    plan = depthkv.plan_from_budgets(llama, [10, 24, 17], policy="h2o")
    budgets = plan.budgets_for(None)
    tail = 200 if mode == "append" else 0
    compiled = torch.compile(llama, backend=backend(plan, inner="aot_eager"), fullgraph=True)
    kw = {"mode": "append", "max_new_tokens": tail} if tail else {}
    cache = StaticBudgetCache.for_model(llama, plan, max_len=PROMPT + 201, **kw)
    before = [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers]
    ids, _ = _batch(1)
    with torch.inference_mode():
        tok = compiled(ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        tok = compiled(tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)  # compiles the decode graph
        with torch._dynamo.config.patch(error_on_recompile=True):
            for _ in range(199):
                tok = compiled(tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
    assert int(cache.get_seq_length()) == PROMPT + 200
    tails = [tail if cap is None else 0 for cap in plan.caps]
    assert cache.held_tokens() == [b + t for b, t in zip(budgets, tails)]
    assert [(layer.keys.data_ptr(), layer.values.data_ptr()) for layer in cache.layers] == before
    fp = depthkv.fingerprint(llama)
    per_token = 2 * fp.num_kv_heads * fp.head_dim * 4  # K and V, fp32
    assert cache.kv_nbytes() == per_token * (sum(budgets) + sum(tails))


def test_generate_with_compile_config(llama):
    plan = depthkv.plan_from_budgets(llama, [10, 24, 17])
    ids, _ = _batch(1)
    ref = eager_reference(llama, plan, ids, None)[0]
    model = tiny_model("llama")
    be = backend(plan, inner="aot_eager")
    use_depthkv_attention(model)
    cache = be.new_cache(model, max_len=PROMPT + NEW)
    model.generation_config.compile_config = CompileConfig(backend=be, fullgraph=True)
    model.generation_config.compile_config._compile_all_devices = True  # transformers compiles on CPU only if asked
    out = model.generate(ids, cache=cache, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(out[:, PROMPT:], ref)
    assert be.reports, "generate did not compile the decode step"


def test_depthkv_compile_helper(llama):
    plan = depthkv.plan_from_budgets(llama, [10, 24, 17])
    ids, _ = _batch(1)
    ref = eager_reference(llama, plan, ids, None)[0]
    model = depthkv.compile(tiny_model("llama"), plan, inner="aot_eager", fullgraph=True)
    cache = StaticBudgetCache.for_model(model, plan, max_len=PROMPT + NEW)
    tokens, _ = greedy_generate(model, ids, cache, NEW)
    assert torch.equal(tokens, ref)


def test_errors_before_compiling(llama):
    profile = _profile(llama)
    with pytest.raises(ValueError, match="below the floor"):
        backend(profile, budget=3)
    with pytest.raises(depthkv.FingerprintMismatch, match="num_layers"):
        StaticBudgetCache.for_model(tiny_model("llama", layers=4), depthkv.allocate(profile, 16), max_len=64)
    with pytest.raises(depthkv.FingerprintMismatch):
        depthkv.compile(tiny_model("qwen2"), depthkv.allocate(profile, 16))
    with pytest.raises(ValueError, match="context_length"):
        backend(profile, budget=0.2)


def test_unsupported_attention_form_is_named(llama):
    model = tiny_model("llama")
    model.set_attn_implementation("eager")
    plan = depthkv.plan_from_budgets(model, [10, 24, 17])
    compiled = torch.compile(model, backend=backend(plan, inner="eager"), fullgraph=True)
    cache = StaticBudgetCache.for_model(model, plan, max_len=64)
    with pytest.raises(Exception, match="not scaled_dot_product_attention") as err:
        compiled(_batch(1)[0], cache=cache, use_cache=True)
    assert isinstance(err.value, UnsupportedAttentionError) or "UnsupportedAttentionError" in repr(err.value)


def test_static_cache_without_backend_is_an_error(llama):
    plan = depthkv.plan_from_budgets(llama, [10, 24, 17])
    compiled = torch.compile(llama, backend="eager", fullgraph=True)
    cache = StaticBudgetCache.for_model(llama, plan, max_len=64)
    with pytest.raises(Exception, match="did not rewrite"):
        compiled(_batch(1)[0], cache=cache, use_cache=True)


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_embedded_models_compile_and_match_eager(name):
    model, _ = depthkv.load_model(name)
    n = depthkv.fingerprint(model).num_layers
    plan = depthkv.plan_from_budgets(model, [12 + 3 * i for i in range(n)])
    ids = torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(3))
    ref = eager_reference(model, plan, ids, None)
    tokens, logits, _, be = compiled_run(model, plan, ids, None, inner="eager")
    assert all(len(r.rewritten) == n for r in be.reports)
    assert_equivalent(ref, (tokens, logits))


def test_eager_steps_run_the_backend_s_kernels(llama, monkeypatch):
    """The eager steps of a StaticBudgetCache (generate's prefill) run the kernel implementation the
    backend was made with, not always the reference: the cache from ``backend.new_cache`` (or
    ``for_model`` after ``depthkv.compile``) carries it."""
    pytest.importorskip("triton")
    from depthkv.kernels import dispatch

    calls = []
    fast, step = dispatch.attend_evict_fast, dispatch.decode_step
    monkeypatch.setattr(dispatch, "attend_evict_fast", lambda *a, **k: calls.append(a[0].impl) or fast(*a, **k))
    monkeypatch.setattr(dispatch, "decode_step", lambda *a, **k: calls.append(a[0]) or step(*a, **k))
    plan = depthkv.plan_from_budgets(llama, [10, 24, 17])
    ids, _ = _batch(1)
    ref = eager_reference(llama, plan, ids, None)
    be = backend(plan, impl="triton", inner="eager")
    cache = be.new_cache(llama, max_len=PROMPT + NEW)
    assert {layer.impl for layer in cache.layers} == {"triton"}
    use_depthkv_attention(llama)
    try:
        tokens, logits = greedy_generate(llama, ids, cache, NEW)  # every step eager
    finally:
        llama.set_attn_implementation("sdpa")
    assert calls == ["triton"] * 3 * NEW  # three layers, every step
    assert_equivalent(ref, (tokens, logits))
    model = depthkv.compile(tiny_model("llama"), plan, impl="triton", inner="eager")
    assert {layer.impl for layer in StaticBudgetCache.for_model(model, plan, max_len=64).layers} == {"triton"}
