"""Custom ops of the compiled path (``torch.library.custom_op`` + ``register_fake``).

``depthkv::stage``
    What a :class:`~depthkv.static_cache.StaticBudgetLayer` hands to attention while a graph is being
    traced: the layer's *logical* keys/values ``[B, Hkv, max_len, D]`` (every token seen so far plus
    the new ones). It exists only as a marker for :func:`depthkv.backend`'s FX pass, which rewrites
    the attention that reads it into ``depthkv::attend_evict``; running it means the graph was not
    compiled with depthkv's backend, which is an error (never silently full attention).

``depthkv::attend_evict``
    Attention of this step's queries over the layer's fixed buffer plus the new tokens, then
    eviction back to the layer's budget, written in place into the buffers (no reallocation, so one
    compiled decode graph serves every step). The budget is an int argument: the pass bakes each
    layer's budget in as a literal.

Registered lazily by :func:`register_ops` (never at import).
"""

import functools
from typing import Optional

import torch

from .policies import PolicyConfig, score, select


class DepthKVGraphError(RuntimeError):
    """A graph holding depthkv markers ran without being rewritten by depthkv's backend."""


def _stage_impl(
    k_buf: torch.Tensor,
    v_buf: torch.Tensor,
    pos_buf: torch.Tensor,
    score_buf: torch.Tensor,
    seen: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    layer_idx: int,
    max_len: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    raise DepthKVGraphError(
        f"layer {layer_idx}: a StaticBudgetCache was used in a graph that depthkv's backend did not rewrite. "
        "Compile with torch.compile(model, backend=depthkv.backend(plan)), or use depthkv.apply(model, plan) "
        "for the eager path."
    )


def _stage_fake(k_buf, v_buf, pos_buf, score_buf, seen, k_new, v_new, layer_idx, max_len):
    b, h, _, d = k_new.shape
    return k_new.new_empty((b, h, max_len, d)), v_new.new_empty((b, h, max_len, v_new.shape[-1]))


def attend_evict_reference(
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
    impl: str = "reference",
) -> torch.Tensor:
    """``depthkv::attend_evict``: the reference implementation (any device), or the kernels of ``impl``.

    Args:
        q: ``[B, H, m, D]`` this step's queries (post-RoPE).
        k_new, v_new: ``[B, Hkv, m, D]`` this step's keys/values.
        mask: bool or additive ``[B, 1, m, L]`` over logical positions, or None (causal, no padding).
        k_buf, v_buf: ``[B, Hkv, budget, D]`` the layer's buffers (mutated).
        pos_buf: int64 ``[B, Hkv, budget]`` logical position per slot, -1 = empty (mutated).
        score_buf: float32 ``[B, Hkv, budget]`` accumulated policy scores (mutated).
        seen: int64 ``[]`` logical length *including* this step's ``m`` tokens (the cache advances it
            before attention, as transformers' static layers do; the op only reads it).

        impl: ``"reference"`` or a kernel implementation resolved by the backend (never guessed).

    Returns:
        ``[B, H, m, D]`` attention output (SDPA layout).

    The kept set is the policy's ``select`` over buffer + new tokens, exactly as the eager
    :class:`~depthkv.cache.BudgetLayer` does; kept slots are written in ascending position order
    (empty slots first).
    """
    from .attention import attend, slot_mask

    if impl != "reference":
        from .kernels import ops as kernel_ops
        from .kernels.attend_evict import attend_evict_kernels

        cfg = PolicyConfig(name=policy, window=window, kernel=kernel, sinks=sinks, seed=seed)
        return attend_evict_kernels(
            kernel_ops(impl, q.device), q, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen,
            scaling, budget, cfg, layer_idx,
        )
    if k_buf.shape[2] != budget:
        raise ValueError(f"layer {layer_idx}: buffer holds {k_buf.shape[2]} slots but the budget is {budget}")
    b, hkv, _, _ = k_new.shape
    m = q.shape[2]
    start = int(seen) - m
    qpos = torch.arange(start, start + m, device=q.device)
    k_cat = torch.cat([k_buf, k_new], dim=2)
    v_cat = torch.cat([v_buf, v_new], dim=2)
    pos_cat = torch.cat([pos_buf, qpos.expand(b, hkv, m)], dim=2)
    occupied = (pos_cat >= 0)[:, :, None, :]
    smask = slot_mask(mask, pos_cat.clamp_min(0), qpos) & occupied
    out = attend(q, k_cat, v_cat, smask, scaling).transpose(1, 2)
    cfg = PolicyConfig(name=policy, window=window, kernel=kernel, sinks=sinks, seed=seed)
    prev = None
    if cfg.stateful and start > 0:
        prev = torch.cat([score_buf, score_buf.new_zeros((b, hkv, m))], dim=2)
    scores = score(cfg, q, k_cat, smask, pos_cat, scaling, prev_scores=prev)
    keep = select(cfg, scores, pos_cat, smask[:, :, -1, :], budget)
    idx = keep.unsqueeze(-1)
    k_buf.copy_(k_cat.gather(2, idx.expand(-1, -1, -1, k_cat.shape[-1])))
    v_buf.copy_(v_cat.gather(2, idx.expand(-1, -1, -1, v_cat.shape[-1])))
    pos_buf.copy_(pos_cat.gather(2, keep))
    if cfg.stateful:
        score_buf.copy_(scores.gather(2, keep))
    return out.contiguous()


def _attend_evict_fake(q, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen, scaling, budget, *rest):
    return q.new_empty(q.shape)


@functools.cache
def register_ops() -> None:
    """Define the depthkv custom ops (idempotent; called by the backend and the static cache)."""
    lib_ops = {
        "stage": torch.library.custom_op("depthkv::stage", mutates_args=())(_stage_impl),
        "attend_evict": torch.library.custom_op(
            "depthkv::attend_evict", mutates_args=("k_buf", "v_buf", "pos_buf", "score_buf")
        )(attend_evict_reference),
    }
    lib_ops["stage"].register_fake(_stage_fake)
    lib_ops["attend_evict"].register_fake(_attend_evict_fake)


def stage_op():
    register_ops()
    return torch.ops.depthkv.stage.default


def attend_evict_op():
    register_ops()
    return torch.ops.depthkv.attend_evict.default
