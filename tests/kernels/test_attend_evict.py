"""depthkv::attend_evict on the Triton kernels equals the reference op: on CUDA where a GPU and
Triton are there, else on the CPU under the interpreter (``TRITON_INTERPRET=1``, set by `make test`)."""

from __future__ import annotations

import os

import pytest
import torch

from depthkv.kernels import LayerBuffers, attend_evict, available_impls
from depthkv.policies import PolicyConfig

DEVICE = "cuda" if torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1" else "cpu"
pytestmark = pytest.mark.skipif(
    "triton" not in available_impls(DEVICE),
    reason="needs triton: on a CUDA GPU, or on the CPU with TRITON_INTERPRET=1 (set by `make test`)",
)

B, H, HKV, D, BUDGET = 2, 4, 2, 16, 12


def _buffers():
    return LayerBuffers(
        torch.zeros(B, HKV, BUDGET, D, device=DEVICE),
        torch.zeros(B, HKV, BUDGET, D, device=DEVICE),
        torch.full((B, HKV, BUDGET), -1, dtype=torch.long, device=DEVICE),
        torch.zeros(B, HKV, BUDGET, device=DEVICE),
        torch.zeros((), dtype=torch.long, device=DEVICE),
    )


def _run(impl, policy, steps):
    bufs = _buffers()
    cfg = PolicyConfig(name=policy, window=4, kernel=3, sinks=2, seed=0)
    outs = []
    for q, k, v in steps:
        bufs.seen.add_(q.shape[2])
        outs.append(attend_evict(impl, q, k, v, None, bufs, D**-0.5, BUDGET, cfg, 0))
    return outs, bufs


@pytest.mark.parametrize("policy", ["snapkv", "h2o", "tova", "knorm", "streaming"])
def test_triton_path_equals_reference(policy):
    g = torch.Generator().manual_seed(0)

    def draw(heads, n):
        return torch.randn(B, heads, n, D, generator=g).to(DEVICE)

    steps = [(draw(H, 29), draw(HKV, 29), draw(HKV, 29))]
    steps += [(draw(H, 1), draw(HKV, 1), draw(HKV, 1)) for _ in range(4)]
    ref_out, ref_bufs = _run("reference", policy, steps)
    tri_out, tri_bufs = _run("triton", policy, steps)
    for a, b in zip(ref_out, tri_out):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)
    assert torch.equal(ref_bufs.positions, tri_bufs.positions)  # same kept positions
    torch.testing.assert_close(tri_bufs.keys, ref_bufs.keys)
    torch.testing.assert_close(tri_bufs.scores, ref_bufs.scores, rtol=1e-4, atol=1e-6)
