"""Eviction policies, part 1: per-slot scores (:func:`score`).

These are the pure-PyTorch reference implementations; they define correctness for every faster
path (Triton, flash). Everything is GQA-native: scores are computed per *KV head*, pooling the
``g = H // Hkv`` query heads that share it (MHA: ``g = 1``; MQA: ``Hkv = 1``). Inputs may be
fp32, fp16 or bf16; all arithmetic is done in fp32 and scores are returned as fp32.

Two functions make a policy:

* :func:`score` turns the current step's queries and the held keys into scores ``[B, Hkv, N]``
  (higher = more worth keeping).
* :func:`select` turns scores into the indices of the ``budget`` slots to keep, always keeping the
  observation window (the ``window`` most recent valid tokens) and, for ``streaming``, the
  attention sinks.

Policies (name → paper):

* ``snapkv`` — SnapKV, Li et al. 2024, https://arxiv.org/abs/2404.14469 (default)
* ``h2o`` — H2O heavy hitters, Zhang et al. 2023, https://arxiv.org/abs/2306.14048
* ``streaming`` — StreamingLLM, Xiao et al. 2023, https://arxiv.org/abs/2309.17453
* ``tova`` — TOVA, Oren et al. 2024, https://arxiv.org/abs/2401.06104
* ``knorm`` — key-norm, Devoto et al. 2024, https://arxiv.org/abs/2406.11430
* ``random`` — uniform random scores, a control
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from depthkv.policies.config import PolicyConfig

__all__ = ["attention_probs", "pool", "random_scores", "score"]

# Queries processed at once by h2o, so a long prefill never materialises an S x S matrix per head.
_QUERY_CHUNK = 1024


# ----------------------------------------------------------------------------------------------
# attention probabilities
# ----------------------------------------------------------------------------------------------


def _group_shapes(q: torch.Tensor, keys: torch.Tensor) -> tuple[int, int, int, int, int]:
    if q.dim() != 4 or keys.dim() != 4:
        raise ValueError(
            f"q must be [B, H, m, D] and keys [B, Hkv, N, D]; got q {tuple(q.shape)}, keys {tuple(keys.shape)}"
        )
    b, h, m, d = q.shape
    kb, hkv, n, kd = keys.shape
    if kb != b or kd != d:
        raise ValueError(f"q {tuple(q.shape)} and keys {tuple(keys.shape)} must agree on batch and head dim")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"query heads H={h} must be a multiple of kv heads Hkv={hkv}")
    return b, hkv, h // hkv, m, n


def _check_mask(mask: torch.Tensor, b: int, hkv: int, m: int, n: int) -> torch.Tensor:
    if mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool tensor (True = may attend), got {mask.dtype}")
    try:
        return mask.expand(b, hkv, m, n)
    except RuntimeError:
        raise ValueError(
            f"mask {tuple(mask.shape)} does not broadcast to [B, Hkv, m, N] = {[b, hkv, m, n]}"
        ) from None


def attention_probs(q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """Masked softmax attention probabilities, grouped by KV head.

    ``p[b, k, j, i, n] = softmax_n(scaling * <q[b, k*g + j, i], keys[b, k, n]>)`` over the slots
    ``n`` with ``mask[b, k, i, n]``; masked entries are exactly 0, and a query row with no allowed
    slot is all zeros (not NaN).

    Args:
        q: ``[B, H, m, D]`` queries, any float dtype; ``H = Hkv * g`` and query head ``h`` belongs to
            KV head ``h // g``.
        keys: ``[B, Hkv, N, D]``.
        mask: ``[B, Hkv, m, N]`` bool (broadcastable), True = query ``i`` may attend slot ``n``.
        scaling: softmax temperature, usually ``D ** -0.5``.

    Returns:
        float32 ``[B, Hkv, g, m, N]``.
    """
    b, hkv, g, m, n = _group_shapes(q, keys)
    mask = _check_mask(mask, b, hkv, m, n)
    qg = q.float().reshape(b, hkv, g, m, q.shape[-1])
    logits = torch.matmul(qg, keys.float().unsqueeze(2).transpose(-1, -2)) * float(scaling)
    allowed = mask.unsqueeze(2)
    logits = logits.masked_fill(~allowed, float("-inf"))
    # Subtract the row max of the allowed entries only; a fully masked row has max -inf, use 0.
    row_max = logits.amax(dim=-1, keepdim=True) if n > 0 else logits.sum(dim=-1, keepdim=True)
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    e = torch.exp(logits - row_max).masked_fill(~allowed, 0.0)
    denom = e.sum(dim=-1, keepdim=True)
    return torch.where(denom > 0, e / denom.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(e))


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------


def _observation_queries(cfg: PolicyConfig, m: int) -> int:
    # window = 0 would score with no queries at all (all zeros); the last query is the least
    # surprising stand-in.
    return min(max(cfg.window, 1), m)


def _summed_probs(q: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor, scaling: float) -> torch.Tensor:
    """``sum over query heads of a group and over all m queries`` of the probabilities: ``[B, Hkv, N]``."""
    b, hkv, _, m, n = _group_shapes(q, keys)
    mask = _check_mask(mask, b, hkv, m, n)
    total = torch.zeros(b, hkv, n, dtype=torch.float32, device=keys.device)
    for start in range(0, m, _QUERY_CHUNK):
        stop = min(start + _QUERY_CHUNK, m)
        p = attention_probs(q[:, :, start:stop], keys, mask[:, :, start:stop], scaling)
        total = total + p.sum(dim=(2, 3))
    return total


def pool(scores: torch.Tensor, kernel: int, window: int) -> torch.Tensor:
    """SnapKV's pooling, as published: 1-D average pooling of the slots *before* the observation window.

    The last ``window`` slots (the observation window, kept whatever their score) are left as they
    are; the slots before them are averaged over ``kernel`` neighbours with stride 1 and zero padding
    of ``kernel // 2`` on both sides of that segment, the padding counted in the average
    (``avg_pool1d``'s default ``count_include_pad=True``), exactly as the original SnapKV code and
    kvpress do. Left padding of a batch row has score 0 (masked attention), so a padded row pools
    like the same sequence without padding.

    Args:
        scores: ``[B, Hkv, N]``, slots in ascending position order (a prefill).

    Returns:
        float ``[B, Hkv, N]``.
    """
    b, hkv, n = scores.shape
    cut = max(n - max(window, 0), 0)
    if kernel == 1 or cut == 0:
        return scores
    head = F.avg_pool1d(scores[..., :cut].reshape(b * hkv, 1, cut), kernel_size=kernel, stride=1, padding=kernel // 2)
    return torch.cat([head.reshape(b, hkv, cut), scores[..., cut:]], dim=-1)


def _score_snapkv(cfg, q, keys, mask, positions, scaling, prev_scores):
    w = _observation_queries(cfg, q.shape[2])
    s = _summed_probs(q[:, :, q.shape[2] - w :], keys, mask[..., mask.shape[-2] - w :, :], scaling)
    if prev_scores is None:
        return pool(s, cfg.kernel, cfg.window)
    return prev_scores.float() + s


def _score_h2o(cfg, q, keys, mask, positions, scaling, prev_scores):
    s = _summed_probs(q, keys, mask, scaling)
    return s if prev_scores is None else prev_scores.float() + s


def _score_tova(cfg, q, keys, mask, positions, scaling, prev_scores):
    b, hkv, g, m, n = _group_shapes(q, keys)
    if m == 0:
        return torch.zeros(b, hkv, n, dtype=torch.float32, device=keys.device)
    p = attention_probs(q[:, :, m - 1 :], keys, mask[..., mask.shape[-2] - 1 :, :], scaling)
    return p[:, :, :, 0].mean(dim=2)


def _score_knorm(cfg, q, keys, mask, positions, scaling, prev_scores):
    return -torch.linalg.vector_norm(keys.float(), dim=-1)


def _score_streaming(cfg, q, keys, mask, positions, scaling, prev_scores):
    return positions.to(torch.float32)


_MASK32 = 0xFFFFFFFF
_MIX = 0x45D9F3B  # a well-mixing odd 32-bit multiplier (< 2^27, so products stay inside int64)


def random_salt(seed: int) -> int:
    """The seed's 32-bit salt in :func:`random_scores`."""
    return (0x9E3779B9 * (int(seed) + 1)) & _MASK32


def random_scores(positions: torch.Tensor, seed: int) -> torch.Tensor:
    """The ``random`` policy's scores: a hash of (position, KV head, seed) mapped to ``[0, 1)``.

    A function of the token, never of the slot it sits in, so every path (the eager cache with
    position-ordered slots, the compiled buffers whose slots are in any order, the Triton kernel)
    draws the same score for the same token: ``x = (pos + 2^20 * head) mod 2^32 xor
    (0x9E3779B9 * (seed + 1) mod 2^32)``, three rounds of ``x = ((x >> 16) ^ x) * 0x45D9F3B mod 2^32``,
    a last ``x ^= x >> 16``, score ``(x >> 8) / 2^24`` (exact in fp32).
    Every tensor operation here also has a Triton equivalent.

    Args:
        positions: int64 ``[B, Hkv, N]``.
        seed: the policy's seed.

    Returns:
        float32 ``[B, Hkv, N]``.
    """
    heads = torch.arange(positions.shape[1], device=positions.device).view(1, -1, 1)
    x = ((positions.long() + heads * (1 << 20)) & _MASK32) ^ random_salt(seed)
    for _ in range(3):
        x = (((x >> 16) ^ x) * _MIX) & _MASK32
    x = (x >> 16) ^ x
    return (x >> 8).to(torch.float32) * (1.0 / (1 << 24))


def _score_random(cfg, q, keys, mask, positions, scaling, prev_scores):
    return random_scores(positions, cfg.seed)


_SCORERS = {
    "snapkv": _score_snapkv,
    "h2o": _score_h2o,
    "streaming": _score_streaming,
    "tova": _score_tova,
    "knorm": _score_knorm,
    "random": _score_random,
}


def score(
    cfg: PolicyConfig,
    q: torch.Tensor,
    keys: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    scaling: float,
    prev_scores: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-slot, per-KV-head eviction scores; higher = more worth keeping.

    With ``P = attention_probs(q, keys, mask, scaling)`` (``[B, Hkv, g, m, N]``) and
    ``w' = min(max(window, 1), m)``:

    * ``snapkv`` (SnapKV, https://arxiv.org/abs/2404.14469): without ``prev_scores`` (prefill, slots
      in ascending position order) ``s = avgpool_kernel( sum_{j < g, i >= m - w'} P[..., j, i, :] )``
      over the slots before the observation window (the last ``window`` slots keep their sums),
      1-D average pooling with stride 1, zero padding ``kernel // 2`` counted in the average, as the
      original SnapKV (:func:`pool`). **Decode rule**: with ``prev_scores`` (decode steps, later
      chunks) ``s = prev_scores + sum_{j, i >= m - w'} P[..., j, i, :]`` *without* pooling, because
      after eviction neighbouring slots are no longer neighbouring tokens.
    * ``h2o`` (H2O, https://arxiv.org/abs/2306.14048): accumulated attention
      ``s = prev_scores + sum_{j, i} P[..., j, i, :]`` over all ``m`` queries (``prev_scores`` = 0 if
      None).
    * ``tova`` (TOVA, https://arxiv.org/abs/2401.06104): attention of the last query only, averaged
      over the group's query heads: ``s = mean_j P[..., j, m - 1, :]``. Stateless.
    * ``knorm`` (https://arxiv.org/abs/2406.11430): ``s = -||keys||_2`` (low key norm = keep).
    * ``streaming`` (StreamingLLM, https://arxiv.org/abs/2309.17453): ``s = float(position)``
      (recent = keep); the sinks are forced by :func:`select`.
    * ``random``: a hash of (position, KV head, ``cfg.seed``) in ``[0, 1)`` (:func:`random_scores`):
      the same token gets the same score on every path and at every step, whatever slot holds it.

    ``window == 0`` scores snapkv with the last query (zero queries would score nothing).
    ``prev_scores`` is ignored by the stateless policies.

    Args:
        cfg: the policy.
        q: ``[B, H, m, D]`` queries of the current step (post-RoPE), ``H = Hkv * g``.
        keys: ``[B, Hkv, N, D]`` all slots held now (old and new).
        mask: ``[B, Hkv, m, N]`` bool (broadcastable), True = query ``i`` may attend slot ``n``.
        positions: ``[B, Hkv, N]`` integer logical position of each slot.
        scaling: softmax scale (``D ** -0.5`` usually).
        prev_scores: ``[B, Hkv, N]`` float32 accumulated scores (0 for slots new this step), or None.

    Returns:
        float32 ``[B, Hkv, N]``.
    """
    b, hkv, _, m, n = _group_shapes(q, keys)
    mask = _check_mask(mask, b, hkv, m, n)
    if tuple(positions.shape) != (b, hkv, n):
        raise ValueError(f"positions must be [B, Hkv, N] = {[b, hkv, n]}, got {tuple(positions.shape)}")
    if positions.is_floating_point() or positions.is_complex():
        raise ValueError(f"positions must be an integer tensor, got {positions.dtype}")
    if prev_scores is not None and tuple(prev_scores.shape) != (b, hkv, n):
        raise ValueError(f"prev_scores must be [B, Hkv, N] = {[b, hkv, n]}, got {tuple(prev_scores.shape)}")
    return _SCORERS[cfg.name](cfg, q, keys, mask, positions, scaling, prev_scores)
