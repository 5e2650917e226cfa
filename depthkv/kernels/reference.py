"""Pure-PyTorch reference kernels: they define correctness for every fast path.

Every function here runs on any device and any float dtype (fp32/fp16/bf16; fp64 too, which the
tests use as ground truth). Arithmetic is done in fp32 (fp64 when the inputs are fp64); ``out``
tensors come back in the input dtype, log-sum-exps and scores in fp32 (fp64 for fp64 inputs).

Layout and grouping conventions shared by all implementations (reference, Triton, flash):

* Tensors are ``[B, heads, tokens, D]`` (BHSD). Queries have ``H`` heads, keys/values ``Hkv``
  heads with ``H = g * Hkv``; query head ``h`` uses KV head ``h // g`` (MHA: ``g = 1``, MQA:
  ``Hkv = 1``). Scores and masses are per KV head: summed over the ``g`` query heads of a group.
* Prefill causality is bottom-right aligned: with ``Sq`` queries over ``Sk >= Sq`` keys, query
  ``i`` sits at position ``Sk - Sq + i`` and sees keys ``j <= Sk - Sq + i`` (``Sq == Sk`` is the
  ordinary causal mask; ``Sq < Sk`` is a chunk of a longer prompt).
* Decode queries are newer than every slot of the buffer, so each sees every *valid* slot.
* Natural-log LSE: ``lse_i = log sum_j exp(scale * q_i . k_j)`` over the keys query ``i`` sees.
* Sums over queries/heads are unordered floating-point reductions: fast paths agree with this
  reference to rounding, not bit for bit, so nearly tied scores may rank differently; breaking
  ties (by position) is the selection's job (:func:`depthkv.policies.select`), not the kernels'.

Papers: FlashAttention (Dao et al. 2022, https://arxiv.org/abs/2205.14135) for the LSE-returning
attention; SnapKV (Li et al. 2024, https://arxiv.org/abs/2404.14469) for observation-window
scores; H2O (Zhang et al. 2023, https://arxiv.org/abs/2306.14048) for accumulated attention.
"""

from __future__ import annotations

import torch

__all__ = ["attention_lse", "compact", "decode_attention", "h2o_scores", "window_scores"]

# Score/attention matrices are built a block of queries at a time so the reference stays usable
# at long contexts: at most this many fp32 elements per block.
_BLOCK_ELEMENTS = 1 << 26


# ----------------------------------------------------------------------------------------------
# validation (shared with the Triton and flash wrappers)
# ----------------------------------------------------------------------------------------------


def _float_dtype(name: str, t: torch.Tensor) -> None:
    if not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor (fp32/fp16/bf16), got {t.dtype}")


def check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[int, int, int, int, int, int]:
    """Validate ``q [B, H, Sq, D]``, ``k, v [B, Hkv, Sk, D]``; return ``(B, H, Hkv, Sq, Sk, D)``."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D [B, heads, tokens, D], got shape {tuple(t.shape)}")
        _float_dtype(name, t)
    b, h, sq, d = q.shape
    kb, hkv, sk, kd = k.shape
    if kb != b or kd != d:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} must agree on batch and head dim")
    if tuple(v.shape) != tuple(k.shape):
        raise ValueError(f"v {tuple(v.shape)} must have the shape of k {tuple(k.shape)}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise ValueError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if hkv == 0 or h % hkv != 0:
        raise ValueError(f"query heads H={h} must be a positive multiple of kv heads Hkv={hkv}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    return b, h, hkv, sq, sk, d


def check_causal(sq: int, sk: int, causal: bool) -> None:
    if causal and sq > sk:
        raise ValueError(
            f"causal attention needs at least as many keys as queries (queries are the last Sq of Sk "
            f"positions); got Sq={sq} > Sk={sk}"
        )


def check_lse(lse: torch.Tensor, b: int, h: int, sq: int) -> None:
    if tuple(lse.shape) != (b, h, sq):
        raise ValueError(f"lse must be [B, H, Sq] = {[b, h, sq]}, got {tuple(lse.shape)}")
    _float_dtype("lse", lse)


def check_window(window: int) -> None:
    if isinstance(window, bool) or not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an int >= 0, got {window!r}")


def check_valid(valid: torch.Tensor, b: int, hkv: int, n: int) -> None:
    if valid.dtype != torch.bool:
        raise ValueError(f"valid must be a bool tensor (True = slot holds a token), got {valid.dtype}")
    if tuple(valid.shape) != (b, hkv, n):
        raise ValueError(f"valid must be [B, Hkv, N] = {[b, hkv, n]}, got {tuple(valid.shape)}")


def check_compact(
    keep: torch.Tensor,
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    src_pos: torch.Tensor,
    src_score: torch.Tensor | None,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    dst_pos: torch.Tensor,
    dst_score: torch.Tensor | None,
) -> tuple[int, int, int, int]:
    """Validate :func:`compact`'s arguments; return ``(B, Hkv, N, K)``."""
    if keep.dim() != 3 or keep.dtype != torch.int64:
        raise ValueError(f"keep must be int64 [B, Hkv, K], got {keep.dtype} {tuple(keep.shape)}")
    b, hkv, kk = keep.shape
    if src_k.dim() != 4 or src_k.shape[:2] != (b, hkv):
        raise ValueError(f"src_k must be [B, Hkv, N, D] with B, Hkv = {b, hkv}, got {tuple(src_k.shape)}")
    n = src_k.shape[2]
    pairs = [("k", src_k, dst_k, 4), ("v", src_v, dst_v, 4), ("pos", src_pos, dst_pos, 3)]
    if (src_score is None) != (dst_score is None):
        raise ValueError("src_score and dst_score must both be tensors or both be None")
    if src_score is not None:
        pairs.append(("score", src_score, dst_score, 3))
    for name, src, dst, ndim in pairs:
        if src.dim() != ndim or tuple(src.shape[:3]) != (b, hkv, n):
            raise ValueError(f"src_{name} must start with [B, Hkv, N] = {[b, hkv, n]}, got {tuple(src.shape)}")
        want = (b, hkv, kk) + tuple(src.shape[3:])
        if tuple(dst.shape) != want:
            raise ValueError(f"dst_{name} must be {list(want)} (like src_{name} with K slots), got {tuple(dst.shape)}")
        if dst.dtype != src.dtype:
            raise ValueError(f"dst_{name} dtype {dst.dtype} must equal src_{name} dtype {src.dtype}")
        if src.device != keep.device or dst.device != keep.device:
            raise ValueError(f"src_{name}/dst_{name} must be on keep's device {keep.device}")
    if src_pos.dtype != torch.int64:
        raise ValueError(f"positions must be int64, got {src_pos.dtype}")
    if src_score is not None and src_score.dtype != torch.float32:
        raise ValueError(f"scores must be float32, got {src_score.dtype}")
    return b, hkv, n, kk


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _query_block(rows_per_query: int, sk: int) -> int:
    return max(1, _BLOCK_ELEMENTS // max(1, rows_per_query * sk))


def _causal_visible(i0: int, i1: int, sq: int, sk: int, device: torch.device) -> torch.Tensor:
    """bool ``[i1 - i0, Sk]``: query ``i`` (bottom-right aligned) may see key ``j``."""
    qpos = torch.arange(i0, i1, device=device) + (sk - sq)
    return torch.arange(sk, device=device)[None, :] <= qpos[:, None]


# ----------------------------------------------------------------------------------------------
# prefill
# ----------------------------------------------------------------------------------------------


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention that also returns each query's log-sum-exp (FlashAttention's forward).

    ``out_i = sum_j p_ij v_j`` with ``p_ij = exp(scale * q_i . k_j - lse_i)`` and
    ``lse_i = log sum_j exp(scale * q_i . k_j)``, ``j`` over the keys query ``i`` sees (all keys, or
    ``j <= Sk - Sq + i`` when ``causal``). https://arxiv.org/abs/2205.14135

    Args:
        q: ``[B, H, Sq, D]`` queries, fp32/fp16/bf16 (fp64 allowed).
        k: ``[B, Hkv, Sk, D]`` keys, same dtype; ``H`` a multiple of ``Hkv``; ``Sq <= Sk`` if causal.
        v: ``[B, Hkv, Sk, D]`` values.
        scale: softmax scale, usually ``D ** -0.5``.
        causal: bottom-right aligned causal mask.

    Returns:
        ``out [B, H, Sq, D]`` in q's dtype and ``lse [B, H, Sq]`` fp32 (natural log; ``-inf`` for a
        query that sees no key, whose ``out`` row is 0).
    """
    b, h, hkv, sq, sk, d = check_qkv(q, k, v)
    check_causal(sq, sk, causal)
    g = h // hkv
    ct = _compute_dtype(q.dtype)
    qg = q.to(ct).reshape(b, hkv, g, sq, d)
    kt = k.to(ct).unsqueeze(2).transpose(-1, -2)
    vt = v.to(ct).unsqueeze(2)
    out = torch.zeros(b, hkv, g, sq, d, dtype=ct, device=q.device)
    lse = torch.full((b, hkv, g, sq), float("-inf"), dtype=ct, device=q.device)
    if sk == 0:
        return out.reshape(b, h, sq, d).to(q.dtype), lse.reshape(b, h, sq)
    step = _query_block(b * h, sk)
    for i0 in range(0, sq, step):
        i1 = min(i0 + step, sq)
        s = torch.matmul(qg[:, :, :, i0:i1], kt) * float(scale)
        if causal:
            s = s.masked_fill(~_causal_visible(i0, i1, sq, sk, q.device), float("-inf"))
        row_lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - row_lse.unsqueeze(-1))
        out[:, :, :, i0:i1] = torch.matmul(p, vt)
        lse[:, :, :, i0:i1] = row_lse
    return out.reshape(b, h, sq, d).to(q.dtype), lse.reshape(b, h, sq)


def window_scores(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """SnapKV observation-window scores (before pooling).

    ``score[b, c, j] = sum_{h in group c} sum_{i >= Sq - w} p[b, h, i, j]`` with
    ``p[b, h, i, j] = exp(scale * q_i . k_j - lse_i)`` for ``j <= Sk - Sq + i`` (causal) and 0
    otherwise, ``w = min(window, Sq)``. With the ``lse`` of :func:`attention_lse` each row of ``p``
    sums to 1, so ``score`` sums to ``g * w``. The 1-D pooling of SnapKV is applied by the caller.
    https://arxiv.org/abs/2404.14469

    Args:
        q: ``[B, H, Sq, D]`` queries (post-RoPE), fp32/fp16/bf16.
        k: ``[B, Hkv, Sk, D]`` keys, ``Sq <= Sk``.
        lse: ``[B, H, Sq]`` log-sum-exp of each query (fp32, from :func:`attention_lse`); rows equal
            to ``-inf`` contribute nothing.
        scale: the attention's softmax scale.
        window: number of most recent queries that score (``>= 0``; all when ``>= Sq``).

    Returns:
        fp32 ``[B, Hkv, Sk]``.
    """
    b, h, hkv, sq, sk, d = check_qkv(q, k, k)
    check_lse(lse, b, h, sq)
    check_window(window)
    check_causal(sq, sk, True)
    g = h // hkv
    ct = _compute_dtype(q.dtype)
    w = min(window, sq)
    total = torch.zeros(b, hkv, sk, dtype=ct, device=q.device)
    qg = q.to(ct).reshape(b, hkv, g, sq, d)
    lg = lse.to(ct).reshape(b, hkv, g, sq)
    kt = k.to(ct).unsqueeze(2).transpose(-1, -2)
    step = _query_block(b * h, sk)
    for i0 in range(sq - w, sq, step):
        i1 = min(i0 + step, sq)
        s = torch.matmul(qg[:, :, :, i0:i1], kt) * float(scale)
        row = lg[:, :, :, i0:i1].unsqueeze(-1)
        keep = _causal_visible(i0, i1, sq, sk, q.device) & torch.isfinite(row)
        p = torch.where(keep, torch.exp(s - row), torch.zeros((), dtype=ct, device=q.device))
        total += p.sum(dim=(2, 3))
    return total


def h2o_scores(q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float) -> torch.Tensor:
    """H2O accumulated attention: :func:`window_scores` summed over *all* ``Sq`` queries.

    ``score[b, c, j] = sum_{h in group c} sum_i p[b, h, i, j]`` (causal ``p`` as in
    :func:`window_scores`). https://arxiv.org/abs/2306.14048

    Args:
        q: ``[B, H, Sq, D]``; k: ``[B, Hkv, Sk, D]``; lse: ``[B, H, Sq]`` fp32; scale: softmax scale.

    Returns:
        fp32 ``[B, Hkv, Sk]``.
    """
    return window_scores(q, k, lse, scale, window=q.shape[2] if q.dim() == 4 else 0)


# ----------------------------------------------------------------------------------------------
# compaction
# ----------------------------------------------------------------------------------------------


def compact(
    keep: torch.Tensor,
    src_k: torch.Tensor,
    src_v: torch.Tensor,
    src_pos: torch.Tensor,
    src_score: torch.Tensor | None,
    dst_k: torch.Tensor,
    dst_v: torch.Tensor,
    dst_pos: torch.Tensor,
    dst_score: torch.Tensor | None,
) -> None:
    """Gather the kept slots of a layer's storage into its fixed-size buffers, in place.

    ``dst_x[b, c, i] = src_x[b, c, keep[b, c, i]]`` for ``x`` in k, v, pos, score. The order of
    ``keep`` is preserved (callers pass ascending positions, so buffers stay position-ordered);
    duplicates are copied as given. Bit-exact: a copy, no arithmetic.

    Args:
        keep: int64 ``[B, Hkv, K]``, each in ``[0, N)``.
        src_k: ``[B, Hkv, N, D]`` any dtype.
        src_v: ``[B, Hkv, N, D]`` any dtype.
        src_pos: int64 ``[B, Hkv, N]``.
        src_score: fp32 ``[B, Hkv, N]`` or None (then ``dst_score`` must be None too).
        dst_k: ``[B, Hkv, K, D]`` (dtype of the source).
        dst_v: ``[B, Hkv, K, D]`` (dtype of the source).
        dst_pos: int64 ``[B, Hkv, K]``.
        dst_score: fp32 ``[B, Hkv, K]`` or None.

    Raises:
        ValueError: on mismatched shapes/dtypes or an index outside ``[0, N)``.
    """
    b, hkv, n, kk = check_compact(keep, src_k, src_v, src_pos, src_score, dst_k, dst_v, dst_pos, dst_score)
    if keep.numel() and (int(keep.min()) < 0 or int(keep.max()) >= n):
        raise ValueError(f"keep indices must lie in [0, N={n}), got range [{int(keep.min())}, {int(keep.max())}]")
    idx = keep.unsqueeze(-1)
    # Gather first, then copy: correct even when a destination aliases its source.
    new_k = src_k.gather(2, idx.expand(-1, -1, -1, src_k.shape[-1]))
    new_v = src_v.gather(2, idx.expand(-1, -1, -1, src_v.shape[-1]))
    new_pos = src_pos.gather(2, keep)
    new_score = src_score.gather(2, keep) if src_score is not None else None
    dst_k.copy_(new_k)
    dst_v.copy_(new_v)
    dst_pos.copy_(new_pos)
    if dst_score is not None:
        dst_score.copy_(new_score)


# ----------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------


def decode_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, valid: torch.Tensor, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of a few new queries over a layer's fixed buffer, plus each slot's attention mass.

    ``p[b, h, i, n] = exp(scale * q_i . k_n - lse_i)`` over the valid slots ``n`` (every query
    sees every valid slot: the buffer holds only past tokens), ``out_i = sum_n p v_n``, and
    ``mass[b, c, n] = sum_{h in group c} sum_i p[b, h, i, n]`` — what H2O-style policies add to
    their accumulated scores (https://arxiv.org/abs/2306.14048). A (b, kv-head) with no valid slot
    gives ``out = 0`` and ``mass = 0`` (never NaN).

    Args:
        q: ``[B, H, m, D]`` new queries (post-RoPE), fp32/fp16/bf16.
        k: ``[B, Hkv, N, D]`` the buffer's keys (q's dtype).
        v: ``[B, Hkv, N, D]`` the buffer's values (q's dtype).
        valid: bool ``[B, Hkv, N]``: True = slot holds a token (False = empty or padding).
        scale: softmax scale.

    Returns:
        ``out [B, H, m, D]`` in q's dtype and fp32 ``mass [B, Hkv, N]``.
    """
    b, h, hkv, m, n, d = check_qkv(q, k, v)
    check_valid(valid, b, hkv, n)
    g = h // hkv
    ct = _compute_dtype(q.dtype)
    qg = q.to(ct).reshape(b, hkv, g, m, d)
    s = torch.matmul(qg, k.to(ct).unsqueeze(2).transpose(-1, -2)) * float(scale)
    allowed = valid[:, :, None, None, :]
    s = s.masked_fill(~allowed, float("-inf"))
    row_lse = torch.logsumexp(s, dim=-1, keepdim=True) if n else s.sum(-1, keepdim=True)
    finite = torch.isfinite(row_lse)
    p = torch.where(allowed & finite, torch.exp(s - torch.where(finite, row_lse, 0.0)), 0.0)
    out = torch.matmul(p, v.to(ct).unsqueeze(2))
    return out.reshape(b, h, m, d).to(q.dtype), p.sum(dim=(2, 3))
