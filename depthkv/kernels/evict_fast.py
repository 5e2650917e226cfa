"""The attend-and-evict step on the fast kernels (``impl="triton"`` / ``"flash"``).

Same semantics as :func:`~depthkv.kernels.evict_reference.attend_evict_reference` (the tests compare
them), built from a kernel table (:func:`depthkv.kernels.kernel_table`):

* **decode** (one new token) does not come here: :func:`depthkv.kernels.attend_evict` runs the
  fused decode step (:mod:`depthkv.kernels.triton_decode_step`) for it.
* **first prefill** (the buffer is empty and there is no padding): ``attention_lse`` over the prompt
  (flash forward with the log-sum-exp), ``window_scores`` / ``h2o_scores`` from that LSE — no S×S
  matrix — then SnapKV pooling, selection and ``compact`` into the fixed buffer.
* any other step (a later multi-token chunk, or left padding at prefill) runs the reference step;
  this choice is by shape and padding only, and is documented, not a fallback on failure.

Policies that do not use attention (``knorm``, ``streaming``, ``random``) score with the reference
policy functions; their attention output still comes from the kernels.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from depthkv.kernels.attention import as_bool_mask
from depthkv.kernels.buffers import LayerBuffers
from depthkv.kernels.evict_reference import attend_evict_reference, empty_tail
from depthkv.policies import PolicyConfig, pool, score, select

__all__ = ["attend_evict_fast"]


def _write_back(kern, policy, keep, k_cat, v_cat, pos_cat, scores, buffers: LayerBuffers) -> None:
    kept = keep.shape[-1]
    kern.compact(
        keep, k_cat, v_cat, pos_cat, scores.float().contiguous(),
        buffers.keys[:, :, :kept], buffers.values[:, :, :kept], buffers.positions[:, :, :kept],
        buffers.scores[:, :, :kept],
    )
    if not policy.stateful:
        buffers.scores.zero_()
    empty_tail(buffers, kept)


def _first_prefill(kern, policy, q, k_new, v_new, buffers: LayerBuffers, scaling, budget):
    b, hkv, nb, _ = buffers.keys.shape
    m = k_new.shape[2]
    out, lse = kern.attention_lse(q, k_new, v_new, scaling, causal=True)
    if policy.name == "snapkv":
        new_scores = pool(kern.window_scores(q, k_new, lse, scaling, max(policy.window, 1)), policy.kernel, policy.window)
    elif policy.name == "h2o":
        new_scores = kern.h2o_scores(q, k_new, lse, scaling)
    elif policy.name == "tova":
        new_scores = kern.window_scores(q, k_new, lse, scaling, 1) / (q.shape[1] // hkv)
    else:
        new_scores = None
    pos_new = torch.arange(m, device=q.device).expand(b, hkv, m)
    pos_cat = torch.cat([buffers.positions, pos_new], dim=2)
    k_cat = torch.cat([buffers.keys, k_new], dim=2)
    v_cat = torch.cat([buffers.values, v_new], dim=2)
    valid = pos_cat >= 0
    if new_scores is None:
        qpos = torch.arange(m, device=q.device)
        smask = (pos_cat[:, :, None, :] <= qpos[None, None, :, None]) & valid[:, :, None, :]
        scores = score(policy, q, k_cat, smask, pos_cat, scaling)
    else:
        scores = torch.cat([buffers.scores.new_zeros((b, hkv, nb)), new_scores.float()], dim=2)
    keep = select(policy, scores, pos_cat, valid, budget)
    _write_back(kern, policy, keep, k_cat, v_cat, pos_cat, scores, buffers)
    return out


def _no_padding(mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    last = as_bool_mask(mask)[:, 0, -1]
    return bool(last[:, : mask.shape[2]].all())


def attend_evict_fast(
    kern: SimpleNamespace,
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
    """The step with kernels ``kern`` (from :func:`depthkv.kernels.kernel_table`); returns ``[B, H, m, D]``.

    Arguments as :func:`~depthkv.kernels.evict_reference.attend_evict_reference`.
    """
    m = q.shape[2]
    if int(buffers.seen) == m and _no_padding(mask):
        return _first_prefill(kern, policy, q, k_new, v_new, buffers, scaling, budget)
    return attend_evict_reference(q, k_new, v_new, mask, buffers, scaling, budget, policy, layer_idx)
