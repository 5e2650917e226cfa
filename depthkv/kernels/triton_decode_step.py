"""Triton decode step over a layer's fixed buffer: attention, score update and eviction in ONE launch.

Fused version of :mod:`depthkv.kernels.decode_step` (same public signatures, same semantics, same
in-place updates; the reference defines what is right). For one new token per sequence:

* :func:`decode_evict` — the new token attends over the ``N`` buffer slots and itself; the
  per-slot attention mass (summed over a KV head's query heads) updates the policy's scores
  (``snapkv``/``h2o``: ``scores += mass`` over the whole buffer); the victim — the lexicographic
  argmin over the ``N + 1`` candidates (tier, score with NaN as ``-inf``, position, then the smaller
  candidate index; the new token is candidate ``N``, and with a window it is never the victim, as in
  the reference; only empty slots can tie on all three keys) — is replaced by the new token's key, value,
  position and (stateful policies) score. If the new token itself is the victim nothing is written.
* :func:`decode_append` — the same attention, then the new token's key, value, position and score
  0 go to the first free slot (``positions < 0``); nothing is evicted.

Shapes: ``q [B, H, 1, D]``; ``k_new, v_new [B, Hkv, 1, D]`` (``H`` a multiple of ``Hkv``: MHA, GQA,
MQA); buffers ``keys, values [B, Hkv, N, D]`` (q's dtype), ``positions`` int64 ``[B, Hkv, N]``,
``scores`` fp32 ``[B, Hkv, N]``, ``seen`` int64 ``[]`` (already counts the new token, whose logical
position is ``seen - 1``); ``mask`` None or bool / additive float ``[B or 1, 1, 1, L]`` over
logical positions (its head 0 and last row are read, as the reference does); returns
``out [B, H, 1, D]`` in q's dtype.

Launch structure (one kernel, grid ``(B * Hkv, num_splits)``), split-K as in FlashDecoding
(https://crfm.stanford.edu/2023/10/12/flashdecoding.html):

1. Every program takes one KV head ``(b, c)`` and one contiguous split of its slots. The ``g``
   query heads of the group are stacked as the rows of one tile, so each K/V slot is read once
   per group. It runs an online softmax (log2 domain, fp32) over its slots and stores to scratch
   its normalised partial output, its partial LSE, the raw logits of its slots (only when the
   policy needs the mass) and, for ``knorm``, ``-||k||`` of its slots. The new token is one more
   candidate, folded in by the last split only (branch-free: the other splits see it as ``-inf``).
2. Then it increments a per-``(b, c)`` arrival counter (``atomic_add``, acquire-release, after a
   block barrier). The program that arrives last for its ``(b, c)`` — every other program of that
   head has finished reading K/V and writing its partials — does the epilogue: it combines the
   partials into ``out``, computes the mass of every slot from the stored logits and the final
   LSE, updates the scores, finds the victim (streaming: its sinks first, by ``sinks`` min-passes
   over the positions that count duplicates like the reference's top-k), writes the new token into
   the victim slot (append: the first free slot) and resets its counter to 0. The counters live in
   a persistent per-device int32 workspace (created lazily, zero-filled once, grown when a larger
   ``B * Hkv`` comes) and are back at 0 after every launch, so the next call and CUDA-graph replays
   need no memset. Launches that share a device must not run concurrently on different streams
   (they share the counters); warm the step up once before capturing it in a CUDA graph (the first
   call creates the workspace).

Split plan (``splits=None``): on a GPU about 512 slots per split, more splits when ``B * Hkv`` alone
cannot give every SM two programs, but never under 128 slots per split nor over 4 splits per SM
(split lengths are multiples of the 64-slot tile); under the interpreter (programs run one after
another) 2 splits when ``N > 16``, else 1. ``splits=k`` forces ``k`` splits of ``ceil(N / k)``
slots (some may be empty): any ``k >= 1`` gives the same result up to rounding.

The wrapper launches nothing else: scratch comes from one ``torch.empty``, ``seen`` is read on the
device (never ``int(seen)``/``.item()``), the mask is read through its strides (batch stride 0 when
broadcast) and the key/value copy into the victim slot goes through same-width integer views
(bit-exact, also under the interpreter). The step can be captured in a CUDA graph.

Valid-slot convention (as :func:`~depthkv.kernels.decode_step.slot_validity`): a slot may be
attended when ``positions >= 0`` and ``mask[b, 0, -1, position]`` (bool True, or additive value
``> finfo.min / 2``); the new token when ``mask[b, 0, -1, seen - 1]``. Invalid slots get probability
0 and mass 0, a row with nothing valid gives ``out = 0`` (never NaN). A position ``>= L`` (outside
the mask, an error in the reference) counts as invalid here.

``N = 0`` (no buffer) is accepted: the output is the new token's value (where it may attend) and
nothing is written (the reference raises there).

Append mode with no free slot: the reference raises ``IndexError``; the wrapper cannot check
without a host synchronisation, so the kernel writes nothing at all (keys, values, positions and
scores unchanged) and still returns the attention output. Callers must check room beforehand
(the eager cache does).

Numerics: fp32 softmax, accumulators and scores; ``exp2`` of ``log2(e)``-scaled logits; fp16/bf16
K/V go to ``tl.dot`` in their own dtype with fp32 accumulation on GPUs and are upcast to fp32 under
the interpreter for bf16 (:func:`~depthkv.kernels.triton_prefill.dot_flags`); fp32 uses IEEE dots.
Scores of ``knorm`` use ``sqrt_rn``, ``tova`` ``div_rn``; ``streaming`` and ``random`` scores are
exact (``random`` reproduces :func:`~depthkv.policies.scores.random_scores` with int64 operations),
so the kept set equals the reference's unless two mass (or key-norm) scores are within rounding
of each other. Additive masks may be fp32, fp16 or bf16 (compared in fp32, exactly).
The result is deterministic for a given split plan; the default plan depends on the GPU's SM count.

Papers: FlashDecoding (above), H2O (https://arxiv.org/abs/2306.14048) for the accumulated mass,
SnapKV (https://arxiv.org/abs/2404.14469) for the protected observation window.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from depthkv.kernels import reference as _ref
from depthkv.kernels.buffers import LayerBuffers
from depthkv.kernels.triton_prefill import (
    LOG2E,
    block_d,
    check_device,
    check_float_dtype,
    dot_flags,
    interp_block,
    is_interpreted,
    load_kv_tile,
    online_softmax_step,
)
from depthkv.policies import PolicyConfig
from depthkv.policies.scores import random_salt

__all__ = ["decode_append", "decode_evict"]

# Policy ids (constexpr): the candidate score of a slot after this step.
_STATEFUL, _TOVA, _KNORM, _STREAMING, _RANDOM = 0, 1, 2, 3, 4
_POLICY_IDS = {
    "snapkv": _STATEFUL, "h2o": _STATEFUL, "tova": _TOVA, "knorm": _KNORM, "streaming": _STREAMING, "random": _RANDOM,
}
_APPEND, _EVICT = 0, 1
_MASK_NONE, _MASK_BOOL, _MASK_FLOAT = 0, 1, 2
_MASK_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_BITS = {2: torch.int16, 4: torch.int32}


@triton.jit
def _slot_valid(Mask, b, pos, inr, smb, sml, L, mask_thresh, MASK_KIND: tl.constexpr):
    """May the token at logical position ``pos`` (vector or scalar, int64) be attended in row ``b``."""
    held = inr & (pos >= 0)
    if MASK_KIND == 0:
        ok = held
    else:
        inb = held & (pos < L)
        m = tl.load(Mask + b * smb + tl.where(inb, pos, 0) * sml, mask=inb, other=0)
        if MASK_KIND == 1:
            ok = inb & (m != 0)
        else:
            ok = inb & (m.to(tl.float32) > mask_thresh)
    return ok


@triton.jit
def _random_score(pos, c, salt):
    """:func:`depthkv.policies.scores.random_scores` of positions ``pos`` at KV head ``c`` (int64)."""
    mask32 = tl.full([], 0xFFFFFFFF, tl.int64)
    x = ((pos + c * 1048576) & mask32) ^ salt
    for _ in tl.static_range(3):
        x = (((x >> 16) ^ x) * 0x45D9F3B) & mask32
    x = (x >> 16) ^ x
    return (x >> 8).to(tl.float32) * (1.0 / 16777216.0)


@triton.jit
def _block_worst(tier, score, pos, idx, inr):
    """Lexicographic argmin of a block of candidates: ``(tier, score, pos, index)`` of the worst one
    (lowest tier, then lowest score with NaN as -inf, then lowest position, then smallest index)."""
    t = tl.where(inr, tier, 3)
    tmin = tl.min(t, 0)
    sel = inr & (t == tmin)
    s = tl.where(score != score, float("-inf"), score)
    sm = tl.where(sel, s, float("inf"))
    smin = tl.min(sm, 0)
    sel = sel & (sm == smin)
    pm = tl.where(sel, pos, 9223372036854775807)
    pmin = tl.min(pm, 0)
    sel = sel & (pm == pmin)
    imin = tl.min(tl.where(sel, idx, 9223372036854775807), 0)
    return tmin, smin, pmin, imin


@triton.jit
def _decode_step_kernel(
    Q, KNew, VNew, K, V, Pos, Scores, Seen, Mask,
    KBits, VBits, KNewBits, VNewBits,
    Out, PartO, PartLse, Logits, LogitNew, Norms, Counter,
    sqb, sqh, sqd, sknb, sknh, sknd, svnb, svnh, svnd,
    skb, skh, skn, skd, svb, svh, svn, svd, spb, sph, spn, ssb, ssh, ssn,
    smb, sml, sob, soh, sod,
    HKV, G, N, D, L, SPLIT_LEN, NSPLIT, qk_scale, mask_thresh, window, sinks, salt,
    MODE: tl.constexpr, POLICY: tl.constexpr, MASK_KIND: tl.constexpr,
    NEED_MASS: tl.constexpr, NEED_NORM: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr,
    UPCAST: tl.constexpr, PRECISION: tl.constexpr,
):
    bc = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1)
    b = bc // HKV
    c = bc % HKV
    seen = tl.load(Seen)
    qpos = seen - 1
    rows = tl.arange(0, BLOCK_G)
    rmask = rows < G
    offs_d = tl.arange(0, BLOCK_D)
    dmask = offs_d < D
    head = c * G + rows
    q = tl.load(Q + b * sqb + head[:, None] * sqh + offs_d[None, :] * sqd, mask=rmask[:, None] & dmask[None, :], other=0.0)
    if UPCAST:
        q = q.to(tl.float32)
    k_base = K + b * skb + c * skh
    v_base = V + b * svb + c * svh
    pos_base = Pos + b * spb + c * sph
    logit_rows = Logits + (bc * G + rows[:, None]) * N

    # ---- phase 1: this split's slots (online softmax), the new token in the last split ----------
    start = pid_s * SPLIT_LEN
    end = tl.minimum(start + SPLIT_LEN, N)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):
        in_n = tl.arange(0, BLOCK_N)
        cols = n0 + in_n
        kmask = cols < end
        kt, v = load_kv_tile(k_base, v_base, n0, in_n, kmask, offs_d, dmask, skn, skd, svn, svd, UPCAST)
        n64 = tl.cast(n0, tl.int64)
        pos = tl.load(pos_base + n64 * spn + in_n * spn, mask=kmask, other=-1)
        ok = _slot_valid(Mask, b, pos, kmask, smb, sml, L, mask_thresh, MASK_KIND)
        s = tl.dot(q, kt, input_precision=PRECISION) * qk_scale
        s = tl.where(ok[None, :], s, float("-inf"))
        if NEED_MASS:
            tl.store(logit_rows + cols[None, :], s, mask=rmask[:, None] & kmask[None, :])
        if NEED_NORM:
            kf = kt.to(tl.float32)
            tl.store(Norms + bc * N + cols, -tl.sqrt_rn(tl.sum(kf * kf, 0)), mask=kmask)
        acc, l_i, m_i = online_softmax_step(acc, l_i, m_i, s, v, PRECISION)

    last_split = pid_s == NSPLIT - 1
    kn = tl.load(KNew + b * sknb + c * sknh + offs_d * sknd, mask=dmask, other=0.0).to(tl.float32)
    vn = tl.load(VNew + b * svnb + c * svnh + offs_d * svnd, mask=dmask, other=0.0).to(tl.float32)
    valid_new = _slot_valid(Mask, b, qpos, qpos >= 0, smb, sml, L, mask_thresh, MASK_KIND)
    s_new = tl.sum(q.to(tl.float32) * kn[None, :], 1) * qk_scale
    s_new = tl.where(valid_new & last_split, s_new, float("-inf"))
    m_new = tl.maximum(m_i, s_new)
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p_new = tl.exp2(s_new - m_safe)
    l_i = l_i * alpha + p_new
    acc = acc * alpha[:, None] + p_new[:, None] * vn[None, :]
    m_i = m_new
    if NEED_MASS:
        # (vector & scalar-bool is miscomputed by the interpreter: where() instead)
        tl.store(LogitNew + bc * G + rows, s_new, mask=tl.where(last_split, rmask, False))
    has = l_i > 0
    part = (bc * NSPLIT + pid_s) * G + rows
    tl.store(PartLse + part, tl.where(has, m_i + tl.log2(tl.where(has, l_i, 1.0)), float("-inf")), mask=rmask)
    o = acc / tl.where(has, l_i, 1.0)[:, None]
    tl.store(PartO + part[:, None] * D + offs_d[None, :], o, mask=rmask[:, None] & dmask[None, :])

    # ---- arrival: the last program of this (b, c) does the epilogue -----------------------------
    tl.debug_barrier()  # every thread's partial stores happen before the release below
    arrived = tl.atomic_add(Counter + bc, 1, sem="acq_rel")
    if arrived == NSPLIT - 1:
        # combine the partials of every split (written by other programs: bypass L1)
        m_run = tl.full([BLOCK_G], float("-inf"), tl.float32)
        for sp in range(0, NSPLIT):
            lse_s = tl.load(PartLse + (bc * NSPLIT + sp) * G + rows, mask=rmask, other=float("-inf"), cache_modifier=".cg")
            m_run = tl.maximum(m_run, lse_s)
        m_top = tl.where(m_run == float("-inf"), 0.0, m_run)
        tot = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
        for sp in range(0, NSPLIT):
            pr = (bc * NSPLIT + sp) * G + rows
            lse_s = tl.load(PartLse + pr, mask=rmask, other=float("-inf"), cache_modifier=".cg")
            w = tl.where(lse_s > float("-inf"), tl.exp2(lse_s - m_top), 0.0)
            po = tl.load(
                PartO + pr[:, None] * D + offs_d[None, :], mask=rmask[:, None] & dmask[None, :], other=0.0,
                cache_modifier=".cg",
            )
            acc += w[:, None] * po
            tot += w
        fin = tot > 0
        out = acc / tl.where(fin, tot, 1.0)[:, None]
        tl.store(
            Out + b * sob + head[:, None] * soh + offs_d[None, :] * sod, out.to(Out.dtype.element_ty),
            mask=rmask[:, None] & dmask[None, :],
        )
        lse = tl.where(fin, m_top + tl.log2(tl.where(fin, tot, 1.0)), 0.0)  # 0 where unused (fin False)
        kb_ptr = KBits + b * skb + c * skh + offs_d * skd
        vb_ptr = VBits + b * svb + c * svh + offs_d * svd
        knb = tl.load(KNewBits + b * sknb + c * sknh + offs_d * sknd, mask=dmask, other=0)
        vnb = tl.load(VNewBits + b * svnb + c * svnh + offs_d * svnd, mask=dmask, other=0)
        score_base = Scores + b * ssb + c * ssh
        if MODE == 1:
            if NEED_MASS:
                ln = tl.load(LogitNew + bc * G + rows, mask=rmask, other=float("-inf"), cache_modifier=".cg")
                mass_new = tl.sum(tl.where(rmask & fin, tl.exp2(ln - lse), 0.0), 0)
            if POLICY == 0:
                sc_new = mass_new
            elif POLICY == 1:
                sc_new = tl.div_rn(mass_new, tl.full([], G, tl.float32))
            elif POLICY == 2:
                sc_new = -tl.sqrt_rn(tl.sum(kn * kn, 0))
            elif POLICY == 3:
                sc_new = qpos.to(tl.float32)
            else:
                sc_new = _random_score(qpos, c, salt)
            # streaming's sinks: kth = the `sinks`-th smallest valid position (duplicates counted, as
            # a top-k); -1 (nothing forced) for the other policies
            kth = tl.full([], -1, tl.int64)
            if POLICY == 3:
                key_new = tl.where(valid_new, qpos, 9223372036854775807)
                prev = tl.full([], -1, tl.int64)
                remaining = tl.zeros([], tl.int64) + sinks
                for _ in range(0, sinks):
                    m_k = tl.where(key_new > prev, key_new, 9223372036854775807)
                    cnt = (key_new > prev).to(tl.int64)
                    for r0 in range(0, N, BLOCK_R):
                        in_r = tl.arange(0, BLOCK_R)
                        inr = (r0 + in_r) < N
                        pos = tl.load(pos_base + tl.cast(r0, tl.int64) * spn + in_r * spn, mask=inr, other=-1)
                        ok = _slot_valid(Mask, b, pos, inr, smb, sml, L, mask_thresh, MASK_KIND)
                        key = tl.where(ok, pos, 9223372036854775807)
                        cand = inr & (key > prev)
                        mb = tl.min(tl.where(cand, key, 9223372036854775807), 0)
                        cb = tl.sum((cand & (key == mb)).to(tl.int64), 0)
                        cnt = tl.where(mb < m_k, cb, tl.where(mb == m_k, cnt + cb, cnt))
                        m_k = tl.minimum(m_k, mb)
                    kth = tl.where(remaining > 0, m_k, kth)
                    remaining = remaining - cnt
                    prev = m_k
            lo = seen - window
            forced_new = valid_new & ((qpos >= lo) | (qpos <= kth))
            # with a window the new token is the newest valid one, forced, never the victim (as the
            # reference): it starts above every tier, so the victim is always a buffer slot
            tb = tl.where(window >= 1, 3, valid_new.to(tl.int32) + forced_new.to(tl.int32))
            sb = tl.where(sc_new != sc_new, float("-inf"), sc_new)
            pb = qpos
            ib = tl.zeros([], tl.int64) + N
            for r0 in range(0, N, BLOCK_R):
                in_r = tl.arange(0, BLOCK_R)
                cols = r0 + in_r
                inr = cols < N
                r64 = tl.cast(r0, tl.int64)
                pos = tl.load(pos_base + r64 * spn + in_r * spn, mask=inr, other=-1)
                ok = _slot_valid(Mask, b, pos, inr, smb, sml, L, mask_thresh, MASK_KIND)
                if NEED_MASS:
                    lg = tl.load(
                        logit_rows + cols[None, :], mask=rmask[:, None] & inr[None, :], other=float("-inf"),
                        cache_modifier=".cg",
                    )
                    pr = tl.where((rmask & fin)[:, None] & ok[None, :], tl.exp2(lg - lse[:, None]), 0.0)
                    mass = tl.sum(pr, 0)
                if POLICY == 0:
                    sc = tl.load(score_base + r64 * ssn + in_r * ssn, mask=inr, other=0.0) + mass
                    tl.store(score_base + r64 * ssn + in_r * ssn, sc, mask=inr)
                elif POLICY == 1:
                    sc = tl.div_rn(mass, tl.full([BLOCK_R], G, tl.float32))
                elif POLICY == 2:
                    sc = tl.load(Norms + bc * N + cols, mask=inr, other=0.0, cache_modifier=".cg")
                elif POLICY == 3:
                    sc = pos.to(tl.float32)
                else:
                    sc = _random_score(pos, c, salt)
                forced = ok & ((pos >= lo) | (pos <= kth))
                tier = ok.to(tl.int32) + forced.to(tl.int32)
                tm, sm, pm, im = _block_worst(tier, sc, pos, cols.to(tl.int64), inr)
                upd = (tm < tb) | ((tm == tb) & ((sm < sb) | ((sm == sb) & ((pm < pb) | ((pm == pb) & (im < ib))))))
                tb = tl.where(upd, tm, tb)
                sb = tl.where(upd, sm, sb)
                pb = tl.where(upd, pm, pb)
                ib = tl.where(upd, im, ib)
            take = ib < N
            slot = tl.where(take, ib, 0)
            tl.debug_barrier()  # the score stores above happen before the victim's score below
            tl.store(kb_ptr + slot * skn, knb, mask=tl.where(take, dmask, False))
            tl.store(vb_ptr + slot * svn, vnb, mask=tl.where(take, dmask, False))
            tl.store(pos_base + slot * spn, qpos, mask=take)
            if POLICY == 0:
                tl.store(score_base + slot * ssn, mass_new, mask=take)
        else:
            first = tl.zeros([], tl.int64) + N
            for r0 in range(0, N, BLOCK_R):
                in_r = tl.arange(0, BLOCK_R)
                inr = (r0 + in_r) < N
                r64 = tl.cast(r0, tl.int64)
                pos = tl.load(pos_base + r64 * spn + in_r * spn, mask=inr, other=0)
                free = inr & (pos < 0)
                first = tl.minimum(first, tl.min(tl.where(free, r64 + in_r, N), 0))
            take = first < N  # no free slot: write nothing (the reference raises)
            slot = tl.where(take, first, 0)
            tl.store(kb_ptr + slot * skn, knb, mask=tl.where(take, dmask, False))
            tl.store(vb_ptr + slot * svn, vnb, mask=tl.where(take, dmask, False))
            tl.store(pos_base + slot * spn, qpos, mask=take)
            tl.store(score_base + slot * ssn, 0.0, mask=take)
        tl.store(Counter + bc, 0)  # ready for the next launch / graph replay


_INTERPRETED = is_interpreted(_decode_step_kernel)
# Splits under the interpreter (programs run one after another there: the split count only matters
# for exercising the combine) and the slot granularity of the default plan on a GPU.
_INTERP_SPLITS = 2
_SLOTS_PER_SPLIT = 512
_MIN_SLOTS_PER_SPLIT = 128
_BLOCK_N = 64

# Persistent arrival counters, one int32 per (b, kv-head), per device; zero between launches.
_COUNTERS: dict[torch.device, torch.Tensor] = {}


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def _counters(device: torch.device, size: int) -> torch.Tensor:
    """The device's counter workspace, at least ``size`` long (created/grown lazily, zero-filled)."""
    t = _COUNTERS.get(device)
    if t is None or t.numel() < size:
        t = torch.zeros(max(size, 64, 0 if t is None else 2 * t.numel()), dtype=torch.int32, device=device)
        _COUNTERS[device] = t
    return t


def _scratch(numel: int, device: torch.device) -> torch.Tensor:
    """fp32 scratch (uninitialised: every element read is written first in the same launch)."""
    return torch.empty(numel, dtype=torch.float32, device=device)


def _plan(n: int, bh: int, splits: int | None, device: torch.device) -> tuple[int, int]:
    """``(num_splits, slots_per_split)``."""
    if splits is not None:
        return splits, triton.cdiv(n, splits)
    if n == 0:
        return 1, 0
    if _INTERPRETED:
        nsplit = min(_INTERP_SPLITS, triton.cdiv(n, 16))
        return nsplit, triton.cdiv(n, nsplit)
    sm = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    # about _SLOTS_PER_SPLIT slots per split, more splits when B * Hkv alone cannot fill the GPU,
    # never under _MIN_SLOTS_PER_SPLIT slots per split nor more than 4 splits per SM
    want = max(triton.cdiv(n, _SLOTS_PER_SPLIT), triton.cdiv(2 * sm, bh))
    nsplit = max(1, min(want, triton.cdiv(n, _MIN_SLOTS_PER_SPLIT), 4 * sm))
    split_len = triton.cdiv(triton.cdiv(n, nsplit), _BLOCK_N) * _BLOCK_N
    return triton.cdiv(n, split_len), split_len


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.view(_BITS[t.element_size()]) if t.dtype != torch.float32 else t.view(torch.int32)


def _check(
    q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, mask: torch.Tensor | None, buffers: LayerBuffers,
    splits: int | None,
) -> tuple[int, int, int, int, int]:
    if not isinstance(buffers, LayerBuffers):
        raise ValueError(f"buffers must be a LayerBuffers, got {type(buffers).__name__}")
    b, h, hkv, m, n, d = _ref.check_qkv(q, buffers.keys, buffers.values)
    check_float_dtype(q)
    if m != 1:
        raise ValueError(f"a decode step takes one new token: q must be [B, H, 1, D], got {tuple(q.shape)}")
    for name, t in (("k_new", k_new), ("v_new", v_new)):
        if tuple(t.shape) != (b, hkv, 1, d):
            raise ValueError(f"{name} must be [B, Hkv, 1, D] = {[b, hkv, 1, d]}, got {tuple(t.shape)}")
        if t.dtype != q.dtype:
            raise ValueError(f"{name} must have q's dtype {q.dtype}, got {t.dtype}")
    if tuple(buffers.positions.shape) != (b, hkv, n) or buffers.positions.dtype != torch.int64:
        raise ValueError(
            f"buffers.positions must be int64 [B, Hkv, N] = {[b, hkv, n]}, got "
            f"{buffers.positions.dtype} {tuple(buffers.positions.shape)}"
        )
    if tuple(buffers.scores.shape) != (b, hkv, n) or buffers.scores.dtype != torch.float32:
        raise ValueError(
            f"buffers.scores must be float32 [B, Hkv, N] = {[b, hkv, n]}, got "
            f"{buffers.scores.dtype} {tuple(buffers.scores.shape)}"
        )
    if buffers.seen.dim() != 0 or buffers.seen.dtype != torch.int64:
        raise ValueError(f"buffers.seen must be a 0-dim int64 tensor, got {buffers.seen.dtype} {tuple(buffers.seen.shape)}")
    tensors = [q, k_new, v_new, buffers.keys, buffers.values, buffers.positions, buffers.scores, buffers.seen]
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            raise ValueError(f"mask must be None or a 4-D [B or 1, 1, 1, L] tensor, got {getattr(mask, 'shape', mask)}")
        if mask.shape[0] not in (1, b) or mask.shape[1] < 1 or mask.shape[2] < 1 or mask.shape[3] < 1:
            raise ValueError(f"mask must be [B or 1, 1, 1, L] with B={b} and L >= 1, got {tuple(mask.shape)}")
        if mask.dtype != torch.bool and mask.dtype not in _MASK_FLOATS:
            raise ValueError(f"mask must be bool or an additive fp32/fp16/bf16 mask, got {mask.dtype}")
        tensors.append(mask)
    check_device(_INTERPRETED, *tensors)
    if splits is not None and (isinstance(splits, bool) or not isinstance(splits, int) or splits < 1):
        raise ValueError(f"splits must be a positive int or None, got {splits!r}")
    return b, h, hkv, n, d


def _launch(
    mode: int, q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, mask: torch.Tensor | None,
    buffers: LayerBuffers, scaling: float, policy: PolicyConfig | None, splits: int | None,
) -> torch.Tensor:
    b, h, hkv, n, d = _check(q, k_new, v_new, mask, buffers, splits)
    scaling = float(scaling)
    out = torch.empty((b, h, 1, d), dtype=q.dtype, device=q.device)
    bh = b * hkv
    if bh == 0 or d == 0:
        return out
    g = h // hkv
    pid = _STATEFUL
    if mode == _EVICT:
        if not isinstance(policy, PolicyConfig):
            raise ValueError(f"policy must be a PolicyConfig, got {type(policy).__name__}")
        if policy.name not in _POLICY_IDS:
            raise ValueError(f"the Triton decode step has no rule for policy {policy.name!r}")
        pid = _POLICY_IDS[policy.name]
    need_mass = mode == _EVICT and pid in (_STATEFUL, _TOVA)
    need_norm = mode == _EVICT and pid == _KNORM
    nsplit, split_len = _plan(n, bh, splits, q.device)

    # one scratch allocation, carved into the partials (+1 keeps every view's pointer non-null)
    sizes = (
        bh * nsplit * g * d,  # part_o
        bh * nsplit * g,  # part_lse
        bh * g * n if need_mass else 0,  # logits
        bh * g if need_mass else 0,  # logit_new
        bh * n if need_norm else 0,  # norms
    )
    ws = _scratch(sum(sizes) + 1, q.device)
    views, at = [], 0
    for size in sizes:
        views.append(ws[at : at + max(size, 1)])
        at += size
    part_o, part_lse, logits, logit_new, norms = views
    counter = _counters(q.device, bh)

    keys, values, positions, scores = buffers.keys, buffers.values, buffers.positions, buffers.scores
    if n == 0:  # never dereferenced, but empty tensors may have null pointers
        keys = values = q
        positions, scores = buffers.seen.view(1, 1, 1).expand(b, hkv, 1), ws.view(1, 1, -1)[..., :1].expand(b, hkv, 1)
    if mask is None:
        mask_kind, row, thresh = _MASK_NONE, buffers.seen.view(1, 1), 0.0
    else:
        row = mask[:, 0, -1, :]
        if mask.dtype == torch.bool:
            mask_kind, row, thresh = _MASK_BOOL, row.view(torch.uint8), 0.0
        else:
            mask_kind, thresh = _MASK_FLOAT, float(torch.finfo(mask.dtype).min / 2)
    smb = row.stride(0) if row.shape[0] > 1 else 0
    sml, length = row.stride(1), row.shape[1]

    window = policy.window if policy is not None else 0
    sinks = policy.sinks if pid == _STREAMING and mode == _EVICT else 0
    salt = random_salt(policy.seed) if pid == _RANDOM and mode == _EVICT else 0
    upcast, precision = dot_flags(q.dtype, _INTERPRETED)
    block_g = max(16, triton.next_power_of_2(g))
    if _INTERPRETED:
        block_n, block_r, warps, stages = interp_block(split_len), interp_block(n), 1, 1
    else:
        block_n, block_r, warps, stages = _BLOCK_N, max(32, min(256, 4096 // block_g)), 4, 2
    _decode_step_kernel[(bh, nsplit)](
        q, k_new, v_new, keys, values, positions, scores, buffers.seen, row,
        _bits(keys), _bits(values), _bits(k_new), _bits(v_new),
        out, part_o, part_lse, logits, logit_new, norms, counter,
        q.stride(0), q.stride(1), q.stride(3), *_drop2(k_new.stride()), *_drop2(v_new.stride()),
        *keys.stride(), *values.stride(), *positions.stride(), *scores.stride(),
        smb, sml, out.stride(0), out.stride(1), out.stride(3),
        hkv, g, n, d, length, split_len, nsplit, scaling * LOG2E, thresh, window, sinks, salt,
        MODE=mode, POLICY=pid, MASK_KIND=mask_kind, NEED_MASS=need_mass, NEED_NORM=need_norm,
        BLOCK_G=block_g, BLOCK_N=block_n, BLOCK_R=block_r, BLOCK_D=block_d(d),
        UPCAST=upcast, PRECISION=precision, num_warps=warps, num_stages=stages,
    )
    return out


def _drop2(stride: tuple[int, ...]) -> tuple[int, int, int]:
    """Strides of a ``[B, Hkv, 1, D]`` tensor without the token axis."""
    return stride[0], stride[1], stride[3]


def decode_evict(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
    policy: PolicyConfig,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """Evict mode in one launch: attend, update scores, write the new token over the victim (in place).

    Same semantics as :func:`depthkv.kernels.decode_step.decode_evict`.

    Args:
        q: ``[B, H, 1, D]`` the new token's queries (post-RoPE), fp32/fp16/bf16.
        k_new: ``[B, Hkv, 1, D]`` its key; v_new: ``[B, Hkv, 1, D]`` its value (q's dtype).
        mask: bool or additive ``[B or 1, 1, 1, L]`` over logical positions, or None.
        buffers: the layer's buffers (``N`` slots); ``seen`` already counts the new token.
        scaling: softmax scale.
        policy: the eviction policy.
        splits: split-K partitions of the buffer (default: the split plan of the module
            docstring). Any positive value gives the same result up to rounding.

    Returns:
        ``[B, H, 1, D]`` attention output in q's dtype.
    """
    return _launch(_EVICT, q, k_new, v_new, mask, buffers, scaling, policy, splits)


def decode_append(
    q: torch.Tensor,
    k_new: torch.Tensor,
    v_new: torch.Tensor,
    mask: torch.Tensor | None,
    buffers: LayerBuffers,
    scaling: float,
    *,
    splits: int | None = None,
) -> torch.Tensor:
    """Append mode in one launch: attend, then write the new token to the first free slot (in place).

    Same semantics as :func:`depthkv.kernels.decode_step.decode_append`, except with no free slot:
    nothing is written (the buffers are unchanged) instead of an ``IndexError``, since checking
    would need a host synchronisation. ``out`` is still the attention output.

    Arguments and return as :func:`decode_evict`.
    """
    return _launch(_APPEND, q, k_new, v_new, mask, buffers, scaling, None, splits)
