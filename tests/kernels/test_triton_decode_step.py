"""The one-launch Triton decode step (:mod:`depthkv.kernels.triton_decode_step`) equals the reference.

Reference: :mod:`depthkv.kernels.decode_step` on cloned buffers. Both choose the same victim, but
buffers are compared as *sets* (per batch row and KV head, sorted by position: the order of slots is
not part of the contract), keys/values bit-equal, scores to fp32 rounding, outputs to a tolerance.
Runs on CUDA where a GPU and Triton are there, else on the CPU under the interpreter
(``TRITON_INTERPRET=1``, set by `make test` / conftest): shapes stay small.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from depthkv.kernels import LayerBuffers, available_impls
from depthkv.kernels import decode_step as ref
from depthkv.kernels.evict_reference import attend_evict_reference
from depthkv.policies import POLICIES, PolicyConfig
from tests.kernels.decode_buffers import causal_padding_mask as shared_causal_padding_mask
from tests.kernels.decode_buffers import clone, new_buffers
from tests.kernels.decode_buffers import padding_mask as shared_padding_mask

pytest.importorskip("triton", reason="triton is not installed (optional extra: pip install 'depthkv[triton]')")
from depthkv.kernels import triton_decode_step as tri  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
pytestmark = pytest.mark.skipif(
    "triton" not in available_impls(DEVICE),
    reason="needs triton: on a CUDA GPU, or on the CPU with TRITON_INTERPRET=1 (set by `make test`)",
)

B, H, HKV, D = 3, 4, 2, 16
TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (2e-3, 2e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------


def empty_buffers(slots: int, b: int = B, hkv: int = HKV, d: int = D, dtype=torch.float32) -> LayerBuffers:
    return new_buffers(slots, b, hkv, d, dtype, DEVICE)


def random_buffers(g, slots: int, b: int, hkv: int, d: int, dtype, seen: int, free: int = 2) -> LayerBuffers:
    """Distinct positions below ``seen - 1`` per (b, c), ``free`` empty slots, arbitrary scores."""
    bufs = empty_buffers(slots, b, hkv, d, dtype)
    held = max(0, min(slots - free, seen - 1))
    for i in range(b):
        for c in range(hkv):
            pos = torch.randperm(seen - 1, generator=g)[:held]
            order = torch.randperm(slots, generator=g)[:held]
            bufs.positions[i, c, order] = pos.to(DEVICE)
    bufs.keys.copy_(torch.randn(b, hkv, slots, d, generator=g).to(dtype))
    bufs.values.copy_(torch.randn(b, hkv, slots, d, generator=g).to(dtype))
    bufs.scores.copy_(torch.rand(b, hkv, slots, generator=g))
    bufs.seen.fill_(seen)
    return bufs


def by_position(bufs: LayerBuffers) -> dict[str, torch.Tensor]:
    """The buffer's content in a slot-order-free form: every tensor sorted by position."""
    order = bufs.positions.argsort(dim=-1, stable=True)
    return {
        "positions": bufs.positions.gather(-1, order),
        "keys": bufs.keys.gather(2, order[..., None].expand_as(bufs.keys)),
        "values": bufs.values.gather(2, order[..., None].expand_as(bufs.values)),
        "scores": bufs.scores.gather(-1, order),
    }


def assert_same_state(want: LayerBuffers, got: LayerBuffers, what: str = "") -> None:
    a, b = by_position(want), by_position(got)
    assert torch.equal(a["positions"], b["positions"]), f"{what}: kept sets differ"
    assert torch.equal(a["keys"], b["keys"]), f"{what}: keys differ"
    assert torch.equal(a["values"], b["values"]), f"{what}: values differ"
    torch.testing.assert_close(b["scores"], a["scores"], rtol=1e-5, atol=1e-6, equal_nan=True, msg=what)
    assert torch.equal(want.seen, got.seen)


def assert_out(got: torch.Tensor, want: torch.Tensor, what: str = "") -> None:
    rtol, atol = TOL[want.dtype]
    assert got.dtype == want.dtype and got.shape == want.shape
    assert not torch.isnan(got).any(), f"{what}: NaN in the output"
    torch.testing.assert_close(got.float(), want.float(), rtol=rtol, atol=atol, msg=what)


def padding_mask(pads: list[int], length: int) -> torch.Tensor:
    return shared_padding_mask(pads, length, DEVICE)


def additive(mask: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    """transformers' additive form of a bool mask (0 = attend, finfo.min = masked)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def causal_padding_mask(pads: list[int], m: int, length: int) -> torch.Tensor:
    return shared_causal_padding_mask(pads, m, length, DEVICE)


def draw(g, b, heads, n, d=D, dtype=torch.float32):
    return torch.randn(b, heads, n, d, generator=g).to(dtype).to(DEVICE)


# ------------------------------------------------------------------------------------------------
# evict mode over many steps: every policy, windows, padding, bool and additive masks, splits
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", POLICIES)
@pytest.mark.parametrize("window", [0, 3])
def test_evict_matches_reference_over_steps(name, window):
    cfg = PolicyConfig(name, window=window, kernel=3, sinks=2, seed=5)
    budget, prompt, steps, pads = 9, 14, 12, [0, 4, 11]
    g = torch.Generator().manual_seed(1)
    want = empty_buffers(budget)
    want.seen.add_(prompt)
    attend_evict_reference(
        draw(g, B, H, prompt), draw(g, B, HKV, prompt), draw(g, B, HKV, prompt),
        causal_padding_mask(pads, prompt, prompt), want, 0.4, budget, cfg, 0,
    )
    got = clone(want)
    for step in range(steps):
        q, k, v = draw(g, B, H, 1), draw(g, B, HKV, 1), draw(g, B, HKV, 1)
        mask = padding_mask(pads, prompt + step + 1)
        if step % 2:
            mask = additive(mask)
        want.seen.add_(1)
        got.seen.add_(1)
        out_want = ref.decode_evict(q, k, v, mask, want, 0.4, cfg)
        out_got = tri.decode_evict(q, k, v, mask, got, 0.4, cfg, splits=(None, None, 3)[step % 3])
        assert_out(out_got, out_want, f"step {step}")
        assert_same_state(want, got, f"step {step}")


# ------------------------------------------------------------------------------------------------
# awkward shapes: N, D, MHA/GQA/MQA, dtypes, forced splits, broadcast mask
# ------------------------------------------------------------------------------------------------

SHAPES = [
    # (N, D, H, Hkv, dtype, splits)
    (1, 16, 4, 4, torch.float32, 1),
    (1, 24, 4, 2, torch.float32, 3),
    (7, 24, 4, 2, torch.float32, 7),
    (7, 16, 2, 2, torch.bfloat16, 3),
    (33, 64, 4, 1, torch.float16, 7),
    (33, 24, 6, 3, torch.float16, 1),
    (130, 16, 8, 2, torch.float32, 3),
    (130, 64, 4, 1, torch.bfloat16, None),
]


@pytest.mark.parametrize(("shape", "n", "d", "h", "hkv", "dtype", "splits"), [(i, *s) for i, s in enumerate(SHAPES)])
def test_awkward_shapes_match_reference(shape, n, d, h, hkv, dtype, splits):
    """Three policies per shape (every policy on four shapes), two steps each, then one append."""
    g = torch.Generator().manual_seed(n * 1000 + d)
    b, seen = 2, n + 6
    start = random_buffers(g, n, b, hkv, d, dtype, seen)
    # a broadcast mask (batch stride 0) hiding two held positions in every row
    mask = torch.ones(1, 1, 1, seen + 4, dtype=torch.bool, device=DEVICE)
    mask[..., 1:3] = False
    for i in range(3):
        name = POLICIES[(2 * shape + i) % len(POLICIES)]
        cfg = PolicyConfig(name, window=(shape + i) % 3, sinks=2, seed=i)
        want, got = clone(start), clone(start)
        for step in range(2):
            q, k, v = draw(g, b, h, 1, d, dtype), draw(g, b, hkv, 1, d, dtype), draw(g, b, hkv, 1, d, dtype)
            step_mask = mask if step == 0 else additive(mask, dtype)
            out_want = ref.decode_evict(q, k, v, step_mask, want, d**-0.5, cfg)
            out_got = tri.decode_evict(q, k, v, step_mask, got, d**-0.5, cfg, splits=splits)
            assert_out(out_got, out_want, f"{name} step {step}")
            assert_same_state(want, got, f"{name} step {step}")
            want.seen.add_(1)
            got.seen.add_(1)
    # append mode on the same shapes
    want, got = clone(start), clone(start)
    q, k, v = draw(g, b, h, 1, d, dtype), draw(g, b, hkv, 1, d, dtype), draw(g, b, hkv, 1, d, dtype)
    assert_out(tri.decode_append(q, k, v, mask, got, 0.3, splits=splits), ref.decode_append(q, k, v, mask, want, 0.3))
    assert_same_state(want, got, "append")


# ------------------------------------------------------------------------------------------------
# victim edge cases: exact ties, NaN scores, empty slots, sinks beyond the valid count
# ------------------------------------------------------------------------------------------------


def test_victim_edge_cases_match_reference():
    """Tiny buffers where the ranking hinges on ties: zero queries give every valid candidate the
    same mass, integer-valued old scores tie, NaN scores rank as -inf, empty slots rank first,
    streaming's sinks exceed the number of valid tokens."""
    g = torch.Generator().manual_seed(7)
    for trial in range(24):
        name = POLICIES[trial % len(POLICIES)]
        n = 1 + trial % 6
        cfg = PolicyConfig(name, window=trial % 3, sinks=(0, 1, 3, 8)[trial % 4], seed=trial)
        bufs = random_buffers(g, n, 2, 1, D, torch.float32, seen=n + 3, free=trial % 3)
        bufs.scores.copy_(torch.randint(0, 2, bufs.scores.shape, generator=g).float())
        bufs.scores[torch.rand(bufs.scores.shape, generator=g) < 0.2] = float("nan")
        mask = None if trial % 2 else (torch.rand(2, 1, 1, n + 3, generator=g) < 0.7).to(DEVICE)
        q = torch.zeros(2, 2, 1, D, device=DEVICE) if trial % 3 == 0 else draw(g, 2, 2, 1)
        k, v = draw(g, 2, 1, 1), draw(g, 2, 1, 1)
        want, got = bufs, clone(bufs)
        out_want = ref.decode_evict(q, k, v, mask, want, 0.5, cfg)
        out_got = tri.decode_evict(q, k, v, mask, got, 0.5, cfg, splits=1 + trial % 3)
        assert_out(out_got, out_want, f"trial {trial}")
        assert_same_state(want, got, f"trial {trial} ({cfg})")


def test_empty_slots_fill_first():
    g = torch.Generator().manual_seed(3)
    bufs = random_buffers(g, 8, 2, 2, D, torch.float32, seen=20, free=3)
    for _ in range(3):
        bufs.seen.add_(1)
        free_before = (bufs.positions < 0).sum(-1)
        tri.decode_evict(draw(g, 2, 4, 1), draw(g, 2, 2, 1), draw(g, 2, 2, 1), None, bufs, 0.3, PolicyConfig("h2o", window=2))
        assert torch.equal((bufs.positions < 0).sum(-1), free_before - 1)
        assert ((bufs.positions == bufs.seen - 1).sum(-1) == 1).all()


def test_new_token_dropped_when_it_ranks_last():
    """window 0: a new token older than every held one (streaming) is not written at all."""
    cfg = PolicyConfig("streaming", window=0, sinks=0)
    bufs = empty_buffers(3, b=1, hkv=1)
    bufs.positions.copy_(torch.tensor([[[5, 6, 7]]]))
    bufs.seen.fill_(3)  # the new token's position (2) is older than every held one
    before = clone(bufs)
    tri.decode_evict(draw(None, 1, 1, 1), draw(None, 1, 1, 1), draw(None, 1, 1, 1), None, bufs, 1.0, cfg, splits=2)
    assert_same_state(before, bufs)


def test_empty_buffer_attends_to_the_new_token_only():
    """N = 0 (the reference cannot index an empty buffer): out = v_new, nothing to write."""
    g = torch.Generator().manual_seed(12)
    bufs = empty_buffers(0, b=2, hkv=1)
    bufs.seen.fill_(4)
    q, k, v = draw(g, 2, 2, 1), draw(g, 2, 1, 1), draw(g, 2, 1, 1)
    assert_out(tri.decode_evict(q, k, v, None, bufs, 0.5, PolicyConfig("tova")), v.expand(2, 2, 1, D))
    assert_out(tri.decode_append(q, k, v, None, bufs, 0.5), v.expand(2, 2, 1, D))


def test_rows_with_nothing_valid_give_zero():
    """A row masked everywhere (and its new token) gets out = 0 and no mass, never NaN."""
    g = torch.Generator().manual_seed(4)
    bufs = random_buffers(g, 5, 2, 1, D, torch.float32, seen=9)
    mask = torch.ones(2, 1, 1, 9, dtype=torch.bool, device=DEVICE)
    mask[1] = False
    want, got = bufs, clone(bufs)
    q, k, v = draw(g, 2, 2, 1), draw(g, 2, 1, 1), draw(g, 2, 1, 1)
    cfg = PolicyConfig("snapkv", window=1)
    out = tri.decode_evict(q, k, v, mask, got, 0.5, cfg, splits=2)
    assert_out(out, ref.decode_evict(q, k, v, mask, want, 0.5, cfg))
    assert torch.equal(out[1], torch.zeros_like(out[1]))
    assert_same_state(want, got)


# ------------------------------------------------------------------------------------------------
# append mode
# ------------------------------------------------------------------------------------------------


def test_append_fills_free_slots_then_writes_nothing():
    g = torch.Generator().manual_seed(5)
    pads = [0, 2, 5]
    bufs = random_buffers(g, 6, B, HKV, D, torch.float32, seen=8, free=3)
    want, got = bufs, clone(bufs)
    for step in range(4):  # 3 free slots: the 4th step finds none
        want.seen.add_(1)
        got.seen.add_(1)
        mask = padding_mask(pads, int(want.seen) + 2)
        q, k, v = draw(g, B, H, 1), draw(g, B, HKV, 1), draw(g, B, HKV, 1)
        if step < 3:
            free = (got.positions < 0).to(torch.int8).argmax(-1)
            out_want = ref.decode_append(q, k, v, mask, want, 0.3)
            out_got = tri.decode_append(q, k, v, mask, got, 0.3, splits=1 + step)
            assert_out(out_got, out_want, f"step {step}")
            assert_same_state(want, got, f"step {step}")
            # the first free slot, exactly, with score 0
            idx = (torch.arange(B)[:, None], torch.arange(HKV)[None, :], free)
            assert (got.positions[idx] == got.seen - 1).all()
            assert (got.scores[idx] == 0).all()
        else:
            before = clone(got)
            with pytest.raises(IndexError):
                ref.decode_append(q, k, v, mask, clone(want), 0.3)
            out_got = tri.decode_append(q, k, v, mask, got, 0.3, splits=2)
            assert_same_state(before, got, "no free slot: nothing written")
            for name in ("keys", "values", "positions", "scores"):
                assert torch.equal(getattr(before, name), getattr(got, name))
            # out is still the attention over the buffer and the new token
            valid, valid_new = ref.slot_validity(mask, got.positions, got.seen - 1)
            out_want, _, _ = ref.decode_attend(q, k, v, got.keys, got.values, valid, valid_new, 0.3)
            assert_out(out_got, out_want, "no free slot")


# ------------------------------------------------------------------------------------------------
# workspace: uninitialised scratch does not leak, counters are reset
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["snapkv", "tova", "knorm", "append"])
def test_nan_scratch_does_not_leak(name, monkeypatch):
    g = torch.Generator().manual_seed(6)
    bufs = random_buffers(g, 11, 2, 2, 24, torch.float32, seen=15)
    mask = torch.ones(2, 1, 1, 15, dtype=torch.bool, device=DEVICE)
    mask[1] = False  # a row with nothing valid
    q, k, v = draw(g, 2, 4, 1, 24), draw(g, 2, 2, 1, 24), draw(g, 2, 2, 1, 24)

    def run(b):
        if name == "append":
            return tri.decode_append(q, k, v, mask, b, 0.2, splits=3)
        return tri.decode_evict(q, k, v, mask, b, 0.2, PolicyConfig(name, window=2), splits=3)

    clean, poisoned = clone(bufs), clone(bufs)
    out_clean = run(clean)
    monkeypatch.setattr(tri, "_scratch", lambda numel, device: torch.full((numel,), float("nan"), device=device))
    out_poisoned = run(poisoned)
    assert not torch.isnan(out_poisoned).any()
    assert torch.equal(out_clean, out_poisoned)
    for key in ("keys", "values", "positions", "scores"):
        assert torch.equal(getattr(clean, key), getattr(poisoned, key)), key


def test_counters_are_reset_after_every_call():
    g = torch.Generator().manual_seed(8)
    cfg = PolicyConfig("h2o", window=1)
    for b, hkv, splits in ((1, 1, 3), (4, 2, 2), (2, 1, 1)):  # the second one may grow the workspace
        bufs = random_buffers(g, 5, b, hkv, D, torch.float32, seen=9)
        tri.decode_evict(draw(g, b, 2 * hkv, 1), draw(g, b, hkv, 1), draw(g, b, hkv, 1), None, bufs, 0.5, cfg, splits=splits)
        counters = tri._COUNTERS[bufs.keys.device]
        assert counters.numel() >= b * hkv
        assert torch.equal(counters, torch.zeros_like(counters))


# ------------------------------------------------------------------------------------------------
# the wrapper: no host synchronisation, no launch but the kernel; CUDA graphs
# ------------------------------------------------------------------------------------------------


class _RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


# tensor creation without initialisation and views (``detach`` is how the dispatch mode returns a
# view): no kernel launch, no host read
_ALLOWED_OPS = {
    "aten.empty.memory_format", "aten.view.default", "aten.view.dtype", "aten.select.int", "aten.slice.Tensor",
    "aten.expand.default", "aten.detach.default",
}


@pytest.mark.parametrize("mode", ["evict", "append"])
def test_wrapper_launches_only_the_kernel_and_never_syncs(mode, monkeypatch):
    """With the kernel replaced by a recorder, the wrapper runs only allocations and views (no
    zeros/fill/copy/cast, no ``.item()`` of ``seen``), and launches exactly one kernel."""
    g = torch.Generator().manual_seed(9)
    bufs = random_buffers(g, 6, 2, 2, D, torch.float32, seen=9)
    args = (draw(g, 2, 4, 1), draw(g, 2, 2, 1), draw(g, 2, 2, 1), additive(padding_mask([0, 2], 9)[:2]), bufs, 0.5)
    cfg = PolicyConfig("streaming", window=1)

    def call():
        return tri.decode_evict(*args, cfg) if mode == "evict" else tri.decode_append(*args)

    call()  # warm-up: creates the counter workspace (once per device)
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *a, **kw: launches.append(grid)

    monkeypatch.setattr(tri, "_decode_step_kernel", Recorder())
    with _RecordOps() as rec:
        call()
    assert launches and len(launches) == 1
    assert set(rec.ops) <= _ALLOWED_OPS, sorted(set(rec.ops) - _ALLOWED_OPS)


@pytest.mark.skipif(not torch.cuda.is_available() or DEVICE != "cuda", reason="CUDA graphs need a CUDA device")
def test_cuda_graph_capture_and_replay():
    cfg = PolicyConfig("h2o", window=2)
    g = torch.Generator().manual_seed(10)
    start = random_buffers(g, 40, 2, 2, 64, torch.float16, seen=50)
    want, got = clone(start), clone(start)
    q, k, v = draw(g, 2, 4, 1, 64, torch.float16), draw(g, 2, 2, 1, 64, torch.float16), draw(g, 2, 2, 1, 64, torch.float16)
    mask = torch.ones(2, 1, 1, 64, dtype=torch.bool, device=DEVICE)
    # warm up on a side stream (compiles the kernel, creates the counters), then capture one step
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        tri.decode_evict(q, k, v, mask, clone(start), 0.125, cfg)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = tri.decode_evict(q, k, v, mask, got, 0.125, cfg)
    for step in range(4):
        for t in (q, k, v):
            t.copy_(torch.randn(t.shape, generator=g).to(t))
        want.seen.add_(1)
        got.seen.add_(1)
        out_want = ref.decode_evict(q, k, v, mask, want, 0.125, cfg)
        graph.replay()
        assert_out(out.clone(), out_want, f"replay {step}")
        assert_same_state(want, got, f"replay {step}")


# ------------------------------------------------------------------------------------------------
# argument checks
# ------------------------------------------------------------------------------------------------


def test_bad_arguments_raise_value_errors():
    g = torch.Generator().manual_seed(11)
    bufs = random_buffers(g, 4, 1, 1, D, torch.float32, seen=6)
    q, k, v = draw(g, 1, 2, 1), draw(g, 1, 1, 1), draw(g, 1, 1, 1)
    cfg = PolicyConfig("snapkv")
    cases = {
        "one new token": dict(q=draw(g, 1, 2, 2)),
        "k_new must be": dict(k=draw(g, 1, 1, 2)),
        "v_new must have": dict(v=v.half()),
        "positions must be int64": dict(bufs=LayerBuffers(bufs.keys, bufs.values, bufs.positions.int(), bufs.scores, bufs.seen)),
        "scores must be float32": dict(bufs=LayerBuffers(bufs.keys, bufs.values, bufs.positions, bufs.scores.double(), bufs.seen)),
        "0-dim int64": dict(bufs=LayerBuffers(bufs.keys, bufs.values, bufs.positions, bufs.scores, bufs.seen.view(1))),
        "mask must be bool": dict(mask=torch.zeros(1, 1, 1, 6, dtype=torch.float64, device=DEVICE)),
        "mask must be \\[B or 1": dict(mask=torch.ones(3, 1, 1, 6, dtype=torch.bool, device=DEVICE)),
        "splits must be": dict(splits=0),
        "must agree on batch": dict(q=draw(g, 2, 2, 1)),
    }
    for message, change in cases.items():
        a = dict(q=q, k=k, v=v, mask=None, bufs=bufs, splits=None) | change
        with pytest.raises(ValueError, match=message):
            tri.decode_evict(a["q"], a["k"], a["v"], a["mask"], a["bufs"], 0.5, cfg, splits=a["splits"])
    with pytest.raises(ValueError, match="PolicyConfig"):
        tri.decode_evict(q, k, v, None, bufs, 0.5, "snapkv")
