"""depthkv's SnapKV keeps what the published SnapKV keeps (Li et al. 2024, its reference code and
kvpress): observation-window votes of the tokens before the window, average-pooled with zero padding
counted, the top ``capacity - window`` of them plus the window itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from depthkv.policies import PolicyConfig, score, select


def published_snapkv(q: torch.Tensor, k: torch.Tensor, window: int, kernel: int, capacity: int):
    """The reference code's selection for one prefill (MHA, no padding): ``(pooled votes, kept indices)``."""
    n, d = k.shape[2], k.shape[3]
    logits = q[..., -window:, :] @ k.transpose(-1, -2) / d**0.5
    causal = torch.arange(n)[None, :] <= torch.arange(n - window, n)[:, None]
    probs = torch.softmax(logits.masked_fill(~causal, float("-inf")), dim=-1)
    votes = probs[..., :-window].sum(dim=-2)
    b, h, _ = votes.shape
    pooled = F.avg_pool1d(votes.reshape(b * h, 1, -1), kernel_size=kernel, padding=kernel // 2, stride=1)
    pooled = pooled.reshape(b, h, -1)
    top = pooled.topk(capacity - window, dim=-1).indices
    window_idx = torch.arange(n - window, n).expand(b, h, window)
    return pooled, torch.cat([top, window_idx], dim=-1).sort(dim=-1).values


@pytest.mark.parametrize("n, window, kernel, capacity", [(40, 8, 5, 16), (64, 16, 7, 30), (23, 4, 3, 9)])
def test_the_same_tokens_as_the_published_snapkv(n, window, kernel, capacity):
    g = torch.Generator().manual_seed(n)
    q = torch.randn(2, 3, n, 16, generator=g, dtype=torch.float64)
    k = torch.randn(2, 3, n, 16, generator=g, dtype=torch.float64)
    cfg = PolicyConfig(name="snapkv", window=window, kernel=kernel)
    positions = torch.arange(n).expand(2, 3, n)
    mask = positions[:, :, None, :] <= torch.arange(n)[None, None, :, None]
    ours = score(cfg, q, k, mask, positions, 16**-0.5)
    pooled, kept = published_snapkv(q, k, window, kernel, capacity)
    torch.testing.assert_close(ours[..., : n - window].double(), pooled, rtol=1e-5, atol=1e-7)
    assert torch.equal(select(cfg, ours, positions, torch.ones_like(positions, dtype=torch.bool), capacity), kept)
