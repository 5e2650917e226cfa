"""Triton prefill kernels: FlashAttention forward with LSE, and SnapKV/H2O scores from that LSE.

:func:`attention_lse` is a FlashAttention-2 style forward (Dao et al. 2022,
https://arxiv.org/abs/2205.14135): one program per (block of queries, query head) streams the key
blocks with an online softmax and writes the output and each query's log-sum-exp. GQA-native:
query head ``h`` reads KV head ``h // g`` directly (no repeated K/V).

:func:`window_scores` / :func:`h2o_scores` compute, without an ``S x S`` matrix,
``score[b, c, j] = sum_{h in group c} sum_{i in queries} exp(scale * q_i . k_j - lse_i)``
(causal): one program per (block of keys, KV head) recomputes ``q . k`` for the scoring queries
and turns it into probabilities with the stored LSE — SnapKV's observation window
(https://arxiv.org/abs/2404.14469) or, for H2O, every query (https://arxiv.org/abs/2306.14048).
Every key block is written by exactly one program, so results are deterministic (no atomics).

Semantics, shapes and conventions are those of :mod:`depthkv.kernels.reference`. Numerics: all
softmax arithmetic, accumulators and outputs of scores/LSE are fp32. On a GPU, fp16/bf16 tiles go
to ``tl.dot`` in their own dtype with fp32 accumulation (products of fp16/bf16 are exact in fp32;
only the probability tile is rounded to the input dtype before ``p @ v``, as in FlashAttention);
fp32 inputs use IEEE fp32 dots (not TF32). Under ``TRITON_INTERPRET=1`` bf16 tiles are upcast to
fp32 right after loading, because the interpreter's bf16 arithmetic is wrong.

Any head dim works (tiles are padded to a power of two ``BLOCK_D`` with masked loads), any
sequence length (masked loads/stores), MHA/GQA/MQA, fp32/fp16/bf16.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from . import reference as _ref

__all__ = ["attention_lse", "h2o_scores", "window_scores"]

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------
# helpers shared by the Triton wrappers
# ----------------------------------------------------------------------------------------------


def is_interpreted(kernel) -> bool:
    """True when ``kernel`` runs under the Triton interpreter (``TRITON_INTERPRET=1`` at import)."""
    return isinstance(kernel, InterpretedFunction)


def check_device(interpreted: bool, *tensors: torch.Tensor) -> None:
    """Raise unless the tensors can be handed to the (compiled or interpreted) Triton kernels."""
    dev = tensors[0].device
    for t in tensors:
        if t.device != dev:
            raise ValueError(f"all tensors must be on one device, got {dev} and {t.device}")
    if not interpreted and dev.type != "cuda":
        raise ValueError(
            f"Triton kernels need CUDA tensors, got {dev}. On the CPU use impl='reference' (or set "
            "TRITON_INTERPRET=1 before importing depthkv.kernels.triton_*, for tests only)."
        )


def check_float_dtype(t: torch.Tensor) -> None:
    if t.dtype not in _DTYPES:
        raise ValueError(f"Triton kernels take fp32, fp16 or bf16 tensors, got {t.dtype}")


def block_d(d: int) -> int:
    """Padded power-of-two tile width for head dim ``d`` (``tl.dot`` needs at least 16)."""
    return max(16, triton.next_power_of_2(d))


def dot_flags(dtype: torch.dtype, interpreted: bool) -> tuple[bool, str]:
    """``(UPCAST, PRECISION)`` constexprs: upcast bf16 only under the interpreter; IEEE fp32 dots."""
    upcast = dtype == torch.bfloat16 and interpreted
    precision = "ieee" if (dtype == torch.float32 or upcast) else "tf32"
    return upcast, precision


def output(t: torch.Tensor | None, shape: tuple[int, ...], dtype: torch.dtype, device, name: str) -> torch.Tensor:
    """Return ``t`` after checking it (a caller-provided output buffer) or a new empty tensor."""
    if t is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(t.shape) != tuple(shape) or t.dtype != dtype or t.device != torch.device(device):
        raise ValueError(f"{name} must be {dtype} {list(shape)} on {device}, got {t.dtype} {tuple(t.shape)} on {t.device}")
    return t


# ----------------------------------------------------------------------------------------------
# attention forward
# ----------------------------------------------------------------------------------------------


@triton.jit
def load_kv_tile(
    k_base, v_base, n0, in_n, kmask, offs_d, dmask, skn, skd, svn, svd, UPCAST: tl.constexpr,
):
    """``K^T [BLOCK_D, BLOCK_N]`` and ``V [BLOCK_N, BLOCK_D]`` of slots ``n0 + in_n`` (masked ones 0),
    upcast to fp32 when ``UPCAST``. Block offsets in int64 (pointer arithmetic), in-block offsets in
    int32: no wrap at 2**31 elements."""
    n64 = tl.cast(n0, tl.int64)
    kt = tl.load(
        k_base + n64 * skn + offs_d[:, None] * skd + in_n[None, :] * skn,
        mask=dmask[:, None] & kmask[None, :], other=0.0,
    )
    v = tl.load(
        v_base + n64 * svn + in_n[:, None] * svn + offs_d[None, :] * svd,
        mask=kmask[:, None] & dmask[None, :], other=0.0,
    )
    if UPCAST:
        kt = kt.to(tl.float32)
        v = v.to(tl.float32)
    return kt, v


@triton.jit
def online_softmax_step(acc, l_i, m_i, s, v, PRECISION: tl.constexpr):
    """One tile of the online softmax (log2 domain): logits ``s [BLOCK_M, BLOCK_N]`` (``-inf`` where
    masked) and values ``v`` fold into the running max ``m_i``, sum ``l_i`` and output ``acc``."""
    m_new = tl.maximum(m_i, tl.max(s, 1))
    # A row that has seen no key yet keeps max -inf; shift by 0 so exp2 gives 0, not NaN.
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(s - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PRECISION)
    return acc, l_i, m_new


@triton.jit
def _attn_blocks(
    acc, l_i, m_i, q, k_base, v_base, skn, skd, svn, svd, lo, hi, qpos, SK, D, qk_scale,
    MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    for start_n in range(lo, hi, BLOCK_N):
        cols = start_n + offs_n
        kmask = cols < SK
        kt, v = load_kv_tile(k_base, v_base, start_n, offs_n, kmask, offs_d, dmask, skn, skd, svn, svd, UPCAST)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        if MASKED:
            ok = kmask[None, :]
            if CAUSAL:
                ok = ok & (cols[None, :] <= qpos[:, None])
            s = tl.where(ok, s, float("-inf"))
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, s, v, PRECISION)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(
    Q, K, V, Out, Lse,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod, slb, slh, slm,
    H, G, SQ, SK, D, qk_scale,
    CAUSAL: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    # int64 batch/head indices: offsets of tensors above 2**31 elements must not wrap.
    b = (pid_bh // H).to(tl.int64)
    h = (pid_bh % H).to(tl.int64)
    kvh = h // G
    offset = SK - SQ
    in_m = tl.arange(0, BLOCK_M)
    offs_m = pid_m * BLOCK_M + in_m
    m64 = tl.cast(pid_m * BLOCK_M, tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    mmask = offs_m < SQ
    dmask = offs_d < D
    q = tl.load(
        Q + b * sqb + h * sqh + m64 * sqm + in_m[:, None] * sqm + offs_d[None, :] * sqd,
        mask=mmask[:, None] & dmask[None, :], other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + kvh * skh
    v_base = V + b * svb + kvh * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    qpos = offs_m + offset
    if CAUSAL:
        # Keys before the tile's first query position are visible to every row: no mask needed.
        hi = tl.minimum(SK, offset + (pid_m + 1) * BLOCK_M)
        full_end = ((offset + pid_m * BLOCK_M + 1) // BLOCK_N) * BLOCK_N
    else:
        hi = SK
        full_end = (SK // BLOCK_N) * BLOCK_N
    acc, l_i, m_i = _attn_blocks(
        acc, l_i, m_i, q, k_base, v_base, skn, skd, svn, svd, 0, full_end, qpos, SK, D, qk_scale,
        False, CAUSAL, BLOCK_N, BLOCK_D, UPCAST, PRECISION,
    )
    acc, l_i, m_i = _attn_blocks(
        acc, l_i, m_i, q, k_base, v_base, skn, skd, svn, svd, full_end, hi, qpos, SK, D, qk_scale,
        True, CAUSAL, BLOCK_N, BLOCK_D, UPCAST, PRECISION,
    )
    seen = l_i > 0
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    lse = tl.where(seen, (m_i + tl.log2(tl.where(seen, l_i, 1.0))) * 0.6931471805599453, float("-inf"))
    tl.store(
        Out + b * sob + h * soh + m64 * som + in_m[:, None] * som + offs_d[None, :] * sod,
        out.to(Out.dtype.element_ty), mask=mmask[:, None] & dmask[None, :],
    )
    tl.store(Lse + b * slb + h * slh + m64 * slm + in_m * slm, lse, mask=mmask)


_FWD_CONFIGS = [
    triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w, num_stages=s)
    for bm, bn, w, s in [(128, 64, 8, 3), (128, 128, 8, 2), (128, 64, 4, 3), (64, 64, 4, 3), (128, 32, 4, 4), (64, 32, 4, 4)]
]
_INTERPRETED = is_interpreted(_attn_fwd)
# Autotuning is for real GPUs only (under the interpreter it would just multiply test time); the
# key leaves out sequence lengths so a config tuned at one length serves all of them.
_attn_fwd_tuned = (
    None if _INTERPRETED else triton.autotune(_FWD_CONFIGS, key=["BLOCK_D", "CAUSAL", "UPCAST", "PRECISION"])(_attn_fwd)
)


def interp_block(n: int) -> int:
    """Tile size under the interpreter: large tiles mean fewer (slow, Python-level) iterations."""
    return min(64, max(16, triton.next_power_of_2(max(n, 1))))


def attention_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    scale: float,
    causal: bool = True,
    *,
    out: torch.Tensor | None = None,
    lse: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`depthkv.kernels.reference.attention_lse` (same math and shapes).

    Args:
        q: ``[B, H, Sq, D]`` fp32/fp16/bf16 (CUDA; CPU under the interpreter); any strides.
        k: ``[B, Hkv, Sk, D]``, q's dtype; ``H % Hkv == 0``; ``Sq <= Sk`` when ``causal``.
        v: ``[B, Hkv, Sk, D]``, q's dtype.
        scale: softmax scale.
        causal: bottom-right aligned causal mask.
        out: optional preallocated ``[B, H, Sq, D]`` output (q's dtype), written in full.
        lse: optional preallocated fp32 ``[B, H, Sq]``, written in full.

    Returns:
        ``(out [B, H, Sq, D] in q's dtype, lse [B, H, Sq] fp32)`` (natural-log LSE).
    """
    b, h, hkv, sq, sk, d = _ref.check_qkv(q, k, v)
    _ref.check_causal(sq, sk, causal)
    check_float_dtype(q)
    check_device(_INTERPRETED, q, k, v)
    out = output(out, (b, h, sq, d), q.dtype, q.device, "out")
    lse = output(lse, (b, h, sq), torch.float32, q.device, "lse")
    if sq == 0 or b * h == 0:
        return out, lse
    if sk == 0:
        out.zero_()
        lse.fill_(float("-inf"))
        return out, lse
    upcast, precision = dot_flags(q.dtype, _INTERPRETED)
    args = (
        q, k, v, out, lse, *q.stride(), *k.stride(), *v.stride(), *out.stride(), *lse.stride(),
        h, h // hkv, sq, sk, d, float(scale) * LOG2E,
    )
    meta = dict(CAUSAL=bool(causal), BLOCK_D=block_d(d), UPCAST=upcast, PRECISION=precision)
    if _INTERPRETED:
        bm, bn = interp_block(sq), interp_block(sk)
        _attn_fwd[(triton.cdiv(sq, bm), b * h)](*args, **meta, BLOCK_M=bm, BLOCK_N=bn)
    else:
        _attn_fwd_tuned[lambda m: (triton.cdiv(sq, m["BLOCK_M"]), b * h)](*args, **meta)
    return out, lse


# ----------------------------------------------------------------------------------------------
# scores
# ----------------------------------------------------------------------------------------------


@triton.jit
def _scores_kernel(
    Q, K, Lse, Score,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, slb, slh, slm, ssb, ssh, ssn,
    HKV, G, SQ, SK, D, W_START, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_n = tl.program_id(0)
    pid_bc = tl.program_id(1)
    b = (pid_bc // HKV).to(tl.int64)
    c = (pid_bc % HKV).to(tl.int64)
    offset = SK - SQ
    in_n = tl.arange(0, BLOCK_N)
    cols = pid_n * BLOCK_N + in_n
    n64 = tl.cast(pid_n * BLOCK_N, tl.int64)
    offs_d = tl.arange(0, BLOCK_D)
    cmask = cols < SK
    dmask = offs_d < D
    kt = tl.load(
        K + b * skb + c * skh + n64 * skn + offs_d[:, None] * skd + in_n[None, :] * skn,
        mask=dmask[:, None] & cmask[None, :], other=0.0,
    )
    if UPCAST:
        kt = kt.to(tl.float32)
    acc = tl.zeros([BLOCK_N], tl.float32)
    # Queries placed before this key block (causally) cannot see it: start at the first that can.
    i_lo = tl.maximum(W_START, pid_n * BLOCK_N - offset)
    for hg in range(0, G):
        h = c * G + hg
        for i0 in range(i_lo, SQ, BLOCK_M):
            in_m = tl.arange(0, BLOCK_M)
            rows = i0 + in_m
            rmask = rows < SQ
            i64 = tl.cast(i0, tl.int64)
            q = tl.load(
                Q + b * sqb + h * sqh + i64 * sqm + in_m[:, None] * sqm + offs_d[None, :] * sqd,
                mask=rmask[:, None] & dmask[None, :], other=0.0,
            )
            if UPCAST:
                q = q.to(tl.float32)
            lse = tl.load(Lse + b * slb + h * slh + i64 * slm + in_m * slm, mask=rmask, other=float("-inf"))
            finite = lse > float("-inf")
            lse2 = tl.where(finite, lse * 1.4426950408889634, 0.0)
            s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
            ok = (rmask & finite)[:, None] & cmask[None, :] & (cols[None, :] <= rows[:, None] + offset)
            p = tl.where(ok, tl.exp2(s - lse2[:, None]), 0.0)
            acc += tl.sum(p, 0)
    tl.store(Score + b * ssb + c * ssh + n64 * ssn + in_n * ssn, acc, mask=cmask)


@functools.cache
def _score_blocks(window: int, sk: int, interpreted: bool) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages) for the scoring kernel."""
    if interpreted:
        return interp_block(window), interp_block(sk), 1, 1
    block_m = min(64, max(16, triton.next_power_of_2(window)))
    return block_m, 64, 4, 2


def window_scores(
    q: torch.Tensor,
    k: torch.Tensor,
    lse: torch.Tensor,
    scale: float,
    window: int,
    *,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Triton version of :func:`depthkv.kernels.reference.window_scores` (SnapKV, pre-pooling).

    Args:
        q: ``[B, H, Sq, D]`` fp32/fp16/bf16; k: ``[B, Hkv, Sk, D]`` (q's dtype, ``Sq <= Sk``).
        lse: ``[B, H, Sq]`` fp32 from :func:`attention_lse`.
        scale: softmax scale. window: the last ``min(window, Sq)`` queries score.
        out: optional preallocated fp32 ``[B, Hkv, Sk]``, written in full.

    Returns:
        fp32 ``[B, Hkv, Sk]``. Cost ``O(Sk * window * H * D)``, memory ``O(Sk)``.
    """
    b, h, hkv, sq, sk, d = _ref.check_qkv(q, k, k)
    _ref.check_lse(lse, b, h, sq)
    _ref.check_window(window)
    _ref.check_causal(sq, sk, True)
    check_float_dtype(q)
    check_device(_INTERPRETED, q, k, lse)
    out = output(out, (b, hkv, sk), torch.float32, q.device, "out")
    w = min(window, sq)
    if sk == 0 or b * hkv == 0:
        return out
    if w == 0:
        return out.zero_()
    lse = lse.float()
    upcast, precision = dot_flags(q.dtype, _INTERPRETED)
    block_m, block_n, warps, stages = _score_blocks(w, sk, _INTERPRETED)
    grid = (triton.cdiv(sk, block_n), b * hkv)
    _scores_kernel[grid](
        q, k, lse, out, *q.stride(), *k.stride(), *lse.stride(), *out.stride(),
        hkv, h // hkv, sq, sk, d, sq - w, float(scale) * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d(d), UPCAST=upcast, PRECISION=precision,
        num_warps=warps, num_stages=stages,
    )
    return out


def h2o_scores(
    q: torch.Tensor, k: torch.Tensor, lse: torch.Tensor, scale: float, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """Triton version of :func:`depthkv.kernels.reference.h2o_scores`: every query scores (H2O).

    Same arguments as :func:`window_scores` without ``window``. Cost ``O(Sk * Sq * H * D / 2)``
    (a causal backward-pass worth of ``q . k``), memory ``O(Sk)``.
    """
    return window_scores(q, k, lse, scale, window=q.shape[2] if q.dim() == 4 else 0, out=out)
