"""Triton gather/compaction: copy a layer's kept slots into its fixed-size buffers, in place.

``dst_x[b, c, i] = src_x[b, c, keep[b, c, i]]`` for keys, values, int64 positions and fp32 scores,
exactly as :func:`depthkv.kernels.reference.compact`. One program per (block of kept slots,
batch, KV head); the order of ``keep`` is preserved (callers pass ascending positions).

It is a pure copy: tensors are reinterpreted as same-width integers (bf16/fp16 as int16, fp32 as
int32), so results are bit-identical to the reference on every backend, the interpreter included.

Indices outside ``[0, N)`` are not checked on the host (that would synchronise a GPU); the kernel
never reads out of bounds for them and writes key/value 0, position -1 and score 0 instead.
Destinations must not overlap their sources (programs run in parallel); the reference handles
aliasing, this kernel raises.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import reference as _ref
from .triton_prefill import check_device, interp_block, is_interpreted

__all__ = ["compact"]

_BITS = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


@triton.jit
def _copy_rows(src_base, dst_base, idx, row0, in_k, inb, rmask, ssn, ssd, sdn, sdd, D, BLOCK_D: tl.constexpr):
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        cm = cols < D
        x = tl.load(src_base + idx[:, None] * ssn + cols[None, :] * ssd, mask=inb[:, None] & cm[None, :], other=0)
        dst = dst_base + row0 * sdn + in_k[:, None] * sdn + cols[None, :] * sdd
        tl.store(dst, x, mask=rmask[:, None] & cm[None, :])


@triton.jit
def _compact_kernel(
    Keep, SK, SV, SP, SS, DK, DV, DP, DS,
    kb, kh, kn,
    skb, skh, skn, skd, svb, svh, svn, svd, spb, sph, spn, ssb, ssh, ssn,
    dkb, dkh, dkn, dkd, dvb, dvh, dvn, dvd, dpb, dph, dpn, dsb, dsh, dsn,
    HKV, N, KK, DKDIM, DVDIM,
    HAS_SCORE: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DK: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    pid_k = tl.program_id(0)
    pid_bc = tl.program_id(1)
    b = (pid_bc // HKV).to(tl.int64)
    c = (pid_bc % HKV).to(tl.int64)
    in_k = tl.arange(0, BLOCK_K)
    rows = pid_k * BLOCK_K + in_k
    row0 = tl.cast(pid_k * BLOCK_K, tl.int64)  # int64 block offset; idx is int64 already
    rmask = rows < KK
    idx = tl.load(Keep + b * kb + c * kh + row0 * kn + in_k * kn, mask=rmask, other=0)
    inb = rmask & (idx >= 0) & (idx < N)
    idx = tl.where(inb, idx, 0)
    _copy_rows(SK + b * skb + c * skh, DK + b * dkb + c * dkh, idx, row0, in_k, inb, rmask, skn, skd, dkn, dkd, DKDIM, BLOCK_DK)
    _copy_rows(SV + b * svb + c * svh, DV + b * dvb + c * dvh, idx, row0, in_k, inb, rmask, svn, svd, dvn, dvd, DVDIM, BLOCK_DV)
    pos = tl.load(SP + b * spb + c * sph + idx * spn, mask=inb, other=-1)
    tl.store(DP + b * dpb + c * dph + row0 * dpn + in_k * dpn, pos, mask=rmask)
    if HAS_SCORE:
        sc = tl.load(SS + b * ssb + c * ssh + idx * ssn, mask=inb, other=0)
        tl.store(DS + b * dsb + c * dsh + row0 * dsn + in_k * dsn, sc, mask=rmask)


_INTERPRETED = is_interpreted(_compact_kernel)


def _as_bits(t: torch.Tensor) -> torch.Tensor:
    return t if not t.is_floating_point() else t.view(_BITS[t.element_size()])


def _span(t: torch.Tensor) -> tuple[int, int]:
    if t.numel() == 0:
        return 0, 0
    lo = hi = t.data_ptr()
    for size, stride in zip(t.shape, t.stride()):
        step = (size - 1) * stride * t.element_size()
        lo, hi = (lo + step, hi) if step < 0 else (lo, hi + step)
    return lo, hi + t.element_size()


def _overlap(a: torch.Tensor, b: torch.Tensor) -> bool:
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def _tile_d(d: int) -> int:
    return min(128, max(16, triton.next_power_of_2(d)))


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
    """Triton version of :func:`depthkv.kernels.reference.compact` (same arguments, in place).

    Args:
        keep: int64 ``[B, Hkv, K]`` slot indices into the source, in the order to store them.
        src_k: ``[B, Hkv, N, D]`` (any dtype, any strides).
        src_v: ``[B, Hkv, N, D]`` (any dtype, any strides).
        src_pos: int64 ``[B, Hkv, N]``.
        src_score: fp32 ``[B, Hkv, N]`` or None.
        dst_k: ``[B, Hkv, K, D]``. Every destination is written in full and must not overlap any
            source.
        dst_v: ``[B, Hkv, K, D]``.
        dst_pos: int64 ``[B, Hkv, K]``.
        dst_score: fp32 ``[B, Hkv, K]`` or None.
    """
    b, hkv, n, kk = _ref.check_compact(keep, src_k, src_v, src_pos, src_score, dst_k, dst_v, dst_pos, dst_score)
    srcs = [src_k, src_v, src_pos] + ([src_score] if src_score is not None else [])
    dsts = [dst_k, dst_v, dst_pos] + ([dst_score] if dst_score is not None else [])
    check_device(_INTERPRETED, keep, *srcs, *dsts)
    for dst in dsts:
        for src in srcs:
            if _overlap(dst, src):
                raise ValueError(
                    "compact: a destination buffer overlaps a source; the Triton gather runs programs in "
                    "parallel and needs distinct buffers (the reference implementation allows aliasing)"
                )
    if kk == 0 or b * hkv == 0:
        return
    has_score = src_score is not None
    ss, ds = (src_score, dst_score) if has_score else (src_pos, dst_pos)  # placeholders, unused
    block_k = interp_block(kk) if _INTERPRETED else 64
    grid = (triton.cdiv(kk, block_k), b * hkv)
    _compact_kernel[grid](
        keep, _as_bits(src_k), _as_bits(src_v), src_pos, _as_bits(ss),
        _as_bits(dst_k), _as_bits(dst_v), dst_pos, _as_bits(ds),
        *keep.stride(), *src_k.stride(), *src_v.stride(), *src_pos.stride(), *ss.stride(),
        *dst_k.stride(), *dst_v.stride(), *dst_pos.stride(), *ds.stride(),
        hkv, n, kk, src_k.shape[-1], src_v.shape[-1],
        HAS_SCORE=has_score, BLOCK_K=block_k, BLOCK_DK=_tile_d(src_k.shape[-1]), BLOCK_DV=_tile_d(src_v.shape[-1]),
        num_warps=4,
    )
