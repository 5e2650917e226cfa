"""The sort-free decode steps (:mod:`depthkv.kernels.decode_step`) keep what the reference keeps.

Reference: :func:`attend_evict_reference` (score + :func:`select` + compaction). The decode step
keeps slots in another order, so buffers are compared as *sets* (per batch row and KV head, sorted
by position) and outputs to fp32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from depthkv.kernels import LayerBuffers
from depthkv.kernels.decode_step import decode_append, decode_evict, victim
from depthkv.kernels.evict_reference import attend_evict_reference
from depthkv.policies import POLICIES, PolicyConfig, select
from tests.kernels.decode_buffers import causal_padding_mask, clone, new_buffers, padding_mask

B, H, HKV, D = 3, 4, 2, 8


def empty_buffers(slots: int, b: int = B, hkv: int = HKV, d: int = D) -> LayerBuffers:
    return new_buffers(slots, b, hkv, d)


def by_position(bufs: LayerBuffers, stateful: bool) -> dict[str, torch.Tensor]:
    """The buffer's content in a slot-order-free form: every tensor sorted by position."""
    order = bufs.positions.argsort(dim=-1, stable=True)
    out = {
        "positions": bufs.positions.gather(-1, order),
        "keys": bufs.keys.gather(2, order[..., None].expand_as(bufs.keys)),
    }
    if stateful:
        out["scores"] = bufs.scores.gather(-1, order)
    return out


def draw(g, heads, n):
    return torch.randn(B, heads, n, D, generator=g)


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("window", [0, 3])
def test_evict_keeps_the_reference_set_for_many_steps(name, window):
    cfg = PolicyConfig(name, window=window, kernel=3, sinks=2, seed=5)
    budget, prompt, steps, pads = 9, 14, 40, [0, 4, 11]
    g = torch.Generator().manual_seed(1)
    ref = empty_buffers(budget)
    q, k, v = draw(g, H, prompt), draw(g, HKV, prompt), draw(g, HKV, prompt)
    ref.seen.add_(prompt)
    attend_evict_reference(q, k, v, causal_padding_mask(pads, prompt, prompt), ref, 0.4, budget, cfg, 0)
    new = clone(ref)
    for step in range(steps):
        q, k, v = draw(g, H, 1), draw(g, HKV, 1), draw(g, HKV, 1)
        length = prompt + step + 1
        mask = padding_mask(pads, length)
        ref.seen.add_(1)
        new.seen.add_(1)
        want = attend_evict_reference(q, k, v, mask, ref, 0.4, budget, cfg, 0)
        got = decode_evict(q, k, v, mask, new, 0.4, cfg)
        # rows whose every token is padding have no defined output
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        a, b = by_position(ref, cfg.stateful), by_position(new, cfg.stateful)
        assert torch.equal(a["positions"], b["positions"]), f"step {step}: kept sets differ"
        torch.testing.assert_close(a["keys"], b["keys"], rtol=0, atol=0)
        if cfg.stateful:
            torch.testing.assert_close(a["scores"], b["scores"], rtol=1e-5, atol=1e-6)


def test_victim_is_the_last_of_select_ranking():
    """On arbitrary candidates (ties in score, NaN, infinities, invalid slots) the argmin drops the
    one slot that select() leaves out of budget = C - 1."""
    g = torch.Generator().manual_seed(3)
    for trial in range(200):
        c = 2 + trial % 9
        cfg = PolicyConfig("streaming" if trial % 3 == 0 else "snapkv", window=trial % 3, sinks=trial % 2)
        scores = torch.randint(0, 3, (2, 2, c), generator=g).float()
        scores[torch.rand(scores.shape, generator=g) < 0.1] = float("nan")
        scores[torch.rand(scores.shape, generator=g) < 0.1] = float("-inf")
        positions = torch.stack([torch.randperm(c, generator=g) for _ in range(4)]).view(2, 2, c)
        seen = torch.tensor(c)
        # valid tokens are a row's most recent ones (left padding); the newest is always valid
        pad = torch.randint(0, c, (2, 2, 1), generator=g)
        valid = positions >= pad
        if cfg.floor >= c:
            continue
        keep = select(cfg, scores, positions, valid, c - 1)
        dropped = victim(cfg, scores, positions, valid, seen)
        kept = torch.ones(2, 2, c, dtype=torch.bool).scatter(-1, dropped, False)
        assert torch.equal(kept.sum(-1), torch.full((2, 2), c - 1))
        assert torch.equal(kept.long().scatter(-1, keep, 0).sum(-1), torch.zeros(2, 2, dtype=torch.long)), trial


def test_evict_writes_only_the_victim_slot():
    cfg = PolicyConfig("h2o", window=1)
    bufs = empty_buffers(4, b=1, hkv=1)
    bufs.positions.copy_(torch.tensor([[[0, 1, 2, 3]]]))
    bufs.scores.copy_(torch.tensor([[[5.0, 0.5, 7.0, 1.0]]]))
    bufs.keys.copy_(torch.arange(4.0).view(1, 1, 4, 1).expand(1, 1, 4, D))
    bufs.seen.fill_(5)
    q = torch.zeros(1, 1, 1, D)  # uniform attention: every candidate gains 1/5
    k_new = torch.full((1, 1, 1, D), 9.0)
    decode_evict(q, k_new, k_new, None, bufs, 1.0, cfg)
    assert bufs.positions.tolist() == [[[0, 4, 2, 3]]]  # slot 1 (score 0.5) replaced
    assert bufs.keys[0, 0, :, 0].tolist() == [0.0, 9.0, 2.0, 3.0]
    torch.testing.assert_close(bufs.scores, torch.tensor([[[5.2, 0.2, 7.2, 1.2]]]))


def test_new_token_dropped_when_it_ranks_last():
    """window 0: a new token scoring below every held slot is not written at all."""
    cfg = PolicyConfig("streaming", window=0, sinks=0)
    bufs = empty_buffers(3, b=1, hkv=1)
    bufs.positions.copy_(torch.tensor([[[5, 6, 7]]]))
    bufs.seen.fill_(3)  # the new token's position (2) is older than every held one
    before = clone(bufs)
    decode_evict(torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D), torch.randn(1, 1, 1, D), None, bufs, 1.0, cfg)
    assert torch.equal(bufs.positions, before.positions) and torch.equal(bufs.keys, before.keys)


def test_append_fills_free_slots_then_refuses():
    bufs = empty_buffers(3, b=2, hkv=1)
    bufs.positions.copy_(torch.tensor([[[0, -1, -1]], [[0, -1, -1]]]))
    for step in range(2):
        bufs.seen.fill_(step + 2)
        k = torch.full((2, 1, 1, D), float(step + 1))
        decode_append(torch.randn(2, 1, 1, D), k, k, None, bufs, 1.0)
    assert bufs.positions.tolist() == [[[0, 1, 2]], [[0, 1, 2]]]
    assert bufs.keys[0, 0, :, 0].tolist() == [0.0, 1.0, 2.0]
    bufs.seen.fill_(4)
    with pytest.raises(IndexError):
        decode_append(torch.randn(2, 1, 1, D), k, k, None, bufs, 1.0)


def test_append_attention_equals_reference_attention():
    """Append decode is plain attention over the held slots plus the new token."""
    g = torch.Generator().manual_seed(2)
    cfg = PolicyConfig("snapkv", window=2)
    budget, prompt, tail = 6, 10, 5
    ref = empty_buffers(budget)
    q, k, v = draw(g, H, prompt), draw(g, HKV, prompt), draw(g, HKV, prompt)
    ref.seen.add_(prompt)
    attend_evict_reference(q, k, v, None, ref, 0.3, budget, cfg, 0)
    bufs = empty_buffers(budget + tail)
    for name in ("keys", "values", "positions", "scores"):
        getattr(bufs, name)[:, :, :budget] = getattr(ref, name)
    bufs.seen.fill_(prompt)
    held_k, held_v = [ref.keys], [ref.values]
    for _ in range(tail):
        q, k, v = draw(g, H, 1), draw(g, HKV, 1), draw(g, HKV, 1)
        bufs.seen.add_(1)
        got = decode_append(q, k, v, None, bufs, 0.3)
        keys = torch.cat(held_k + [k], dim=2).repeat_interleave(H // HKV, 1)
        vals = torch.cat(held_v + [v], dim=2).repeat_interleave(H // HKV, 1)
        want = torch.nn.functional.scaled_dot_product_attention(q, keys, vals, scale=0.3)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        held_k.append(k)
        held_v.append(v)
    assert (bufs.positions >= 0).all()
