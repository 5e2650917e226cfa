"""``attend_evict(impl, ...)``: the one entry point of the attend-and-evict step, by implementation."""

from __future__ import annotations

import torch

from depthkv.kernels.buffers import LayerBuffers
from depthkv.kernels.evict_fast import attend_evict_fast
from depthkv.kernels.evict_reference import attend_evict_reference
from depthkv.kernels.registry import kernel_table
from depthkv.policies import PolicyConfig

__all__ = ["attend_evict"]


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

    Returns:
        ``[B, H, m, D]`` attention output (SDPA layout); ``buffers`` hold the kept slots.
    """
    if impl == "reference":
        return attend_evict_reference(q, k_new, v_new, mask, buffers, scaling, budget, policy, layer_idx)
    return attend_evict_fast(
        kernel_table(impl, q.device), q, k_new, v_new, mask, buffers, scaling, budget, policy, layer_idx
    )
