"""``attend_evict(impl, ...)``: the one entry point of the attend-and-evict step, by implementation.

A single new token (``m == 1``) runs the sort-free decode step of the cache's mode
(:mod:`depthkv.kernels.decode_step` on ``"reference"``, the fused Triton kernel
:mod:`depthkv.kernels.triton_decode_step` on ``"triton"``/``"flash"``); a multi-token step (prefill,
a new turn) scores and selects (:mod:`depthkv.kernels.evict_reference`,
:mod:`depthkv.kernels.evict_fast`). The choice is by shape, never a fallback on failure.
"""

from __future__ import annotations

import torch

from depthkv.kernels.buffers import LayerBuffers
from depthkv.kernels.evict_fast import attend_evict_fast
from depthkv.kernels.evict_reference import attend_evict_reference
from depthkv.kernels.registry import kernel_table
from depthkv.policies import PolicyConfig

__all__ = ["attend_evict", "decode_step"]


def decode_step(
    impl: str,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
    policy: PolicyConfig,
    append: bool,
) -> torch.Tensor:
    """One new token on ``impl``: :func:`~depthkv.kernels.decode_step.decode_append` or
    :func:`~depthkv.kernels.decode_step.decode_evict` (or their fused Triton kernel)."""
    if impl == "reference":
        from depthkv.kernels import decode_step as kernels
    else:
        from depthkv.kernels import triton_decode_step as kernels
    if append:
        return kernels.decode_append(q, k_new, v_new, mask, buffers, scaling)
    return kernels.decode_evict(q, k_new, v_new, mask, buffers, scaling, policy)


def attend_evict(
    impl: str,
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
    budget: int,
    policy: PolicyConfig,
    layer_idx: int,
    append: bool = False,
) -> torch.Tensor:
    """One layer's step: attend over ``buffers`` + this step's tokens, then evict back to ``budget``.

    Args:
        impl: an implementation already resolved for this device (``"reference"``, ``"triton"``,
            ``"flash"``; see :func:`depthkv.kernels.resolve_impl`): never guessed here.
        q: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        k_new: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        v_new: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        mask: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        buffers: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        scaling: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        budget: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        policy: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        layer_idx: as in :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
        append: the cache's decode mode: ``True`` = append (single-token steps fill the reserved
            tail, nothing is evicted), ``False`` = evict (the budget holds at every step).

    Returns:
        ``[B, H, m, D]`` attention output (SDPA layout); ``buffers`` hold the kept slots.
    """
    if q.shape[2] == 1:
        return decode_step(impl, q, k_new, v_new, mask, buffers, scaling, policy, append)
    if impl == "reference":
        return attend_evict_reference(q, k_new, v_new, mask, buffers, scaling, budget, policy, layer_idx)
    return attend_evict_fast(
        kernel_table(impl, q.device), q, k_new, v_new, mask, buffers, scaling, budget, policy, layer_idx
    )
