"""The attend-and-evict step, reference implementation: it defines what every fast path computes.

One step of one layer with a fixed budget: this step's queries attend over the layer's buffer plus
this step's new keys/values, then the layer's eviction policy keeps ``budget`` of those slots and
writes them back into the buffer in place (in append mode the buffer is larger than the budget:
the kept slots come first and the rest, the reserved tail, is emptied). The kept set is the policy's
:func:`~depthkv.policies.select` over buffer + new tokens, exactly as the eager
:class:`~depthkv.BudgetCache` chooses; kept slots are written in ascending position order (empty
slots first).
"""

from __future__ import annotations

import torch

from depthkv.kernels.attention import attend, slot_mask
from depthkv.kernels.buffers import LayerBuffers
from depthkv.policies import PolicyConfig, score, select

__all__ = ["attend_evict_reference", "empty_tail", "step_slots"]


def step_slots(
    mask: torch.Tensor | None, buffers: LayerBuffers, k_new: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Positions and masks of buffer + this step's tokens.

    Returns:
        ``(query_positions [m], positions [B, Hkv, n + m], mask bool [B, Hkv, m, n + m])``; empty
        slots (position -1) are masked out. Reads ``seen`` on the device: no host synchronisation.
    """
    b, hkv, m, _ = k_new.shape
    qpos = torch.arange(m, device=k_new.device) + (buffers.seen - m)  # no host sync (CUDA graphs)
    pos_cat = torch.cat([buffers.positions, qpos.expand(b, hkv, m)], dim=2)
    smask = slot_mask(mask, pos_cat.clamp_min(0), qpos) & (pos_cat >= 0)[:, :, None, :]
    return qpos, pos_cat, smask


def attend_evict_reference(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
    budget: int,
    policy: PolicyConfig,
    layer_idx: int,
) -> torch.Tensor:
    """Attend, then evict back to ``budget`` slots in place.

    Args:
        q: ``[B, H, m, D]`` this step's queries (post-RoPE).
        k_new: ``[B, Hkv, m, D]`` this step's keys.
        v_new: ``[B, Hkv, m, D]`` this step's values.
        mask: bool or additive ``[B, 1, m, L]`` over logical positions, or None (causal, no padding).
        buffers: the layer's buffers, ``budget`` slots each (mutated); in append mode more
            (``budget`` + the reserved tail, emptied by this step).
        scaling: the softmax scale.
        budget: slots the layer keeps after this step.
        policy: the eviction policy.
        layer_idx: for error messages.

    Returns:
        ``[B, H, m, D]`` attention output (SDPA layout).
    """
    if buffers.slots < budget:
        raise ValueError(f"layer {layer_idx}: buffer holds {buffers.slots} slots but the budget is {budget}")
    b, hkv, m, _ = k_new.shape
    start = int(buffers.seen) - m
    _, pos_cat, smask = step_slots(mask, buffers, k_new)
    k_cat = torch.cat([buffers.keys, k_new], dim=2)
    v_cat = torch.cat([buffers.values, v_new], dim=2)
    out = attend(q, k_cat, v_cat, smask, scaling).transpose(1, 2)
    prev = None
    if policy.stateful and start > 0:
        prev = torch.cat([buffers.scores, buffers.scores.new_zeros((b, hkv, m))], dim=2)
    scores = score(policy, q, k_cat, smask, pos_cat, scaling, prev_scores=prev)
    keep = select(policy, scores, pos_cat, smask[:, :, -1, :], budget)
    idx = keep.unsqueeze(-1)
    kept = keep.shape[-1]
    buffers.keys[:, :, :kept].copy_(k_cat.gather(2, idx.expand(-1, -1, -1, k_cat.shape[-1])))
    buffers.values[:, :, :kept].copy_(v_cat.gather(2, idx.expand(-1, -1, -1, v_cat.shape[-1])))
    buffers.positions[:, :, :kept].copy_(pos_cat.gather(2, keep))
    if policy.stateful:
        buffers.scores[:, :, :kept].copy_(scores.gather(2, keep))
    empty_tail(buffers, kept)
    return out.contiguous()


def empty_tail(buffers: LayerBuffers, start: int) -> None:
    """Mark slots ``start:`` empty (append mode's reserved tail after a compression), in place."""
    if start < buffers.slots:
        buffers.keys[:, :, start:].zero_()
        buffers.values[:, :, start:].zero_()
        buffers.positions[:, :, start:].fill_(-1)
        buffers.scores[:, :, start:].zero_()
