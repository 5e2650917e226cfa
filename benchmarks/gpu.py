"""GPU benchmark of depthkv: kernel correctness on CUDA, kernel speed side by side, and decode serving.

Run on a CUDA machine (written for one H200; the default run stays under 5 minutes)::

    python benchmarks/gpu.py [--out benchmarks/results] [--layers 4] [--time-budget 285]

1. Correctness: the Triton kernels against the PyTorch reference over a grid of awkward shapes in
   bf16, with the tolerance of tests/kernels/test_triton.py
   (``max|triton - ref_hi| <= 4 * max|reference_bf16 - ref_hi| + one bf16 ulp``, ``ref_hi`` the
   reference in fp64, or fp32 for the decode step); and the fused decode step
   (:mod:`depthkv.kernels.triton_decode_step`, evict and append) against
   :mod:`depthkv.kernels.decode_step` over a few consecutive steps on bf16 buffers (4096 slots,
   H=32/Hkv=8/D=128, and a padded batch of 2): the same kept set (per row and KV head, by
   position), bit-equal keys/values, scores to fp32 rounding, and the output within the tolerance.
2. Prefill scoring overhead: ``attention_lse + window_scores`` (SnapKV window 32) against plain
   ``scaled_dot_product_attention`` (flash backend) at 8K/32K/128K tokens, Llama-8B heads
   (B=1, H=32, Hkv=8, D=128). Target: < 10% overhead.
3. Decode attention at 32K and 128K context, same heads, bf16: SDPA decode (one query over the full
   cache) against the fused one-launch step ``triton_decode_step.decode_evict`` over a 10% and a
   20% budget buffer, ``decode_append`` over a 10% buffer (+ a free tail of 256 slots), and the
   old three-launch ``triton_decode.decode_attention`` at 10% (attention only) for comparison.
   Each is timed eagerly (``do_bench``, L2 flushed before every call) and replayed from a CUDA
   graph (``do_bench_cudagraph``; the fused step mutates its buffers in place at every replay,
   which keeps them full, so the work per call does not change). Calls cycle through enough copies
   of the buffers to exceed 4x the L2 cache, so no graph replay reads a warm buffer.
   Targets at 128K: fused evict at 10% >= 5x faster than full SDPA eagerly, >= 8x in a graph.
4. Bandwidth of the fused step: K+V bytes of the buffer / time (the graph time when there is one),
   against the measured device-to-device copy bandwidth (``dst.copy_(src)``, read + write bytes).
   Target: >= 70% on the largest fused buffer (evict at 20% of 128K), where launch costs amortise.
5. Serving: a Llama-3.1-8B-shaped model (hidden 4096, 32/8 heads, head dim 128, intermediate
   14336, vocab 128256, rope theta 500000; random bf16 weights) with ``--layers`` layers (default
   4: compile time bounds the run), ``torch.compile(..., mode="reduce-overhead")`` (CUDA graphs):
   full cache = transformers ``StaticCache`` with Inductor; depthkv = ``depthkv.backend(plan,
   impl="triton")`` + ``StaticBudgetCache`` in evict and in append mode, at 10% and 20% uniform
   budgets (snapkv). Contexts 128K and 32K, caches pre-filled with random K/V (kept positions: a
   sorted random subset ending with the policy window; no prefill is run). Decode tokens/s at
   batch 1, and at the largest batch that fits: ``(free memory after the weights - margin) /
   (cache bytes per row + working bytes per row)``, the working bytes an estimate (the full
   cache's ``repeat_kv`` copies of one layer, the fused step's fp32 logits scratch, the logits
   row); that batch is then allocated and run, and halved on out-of-memory. Tokens/s = batch *
   steps / time. Batch-1 tokens/s is also scaled to the real 32-layer model by the per-layer time:
   ``step_32 = head + 32 * (step - head) / layers``, ``head`` (final norm + lm_head) timed alone.
   And, from bytes alone, the largest batch of the real 32-layer model on a 141 GB device.
6. Multi-device (before serving): the shipped tiny model split over devices by an accelerate
   device map (two GPUs if there are two, else the GPU with CPU and disk offload), every depthkv
   path against the unsplit model: ``benchmarks/multi_device.py``.
   Every row is a fresh ``torch._dynamo.reset()`` + compile (its compile time is recorded). Rows
   run 128K first, batch 1 before the largest batch; a row that would not finish within
   ``--time-budget`` seconds of the start (estimated from the rows before it) is skipped and
   marked so.

Kernel times are medians of ``triton.testing`` benchmarks. Results go to ``<out>/gpu-<date>.json``
and ``.md`` (device name, torch/triton/transformers versions, shapes, every number, the targets and
whether they are met), rewritten atomically after every section and serving row, so a run cut
short keeps what it measured. Progress lines carry the elapsed time. ``--help`` lists the options
(serving layers, contexts, variants, compiler, sections to skip, time budget).

``--dry-run`` runs all of it on tiny shapes on the CPU under the Triton interpreter (it sets
``TRITON_INTERPRET=1`` before importing Triton): fp32 kernels and a 2-layer tiny fp32 Llama,
contexts 256/128, serving compiled with ``aot_eager`` (no Inductor codegen; ``--compiler
inductor`` to try it), a pretend device memory and batches of at most 2; CUDA graphs are skipped
and marked so. It writes the same JSON keys, in about a minute, to a temp directory or ``--out``:
a check that the script works, not a measurement. Without CUDA and without ``--dry-run`` the
script exits with status 2 and says so. Exit status 1: a correctness check failed.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import argparse  # noqa: E402
import datetime  # noqa: E402
import gc  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthkv.files import atomic_write_text  # noqa: E402

C = 4.0  # tolerance multiple of PyTorch's own same-precision error (see tests/kernels/test_triton.py)
WINDOW = 32  # SnapKV observation window used for the prefill scoring overhead
REAL_LAYERS = 32  # Llama-3.1-8B
REAL_DEVICE_BYTES = 141e9  # an H200 as sold: "141 GB"
# serving variants: (name, budget fraction or None for the full cache, decode mode)
VARIANTS = (
    ("full", None, None), ("evict@10%", 0.10, "evict"), ("evict@20%", 0.20, "evict"),
    ("append@10%", 0.10, "append"), ("append@20%", 0.20, "append"),
)

LLAMA_8B = dict(
    vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
    head_dim=128, rope_theta=500000.0,
)
FULL = dict(
    dtype=torch.bfloat16,
    heads=(32, 8, 128),
    prefill=(8192, 32768, 131072),
    h2o=(8192,),
    decode=(32768, 131072),
    fractions=(0.10, 0.20),
    append_tail=256,
    copy_bytes=2 << 30,
    # (B, H, Hkv, S, D) correctness grid: S 1/17/127/1000, D 64/80/128, MHA / GQA 4:1, 8:1 / MQA
    grid=[
        (1, 2, 2, 1, 64), (1, 4, 1, 17, 80), (1, 8, 2, 127, 128), (1, 16, 2, 127, 64), (2, 4, 4, 17, 80),
        (1, 8, 1, 1000, 128), (1, 32, 8, 1000, 128), (2, 8, 2, 1000, 80),
    ],
    # fused decode step, bf16: (B, H, Hkv, slots, D, policy, mode, left pads per row or None)
    fused=[
        (1, 32, 8, 4096, 128, "snapkv", "evict", None),
        (2, 8, 2, 1000, 64, "h2o", "evict", (0, 3000)),
        (1, 32, 8, 4096, 128, "snapkv", "append", None),
    ],
    fused_steps=4,
    serve=dict(
        name="Llama-3.1-8B-shaped", config=LLAMA_8B, dtype=torch.bfloat16, layers=4, contexts=(131072, 32768),
        steps=(24, 8), warmup=3, compiler="inductor", batch_cap=4096, row_guess_s=30.0,
    ),
    time_budget=285.0,
)
DRY = dict(
    dtype=torch.float32,
    heads=(4, 2, 64),
    prefill=(32, 64),
    h2o=(32,),
    decode=(128, 256),
    fractions=(0.10, 0.20),
    append_tail=16,
    copy_bytes=1 << 20,
    grid=[(1, 4, 2, 17, 64), (1, 2, 1, 33, 80)],
    fused=[
        (1, 4, 2, 40, 64, "snapkv", "evict", None),
        (2, 4, 1, 33, 32, "h2o", "evict", (0, 30)),
        (1, 4, 2, 40, 64, "snapkv", "append", None),
    ],
    fused_steps=2,
    serve=dict(
        name="tiny Llama",
        config=dict(vocab_size=320, hidden_size=128, intermediate_size=256, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=32, rope_theta=500000.0),
        dtype=torch.float32,  # the interpreter runs fp32 kernels faster; bf16 is checked in the correctness section
        layers=2, contexts=(256, 128), steps=(1, 1), warmup=1, compiler="aot_eager", batch_cap=2, row_guess_s=0.0,
        free_bytes=2 << 20,  # pretend device memory free after the weights
    ),
    time_budget=0.0,
)

_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _START:7.1f} s] {msg}", flush=True)


def elapsed() -> float:
    return time.perf_counter() - _START


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


def bench(fn, cuda: bool) -> float:
    """Median milliseconds per call (CUDA: ``do_bench``, L2 flushed before every call)."""
    if cuda:
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_graph(fn, cuda: bool) -> float | None:
    """Median milliseconds per call replayed from a CUDA graph (None when capture fails or on CPU)."""
    if not cuda:
        return None
    import triton.testing

    try:
        fn()  # compile (and create any lazy workspace) outside the capture
        torch.cuda.synchronize()
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    except Exception as exc:  # capture is an optional extra measurement
        print(f"  (CUDA-graph timing unavailable: {type(exc).__name__}: {exc})")
        return None


def cycle(fns):
    """One callable that calls ``fns`` in turn (each call reads a different buffer copy)."""
    it = itertools.cycle(fns)
    return lambda: next(it)()


def l2_bytes(cuda: bool) -> int:
    if not cuda:
        return 0
    return int(getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "L2_cache_size", 64 << 20))


def copies_for(nbytes: int, l2: int) -> int:
    """Buffer copies to cycle through so that no replay finds its buffer in L2 (4x L2, at most 16)."""
    return 1 if l2 <= 0 else max(1, min(16, math.ceil(4 * l2 / max(1, nbytes))))


def sdpa(q, k, v, causal: bool, flash_only: bool):
    """Plain SDPA with GQA; the flash backend when ``flash_only`` (falls back to repeated K/V)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backends = [SDPBackend.FLASH_ATTENTION] if flash_only else list(SDPBackend.__members__.values())
    backends = [b for b in backends if b != SDPBackend.ERROR]
    g = q.shape[1] // k.shape[1]
    try:
        with sdpa_kernel(backends):
            F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

        def run():
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=True)

        return run, "enable_gqa"
    except RuntimeError:
        kk, vv = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)

        def run_expanded():
            with sdpa_kernel(backends):
                return F.scaled_dot_product_attention(q, kk, vv, is_causal=causal)

        return run_expanded, "repeated kv"


def free_memory(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------------
# correctness
# ----------------------------------------------------------------------------------------------


def _err(got, same, want):
    """(max error, PyTorch's same-precision error, tolerance), as in tests/kernels/test_triton.py."""
    tiny_eps = 1e-5 if got.dtype == torch.float32 else torch.finfo(got.dtype).eps
    got, same, want = got.double(), same.double(), want.double()
    err = float((got - want).abs().max()) if want.numel() else 0.0
    torch_err = float((same - want).abs().max()) if want.numel() else 0.0
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    tiny = tiny_eps * scale
    return err, torch_err, C * torch_err + tiny


def correctness(cfg, device) -> list[dict]:
    from depthkv.kernels import reference as ref
    from depthkv.kernels import triton_compact, triton_decode, triton_prefill

    dtype = cfg["dtype"]
    rows = []
    gen = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(dtype).to(device)

    def record(kernel, shape, got, same, want):
        nan = bool(torch.isnan(got).any())
        err, torch_err, tol = _err(got, same, want)
        rows.append(dict(kernel=kernel, shape=shape, err=err, torch_err=torch_err, tol=tol, ok=(err <= tol and not nan)))

    for b, h, hkv, s, d in cfg["grid"]:
        shape = f"B{b} H{h} Hkv{hkv} S{s} D{d}"
        q, k, v = randn(b, h, s, d), randn(b, hkv, s, d), randn(b, hkv, s, d)
        q64, k64, v64 = (t.double() for t in (q, k, v))
        scale = d**-0.5
        out, lse = triton_prefill.attention_lse(q, k, v, scale)
        same_out, same_lse = ref.attention_lse(q, k, v, scale)
        out64, lse64 = ref.attention_lse(q64, k64, v64, scale)
        record("attention_lse.out", shape, out, same_out, out64)
        record("attention_lse.lse", shape, lse, same_lse, lse64)
        lse32 = lse64.float()
        for name, fn, args in (
            ("window_scores", "window_scores", (WINDOW,)),
            ("h2o_scores", "h2o_scores", ()),
        ):
            got = getattr(triton_prefill, fn)(q, k, lse32, scale, *args)
            same = getattr(ref, fn)(q, k, lse32, scale, *args)
            want = getattr(ref, fn)(q64, k64, lse64, scale, *args)
            record(name, shape, got, same, want)
        valid = torch.rand(b, hkv, s, generator=gen).to(device) < 0.7
        valid[..., -1] = True
        if b * hkv > 1:
            valid[-1, -1] = False
        qd = randn(b, h, 1, d)
        out, mass = triton_decode.decode_attention(qd, k, v, valid, scale)
        same_out, same_mass = ref.decode_attention(qd, k, v, valid, scale)
        out64, mass64 = ref.decode_attention(qd.double(), k64, v64, valid, scale)
        record("decode_attention.out", shape, out, same_out, out64)
        record("decode_attention.mass", shape, mass, same_mass, mass64)
        kk = max(1, s // 3)
        keep = torch.stack([torch.randperm(s, generator=gen)[:kk].sort().values for _ in range(b * hkv)]).view(b, hkv, kk).to(device)
        pos = torch.arange(s, device=device).expand(b, hkv, s)
        score = torch.rand(b, hkv, s, generator=gen).to(device)
        dst = [torch.full((b, hkv, kk, d), float("nan"), dtype=dtype, device=device) for _ in range(2)]
        dst += [torch.full((b, hkv, kk), -7, device=device), torch.full((b, hkv, kk), float("nan"), device=device)]
        want = [torch.zeros_like(x) for x in dst]
        triton_compact.compact(keep, k, v, pos, score, *dst)
        ref.compact(keep, k, v, pos, score, *want)
        exact = all(torch.equal(x, y) for x, y in zip(dst, want))
        rows.append(dict(kernel="compact", shape=shape, err=0.0 if exact else float("nan"), torch_err=0.0, tol=0.0, ok=exact))
    return rows + fused_correctness(cfg, device)


def _positions(held: int, seen: int, window: int, gen: torch.Generator) -> torch.Tensor:
    """A sorted random subset of ``[0, seen)`` of ``held`` positions ending with the last ``window``."""
    window = min(window, held)
    tail = torch.arange(seen - window, seen)
    body = torch.randperm(seen - window, generator=gen)[: held - window].sort().values
    return torch.cat([body, tail])


def _by_position(buffers) -> dict[str, torch.Tensor]:
    """A buffer's content without its slot order: every tensor sorted by position."""
    order = buffers.positions.argsort(dim=-1, stable=True)
    return dict(
        positions=buffers.positions.gather(-1, order),
        keys=buffers.keys.gather(2, order[..., None].expand_as(buffers.keys)),
        values=buffers.values.gather(2, order[..., None].expand_as(buffers.values)),
        scores=buffers.scores.gather(-1, order),
    )


def fused_correctness(cfg, device) -> list[dict]:
    """The fused Triton decode step against :mod:`depthkv.kernels.decode_step`, bf16, a few steps."""
    from depthkv.kernels import decode_step as ref_step
    from depthkv.kernels import triton_decode_step as tri_step
    from depthkv.kernels.buffers import LayerBuffers
    from depthkv.policies import PolicyConfig

    dtype, rows, steps = torch.bfloat16, [], cfg["fused_steps"]
    gen = torch.Generator().manual_seed(1)
    for b, h, hkv, n, d, policy_name, mode, pads in cfg["fused"]:
        policy = PolicyConfig(policy_name, window=8)
        tail = steps + 4 if mode == "append" else 0
        seen = 10 * n
        positions = torch.full((b, hkv, n), -1, dtype=torch.long)
        for i in range(b):
            for c in range(hkv):
                positions[i, c, : n - tail] = _positions(n - tail, seen, policy.window, gen)
        want = LayerBuffers(
            torch.randn(b, hkv, n, d, generator=gen).to(dtype).to(device),
            torch.randn(b, hkv, n, d, generator=gen).to(dtype).to(device),
            positions.to(device),
            torch.rand(b, hkv, n, generator=gen).to(device),
            torch.tensor(seen, dtype=torch.long, device=device),
        )
        got = LayerBuffers(*(t.clone() for t in want.tensors()))
        mask = None
        if pads is not None:
            cols = torch.arange(seen + steps)
            mask = (cols[None, :] >= torch.tensor(pads)[:, None])[:, None, None, :].to(device)
        scale = d**-0.5
        outs, sames, wants = [], [], []
        state_ok, score_err, tol_state = True, 0.0, 0.0
        for _ in range(steps):
            q = torch.randn(b, h, 1, d, generator=gen).to(dtype).to(device)
            kn, vn = (torch.randn(b, hkv, 1, d, generator=gen).to(dtype).to(device) for _ in range(2))
            want.seen.add_(1)
            got.seen.add_(1)
            f32 = LayerBuffers(want.keys.float(), want.values.float(), want.positions.clone(), want.scores.clone(),
                               want.seen.clone())
            args32 = (q.float(), kn.float(), vn.float(), mask)
            if mode == "evict":
                wants.append(ref_step.decode_evict(*args32, f32, scale, policy))
                sames.append(ref_step.decode_evict(q, kn, vn, mask, want, scale, policy))
                outs.append(tri_step.decode_evict(q, kn, vn, mask, got, scale, policy))
            else:
                wants.append(ref_step.decode_append(*args32, f32, scale))
                sames.append(ref_step.decode_append(q, kn, vn, mask, want, scale))
                outs.append(tri_step.decode_append(q, kn, vn, mask, got, scale))
            a, g = _by_position(want), _by_position(got)
            same_set = torch.equal(a["positions"], g["positions"])
            state_ok &= same_set and torch.equal(a["keys"], g["keys"]) and torch.equal(a["values"], g["values"])
            if same_set:
                diff = float((a["scores"] - g["scores"]).abs().max())
                tol = 1e-5 + 1e-4 * float(a["scores"].abs().max())
                score_err, tol_state = max(score_err, diff), max(tol_state, tol)
                state_ok &= diff <= tol
        shape = f"B{b} H{h} Hkv{hkv} N{n} D{d} {policy_name}{' padded' if pads else ''}, {steps} steps"
        got_out, same_out, want_out = torch.cat(outs), torch.cat(sames), torch.cat(wants)
        err, torch_err, tol = _err(got_out, same_out, want_out)
        nan = bool(torch.isnan(got_out).any())
        rows.append(dict(kernel=f"decode_step.{mode}.out", shape=shape, err=err, torch_err=torch_err, tol=tol,
                         ok=err <= tol and not nan))
        rows.append(dict(kernel=f"decode_step.{mode}.state", shape=shape, err=score_err if state_ok else float("nan"),
                         torch_err=0.0, tol=tol_state, ok=bool(state_ok)))
    return rows


# ----------------------------------------------------------------------------------------------
# prefill
# ----------------------------------------------------------------------------------------------


def _prefill_row(s: int, cfg, device, cuda) -> dict:
    from depthkv.kernels import triton_prefill as tp

    h, hkv, d = cfg["heads"]
    scale = d**-0.5
    q = torch.randn(1, h, s, d, device=device, dtype=cfg["dtype"])
    k = torch.randn(1, hkv, s, d, device=device, dtype=cfg["dtype"])
    v = torch.randn(1, hkv, s, d, device=device, dtype=cfg["dtype"])
    run_sdpa, how = sdpa(q, k, v, causal=True, flash_only=cuda)
    t_sdpa = bench(run_sdpa, cuda)
    t_attn = bench(lambda: tp.attention_lse(q, k, v, scale), cuda)
    _, lse = tp.attention_lse(q, k, v, scale)
    t_score = bench(lambda: tp.window_scores(q, k, lse, scale, WINDOW), cuda)
    t_both = bench(lambda: tp.window_scores(q, k, tp.attention_lse(q, k, v, scale)[1], scale, WINDOW), cuda)
    row = dict(
        tokens=s, sdpa_ms=t_sdpa, sdpa_gqa=how, attention_lse_ms=t_attn, window_scores_ms=t_score,
        total_ms=t_both, overhead=t_both / t_sdpa - 1.0, scoring_only_overhead=t_score / t_sdpa,
    )
    if s in cfg["h2o"]:
        row["h2o_scores_ms"] = bench(lambda: tp.h2o_scores(q, k, lse, scale), cuda)
    log(f"  prefill {s:>6}: sdpa {t_sdpa:.3f} ms, lse+scores {t_both:.3f} ms, overhead {row['overhead']:+.1%}")
    return row


def prefill_overhead(cfg, device, cuda) -> list[dict]:
    """attention_lse + window_scores against SDPA's flash prefill, per prompt length."""
    return [_prefill_row(s, cfg, device, cuda) for s in cfg["prefill"]]


# ----------------------------------------------------------------------------------------------
# decode attention
# ----------------------------------------------------------------------------------------------


def _layer_buffers(slots: int, held: int, ctx: int, hkv: int, d: int, dtype, device, window: int, gen):
    """A full-enough layer buffer: ``held`` kept tokens of a ``ctx``-token context, ``slots - held``
    free; ``seen`` counts the new token (position ``ctx``)."""
    from depthkv.kernels.buffers import LayerBuffers

    positions = torch.full((1, hkv, slots), -1, dtype=torch.long)
    positions[..., :held] = _positions(held, ctx, window, gen)
    return LayerBuffers(
        torch.empty(1, hkv, slots, d, dtype=dtype, device=device).normal_(),
        torch.empty(1, hkv, slots, d, dtype=dtype, device=device).normal_(),
        positions.to(device),
        torch.rand(1, hkv, slots, generator=gen).to(device),
        torch.tensor(ctx + 1, dtype=torch.long, device=device),
    )


def _timed(fns, cuda: bool) -> tuple[float, float | None]:
    fn = cycle(fns)
    return bench(fn, cuda), bench_graph(fn, cuda)


def _decode_row(n: int, cfg, device, cuda, l2: int) -> dict:
    from depthkv.kernels import triton_decode as td
    from depthkv.kernels import triton_decode_step as tds
    from depthkv.policies import PolicyConfig

    h, hkv, d = cfg["heads"]
    dtype, scale, policy = cfg["dtype"], d**-0.5, PolicyConfig("snapkv")
    gen = torch.Generator().manual_seed(n)
    q = torch.randn(1, h, 1, d, device=device, dtype=dtype)
    kn = torch.randn(1, hkv, 1, d, device=device, dtype=dtype)
    vn = torch.randn(1, hkv, 1, d, device=device, dtype=dtype)
    k = torch.randn(1, hkv, n, d, device=device, dtype=dtype)
    v = torch.randn(1, hkv, n, d, device=device, dtype=dtype)
    full_bytes = k.nbytes + v.nbytes
    pairs = [(k, v)] + [(k.clone(), v.clone()) for _ in range(copies_for(full_bytes, l2) - 1)]
    runs = [sdpa(q, kk, vv, causal=False, flash_only=False) for kk, vv in pairs]
    full_ms, full_graph_ms = _timed([r for r, _ in runs], cuda)
    row = dict(context=n, kv_bytes_full=full_bytes, sdpa_gqa=runs[0][1], full_sdpa_ms=full_ms,
               full_sdpa_graph_ms=full_graph_ms, variants=[])
    del pairs, runs
    log(f"  decode {n:>6}: full SDPA {full_ms:.4f} ms (graph {_fmt(full_graph_ms)})")
    f0 = cfg["fractions"][0]
    specs = [("evict", frac) for frac in cfg["fractions"]] + [("append", f0), ("three-launch", f0)]
    for kind, frac in specs:
        budget = max(policy.window, int(n * frac))
        slots = budget + (cfg["append_tail"] if kind == "append" else 0)
        kv_bytes = 2 * hkv * slots * d * torch.finfo(dtype).bits // 8
        bufs = [_layer_buffers(slots, budget, n, hkv, d, dtype, device, policy.window, gen)
                for _ in range(copies_for(kv_bytes, l2))]
        if kind == "evict":
            fns = [lambda b=b: tds.decode_evict(q, kn, vn, None, b, scale, policy) for b in bufs]
            kernel = "triton_decode_step.decode_evict"
        elif kind == "append":
            fns = [lambda b=b: tds.decode_append(q, kn, vn, None, b, scale) for b in bufs]
            kernel = "triton_decode_step.decode_append"
        else:
            valid = torch.ones(1, hkv, slots, dtype=torch.bool, device=device)
            fns = [lambda b=b, m=valid: td.decode_attention(q, b.keys, b.values, m, scale) for b in bufs]
            kernel = "triton_decode.decode_attention (attention only)"
        ms, graph_ms = _timed(fns, cuda)
        var = dict(name=f"{kind}@{frac:.0%}", kernel=kernel, fraction=frac, budget=budget, slots=slots,
                   kv_bytes=kv_bytes, copies=len(bufs), ms=ms, graph_ms=graph_ms, speedup=full_ms / ms,
                   speedup_graph=(full_graph_ms / graph_ms) if (full_graph_ms and graph_ms) else None)
        row["variants"].append(var)
        log(f"  decode {n:>6}: {var['name']:>16} ({slots} slots) {ms:.4f} ms, graph {_fmt(graph_ms)}; "
            f"speedup {var['speedup']:.1f}x, graph {_fmt(var['speedup_graph'], '.1f', 'x')}")
        del bufs, fns
    free_memory(cuda)
    return row


def decode_speed(cfg, device, cuda) -> list[dict]:
    """Fused decode step over budget buffers against SDPA decode over the full cache, per context."""
    l2 = l2_bytes(cuda)
    return [_decode_row(n, cfg, device, cuda, l2) for n in cfg["decode"]]


def _copy_ms(n_elem: int, device, cuda) -> float:
    src = torch.empty(n_elem, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), cuda)


def bandwidth(cfg, device, cuda, decode_rows) -> dict:
    """K+V bytes / decode time, as a fraction of device-to-device copy bandwidth (read + write)."""
    n_elem = cfg["copy_bytes"] // 2
    t_copy = _copy_ms(n_elem, device, cuda)
    copy_gbs = 2 * n_elem * 2 / (t_copy * 1e-3) / 1e9
    rows = []
    for r in decode_rows:
        for var in r["variants"]:
            t = var["graph_ms"] or var["ms"]
            gbs = var["kv_bytes"] / (t * 1e-3) / 1e9
            rows.append(dict(context=r["context"], variant=var["name"], kernel=var["kernel"], slots=var["slots"],
                             kv_bytes=var["kv_bytes"], ms=t, timing="graph" if var["graph_ms"] else "eager",
                             eager_gbs=var["kv_bytes"] / (var["ms"] * 1e-3) / 1e9, gbs=gbs, fraction=gbs / copy_gbs))
    fused = [x for x in rows if x["kernel"].endswith("decode_evict")]
    largest = max(fused, key=lambda x: x["kv_bytes"]) if fused else None
    return dict(copy_bytes=2 * n_elem * 2, copy_ms=t_copy, copy_gbs=copy_gbs, decode=rows,
                largest=largest, fraction_largest=largest["fraction"] if largest else None)


# ----------------------------------------------------------------------------------------------
# serving
# ----------------------------------------------------------------------------------------------


def build_model(scfg, layers: int, max_position: int, device):
    import transformers as tf

    torch.manual_seed(0)
    config = tf.LlamaConfig(num_hidden_layers=layers, max_position_embeddings=max_position, **scfg["config"])
    with torch.device(device):
        model = tf.AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=scfg["dtype"])
    return model.to(device).eval()


def _variant_slots(frac, mode, ctx: int, max_len: int, extra: int, window: int) -> tuple[int | None, int]:
    """(budget, slots per layer) of a serving variant."""
    if frac is None:
        return None, max_len
    budget = max(window, int(frac * ctx))
    return budget, budget + (extra if mode == "append" else 0)


def _row_bytes(frac, slots: int, max_len: int, mc: dict, dsize: int) -> tuple[int, int]:
    """(cache bytes per batch row and layer, working bytes per batch row: an estimate)."""
    hkv, h, d = mc["num_key_value_heads"], mc["num_attention_heads"], mc["head_dim"]
    work = 4 * mc["vocab_size"] + 4 * (4 * mc["hidden_size"] + 3 * mc["intermediate_size"])  # logits, activations
    if frac is None:
        cache = 2 * hkv * slots * d * dsize
        work += 2 * h * max_len * d * dsize + h * max_len * dsize  # repeat_kv copies of K and V, expanded mask
    else:
        cache = 2 * hkv * slots * d * dsize + hkv * slots * (8 + 4)  # + positions (int64), scores (fp32)
        # the fused step's fp32 scratch (logits of every slot, partial outputs of ~512-slot splits), the mask row
        work += h * slots * 4 + h * d * 4 * math.ceil(slots / 512) + max_len
    return cache, work


def _full_cache(model, batch: int, ctx: int, max_len: int, device, kw: str):
    """A transformers ``StaticCache`` holding ``ctx`` random tokens of ``batch`` rows."""
    import transformers as tf

    cache = tf.StaticCache(config=model.config, max_cache_len=max_len)
    with torch.no_grad():  # one eager token allocates the layers (as generate's first step would)
        model(torch.ones((batch, 1), dtype=torch.long, device=device), use_cache=True, **{kw: cache})
    for layer in cache.layers:
        layer.keys[:, :, :ctx].normal_()
        layer.values[:, :, :ctx].normal_()
        if hasattr(layer, "cumulative_length"):  # else the length is the count of non-zero slots
            layer.cumulative_length.fill_(ctx)
    return cache


def _fill_budget(cache, ctx: int, budget: int, window: int, gen) -> None:
    for layer in cache.layers:
        layer.keys[:, :, :budget].normal_()
        layer.values[:, :, :budget].normal_()
        layer.positions[:, :, :budget] = _positions(budget, ctx, window, gen).to(layer.positions.device)
        layer.scores[:, :, :budget].uniform_()
        layer.seen.fill_(ctx)


def _is_oom(exc: BaseException) -> bool:
    while exc is not None:
        if isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _serve_once(model, scfg, ctx: int, variant, batch: int, steps: int, cuda: bool, device, extra: int) -> dict:
    """Compile one variant at one batch size, run ``warmup`` steps, time ``steps`` steps."""
    from torch._dynamo.utils import counters

    import depthkv
    from depthkv.policies import PolicyConfig
    from depthkv.runtime.generation import cache_kwarg

    name, frac, mode = variant
    max_len = ctx + extra
    compiler = scfg["compiler"]
    kw = cache_kwarg(model)  # ``cache`` in recent transformers, ``past_key_values`` before
    compile_kw = dict(dynamic=False, fullgraph=True)
    if compiler == "inductor" and cuda:
        compile_kw["mode"] = "reduce-overhead"
    torch._dynamo.reset()
    free_memory(cuda)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(ctx)
    if frac is None:
        cache = _full_cache(model, batch, ctx, max_len, device, kw)
        cache_bytes = sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)
        compiled = torch.compile(model, backend=compiler, **compile_kw)
        budget, slots = None, max_len
    else:
        plan = depthkv.uniform_plan(model, max(PolicyConfig().window, int(frac * ctx)))
        budget = plan.budgets_for(ctx)[0]
        be = depthkv.backend(plan, impl="triton", inner=compiler)
        cache = be.new_cache(model, max_len=max_len, batch_size=batch, mode=mode,
                             max_new_tokens=extra if mode == "append" else None)
        _fill_budget(cache, ctx, budget, plan.policy.window, gen)
        cache_bytes = cache.nbytes()
        slots = cache.slots()[0]
        compiled = torch.compile(model, backend=be, **compile_kw)
    tok = torch.full((batch, 1), 7, dtype=torch.long, device=device)

    def step():
        if cuda:
            torch.compiler.cudagraph_mark_step_begin()
        compiled(tok, use_cache=True, **{kw: cache})

    def sync():
        if cuda:
            torch.cuda.synchronize()

    skips = counters["inductor"]["cudagraph_skips"]
    setup_s = time.perf_counter() - t0
    try:
        with torch.no_grad():
            t1 = time.perf_counter()
            step()  # compile + first run
            sync()
            compile_s = time.perf_counter() - t1
            for _ in range(scfg["warmup"] - 1):  # CUDA graph recording, first replay
                step()
            sync()
            t2 = time.perf_counter()
            for _ in range(steps):
                step()
            sync()
            step_ms = (time.perf_counter() - t2) / steps * 1e3
        peak = torch.cuda.max_memory_allocated() if cuda else None
    finally:
        compiled = cache = None  # free the buffers (the closure above holds these names)
        torch._dynamo.reset()
        free_memory(cuda)
    graphs = bool(compile_kw.get("mode")) and counters["inductor"]["cudagraph_skips"] == skips
    return dict(
        context=ctx, variant=name, mode=mode or "full", fraction=frac, budget=budget, slots=slots, max_len=max_len,
        batch=batch, cache_bytes=cache_bytes, cache_bytes_per_row=cache_bytes // batch, steps=steps,
        step_ms=step_ms, tokens_per_s=batch / (step_ms * 1e-3),
        setup_s=setup_s, compile_s=compile_s, cuda_graphs=graphs, peak_allocated=peak,
    )


def _head_ms(model, batch: int, cuda: bool, device) -> float:
    """Final norm + lm_head for ``batch`` rows (the part of a step that does not scale with layers)."""
    x = torch.randn(batch, 1, model.config.hidden_size, dtype=next(model.parameters()).dtype, device=device)
    with torch.no_grad():
        def fn():
            return model.lm_head(model.model.norm(x))

        graph = bench_graph(fn, cuda)
        return graph if graph is not None else bench(fn, cuda)


def serving(cfg, args, device, cuda, on_row) -> dict:
    """Decode tokens/s of the compiled model: full StaticCache vs depthkv budgets, batch 1 and largest."""
    scfg = dict(cfg["serve"])
    if args.compiler:
        scfg["compiler"] = args.compiler
    layers = args.layers or scfg["layers"]
    contexts = tuple(args.contexts) if args.contexts else scfg["contexts"]
    steps1, steps_max = scfg["steps"]
    extra = scfg["warmup"] + max(steps1, steps_max) + 16  # tokens decoded past the context (+ margin)
    model = build_model(scfg, layers, 2 * max(contexts) + extra, device)
    mc = dict(scfg["config"])
    dsize = torch.finfo(scfg["dtype"]).bits // 8
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    per_layer_weights = sum(p.numel() * p.element_size() for p in model.model.layers[0].parameters())
    # the real model in bf16 (2 bytes a parameter)
    params_32 = sum(p.numel() for p in model.parameters()) + (REAL_LAYERS - layers) * sum(
        p.numel() for p in model.model.layers[0].parameters())
    weights_32 = 2 * params_32
    margin_frac = 0.05
    if cuda:
        free_memory(cuda)
        free_now, total = torch.cuda.mem_get_info()
        margin = max(4 << 30, int(margin_frac * total))
    else:
        free_now, total, margin = scfg["free_bytes"], None, 0
    from depthkv.policies import PolicyConfig

    window = PolicyConfig().window  # uniform_plan's default policy: snapkv
    res = dict(
        model=dict(name=scfg["name"], layers=layers, real_layers=REAL_LAYERS, dtype=str(scfg["dtype"]).replace("torch.", ""),
                   weights_bytes=weights, per_layer_weight_bytes=per_layer_weights, **mc),
        compiler=scfg["compiler"],
        torch_compile_mode="reduce-overhead" if (cuda and scfg["compiler"] == "inductor") else None,
        cuda_graphs="yes (mode='reduce-overhead')" if (cuda and scfg["compiler"] == "inductor") else
        "skipped (dry run: CPU, no CUDA graphs)" if not cuda else f"no ({scfg['compiler']})",
        impl="triton", policy=f"snapkv (window {window})", contexts=list(contexts), steps=dict(batch1=steps1, largest=steps_max),
        warmup=scfg["warmup"], decoded_past_context=extra,
        memory=dict(total=total, free_after_weights=free_now, margin=margin, pretend=not cuda, batch_cap=scfg["batch_cap"]),
        head_ms_batch1=None, rows=[],
    )
    log(f"serving model: {scfg['name']}, {layers} layers, weights {weights / 2**30:.2f} GiB; "
        f"free {free_now / 2**30:.2f} GiB (margin {margin / 2**30:.2f} GiB); compiler {scfg['compiler']}")
    res["head_ms_batch1"] = _head_ms(model, 1, cuda, device)
    # the real 32-layer model on a 141 GB device, from bytes alone
    margin_32 = int(margin_frac * REAL_DEVICE_BYTES)
    real = dict(layers=REAL_LAYERS, device_bytes=REAL_DEVICE_BYTES, weights_bytes=weights_32, margin=margin_32, rows=[])
    for ctx in contexts:
        for name, frac, mode in VARIANTS:
            _, slots = _variant_slots(frac, mode, ctx, ctx + extra, extra, window)
            cache_row_layer, work_row = _row_bytes(frac, slots, ctx + extra, mc, 2)
            per_row = REAL_LAYERS * cache_row_layer + work_row
            batch = int((REAL_DEVICE_BYTES - weights_32 - margin_32) // per_row)
            real["rows"].append(dict(context=ctx, variant=name, slots=slots, cache_bytes_per_row=REAL_LAYERS * cache_row_layer,
                                     work_bytes_per_row=work_row, max_batch=max(0, batch)))
    res["real_model"] = real
    on_row(res)
    guess = scfg["row_guess_s"]
    durations: list[tuple[str, float]] = []  # (batch kind, seconds) of the rows run
    budget_s = args.time_budget if args.time_budget is not None else cfg["time_budget"]
    plan_rows = []
    for ctx in contexts:
        for which in ("1", "largest"):
            if which == "largest" and args.no_largest_batch:
                continue
            plan_rows += [(ctx, variant, which) for variant in VARIANTS if not args.variants or variant[0] in args.variants]
    for ctx, variant, which in plan_rows:
        name, frac, mode = variant
        budget, slots = _variant_slots(frac, mode, ctx, ctx + extra, extra, window)
        cache_row_layer, work_row = _row_bytes(frac, slots, ctx + extra, mc, dsize)
        per_row = layers * cache_row_layer + work_row
        if which == "1":
            batch, steps = 1, steps1
        else:
            batch = max(1, min(scfg["batch_cap"], (free_now - margin) // per_row))
            steps = steps_max
        planned = dict(context=ctx, variant=name, batch_kind=which, batch_planned=batch,
                       cache_bytes_per_row_planned=layers * cache_row_layer, work_bytes_per_row=work_row)
        same_kind = [d for kind, d in durations if kind == which][-3:]
        est = max(same_kind) if same_kind else max((d for _, d in durations), default=guess) * 1.5
        if budget_s and elapsed() + est > budget_s:
            row = dict(planned, skipped=f"time budget: {elapsed():.0f} s + ~{est:.0f} s > {budget_s:.0f} s")
            log(f"  serve {ctx:>6} {name:>11} batch {which}: skipped ({row['skipped']})")
            res["rows"].append(row)
            on_row(res)
            continue
        t0 = time.perf_counter()
        row, retries = None, 0
        try:
            while True:
                try:
                    row = _serve_once(model, scfg, ctx, variant, batch, steps, cuda, device, extra)
                    break
                except Exception as exc:
                    if not (cuda and _is_oom(exc)) or batch == 1:
                        raise
                # out of memory: here the exception (and the frames holding the buffers) is gone
                torch._dynamo.reset()
                free_memory(cuda)
                log(f"  serve {ctx:>6} {name:>11} batch {batch}: out of memory, halving")
                batch, retries = batch // 2, retries + 1
            row.update(planned, oom_retries=retries)
            if which == "1":
                head = res["head_ms_batch1"]
                per_layer = max(0.0, row["step_ms"] - head) / layers
                row["step_ms_32_layers"] = head + REAL_LAYERS * per_layer
                row["tokens_per_s_32_layers"] = 1e3 / row["step_ms_32_layers"]
        except Exception as exc:  # a failed row is recorded, the others still run
            row = dict(planned, error=f"{type(exc).__name__}: {exc}"[:2000])
            log(f"  serve {ctx:>6} {name:>11} batch {which}: ERROR {row['error'][:300]}")
        row["seconds"] = time.perf_counter() - t0
        durations.append((which, row["seconds"]))
        if "error" not in row:
            log(f"  serve {ctx:>6} {name:>11} batch {row['batch']:>5}: step {row['step_ms']:.3f} ms, "
                f"{row['tokens_per_s']:.0f} tok/s (compile {row['compile_s']:.1f} s, graphs {row['cuda_graphs']}, "
                f"row {row['seconds']:.1f} s)")
        res["rows"].append(row)
        _ratios(res)
        on_row(res)
    del model
    free_memory(cuda)
    return res


def _ratios(res: dict) -> None:
    """tokens/s of every row against the full cache's at the same context and batch kind."""
    full = {(r["context"], r["batch_kind"]): r for r in res["rows"] if r["variant"] == "full" and "tokens_per_s" in r}
    for r in res["rows"]:
        base = full.get((r["context"], r["batch_kind"]))
        if base and "tokens_per_s" in r:
            r["vs_full"] = r["tokens_per_s"] / base["tokens_per_s"]


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def _fmt(x, spec=".4f", unit=""):
    return "—" if x is None else format(x, spec) + unit


def _ctx(n: int) -> str:
    return f"{n // 1024}K" if n >= 1024 and n % 1024 == 0 else str(n)


def markdown(res: dict) -> str:
    lines = [f"# depthkv GPU benchmark — {res['date']}", ""]
    lines += [f"- device: {res['device']}",
              f"- torch {res['torch']}, triton {res['triton']}, transformers {res['transformers']}, python {res['python']}"]
    h, hkv, d = res["shapes"]["heads"]
    lines += [f"- kernel shapes: B=1, H={h}, Hkv={hkv}, D={d}, dtype {res['shapes']['dtype']}; SnapKV window {WINDOW}"]
    if res["dry_run"]:
        lines += ["- **dry run** (CPU, Triton interpreter, tiny shapes, no CUDA graphs): not a measurement"]
    lines += [f"- sections completed: {', '.join(res.get('completed', [])) or 'none'} ({res.get('seconds', 0):.0f} s)"]
    lines += ["", "## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in res.get("targets", []):
        met = "—" if t["met"] is None else ("yes" if t["met"] else "NO")
        lines.append(f"| {t['name']} | {t['value']} | {t['goal']} | {met} |")
    if "correctness" in res:
        ok = sum(r["ok"] for r in res["correctness"])
        lines += ["", f"## Correctness ({ok}/{len(res['correctness'])} within tolerance, C={C})", "",
                  "| kernel | shape | max err | torch err | tolerance | ok |", "|---|---|---|---|---|---|"]
        for r in res["correctness"]:
            lines.append(f"| {r['kernel']} | {r['shape']} | {r['err']:.2e} | {r['torch_err']:.2e} | {r['tol']:.2e} | "
                         f"{'yes' if r['ok'] else 'NO'} |")
    if "prefill" in res:
        lines += ["", "## Prefill: attention_lse + window_scores vs SDPA (ms, median)", "",
                  "| tokens | SDPA | attention_lse | window_scores | both | overhead | h2o_scores |", "|---|---|---|---|---|---|---|"]
        for r in res["prefill"]:
            h2o = f"{r['h2o_scores_ms']:.3f}" if "h2o_scores_ms" in r else "—"
            lines.append(f"| {r['tokens']} | {r['sdpa_ms']:.3f} | {r['attention_lse_ms']:.3f} | {r['window_scores_ms']:.3f} | "
                         f"{r['total_ms']:.3f} | {r['overhead']:+.1%} | {h2o} |")
    if "decode" in res:
        lines += ["", "## Decode attention: fused step over a budget buffer vs SDPA over the full cache (ms, median)", "",
                  "Eager: `do_bench` (L2 flushed); graph: `do_bench_cudagraph` cycling through buffer copies "
                  "(> 4x L2). Speedup = SDPA full / row.", "",
                  "| context | kernel | slots | K+V MiB | eager ms | graph ms | speedup | speedup (graph) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in res["decode"]:
            lines.append(f"| {r['context']} | SDPA, full cache ({r['sdpa_gqa']}) | {r['context']} | "
                         f"{r['kv_bytes_full'] / 2**20:.1f} | {r['full_sdpa_ms']:.4f} | {_fmt(r['full_sdpa_graph_ms'])} | 1.0x | — |")
            for v in r["variants"]:
                lines.append(f"| {r['context']} | {v['name']}: `{v['kernel']}` | {v['slots']} | {v['kv_bytes'] / 2**20:.1f} | "
                             f"{v['ms']:.4f} | {_fmt(v['graph_ms'])} | {v['speedup']:.1f}x | {_fmt(v['speedup_graph'], '.1f', 'x')} |")
    if "bandwidth" in res:
        bw = res["bandwidth"]
        lines += ["", f"## Decode memory bandwidth (copy: {bw['copy_gbs']:.0f} GB/s over {bw['copy_bytes'] >> 20} MiB read+write)", "",
                  "| context | kernel | slots | K+V MiB | ms | timing | GB/s | GB/s eager | of copy |", "|---|---|---|---|---|---|---|---|---|"]
        for r in bw["decode"]:
            lines.append(f"| {r['context']} | {r['variant']} | {r['slots']} | {r['kv_bytes'] / 2**20:.1f} | {r['ms']:.4f} | "
                         f"{r['timing']} | {r['gbs']:.0f} | {r['eager_gbs']:.0f} | {r['fraction']:.0%} |")
    if "multi_device" in res:
        md = res["multi_device"]
        lines += ["", f"## Multi-device: {md['split']} ({md['seconds']:.0f} s)", "", "| check | ok | detail |", "|---|---|---|"]
        for c in md["checks"]:
            lines.append(f"| {c['check']} | {'yes' if c['ok'] else 'NO'} | `{json.dumps(c['detail'], default=str)[:200]}` |")
    if "serving" in res:
        lines += _serving_md(res["serving"])
    if "serving_error" in res:
        lines += ["", f"**Serving section FAILED**: `{res['serving_error'][:1000]}`"]
    return "\n".join(lines) + "\n"


def _serving_md(s: dict) -> list[str]:
    m = s["model"]
    lines = ["", f"## Serving: decode tokens/s, {m['name']} with {m['layers']} of {m['real_layers']} layers", "",
             f"- random {m['dtype']} weights: {m['weights_bytes'] / 2**30:.2f} GiB; hidden {m['hidden_size']}, heads "
             f"{m['num_attention_heads']}/{m['num_key_value_heads']}, head dim {m['head_dim']}, vocab {m['vocab_size']}",
             f"- compiled with {s['compiler']}, CUDA graphs: {s['cuda_graphs']}; depthkv impl {s['impl']}, policy {s['policy']}; "
             f"caches pre-filled with random K/V",
             f"- largest batch: (free after weights {_gib(s['memory']['free_after_weights'])} - margin "
             f"{_gib(s['memory']['margin'])}) / (cache + working bytes per row), at most {s['memory']['batch_cap']}"
             f"{' (pretend memory: dry run)' if s['memory']['pretend'] else ''}; halved on OOM",
             f"- tok/s @32 layers (batch 1): step scaled by the per-layer time, head (norm + lm_head) "
             f"{_fmt(s['head_ms_batch1'], '.3f')} ms counted once", "",
             "| context | variant | slots/layer | batch | step ms | tok/s | vs full | tok/s @32 layers | cache/row MiB | compile s | graphs |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        if "skipped" in r or "error" in r:
            why = r.get("skipped") or "ERROR " + r["error"][:120].replace("|", "/")
            lines.append(f"| {r['context']} | {r['variant']} | — | {r['batch_kind']} | {why} | | | | | | |")
            continue
        lines.append(
            f"| {r['context']} | {r['variant']} | {r['slots']} | {r['batch']}{' (largest)' if r['batch_kind'] == 'largest' else ''} | "
            f"{r['step_ms']:.3f} | {r['tokens_per_s']:.0f} | {_fmt(r.get('vs_full'), '.2f', 'x')} | "
            f"{_fmt(r.get('tokens_per_s_32_layers'), '.0f')} | {r['cache_bytes_per_row'] / 2**20:.1f} | "
            f"{r['compile_s']:.1f} | {'yes' if r['cuda_graphs'] else 'no'} |")
    if "real_model" in s:
        real = s["real_model"]
        lines += ["", f"## Largest batch of the real {real['layers']}-layer model on a {real['device_bytes'] / 1e9:.0f} GB device "
                  "(from bytes)", "",
                  f"weights {real['weights_bytes'] / 1e9:.1f} GB, margin {real['margin'] / 1e9:.1f} GB; per row: cache of all "
                  "layers + working bytes (estimate).", "",
                  "| context | variant | slots/layer | cache/row GB | working/row GB | largest batch |", "|---|---|---|---|---|---|"]
        for r in real["rows"]:
            lines.append(f"| {r['context']} | {r['variant']} | {r['slots']} | {r['cache_bytes_per_row'] / 1e9:.3f} | "
                         f"{r['work_bytes_per_row'] / 1e9:.3f} | {r['max_batch']} |")
    return lines


def _gib(x) -> str:
    return "—" if x is None else f"{x / 2**30:.2f} GiB"


def targets(res: dict) -> list[dict]:
    out = []
    if "prefill" in res:
        worst = max(r["overhead"] for r in res["prefill"])
        out.append(dict(name="prefill scoring overhead (worst length)", value=f"{worst:+.1%}", goal="< 10%", met=worst < 0.10))
    if "decode" in res:
        top = max(res["decode"], key=lambda r: r["context"])
        v = next((v for v in top["variants"] if v["name"] == "evict@10%"), None)
        where = f"at {_ctx(top['context'])}"
        if v is not None:
            out.append(dict(name=f"decode, fused evict@10% vs full SDPA, eager, {where}", value=f"{v['speedup']:.1f}x",
                            goal=">= 5x", met=v["speedup"] >= 5.0))
            sg = v["speedup_graph"]
            out.append(dict(name=f"decode, fused evict@10% vs full SDPA, CUDA graph, {where}",
                            value="not measured (no CUDA graphs)" if sg is None else f"{sg:.1f}x",
                            goal=">= 8x", met=None if sg is None else sg >= 8.0))
    if res.get("bandwidth") and res["bandwidth"]["largest"]:
        lg = res["bandwidth"]["largest"]
        out.append(dict(name=f"fused decode bandwidth / copy bandwidth (largest buffer: {lg['variant']} at {_ctx(lg['context'])}, "
                        f"{lg['timing']})", value=f"{lg['fraction']:.0%}", goal=">= 70%", met=lg["fraction"] >= 0.70))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU under the Triton interpreter")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results; temp dir for --dry-run)")
    parser.add_argument("--layers", type=int, default=None, help="decoder layers of the serving model (default 4; dry run 2)")
    parser.add_argument("--contexts", type=int, nargs="+", default=None,
                        help="serving contexts, run in this order (default 131072 32768; dry run 256 128)")
    parser.add_argument("--compiler", choices=("inductor", "aot_eager"), default=None,
                        help="serving compiler (default inductor with mode='reduce-overhead'; dry run aot_eager)")
    parser.add_argument("--no-largest-batch", action="store_true", help="serving at batch 1 only")
    parser.add_argument("--variants", nargs="+", default=None, choices=[v[0] for v in VARIANTS],
                        help="serving variants to run (default all)")
    parser.add_argument("--skip", nargs="+", default=[], choices=("prefill", "decode", "multi_device", "serving"),
                        help="sections to leave out (correctness always runs)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds from the start: a serving row expected to end later (by the rows before it) is "
                        "skipped and marked (default 285; dry run: none; 0 = none)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("benchmarks/gpu.py needs a CUDA GPU and none is available. Run it on a GPU machine, or use --dry-run "
              "to exercise the script on the CPU (Triton interpreter, tiny shapes).", file=sys.stderr)
        return 2
    import transformers
    import triton

    if args.dry_run:
        torch.set_num_threads(1)  # tiny tensors: thread start-up costs more than it saves
    cfg = DRY if args.dry_run else FULL
    device = "cuda" if cuda else "cpu"
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="depthkv-gpu-")) if args.dry_run else Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    res = dict(
        date=datetime.date.today().isoformat(),
        device=torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}), dry run",
        torch=torch.__version__, triton=triton.__version__, transformers=transformers.__version__,
        python=platform.python_version(), dry_run=args.dry_run, argv=sys.argv[1:] if argv is None else argv,
        shapes=dict(heads=list(cfg["heads"]), dtype=str(cfg["dtype"]).replace("torch.", ""), prefill=list(cfg["prefill"]),
                    decode=list(cfg["decode"]), budget_fractions=list(cfg["fractions"]), append_tail=cfg["append_tail"],
                    window=WINDOW, grid=[list(g) for g in cfg["grid"]], fused=[list(f) for f in cfg["fused"]]),
    )
    stem = out_dir / f"gpu-{res['date']}"

    def checkpoint(section: str | None) -> None:
        # JSON and markdown are rewritten after each section (and serving row): a run cut short keeps its numbers.
        if section:
            res["completed"] = [*res.get("completed", []), section]
        res["seconds"] = elapsed()
        res["targets"] = targets(res)
        atomic_write_text(stem.with_suffix(".json"), json.dumps(res, indent=2, default=str) + "\n")
        atomic_write_text(stem.with_suffix(".md"), markdown(res))

    log(f"depthkv GPU benchmark on {res['device']} -> {out_dir}")
    log("correctness ...")
    res["correctness"] = correctness(cfg, device)
    checkpoint("correctness")
    bad = [r for r in res["correctness"] if not r["ok"]]
    for r in bad:
        log(f"  FAILED {r['kernel']} {r['shape']}: err {r['err']:.3e} > tol {r['tol']:.3e}")
    log(f"  {len(res['correctness']) - len(bad)}/{len(res['correctness'])} within tolerance")
    if "prefill" not in args.skip:
        log("prefill ...")
        res["prefill"] = prefill_overhead(cfg, device, cuda)
        checkpoint("prefill")
    if "decode" not in args.skip:
        log("decode ...")
        res["decode"] = decode_speed(cfg, device, cuda)
        checkpoint("decode")
        res["bandwidth"] = bandwidth(cfg, device, cuda, res["decode"])
        checkpoint("bandwidth")
    if "multi_device" not in args.skip:
        log("multi-device ...")
        from benchmarks.multi_device import run as multi_device

        res["multi_device"] = multi_device(cuda)
        checkpoint("multi_device")
        bad += [{"kernel": c["check"], "shape": "multi-device", "err": float("nan"), "tol": float("nan")}
                for c in res["multi_device"]["checks"] if not c["ok"]]
    free_memory(cuda)
    if "serving" not in args.skip:
        log("serving ...")

        def on_row(partial):
            res["serving"] = partial
            checkpoint(None)

        try:
            res["serving"] = serving(cfg, args, device, cuda, on_row)
            checkpoint("serving")
        except Exception as exc:  # keep what the other sections measured
            res["serving_error"] = f"{type(exc).__name__}: {exc}"[:4000]
            log(f"serving FAILED: {res['serving_error'][:1000]}")
            checkpoint(None)
    md = markdown(res)
    print(md)
    log(f"wrote {stem}.json and {stem}.md in {res['seconds']:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
