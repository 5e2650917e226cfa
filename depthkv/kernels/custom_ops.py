"""The custom ops of the compiled path (``torch.library.custom_op`` + ``register_fake``).

``depthkv::stage``
    What a :class:`~depthkv.StaticBudgetCache` layer hands to attention while a graph is being
    traced: the layer's *logical* keys/values ``[B, Hkv, max_len, D]`` (every token seen so far plus
    the new ones). It exists only as a marker for the FX pass (:mod:`depthkv.passes`), which
    rewrites the attention that reads it; running it means the graph was not compiled with
    depthkv's backend, which is an error (never silently full attention). Its literal arguments
    tell the pass the layer (``layer_idx``), how many slots a compression keeps (``keep``) and the
    cache's decode mode (``append``).

``depthkv::attend_evict``
    :func:`depthkv.kernels.attend_evict` behind the op boundary: attention over the layer's fixed
    buffer plus the new tokens, then eviction back to the layer's budget, written in place into the
    buffers (no reallocation, so one compiled decode graph serves every step). The op's arguments
    are flat (a custom op takes tensors and scalars only); the budget, policy and implementation
    are literals the pass bakes in per layer.

Registered lazily by :func:`register_ops` (never at import).
"""

from __future__ import annotations

import functools
from typing import Optional

import torch

from depthkv.kernels.buffers import LayerBuffers
from depthkv.kernels.dispatch import attend_evict
from depthkv.policies import PolicyConfig

__all__ = ["DepthKVGraphError", "attend_evict_args", "attend_evict_op", "register_ops", "stage_op"]


class DepthKVGraphError(RuntimeError):
    """A graph holding depthkv markers ran without being rewritten by depthkv's backend."""


def _stage(
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    pos_buf: torch.Tensor,
    score_buf: torch.Tensor,
    seen: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    layer_idx: int,
    max_len: int,
    keep: int,
    append: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    raise DepthKVGraphError(
        f"layer {layer_idx}: a StaticBudgetCache was used in a graph that depthkv's backend did not rewrite. "
        "Compile with torch.compile(model, backend=depthkv.backend(plan)), or use depthkv.apply(model, plan) "
        "for the eager path."
    )


def _stage_fake(k_buf, v_buf, pos_buf, score_buf, seen, k_new, v_new, layer_idx, max_len, keep, append):
    b, h, _, d = k_new.shape
    return k_new.new_empty((b, h, max_len, d)), v_new.new_empty((b, h, max_len, v_new.shape[-1]))


def _attend_evict(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: Optional[torch.Tensor],  # noqa: UP045 (custom_op schema inference)
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    pos_buf: torch.Tensor,
    score_buf: torch.Tensor,
    seen: torch.Tensor,
    scaling: float,
    budget: int,
    policy: str,
    window: int,
    kernel: int,
    sinks: int,
    seed: int,
    layer_idx: int,
    impl: str,
    append: bool,
) -> torch.Tensor:
    buffers = LayerBuffers(k_buf, v_buf, pos_buf, score_buf, seen)
    cfg = PolicyConfig(name=policy, window=window, kernel=kernel, sinks=sinks, seed=seed)
    return attend_evict(impl, q, k_new, v_new, mask, buffers, scaling, budget, cfg, layer_idx, append)


def _attend_evict_fake(q, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen, scaling, budget, *rest):
    return q.new_empty(q.shape)


@functools.cache
def register_ops() -> None:
    """Define the depthkv custom ops (idempotent; called by the backend and the static cache)."""
    stage = torch.library.custom_op("depthkv::stage", mutates_args=())(_stage)
    stage.register_fake(_stage_fake)
    op = torch.library.custom_op("depthkv::attend_evict", mutates_args=("k_buf", "v_buf", "pos_buf", "score_buf"))(
        _attend_evict
    )
    op.register_fake(_attend_evict_fake)


def attend_evict_args(
    q, k_new, v_new, mask, buffers: LayerBuffers, scaling, budget: int, policy: PolicyConfig, layer_idx: int, impl: str,
    append: bool = False,
) -> tuple:
    """The flat argument tuple of ``depthkv::attend_evict`` (the order its schema has)."""
    return (
        q, k_new, v_new, mask, *buffers.tensors(), scaling, budget,
        policy.name, policy.window, policy.kernel, policy.sinks, policy.seed, layer_idx, impl, append,
    )


def stage_op():
    """``torch.ops.depthkv.stage.default`` (registering the ops first)."""
    register_ops()
    return torch.ops.depthkv.stage.default


def attend_evict_op():
    """``torch.ops.depthkv.attend_evict.default`` (registering the ops first)."""
    register_ops()
    return torch.ops.depthkv.attend_evict.default
