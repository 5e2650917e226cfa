"""Triton decode attention over a layer's fixed buffer, with per-slot attention mass.

:func:`decode_attention` computes, for ``m`` new queries (usually 1) over a buffer of ``N`` slots
with a validity mask, the same result as :func:`depthkv.kernels.reference.decode_attention`:
``out`` and ``mass[b, c, n] = sum_{h in group c} sum_i p[b, h, i, n]``. Three launches:

1. ``_decode_partial`` — split-K (FlashDecoding): one program per (split of the buffer, batch, KV
   head, block of query rows). GQA-native: the ``g * m`` query rows of a KV head's group are
   stacked into one tile, so each K/V slot is read once per group, not once per query head. Each
   program runs an online softmax over its split and writes its normalised partial output, its
   partial LSE, and the raw logits ``scale * q . k`` of its slots (``-inf`` for invalid slots) —
   ``4 * g * m`` bytes per slot, a few percent of the K/V bytes it reads.
2. ``_decode_reduce`` — combines the splits of each query row with their LSEs
   (``lse = log sum_s exp(lse_s)``, ``out = sum_s exp(lse_s - lse) out_s``) and stores the final
   output (input dtype) and the final LSE.
3. ``_decode_mass`` — the light second pass: ``exp(logit - lse)`` summed over the group's rows,
   reading the logits (not K again).

Valid-slot convention: ``valid[b, c, n]`` False means empty/padding and the slot gets exactly 0
probability and 0 mass. A (batch, KV head) with no valid slot yields ``out = 0`` and ``mass = 0``
(the final LSE is ``-inf``; every exp is guarded so nothing becomes NaN).

Numerics as in :mod:`depthkv.kernels.triton_prefill` (fp32 softmax and accumulators, native
fp16/bf16 ``tl.dot`` on GPUs, bf16 upcast to fp32 under the interpreter, IEEE dots for fp32).
Results are deterministic for a given split plan (no atomics); the default plan depends on the
GPU's SM count, so different GPUs may differ at rounding level. Papers: FlashAttention
(https://arxiv.org/abs/2205.14135); H2O (https://arxiv.org/abs/2306.14048) for the mass.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import reference as _ref
from .triton_prefill import (
    LOG2E,
    block_d,
    check_device,
    check_float_dtype,
    dot_flags,
    interp_block,
    is_interpreted,
    load_kv_tile,
    online_softmax_step,
    output,
)

__all__ = ["decode_attention"]


@triton.jit
def _decode_partial(
    Q, K, V, Valid, Logits, PartO, PartLse,
    sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sab, sah, san,
    HKV, G, M, ROWS, N, D, SPLIT_LEN, NSPLIT, qk_scale,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    pid_s = tl.program_id(0)
    pid_bc = tl.program_id(1)
    pid_r = tl.program_id(2)
    bc = pid_bc.to(tl.int64)
    b = bc // HKV
    c = bc % HKV
    rows = pid_r * BLOCK_M + tl.arange(0, BLOCK_M)
    rmask = rows < ROWS
    head = c * G + rows // M
    qi = rows % M
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    q = tl.load(
        Q + b * sqb + head[:, None] * sqh + qi[:, None] * sqm + offs_d[None, :] * sqd,
        mask=rmask[:, None] & dmask[None, :], other=0.0,
    )
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + c * skh
    v_base = V + b * svb + c * svh
    logit_rows = Logits + (bc * ROWS + rows[:, None]) * N
    start = pid_s * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, N)
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        in_n = tl.arange(0, BLOCK_N)
        cols = n0 + in_n
        kmask = cols < end
        kt, v = load_kv_tile(k_base, v_base, n0, in_n, kmask, offs_d, dmask, skn, skd, svn, svd, UPCAST)
        n64 = tl.cast(n0, tl.int64)
        ok = kmask & (tl.load(Valid + b * sab + c * sah + n64 * san + in_n * san, mask=kmask, other=0) != 0)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        tl.store(logit_rows + cols[None, :], s, mask=rmask[:, None] & kmask[None, :])
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, s, v, PRECISION)
    seen = l_i > 0
    part = (bc * NSPLIT + pid_s) * ROWS + rows
    lse = tl.where(seen, m_i + tl.log2(tl.where(seen, l_i, 1.0)), float("-inf"))
    tl.store(PartLse + part, lse, mask=rmask)
    out = acc / tl.where(seen, l_i, 1.0)[:, None]
    tl.store(PartO + part[:, None] * D + offs_d[None, :], out, mask=rmask[:, None] & dmask[None, :])


@triton.jit
def _decode_reduce(
    PartO, PartLse, Out, FinalLse, sob, soh, som, sod,
    HKV, G, M, ROWS, D, NSPLIT,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    r = pid % ROWS
    bc = pid // ROWS
    base = bc * NSPLIT * ROWS + r
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    m_vec = tl.full([BLOCK_S], float("-inf"), tl.float32)
    for s0 in range(0, NSPLIT, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        lse_s = tl.load(PartLse + base + s * ROWS, mask=s < NSPLIT, other=float("-inf"))
        m_vec = tl.maximum(m_vec, lse_s)
    m = tl.max(m_vec, 0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w_vec = tl.zeros([BLOCK_S], tl.float32)
    acc = tl.zeros([BLOCK_D], tl.float32)
    for s0 in range(0, NSPLIT, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        smask = s < NSPLIT
        lse_s = tl.load(PartLse + base + s * ROWS, mask=smask, other=float("-inf"))
        w = tl.where(lse_s > float("-inf"), tl.exp2(lse_s - m_safe), 0.0)
        o = tl.load(PartO + (base + s[:, None] * ROWS) * D + offs_d[None, :], mask=smask[:, None] & dmask[None, :], other=0.0)
        acc += tl.sum(w[:, None] * o, 0)
        w_vec += w
    total = tl.sum(w_vec, 0)
    seen = total > 0
    out = acc / tl.where(seen, total, 1.0)
    lse = tl.where(seen, m_safe + tl.log2(tl.where(seen, total, 1.0)), float("-inf"))
    b = bc // HKV
    head = (bc % HKV) * G + r // M
    qi = r % M
    tl.store(Out + b * sob + head * soh + qi * som + offs_d * sod, out.to(Out.dtype.element_ty), mask=dmask)
    tl.store(FinalLse + bc * ROWS + r, lse)


@triton.jit
def _decode_mass(
    Logits, FinalLse, Valid, Mass, sab, sah, san, smb, smh, smn,
    HKV, ROWS, N,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_n = tl.program_id(0)
    bc = tl.program_id(1).to(tl.int64)
    b = bc // HKV
    c = bc % HKV
    in_n = tl.arange(0, BLOCK_N)
    cols = pid_n * BLOCK_N + in_n
    n64 = tl.cast(pid_n * BLOCK_N, tl.int64)
    cmask = cols < N
    ok = cmask & (tl.load(Valid + b * sab + c * sah + n64 * san + in_n * san, mask=cmask, other=0) != 0)
    acc = tl.zeros([BLOCK_N], tl.float32)
    for r0 in range(0, ROWS, BLOCK_M):
        rows = r0 + tl.arange(0, BLOCK_M)
        rmask = rows < ROWS
        lse = tl.load(FinalLse + bc * ROWS + rows, mask=rmask, other=float("-inf"))
        fin = lse > float("-inf")
        s = tl.load(Logits + (bc * ROWS + rows[:, None]) * N + cols[None, :], mask=rmask[:, None] & cmask[None, :], other=0.0)
        p = tl.where(fin[:, None] & ok[None, :], tl.exp2(s - tl.where(fin, lse, 0.0)[:, None]), 0.0)
        acc += tl.sum(p, 0)
    tl.store(Mass + b * smb + c * smh + n64 * smn + in_n * smn, acc, mask=cmask)


_INTERPRETED = is_interpreted(_decode_partial)
# Buffer slots per split under the interpreter (programs run one after another there, so the
# split count only matters for exercising the reduction).
_INTERP_SPLIT = 256


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _row_block(rows: int) -> int:
    return min(64, max(16, triton.next_power_of_2(rows)))


def _split_len(n: int, programs_per_split: int, block_n: int, device: torch.device) -> int:
    """Slots per split: enough splits to give the GPU about two programs per SM."""
    if _INTERPRETED:
        return _INTERP_SPLIT
    n_blocks = triton.cdiv(n, block_n)
    target = 2 * _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    splits = max(1, min(n_blocks, triton.cdiv(target, programs_per_split)))
    return triton.cdiv(n_blocks, splits) * block_n


def decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    valid: torch.Tensor,
    scale: float,
    *,
    out: torch.Tensor | None = None,
    mass: torch.Tensor | None = None,
    split_len: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton version of :func:`depthkv.kernels.reference.decode_attention`.

    Args:
        q: ``[B, H, m, D]`` new queries, fp32/fp16/bf16, any strides.
        k: ``[B, Hkv, N, D]`` the layer's buffered keys (q's dtype), any strides.
        v: ``[B, Hkv, N, D]`` the layer's buffered values (q's dtype), any strides.
        valid: bool ``[B, Hkv, N]``, True = slot holds a token.
        scale: softmax scale.
        out: optional preallocated ``[B, H, m, D]`` (q's dtype), written in full.
        mass: optional preallocated fp32 ``[B, Hkv, N]``, written in full.
        split_len: slots per split-K partition (default: about two programs per SM on a GPU,
            256 under the interpreter). Any positive value gives the same result up to rounding.

    Returns:
        ``(out [B, H, m, D] in q's dtype, mass [B, Hkv, N] fp32)``.
    """
    b, h, hkv, m, n, d = _ref.check_qkv(q, k, v)
    _ref.check_valid(valid, b, hkv, n)
    check_float_dtype(q)
    check_device(_INTERPRETED, q, k, v, valid)
    if split_len is not None and (isinstance(split_len, bool) or not isinstance(split_len, int) or split_len < 1):
        raise ValueError(f"split_len must be a positive int, got {split_len!r}")
    out = output(out, (b, h, m, d), q.dtype, q.device, "out")
    mass = output(mass, (b, hkv, n), torch.float32, q.device, "mass")
    if b * hkv == 0:
        return out, mass
    if m == 0 or n == 0:
        return out.zero_(), mass.zero_()
    g = h // hkv
    rows = g * m
    block_m = _row_block(rows)
    row_blocks = triton.cdiv(rows, block_m)
    block_n = interp_block(n) if _INTERPRETED else 64
    split = split_len or _split_len(n, b * hkv * row_blocks, block_n, q.device)
    nsplit = triton.cdiv(n, split)
    f32 = dict(dtype=torch.float32, device=q.device)
    logits = torch.empty((b, hkv, rows, n), **f32)
    part_o = torch.empty((b, hkv, nsplit, rows, d), **f32)
    part_lse = torch.empty((b, hkv, nsplit, rows), **f32)
    final_lse = torch.empty((b, hkv, rows), **f32)
    valid_u8 = valid.view(torch.uint8)
    upcast, precision = dot_flags(q.dtype, _INTERPRETED)
    bd = block_d(d)
    warps = 1 if _INTERPRETED else 4
    _decode_partial[(nsplit, b * hkv, row_blocks)](
        q, k, v, valid_u8, logits, part_o, part_lse,
        *q.stride(), *k.stride(), *v.stride(), *valid_u8.stride(),
        hkv, g, m, rows, n, d, split, nsplit, float(scale) * LOG2E,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=bd, UPCAST=upcast, PRECISION=precision,
        num_warps=warps, num_stages=1 if _INTERPRETED else 3,
    )
    block_s = min(32, max(2, triton.next_power_of_2(nsplit)))
    _decode_reduce[(b * hkv * rows,)](
        part_o, part_lse, out, final_lse, *out.stride(), hkv, g, m, rows, d, nsplit,
        BLOCK_S=block_s, BLOCK_D=bd, num_warps=warps,
    )
    mass_m, mass_n = (block_m, interp_block(n)) if _INTERPRETED else (16, 256)
    _decode_mass[(triton.cdiv(n, mass_n), b * hkv)](
        logits, final_lse, valid_u8, mass, *valid_u8.stride(), *mass.stride(), hkv, rows, n,
        BLOCK_M=mass_m, BLOCK_N=mass_n, num_warps=warps,
    )
    return out, mass
