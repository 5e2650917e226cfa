"""Eviction policies: scores against brute-force references, selection against a plain-loop oracle."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depthkv.policies import POLICIES, PolicyConfig, attention_probs, score, select

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ATTENTION = ("snapkv", "h2o", "tova")


# ----------------------------------------------------------------------------------------------
# input builders
# ----------------------------------------------------------------------------------------------


def prefill_inputs(b, hkv, g, m, n, d=8, seed=0, pads=None, dtype=torch.float32):
    """Slots in ascending position order (prefill), causal mask, left padding per batch row."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hkv * g, m, d, generator=gen).to(dtype)
    keys = torch.randn(b, hkv, n, d, generator=gen).to(dtype)
    pads = pads if pads is not None else torch.randint(0, max(n // 2, 1), (b,), generator=gen).tolist()
    slot = torch.arange(n)
    valid = (slot[None, :] >= torch.tensor(pads)[:, None])[:, None, :].expand(b, hkv, n).clone()
    qpos = torch.arange(n - m, n)
    causal = slot[None, :] <= qpos[:, None]  # [m, N]
    mask = causal[None, None] & valid[:, :, None, :]
    positions = slot.expand(b, hkv, n).clone()
    return q, keys, mask, positions, valid


def scattered_slots(b, hkv, n, gen):
    """Distinct positions in random slot order (as after in-place eviction); the k smallest invalid."""
    positions = torch.empty(b, hkv, n, dtype=torch.int64)
    valid = torch.empty(b, hkv, n, dtype=torch.bool)
    for bi in range(b):
        pad = int(torch.randint(0, n + 1, (1,), generator=gen))
        for h in range(hkv):
            pos = torch.randperm(3 * n, generator=gen)[:n]
            positions[bi, h] = pos
            rank = torch.argsort(torch.argsort(pos))
            valid[bi, h] = rank >= pad
    return positions, valid


def tie_heavy_scores(shape, gen):
    s = torch.randint(0, 4, shape, generator=gen).float()
    special = torch.rand(shape, generator=gen)
    s[special < 0.05] = float("nan")
    s[(special >= 0.05) & (special < 0.08)] = float("inf")
    s[(special >= 0.08) & (special < 0.11)] = float("-inf")
    return s


# ----------------------------------------------------------------------------------------------
# brute-force references
# ----------------------------------------------------------------------------------------------


def bf_probs(q, keys, mask, scaling):
    """Plain-loop masked softmax in fp64: [B, Hkv, g, m, N]."""
    b, h, m, _ = q.shape
    hkv, n = keys.shape[1], keys.shape[2]
    g = h // hkv
    out = torch.zeros(b, hkv, g, m, n, dtype=torch.float64)
    qd, kd = q.double(), keys.double()
    for bi in range(b):
        for hi in range(h):
            k = hi // g
            for i in range(m):
                allowed = [j for j in range(n) if bool(mask[bi, k, i, j])]
                if not allowed:
                    continue
                logits = [scaling * float(qd[bi, hi, i] @ kd[bi, k, j]) for j in allowed]
                top = max(logits)
                ex = [math.exp(x - top) for x in logits]
                z = sum(ex)
                for j, e in zip(allowed, ex):
                    out[bi, k, hi % g, i, j] = e / z
    return out


def bf_pool(values, kernel, window):
    """SnapKV as published: the slots before the last ``window`` ones averaged over ``kernel``
    neighbours, positions outside that segment counting as 0 (the zero padding is in the average);
    the window's slots unchanged."""
    p = kernel // 2
    cut = max(len(values) - window, 0)
    head = [sum(values[i] for i in range(j - p, j + p + 1) if 0 <= i < cut) / kernel for j in range(cut)]
    return head + list(values[cut:])


def bf_snapkv(cfg, q, keys, mask, scaling, prev=None):
    probs = bf_probs(q, keys, mask, scaling)
    w = min(max(cfg.window, 1), q.shape[2])
    raw = probs[:, :, :, q.shape[2] - w :].sum(dim=(2, 3))
    if prev is not None:
        return prev.double() + raw
    out = torch.zeros_like(raw)
    for bi in range(raw.shape[0]):
        for k in range(raw.shape[1]):
            out[bi, k] = torch.tensor(bf_pool(raw[bi, k].tolist(), cfg.kernel, cfg.window), dtype=torch.float64)
    return out


def bf_select(cfg, scores, positions, valid, budget):
    """Per (b, kv head): (valid slots kept, in position order; number of invalid slots to add)."""
    b, hkv, n = scores.shape
    result = {}
    for bi in range(b):
        for h in range(hkv):
            pos = positions[bi, h].tolist()
            val = valid[bi, h].tolist()
            sc = [-math.inf if math.isnan(x) else x for x in scores[bi, h].tolist()]
            vidx = [i for i in range(n) if val[i]]
            forced = set(sorted(vidx, key=lambda i: -pos[i])[: cfg.window])
            if cfg.name == "streaming":
                forced |= set(sorted(vidx, key=lambda i: pos[i])[: cfg.sinks])
            rest = sorted((i for i in vidx if i not in forced), key=lambda i: (-sc[i], -pos[i]))
            kept = (sorted(forced) + rest)[:budget]
            result[bi, h] = (sorted(kept, key=lambda i: pos[i]), budget - len(kept))
    return result


def check_against_oracle(cfg, scores, positions, valid, budget):
    n = scores.shape[-1]
    out = select(cfg, scores, positions, valid, budget)
    assert out.dtype == torch.int64
    if n <= budget:
        assert torch.equal(out, torch.arange(n).expand_as(scores))
        return
    assert out.shape == (*scores.shape[:2], budget)
    oracle = bf_select(cfg, scores, positions, valid, budget)
    for (bi, h), (kept_valid, n_invalid) in oracle.items():
        got = out[bi, h].tolist()
        assert len(set(got)) == budget, "indices must be unique"
        got_pos = [int(positions[bi, h, i]) for i in got]
        assert got_pos == sorted(got_pos), "kept slots must be sorted by position"
        got_valid = [i for i in got if bool(valid[bi, h, i])]
        assert got_valid == kept_valid
        assert len(got) - len(got_valid) == n_invalid
        if n_invalid == 0:
            assert got == kept_valid


# ----------------------------------------------------------------------------------------------
# PolicyConfig
# ----------------------------------------------------------------------------------------------


def test_config_defaults_roundtrip_and_properties():
    cfg = PolicyConfig()
    assert cfg.name == "snapkv" and cfg.window == 8 and cfg.kernel == 5 and cfg.sinks == 4
    for name in POLICIES:
        c = PolicyConfig(name=name, window=3, kernel=7, sinks=2, seed=11)
        assert PolicyConfig.from_dict(c.to_dict()) == c
        assert c.floor == (5 if name == "streaming" else 3)
        assert c.stateful == (name in ("snapkv", "h2o"))
    assert PolicyConfig.from_dict({"name": "tova"}) == PolicyConfig(name="tova")
    with pytest.raises(Exception):  # noqa: B017 - frozen dataclass error type is an implementation detail
        cfg.window = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"name": "snap"}, "snapkv, h2o, streaming, tova, knorm, random"),
        ({"window": -1}, "window"),
        ({"kernel": 4}, "kernel"),
        ({"kernel": 0}, "kernel"),
        ({"sinks": -2}, "sinks"),
        ({"window": 2.5}, "window"),
    ],
)
def test_config_rejects_bad_values(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        PolicyConfig(**kwargs)


def test_config_from_dict_rejects_unknown_field():
    with pytest.raises(ValueError, match="budget"):
        PolicyConfig.from_dict({"name": "h2o", "budget": 3})


# ----------------------------------------------------------------------------------------------
# attention_probs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hkv, g", [(2, 1), (2, 3), (1, 4)])
def test_attention_probs_matches_fp64_softmax(hkv, g):
    gen = torch.Generator().manual_seed(hkv * 10 + g)
    b, m, n, d = 2, 5, 11, 6
    q = torch.randn(b, hkv * g, m, d, generator=gen)
    keys = torch.randn(b, hkv, n, d, generator=gen)
    mask = torch.rand(b, hkv, m, n, generator=gen) < 0.6
    mask[0, 0, 1] = False  # one fully masked row
    p = attention_probs(q, keys, mask, 0.4)
    assert p.dtype == torch.float32 and p.shape == (b, hkv, g, m, n)
    assert not torch.isnan(p).any()
    torch.testing.assert_close(p.double(), bf_probs(q, keys, mask, 0.4), atol=1e-6, rtol=1e-5)

    # the same thing via torch's softmax in fp64 with the KV heads repeated for each query head
    k_rep = keys.double().repeat_interleave(g, dim=1)
    logits = 0.4 * q.double() @ k_rep.transpose(-1, -2)
    m_rep = mask.repeat_interleave(g, dim=1)
    ref = torch.softmax(logits.masked_fill(~m_rep, -math.inf), dim=-1).nan_to_num(0.0)
    torch.testing.assert_close(p.double().reshape(b, hkv * g, m, n), ref, atol=1e-6, rtol=1e-5)

    sums = p.sum(-1)
    any_allowed = mask.any(-1)[:, :, None, :].expand_as(sums)
    torch.testing.assert_close(sums[any_allowed], torch.ones_like(sums[any_allowed]))
    assert torch.all(sums[~any_allowed] == 0)
    assert torch.all(p.masked_select(~mask[:, :, None].expand_as(p)) == 0)


def test_attention_probs_all_masked_and_large_logits():
    q = torch.full((1, 2, 3, 4), 1e3)
    keys = torch.full((1, 1, 5, 4), 1e3)
    mask = torch.zeros(1, 1, 3, 5, dtype=torch.bool)
    assert torch.equal(attention_probs(q, keys, mask, 1.0), torch.zeros(1, 1, 2, 3, 5))
    mask[..., 2] = True
    p = attention_probs(q, keys, mask, 1.0)
    assert torch.equal(p[..., 2], torch.ones(1, 1, 2, 3)) and p.sum() == 6


def test_attention_probs_rejects_bad_shapes():
    q, keys = torch.randn(1, 3, 2, 4), torch.randn(1, 2, 5, 4)
    with pytest.raises(ValueError, match="multiple"):
        attention_probs(q, keys, torch.ones(1, 2, 2, 5, dtype=torch.bool), 1.0)
    with pytest.raises(ValueError, match="bool"):
        attention_probs(torch.randn(1, 2, 2, 4), keys, torch.ones(1, 2, 2, 5), 1.0)
    with pytest.raises(ValueError, match="broadcast"):
        attention_probs(torch.randn(1, 2, 2, 4), keys, torch.ones(1, 2, 3, 5, dtype=torch.bool), 1.0)


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------

SHAPES = [(1, 2, 1, 7, 13), (2, 2, 3, 5, 9), (2, 1, 4, 12, 12), (3, 3, 2, 1, 6)]  # b, hkv, g, m, n


@pytest.mark.parametrize("b, hkv, g, m, n", SHAPES)
@pytest.mark.parametrize("window, kernel", [(4, 5), (8, 1), (3, 7), (0, 3)])
def test_snapkv_prefill_matches_bruteforce(b, hkv, g, m, n, window, kernel):
    cfg = PolicyConfig("snapkv", window=window, kernel=kernel)
    q, keys, mask, positions, _ = prefill_inputs(b, hkv, g, m, n, seed=n + window)
    s = score(cfg, q, keys, mask, positions, 0.35)
    assert s.dtype == torch.float32 and s.shape == (b, hkv, n)
    torch.testing.assert_close(s.double(), bf_snapkv(cfg, q, keys, mask, 0.35), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("b, hkv, g, m, n", SHAPES)
def test_snapkv_decode_rule_accumulates_without_pooling(b, hkv, g, m, n):
    cfg = PolicyConfig("snapkv", window=3, kernel=5)
    q, keys, mask, positions, _ = prefill_inputs(b, hkv, g, m, n, seed=7)
    prev = torch.rand(b, hkv, n, generator=torch.Generator().manual_seed(1))
    s = score(cfg, q, keys, mask, positions, 0.5, prev_scores=prev)
    torch.testing.assert_close(
        s.double(), bf_snapkv(cfg, q, keys, mask, 0.5, prev=prev), atol=1e-5, rtol=1e-5
    )
    zero = score(cfg, q, keys, mask, positions, 0.5, prev_scores=torch.zeros_like(prev))
    torch.testing.assert_close(s, prev + zero)


@pytest.mark.parametrize("b, hkv, g, m, n", SHAPES)
def test_h2o_matches_bruteforce_and_accumulates(b, hkv, g, m, n):
    cfg = PolicyConfig("h2o")
    q, keys, mask, positions, _ = prefill_inputs(b, hkv, g, m, n, seed=3)
    ref = bf_probs(q, keys, mask, 0.3).sum(dim=(2, 3))
    s = score(cfg, q, keys, mask, positions, 0.3)
    torch.testing.assert_close(s.double(), ref, atol=1e-5, rtol=1e-5)
    prev = torch.rand(b, hkv, n, generator=torch.Generator().manual_seed(2))
    s2 = score(cfg, q, keys, mask, positions, 0.3, prev_scores=prev)
    torch.testing.assert_close(s2.double(), prev.double() + ref, atol=1e-5, rtol=1e-5)


def test_h2o_chunked_steps_equal_one_step():
    """Scoring the queries in two steps, carrying prev_scores, equals scoring them at once."""
    cfg = PolicyConfig("h2o")
    q, keys, mask, positions, _ = prefill_inputs(2, 2, 2, 10, 16, seed=5)
    whole = score(cfg, q, keys, mask, positions, 0.4)
    first = score(cfg, q[:, :, :6], keys, mask[:, :, :6], positions, 0.4)
    both = score(cfg, q[:, :, 6:], keys, mask[:, :, 6:], positions, 0.4, prev_scores=first)
    torch.testing.assert_close(both, whole, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("b, hkv, g, m, n", SHAPES)
def test_tova_uses_only_last_query(b, hkv, g, m, n):
    cfg = PolicyConfig("tova")
    q, keys, mask, positions, _ = prefill_inputs(b, hkv, g, m, n, seed=9)
    s = score(cfg, q, keys, mask, positions, 0.3)
    ref = bf_probs(q, keys, mask, 0.3)[:, :, :, -1].mean(dim=2)
    torch.testing.assert_close(s.double(), ref, atol=1e-6, rtol=1e-5)
    q2 = q.clone()
    q2[:, :, :-1] = torch.randn_like(q2[:, :, :-1])
    mask2 = mask.clone()
    mask2[:, :, :-1] = True
    assert torch.equal(score(cfg, q2, keys, mask2, positions, 0.3), s)
    prev = torch.full((b, hkv, n), 100.0)
    assert torch.equal(score(cfg, q, keys, mask, positions, 0.3, prev_scores=prev), s)


def test_knorm_streaming_random():
    q, keys, mask, positions, _ = prefill_inputs(2, 2, 2, 3, 10, seed=4)
    positions = positions * 3 + 1
    kn = score(PolicyConfig("knorm"), q, keys, mask, positions, 1.0)
    torch.testing.assert_close(kn, -keys.norm(dim=-1))
    st_ = score(PolicyConfig("streaming"), q, keys, mask, positions, 1.0)
    assert st_.dtype == torch.float32 and torch.equal(st_, positions.float())

    r1 = score(PolicyConfig("random", seed=3), q, keys, mask, positions, 1.0)
    r2 = score(PolicyConfig("random", seed=3), q, keys, mask, positions, 1.0)
    r3 = score(PolicyConfig("random", seed=4), q, keys, mask, positions, 1.0)
    assert r1.dtype == torch.float32 and r1.shape == positions.shape
    assert torch.equal(r1, r2) and not torch.equal(r1, r3)
    assert torch.all((r1 >= 0) & (r1 < 1))


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_compute_in_fp32(name, dtype):
    cfg = PolicyConfig(name, window=2)
    q, keys, mask, positions, _ = prefill_inputs(2, 2, 2, 4, 9, seed=6, dtype=dtype)
    s = score(cfg, q, keys, mask, positions, 0.3)
    assert s.dtype == torch.float32
    assert torch.equal(s, score(cfg, q.float(), keys.float(), mask, positions, 0.3))


@pytest.mark.parametrize("name", POLICIES)
def test_batched_equals_one_by_one(name):
    cfg = PolicyConfig(name, window=3, kernel=3, sinks=1)
    q, keys, mask, positions, valid = prefill_inputs(3, 2, 2, 4, 12, seed=8, pads=[0, 3, 5])
    s = score(cfg, q, keys, mask, positions, 0.3)
    kept = select(cfg, s, positions, valid, 7)
    for bi in range(3):
        one = slice(bi, bi + 1)
        s1 = score(cfg, q[one], keys[one], mask[one], positions[one], 0.3)
        if name != "random":  # random draws one tensor of the batch's shape
            torch.testing.assert_close(s1, s[one])
        assert torch.equal(select(cfg, s[one], positions[one], valid[one], 7), kept[one])


@pytest.mark.parametrize("name", ATTENTION)
def test_gqa_groups_query_heads_of_their_kv_head(name):
    """GQA scores equal MHA scores with K repeated per query head, combined over each group."""
    cfg = PolicyConfig(name, window=3, kernel=1)
    b, hkv, g, m, n = 2, 2, 3, 4, 10
    q, keys, mask, positions, _ = prefill_inputs(b, hkv, g, m, n, seed=12)
    gqa = score(cfg, q, keys, mask, positions, 0.3)
    mha = score(
        cfg,
        q,
        keys.repeat_interleave(g, dim=1),
        mask.repeat_interleave(g, dim=1),
        positions.repeat_interleave(g, dim=1),
        0.3,
    ).reshape(b, hkv, g, n)
    combined = mha.mean(dim=2) if name == "tova" else mha.sum(dim=2)
    torch.testing.assert_close(gqa, combined, atol=1e-6, rtol=1e-5)


def test_score_rejects_bad_inputs():
    q, keys, mask, positions, _ = prefill_inputs(1, 2, 1, 2, 5)
    cfg = PolicyConfig("h2o")
    with pytest.raises(ValueError, match="positions"):
        score(cfg, q, keys, mask, positions[..., :4], 1.0)
    with pytest.raises(ValueError, match="integer"):
        score(cfg, q, keys, mask, positions.float(), 1.0)
    with pytest.raises(ValueError, match="prev_scores"):
        score(cfg, q, keys, mask, positions, 1.0, prev_scores=torch.zeros(1, 2, 4))
    with pytest.raises(ValueError, match="head dim"):
        score(cfg, q[..., :3], keys, mask, positions, 1.0)


# ----------------------------------------------------------------------------------------------
# select
# ----------------------------------------------------------------------------------------------


@st.composite
def select_case(draw):
    name = draw(st.sampled_from(POLICIES))
    cfg = PolicyConfig(name, window=draw(st.integers(0, 6)), sinks=draw(st.integers(0, 4)))
    b, hkv, n = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 64))
    budget = draw(st.integers(cfg.floor, max(cfg.floor, n + 3)))
    return cfg, b, hkv, n, budget, draw(st.integers(0, 2**31 - 1))


@SETTINGS
@given(select_case())
def test_select_matches_bruteforce_on_tie_heavy_scores(case):
    cfg, b, hkv, n, budget, seed = case
    gen = torch.Generator().manual_seed(seed)
    positions, valid = scattered_slots(b, hkv, n, gen)
    scores = tie_heavy_scores((b, hkv, n), gen)
    check_against_oracle(cfg, scores, positions, valid, budget)


@SETTINGS
@given(select_case(), st.integers(1, 4), st.integers(1, 5))
def test_policy_scores_then_select_matches_bruteforce(case, g, m):
    """Every policy end to end: score() on random q/K, then select() keeps what the oracle keeps."""
    cfg, b, hkv, n, budget, seed = case
    gen = torch.Generator().manual_seed(seed)
    positions, valid = scattered_slots(b, hkv, n, gen)
    q = torch.randn(b, hkv * g, m, 4, generator=gen)
    keys = torch.randn(b, hkv, n, 4, generator=gen)
    mask = valid[:, :, None, :] & (torch.rand(b, hkv, m, n, generator=gen) < 0.8)
    prev = torch.rand(b, hkv, n, generator=gen) if cfg.stateful and seed % 2 else None
    scores = score(cfg, q, keys, mask, positions, 0.5, prev_scores=prev)
    assert scores.shape == (b, hkv, n) and scores.dtype == torch.float32
    check_against_oracle(cfg, scores, positions, valid, budget)


@SETTINGS
@given(select_case())
def test_select_invariants(case):
    cfg, b, hkv, n, budget, seed = case
    gen = torch.Generator().manual_seed(seed)
    positions, valid = scattered_slots(b, hkv, n, gen)
    scores = torch.randn(b, hkv, n, generator=gen)
    out = select(cfg, scores, positions, valid, budget)
    k = min(n, budget)
    assert out.shape == (b, hkv, k)
    for bi in range(b):
        for h in range(hkv):
            idx = out[bi, h].tolist()
            assert len(set(idx)) == k
            pos = positions[bi, h, idx]
            if n > budget:
                assert torch.all(pos[1:] > pos[:-1])
            vidx = valid[bi, h].nonzero().flatten().tolist()
            by_pos = sorted(vidx, key=lambda i: int(positions[bi, h, i]))
            assert set(by_pos[len(by_pos) - min(cfg.window, len(by_pos)) :]) <= set(idx), "window kept"
            if cfg.name == "streaming":
                assert set(by_pos[: cfg.sinks]) <= set(idx), "sinks kept"
            if len(vidx) >= k:
                assert all(bool(valid[bi, h, i]) for i in idx), "padding kept while valid slots exist"
            else:
                assert set(vidx) <= set(idx)


def test_select_ties_go_to_later_position():
    cfg = PolicyConfig("h2o", window=1)
    positions = torch.tensor([[[10, 3, 7, 5, 1, 12]]])
    scores = torch.tensor([[[1.0, 2.0, 1.0, 2.0, 2.0, 0.0]]])
    valid = torch.ones(1, 1, 6, dtype=torch.bool)
    # window: slot 5 (pos 12); then score 2.0 at positions 5 (slot 3), 3 (slot 1), 1 (slot 4): later first
    assert select(cfg, scores, positions, valid, 3).tolist() == [[[1, 3, 5]]]
    # then score 1.0 at positions 10 (slot 0) before 7 (slot 2)
    assert select(cfg, scores, positions, valid, 5).tolist() == [[[4, 1, 3, 0, 5]]]
    assert select(cfg, scores, positions, valid, 6).tolist() == [[[0, 1, 2, 3, 4, 5]]]


def test_select_nan_counts_as_minus_infinity():
    cfg = PolicyConfig("snapkv", window=0)
    positions = torch.arange(5).view(1, 1, 5)
    scores = torch.tensor([[[float("nan"), -float("inf"), 0.0, float("inf"), float("nan")]]])
    valid = torch.ones(1, 1, 5, dtype=torch.bool)
    assert select(cfg, scores, positions, valid, 2).tolist() == [[[2, 3]]]
    # the -inf/NaN tie goes to the later position
    assert select(cfg, scores, positions, valid, 3).tolist() == [[[2, 3, 4]]]


def test_select_streaming_keeps_sinks_and_recent():
    cfg = PolicyConfig("streaming", window=2, sinks=2)
    positions = torch.arange(20).view(1, 1, 20).repeat(2, 1, 1)
    valid = positions >= torch.tensor([0, 5]).view(2, 1, 1)
    s = score(cfg, torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 20, 4), valid[:, :, None], positions, 1.0)
    out = select(cfg, s, positions, valid, 6)
    assert out.tolist() == [[[0, 1, 16, 17, 18, 19]], [[5, 6, 16, 17, 18, 19]]]


def test_select_budget_at_least_n_returns_all():
    cfg = PolicyConfig("tova", window=2)
    scores, positions = torch.rand(2, 3, 4), torch.randint(0, 9, (2, 3, 4))
    valid = torch.ones(2, 3, 4, dtype=torch.bool)
    for budget in (4, 7):
        assert torch.equal(select(cfg, scores, positions, valid, budget), torch.arange(4).expand(2, 3, 4))


@pytest.mark.parametrize(
    "cfg, budget", [(PolicyConfig(window=8), 5), (PolicyConfig("streaming", window=6, sinks=4), 9)]
)
def test_select_budget_below_floor_raises(cfg, budget):
    args = torch.rand(1, 1, 20), torch.arange(20).view(1, 1, 20), torch.ones(1, 1, 20, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"budget {budget}.*floor {cfg.floor}"):
        select(cfg, *args, budget)


def test_select_rejects_bad_inputs():
    cfg = PolicyConfig(window=1)
    scores, positions = torch.rand(1, 2, 5), torch.arange(5).expand(1, 2, 5)
    valid = torch.ones(1, 2, 5, dtype=torch.bool)
    with pytest.raises(ValueError, match="int"):
        select(cfg, scores, positions, valid, 2.0)
    with pytest.raises(ValueError, match="bool"):
        select(cfg, scores, positions, valid.long(), 2)
    with pytest.raises(ValueError, match=r"\[B, Hkv, N\]"):
        select(cfg, scores, positions[..., :4], valid, 2)
