"""One decode step (a single new token) on a layer's fixed buffer, without sorting or compaction.

Two modes, both written only with tensor operations Inductor can fuse (no host synchronisation,
no data-dependent shapes), so :func:`depthkv.backend`'s FX pass emits them straight into the
compiled graph, and the eager :class:`~depthkv.StaticBudgetCache` runs them as they are:

* :func:`decode_evict` — the budget is fixed for ever. The new token attends over the buffer and
  itself; the per-slot attention mass updates the policy's scores; then the new token either
  takes a free slot or replaces the *lowest-ranked* slot (one lexicographic argmin over the
  ``N + 1`` candidates, outside the protected window), written in place.
* :func:`decode_append` — the prompt was compressed once; the new token is written to the first
  free slot of the reserved tail, then attends over the buffer; nothing is evicted (plain masked
  attention).

The kept *set* equals what :func:`depthkv.policies.select` keeps from buffer + new token (the
eager :class:`~depthkv.BudgetCache` and :func:`~depthkv.kernels.evict_reference.attend_evict_reference`):
the ranking is the same (forced slots, then score, ties to the later position, invalid slots
last), and dropping one of ``N + 1`` candidates only needs the last of that ranking. Slot order
differs (attention does not care: positions are applied by RoPE before the cache).

Forced slots without a sort: the observation window is the valid slots at positions
``>= seen - window``. That equals "the ``window`` valid slots with the largest positions" because
the cache always holds the most recent ``window`` tokens (they are forced at every step and the
budget is at least the window) and a row's valid tokens are its most recent ones (left padding,
sliding windows). ``streaming``'s sinks are the ``sinks`` smallest valid positions (a top-k of
``sinks`` elements).

Paper for the accumulated scores: H2O (https://arxiv.org/abs/2306.14048); the observation window
and its decode rule: SnapKV (https://arxiv.org/abs/2404.14469).
"""

from __future__ import annotations

import torch

from depthkv.kernels.attention import as_bool_mask
from depthkv.kernels.buffers import LayerBuffers
from depthkv.policies import PolicyConfig
from depthkv.policies.scores import random_scores

__all__ = [
    "candidate_scores", "decode_append", "decode_attend", "decode_evict", "decode_step_flat", "slot_validity", "victim",
]

_INT64_MAX = torch.iinfo(torch.int64).max


def slot_validity(
    mask: torch.Tensor | None, positions: torch.Tensor, qpos: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Which buffer slots and whether the new token may be attended.

    Args:
        mask: bool or additive ``[B or 1, 1, 1, L]`` over logical positions, or None (no padding).
        positions: int64 ``[B, Hkv, N]`` (-1 = empty).
        qpos: int64 ``[]`` the new token's logical position (``seen - 1``).

    Returns:
        ``(valid [B, Hkv, N], valid_new [B, Hkv, 1])`` bool.
    """
    b, hkv, n = positions.shape
    held = positions >= 0
    if mask is None:
        return held, torch.ones((b, hkv, 1), dtype=torch.bool, device=positions.device)
    row = as_bool_mask(mask)[:, 0, -1, :].expand(b, mask.shape[-1])  # [B, L]
    at = row.gather(1, positions.clamp_min(0).reshape(b, hkv * n)).reshape(b, hkv, n)
    new = row.gather(1, qpos.reshape(1, 1).expand(b, 1))  # [B, 1]
    return held & at, new[:, None, :].expand(b, hkv, 1)


def decode_attend(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    valid: torch.Tensor,
    valid_new: torch.Tensor,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attention of one new token over the buffer and itself, without concatenating them.

    One softmax over the ``N`` buffer slots and the new token (fp32; GQA: the ``g`` query heads of
    a KV head are the rows of one group). Invalid slots get probability 0; a row with nothing
    valid gives ``out = 0`` and zero mass (never NaN).

    Args:
        q: ``[B, H, 1, D]``; k_new, v_new: ``[B, Hkv, 1, D]``; keys, values: ``[B, Hkv, N, D]``.
        valid: bool ``[B, Hkv, N]``; valid_new: bool ``[B, Hkv, 1]``.
        scaling: softmax scale.

    Returns:
        ``(out [B, H, 1, D] in q's dtype, mass [B, Hkv, N] fp32, mass_new [B, Hkv, 1] fp32)``:
        mass is the probability summed over the group's query heads.
    """
    b, h, _, d = q.shape
    hkv = keys.shape[1]
    g = h // hkv
    qg = q.float().reshape(b, hkv, g, d)
    logits = torch.matmul(qg, keys.float().transpose(-1, -2)) * scaling  # [B, Hkv, g, N]
    logit_new = (qg * k_new.float()).sum(-1, keepdim=True) * scaling  # [B, Hkv, g, 1]
    neg = float("-inf")
    logits = logits.masked_fill(~valid[:, :, None, :], neg)
    logit_new = logit_new.masked_fill(~valid_new[:, :, None, :], neg)
    top = torch.maximum(logits.amax(-1, keepdim=True), logit_new) if keys.shape[2] else logit_new
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(logits - top)
    e_new = torch.exp(logit_new - top)
    denom = e.sum(-1, keepdim=True) + e_new
    inv = torch.where(denom > 0, 1.0 / denom.clamp_min(torch.finfo(torch.float32).tiny), torch.zeros_like(denom))
    p = e * inv
    p_new = e_new * inv
    out = torch.matmul(p, values.float()) + p_new * v_new.float()  # [B, Hkv, g, D]
    return out.reshape(b, h, 1, d).to(q.dtype), p.sum(2), p_new.sum(2)


def candidate_scores(
    policy: PolicyConfig,
    buffers: LayerBuffers,
    k_new: torch.Tensor,
    qpos: torch.Tensor,
    mass: torch.Tensor,
    mass_new: torch.Tensor,
    groups: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The policy's scores of the buffer's slots and of the new token after this step.

    Same values as :func:`depthkv.policies.score` on buffer + new token in the decode rule:
    ``snapkv``/``h2o`` add this step's mass to the accumulated scores (0 for the new token);
    ``tova`` is the mass averaged over the group; ``knorm`` ``-||k||``; ``streaming`` the position;
    ``random`` :func:`~depthkv.policies.scores.random_scores`.

    Returns:
        fp32 ``(scores [B, Hkv, N], score_new [B, Hkv, 1])``.
    """
    name = policy.name
    if name in ("snapkv", "h2o"):
        return buffers.scores.float() + mass, mass_new
    if name == "tova":
        return mass / groups, mass_new / groups
    if name == "knorm":
        return (
            -torch.linalg.vector_norm(buffers.keys.float(), dim=-1),
            -torch.linalg.vector_norm(k_new.float(), dim=-1),
        )
    b, hkv, _ = buffers.positions.shape
    new_pos = qpos.reshape(1, 1, 1).expand(b, hkv, 1)
    if name == "streaming":
        return buffers.positions.float(), new_pos.float()
    if name == "random":
        return random_scores(buffers.positions, policy.seed), random_scores(new_pos, policy.seed)
    raise ValueError(f"unknown eviction policy {name!r}")


_POS_BITS = 29  # positions below 2^29 - 1 (536M tokens) fit the composite key


def _score_order(scores: torch.Tensor) -> torch.Tensor:
    """fp32 scores as int64 in ``[0, 2^32)`` with the same order (NaN as ``-inf``, ``-0`` as ``+0``)."""
    s = torch.where(torch.isnan(scores), torch.full_like(scores, float("-inf")), scores.float()) + 0.0
    bits = s.view(torch.int32).to(torch.int64) & 0xFFFFFFFF
    return torch.where(bits >= 1 << 31, 0xFFFFFFFF - bits, bits + (1 << 31))


def victim(
    policy: PolicyConfig,
    scores: torch.Tensor,
    positions: torch.Tensor,
    valid: torch.Tensor,
    seen: torch.Tensor,
) -> torch.Tensor:
    """The candidate to drop: the last of :func:`~depthkv.policies.select`'s ranking, in one argmin.

    Rank keys, worst first: tier (invalid 0 < valid 1 < forced 2), score (NaN as ``-inf``), then
    position. They are packed into one int64, ``tier · 2^61 + order(score) · 2^29 + (position + 1)``
    (``order`` maps fp32 to ``[0, 2^32)`` monotonically), so a single ``argmin`` — one fused
    reduction — finds the victim. Candidates can tie on all three only when they are empty slots
    (position -1), which are interchangeable.

    Args:
        scores: ``[B, Hkv, C]`` fp32; positions: int64 ``[B, Hkv, C]``; valid: bool ``[B, Hkv, C]``.
        seen: int64 ``[]`` logical length including the new token.

    Returns:
        int64 ``[B, Hkv, 1]`` in ``[0, C)``.
    """
    c = scores.shape[-1]
    forced = valid & (positions >= seen - policy.window)
    if policy.name == "streaming" and policy.sinks > 0:
        key = torch.where(valid, positions, torch.full_like(positions, _INT64_MAX))
        kth = torch.topk(key, min(policy.sinks, c), dim=-1, largest=False).values[..., -1:]
        forced = forced | (valid & (positions <= kth))
    tier = valid.to(torch.int64) + forced.to(torch.int64)
    key = (tier << 61) + (_score_order(scores) << _POS_BITS) + (positions + 1)
    return key.argmin(-1, keepdim=True)


def _write(
    buffers: LayerBuffers,
    index: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    key: torch.Tensor,
    value: torch.Tensor,
    position: torch.Tensor,
    score: torch.Tensor | None,
) -> None:
    """Write one token per (row, KV head) in place at ``index`` (``[B, 1]``, ``[1, Hkv]``,
    ``[B, Hkv]`` slot): ``key``/``value`` ``[B, Hkv, D]``, ``position`` ``[B, Hkv]``, and ``score``
    ``[B, Hkv]`` unless None (the scores are left alone)."""
    buffers.keys.index_put_(index, key)
    buffers.values.index_put_(index, value)
    buffers.positions.index_put_(index, position)
    if score is not None:
        buffers.scores.index_put_(index, score)


def _batch_head_index(b: int, hkv: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.arange(b, device=device).view(b, 1), torch.arange(hkv, device=device).view(1, hkv)


def decode_evict(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
    policy: PolicyConfig,
) -> torch.Tensor:
    """Evict mode: attend, update scores, and put the new token in place of the victim (in place).

    Args:
        q: ``[B, H, 1, D]`` the new token's queries (post-RoPE).
        k_new: ``[B, Hkv, 1, D]`` its key; v_new: ``[B, Hkv, 1, D]`` its value.
        mask: bool or additive ``[B or 1, 1, 1, L]`` over logical positions, or None.
        buffers: the layer's buffers (``N`` slots, all kept); ``seen`` already counts the new token.
        scaling: softmax scale.
        policy: the eviction policy.

    Returns:
        ``[B, H, 1, D]`` attention output (SDPA layout).
    """
    b, hkv, n, _ = buffers.keys.shape
    qpos = buffers.seen - 1
    valid, valid_new = slot_validity(mask, buffers.positions, qpos)
    out, mass, mass_new = decode_attend(
        q, k_new, v_new, buffers.keys, buffers.values, valid, valid_new, scaling
    )
    scores, score_new = candidate_scores(policy, buffers, k_new, qpos, mass, mass_new, q.shape[1] // hkv)
    new_pos = qpos.reshape(1, 1, 1).expand(b, hkv, 1)
    bi, ci = _batch_head_index(b, hkv, q.device)
    if policy.window >= 1:
        # The new token is the newest valid one, so it is forced and never the victim: the victim
        # is the last of the buffer's own ranking, and the token always goes in. (A new token
        # masked out as padding is invalid either way; which invalid token a budget keeps is not
        # observable.) Writing unconditionally, without reading the slot's old contents, lets
        # Inductor write the buffers in place instead of copying them.
        slot = victim(policy, scores, buffers.positions, valid, buffers.seen)[..., 0]  # [B, Hkv]
        if policy.stateful:
            buffers.scores.copy_(scores)
        _write(buffers, (bi, ci, slot), k_new[:, :, 0], v_new[:, :, 0], new_pos[..., 0],
               score_new[..., 0] if policy.stateful else None)
        return out
    drop = victim(
        policy,
        torch.cat([scores, score_new], dim=-1),
        torch.cat([buffers.positions, new_pos], dim=-1),
        torch.cat([valid, valid_new], dim=-1),
        buffers.seen,
    )[..., 0]  # [B, Hkv]
    slot = drop.clamp(max=n - 1)
    take = drop < n  # False: the new token itself is the one dropped; nothing is written
    index = (bi, ci, slot)
    kv_take = take[..., None]
    key = torch.where(kv_take, k_new[:, :, 0], buffers.keys[index])
    value = torch.where(kv_take, v_new[:, :, 0], buffers.values[index])
    position = torch.where(take, new_pos[..., 0], buffers.positions[index])
    if policy.stateful:
        buffers.scores.copy_(scores)
    _write(buffers, index, key, value, position, torch.where(take, score_new[..., 0], scores[index]) if policy.stateful else None)
    return out


def decode_append(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
) -> torch.Tensor:
    """Append mode: write the new token to the first free slot, then attend; nothing is evicted.

    Writing first makes the step plain masked attention over the buffer, and lets Inductor write
    in place (an attention that read the buffer before the write would need a copy of it). Scores
    are left as they are (the new token's is 0). With no free slot the write index is ``N``, out of
    range, and the write fails (an ``IndexError`` on the CPU, a device-side assert on CUDA)
    instead of overwriting a kept token; the eager cache checks room before that.

    Arguments and return as :func:`decode_evict`.
    """
    b, hkv, n, _ = buffers.keys.shape
    qpos = buffers.seen - 1
    free = buffers.positions < 0
    first = torch.where(free.any(-1), free.to(torch.int8).argmax(-1), torch.full_like(free[..., 0], n, dtype=torch.int64))
    bi, ci = _batch_head_index(b, hkv, q.device)
    _write(buffers, (bi, ci, first), k_new[:, :, 0], v_new[:, :, 0], qpos.reshape(1, 1).expand(b, hkv),
           torch.zeros((b, hkv), dtype=buffers.scores.dtype, device=q.device))
    valid, _ = slot_validity(mask, buffers.positions, qpos)
    nothing = torch.zeros((b, hkv, 1), dtype=torch.bool, device=q.device)
    out, _, _ = decode_attend(q, k_new, v_new, buffers.keys, buffers.values, valid, nothing, scaling)
    return out


def decode_step_flat(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    pos_buf: torch.Tensor,
    score_buf: torch.Tensor,
    seen: torch.Tensor,
    scaling: float,
    policy: str,
    window: int,
    kernel: int,
    sinks: int,
    seed: int,
    append: bool,
) -> torch.Tensor:
    """:func:`decode_evict` / :func:`decode_append` with flat arguments (tensors and literals).

    What :func:`depthkv.backend`'s FX pass calls for a single-token step on ``impl="reference"``:
    a plain Python function in the Dynamo graph, which AOTAutograd traces into ATen operations
    (the in-place writes become mutations of the cache's static buffers) and Inductor fuses.
    """
    buffers = LayerBuffers(k_buf, v_buf, pos_buf, score_buf, seen)
    if append:
        return decode_append(q, k_new, v_new, mask, buffers, scaling)
    cfg = PolicyConfig(name=policy, window=window, kernel=kernel, sinks=sinks, seed=seed)
    return decode_evict(q, k_new, v_new, mask, buffers, scaling, cfg)
