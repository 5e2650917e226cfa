"""``depthkv::attend_evict`` on the fast kernels (``impl="triton"`` / ``"flash"``).

Same semantics as :func:`depthkv.ops.attend_evict_reference` (the tests compare them), built from
the kernel API of :func:`depthkv.kernels.ops`:

* **decode** (one new token): ``decode_attention`` over buffer + the new token with a per-slot
  validity mask; its per-slot probability mass updates the accumulated scores (SnapKV/H2O) or is the
  score (TOVA); selection drops the lowest-ranked slot; ``compact`` writes the kept slots back.
* **first prefill** (the buffer is empty and there is no padding): ``attention_lse`` over the prompt
  (flash forward with the log-sum-exp), ``window_scores`` / ``h2o_scores`` from that LSE — no S×S
  matrix — then SnapKV pooling, selection and ``compact`` into the fixed buffer.
* any other step (a later multi-token chunk, or left padding at prefill) runs the reference op; this
  choice is by shape and padding only, and is documented, not a fallback on failure.

Policies that do not use attention (``knorm``, ``streaming``, ``random``) score with the reference
policy functions; their attention output still comes from the kernels.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from ..policies import PolicyConfig, _pool, score, select


def _slot_state(mask, k_buf, pos_buf, k_new, seen):
    from ..attention import slot_mask

    b, hkv, _, _ = k_buf.shape
    m = k_new.shape[2]
    qpos = torch.arange(m, device=k_new.device) + (seen - m)
    pos_cat = torch.cat([pos_buf, qpos.expand(b, hkv, m)], dim=2)
    smask = slot_mask(mask, pos_cat.clamp_min(0), qpos) & (pos_cat >= 0)[:, :, None, :]
    return pos_cat, smask


def _write_back(kern, cfg, keep, k_cat, v_cat, pos_cat, scores, k_buf, v_buf, pos_buf, score_buf):
    src_score = scores.float().contiguous()
    kern.compact(keep, k_cat, v_cat, pos_cat, src_score, k_buf, v_buf, pos_buf, score_buf)
    if not cfg.stateful:
        score_buf.zero_()


def _decode(kern, cfg, q, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen, scaling, budget):
    k_cat = torch.cat([k_buf, k_new], dim=2)
    v_cat = torch.cat([v_buf, v_new], dim=2)
    pos_cat, smask = _slot_state(mask, k_buf, pos_buf, k_new, seen)
    valid = smask[:, :, 0, :]
    decode_attention = kern.decode_attention
    if kern.impl == "flash":
        # flash_attn_with_kvcache needs valid slots to be a prefix; a compacted buffer keeps empty
        # slots first, so decode uses the Triton kernel (flash-attn still runs the prefill).
        from .triton_decode import decode_attention
    out, mass = decode_attention(q, k_cat, v_cat, valid, scaling)
    groups = q.shape[1] // k_buf.shape[1]
    if cfg.name in ("snapkv", "h2o"):
        prev = torch.cat([score_buf, score_buf.new_zeros(score_buf.shape[:2] + (1,))], dim=2)
        # the first step of a stateful policy never takes this path (prefill comes first)
        scores = prev + mass
    elif cfg.name == "tova":
        scores = mass / groups
    else:
        scores = score(cfg, q, k_cat, smask, pos_cat, scaling)
    keep = select(cfg, scores, pos_cat, valid, budget)
    _write_back(kern, cfg, keep, k_cat, v_cat, pos_cat, scores, k_buf, v_buf, pos_buf, score_buf)
    return out


def _first_prefill(kern, cfg, q, k_new, v_new, k_buf, v_buf, pos_buf, score_buf, scaling, budget):
    b, hkv, nb, _ = k_buf.shape
    m = k_new.shape[2]
    out, lse = kern.attention_lse(q, k_new, v_new, scaling, causal=True)
    if cfg.name == "snapkv":
        raw = kern.window_scores(q, k_new, lse, scaling, max(cfg.window, 1))
        new_scores = _pool(raw, cfg.kernel)
    elif cfg.name == "h2o":
        new_scores = kern.h2o_scores(q, k_new, lse, scaling)
    elif cfg.name == "tova":
        new_scores = kern.window_scores(q, k_new, lse, scaling, 1) / (q.shape[1] // hkv)
    else:
        new_scores = None
    pos_new = torch.arange(m, device=q.device).expand(b, hkv, m)
    pos_cat = torch.cat([pos_buf, pos_new], dim=2)
    k_cat = torch.cat([k_buf, k_new], dim=2)
    v_cat = torch.cat([v_buf, v_new], dim=2)
    valid = pos_cat >= 0
    if new_scores is None:
        qpos = torch.arange(m, device=q.device)
        smask = (pos_cat[:, :, None, :] <= qpos[None, None, :, None]) & valid[:, :, None, :]
        scores = score(cfg, q, k_cat, smask, pos_cat, scaling)
    else:
        scores = torch.cat([score_buf.new_zeros((b, hkv, nb)), new_scores.float()], dim=2)
    keep = select(cfg, scores, pos_cat, valid, budget)
    _write_back(kern, cfg, keep, k_cat, v_cat, pos_cat, scores, k_buf, v_buf, pos_buf, score_buf)
    return out


def _no_padding(mask: torch.Tensor | None) -> bool:
    if mask is None:
        return True
    from ..attention import as_bool_mask

    last = as_bool_mask(mask)[:, 0, -1]
    m = mask.shape[2]
    return bool(last[:, :m].all())


def attend_evict_kernels(
    kern: SimpleNamespace,
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
    budget: int,
    cfg: PolicyConfig,
    layer_idx: int,
) -> torch.Tensor:
    """``attend_evict`` with kernels ``kern`` (from :func:`depthkv.kernels.ops`); returns ``[B, H, m, D]``."""
    from ..ops import attend_evict_reference

    m = q.shape[2]
    if m == 1:
        return _decode(kern, cfg, q, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen, scaling, budget)
    if int(seen) == m and _no_padding(mask):
        return _first_prefill(kern, cfg, q, k_new, v_new, k_buf, v_buf, pos_buf, score_buf, scaling, budget)
    return attend_evict_reference(
        q, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen, scaling, budget,
        cfg.name, cfg.window, cfg.kernel, cfg.sinks, cfg.seed, layer_idx,
    )
