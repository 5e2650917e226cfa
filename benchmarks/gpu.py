"""GPU benchmark of depthkv's kernels: correctness on CUDA, then speed measured side by side.

Run on a CUDA machine (written for an H200; finishes in a few minutes)::

    python benchmarks/gpu.py [--out benchmarks/results]

1. Correctness: the Triton kernels against the PyTorch reference over a grid of awkward shapes in
   bf16, with the tolerance of tests/kernels/test_triton.py
   (``max|triton - ref64| <= 4 * max|reference_bf16 - ref64| + one bf16 ulp``).
2. Prefill scoring overhead: ``attention_lse + window_scores`` (SnapKV window 32) against plain
   ``scaled_dot_product_attention`` (flash backend) at 8K/32K/128K tokens, Llama-8B-like heads
   (B=1, H=32, Hkv=8, D=128). Target: < 10% overhead.
3. Decode: Triton decode attention over a 10%-budget buffer against SDPA decode over the full
   cache at 32K/128K. Target: >= 5x faster.
4. Memory bandwidth of decode attention (K+V bytes read / time) as a fraction of the measured
   device-to-device copy bandwidth (``dst.copy_(src)``, counted as read + write bytes).
   Target: >= 70% (judged on the largest buffer, where launch overheads are amortised).

Times are medians of ``triton.testing.do_bench`` (L2 flushed between runs); decode is also timed
inside a CUDA graph (``do_bench_cudagraph``), as decode steps run under ``mode="reduce-overhead"``.
Results go to ``<out>/gpu-<date>.json`` and ``.md`` with the device name, versions and shapes.

``--dry-run`` runs the whole script on tiny shapes on the CPU under the Triton interpreter (it
sets ``TRITON_INTERPRET=1`` before importing Triton) in well under a minute, writing to a temp
directory or ``--out``: a check that the script works, not a measurement. Without CUDA and without
``--dry-run`` the script exits with status 2 and says so. Exit status 1: a correctness check failed.
"""

from __future__ import annotations

import os
import sys

if "--dry-run" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton

import argparse  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
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

FULL = dict(
    dtype=torch.bfloat16,
    heads=(32, 8, 128),
    prefill=(8192, 32768, 131072),
    h2o=(8192,),
    decode=(32768, 131072),
    budget=0.10,
    copy_bytes=2 << 30,
    # (B, H, Hkv, S, D) correctness grid: S 1/17/127/1000, D 64/80/128, MHA / GQA 4:1, 8:1 / MQA
    grid=[
        (1, 2, 2, 1, 64), (1, 4, 1, 17, 80), (1, 8, 2, 127, 128), (1, 16, 2, 127, 64), (2, 4, 4, 17, 80),
        (1, 8, 1, 1000, 128), (1, 32, 8, 1000, 128), (2, 8, 2, 1000, 80),
    ],
)
DRY = dict(
    dtype=torch.float32,
    heads=(4, 2, 64),
    prefill=(32, 64),
    h2o=(32,),
    decode=(128, 256),
    budget=0.10,
    copy_bytes=1 << 20,
    grid=[(1, 4, 2, 17, 64), (1, 2, 1, 33, 80)],
)


# ----------------------------------------------------------------------------------------------
# timing
# ----------------------------------------------------------------------------------------------


def bench(fn, cuda: bool) -> float:
    """Median milliseconds per call."""
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
        fn()  # compile outside the capture
        torch.cuda.synchronize()
        return float(triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median"))
    except Exception as exc:  # capture is an optional extra measurement
        print(f"  (CUDA-graph timing unavailable: {type(exc).__name__}: {exc})")
        return None


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
    return rows


# ----------------------------------------------------------------------------------------------
# speed
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
    print(f"  prefill {s:>6}: sdpa {t_sdpa:.3f} ms, lse+scores {t_both:.3f} ms, overhead {row['overhead']:+.1%}")
    return row


def prefill_overhead(cfg, device, cuda) -> list[dict]:
    """(a) attention_lse + window_scores against SDPA's flash prefill, per prompt length."""
    return [_prefill_row(s, cfg, device, cuda) for s in cfg["prefill"]]


def _decode_row(n: int, cfg, device, cuda) -> dict:
    from depthkv.kernels import triton_decode as td

    h, hkv, d = cfg["heads"]
    scale = d**-0.5
    budget = max(1, int(n * cfg["budget"]))
    q = torch.randn(1, h, 1, d, device=device, dtype=cfg["dtype"])
    k = torch.randn(1, hkv, n, d, device=device, dtype=cfg["dtype"])
    v = torch.randn(1, hkv, n, d, device=device, dtype=cfg["dtype"])
    kb, vb = k[:, :, :budget].contiguous(), v[:, :, :budget].contiguous()
    valid_b = torch.ones(1, hkv, budget, dtype=torch.bool, device=device)
    valid_n = torch.ones(1, hkv, n, dtype=torch.bool, device=device)
    run_full, how = sdpa(q, k, v, causal=False, flash_only=False)

    def ours_budget():
        return td.decode_attention(q, kb, vb, valid_b, scale)

    def ours_full():
        return td.decode_attention(q, k, v, valid_n, scale)

    row = dict(
        context=n, budget=budget, sdpa_gqa=how,
        full_sdpa_ms=bench(run_full, cuda), budget_triton_ms=bench(ours_budget, cuda),
        full_triton_ms=bench(ours_full, cuda),
        full_sdpa_graph_ms=bench_graph(run_full, cuda), budget_triton_graph_ms=bench_graph(ours_budget, cuda),
        full_triton_graph_ms=bench_graph(ours_full, cuda),
        kv_bytes_budget=kb.nbytes + vb.nbytes, kv_bytes_full=k.nbytes + v.nbytes,
    )
    row["speedup"] = row["full_sdpa_ms"] / row["budget_triton_ms"]
    if row["full_sdpa_graph_ms"] and row["budget_triton_graph_ms"]:
        row["speedup_graph"] = row["full_sdpa_graph_ms"] / row["budget_triton_graph_ms"]
    print(f"  decode {n:>6}: full sdpa {row['full_sdpa_ms']:.4f} ms, budget {budget} triton "
          f"{row['budget_triton_ms']:.4f} ms, speedup {row['speedup']:.1f}x")
    return row


def decode_speed(cfg, device, cuda) -> list[dict]:
    """(b) decode over a budget buffer against SDPA decode over the full cache, per context."""
    return [_decode_row(n, cfg, device, cuda) for n in cfg["decode"]]


def _copy_ms(n_elem: int, device, cuda) -> float:
    src = torch.empty(n_elem, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    return bench(lambda: dst.copy_(src), cuda)


def bandwidth(cfg, device, cuda, decode_rows) -> dict:
    """(c) K+V bytes / decode time, as a fraction of device-to-device copy bandwidth (read + write)."""
    n_elem = cfg["copy_bytes"] // 2
    t_copy = _copy_ms(n_elem, device, cuda)
    copy_gbs = 2 * n_elem * 2 / (t_copy * 1e-3) / 1e9
    rows = []
    for r in decode_rows:
        for kind in ("budget", "full"):
            t = r[f"{kind}_triton_ms"]
            gbs = r[f"kv_bytes_{kind}"] / (t * 1e-3) / 1e9
            rows.append(dict(context=r["context"], buffer=kind, slots=r["budget"] if kind == "budget" else r["context"],
                             kv_bytes=r[f"kv_bytes_{kind}"], ms=t, gbs=gbs, fraction=gbs / copy_gbs))
    largest = max(rows, key=lambda x: x["kv_bytes"])
    return dict(copy_bytes=2 * n_elem * 2, copy_ms=t_copy, copy_gbs=copy_gbs, decode=rows, fraction_largest=largest["fraction"])


# ----------------------------------------------------------------------------------------------
# report
# ----------------------------------------------------------------------------------------------


def markdown(res: dict) -> str:
    lines = [f"# depthkv GPU benchmark — {res['date']}", ""]
    lines += [f"- device: {res['device']}", f"- torch {res['torch']}, triton {res['triton']}, python {res['python']}"]
    h, hkv, d = res["shapes"]["heads"]
    lines += [f"- shapes: B=1, H={h}, Hkv={hkv}, D={d}, dtype {res['shapes']['dtype']}; SnapKV window {WINDOW}"]
    if res["dry_run"]:
        lines += ["- **dry run** (CPU, Triton interpreter, tiny shapes): not a measurement"]
    lines += ["", "## Targets", "", "| target | value | goal | met |", "|---|---|---|---|"]
    for t in res["targets"]:
        lines.append(f"| {t['name']} | {t['value']} | {t['goal']} | {'yes' if t['met'] else 'NO'} |")
    ok = sum(r["ok"] for r in res["correctness"])
    lines += ["", f"## Correctness ({ok}/{len(res['correctness'])} within tolerance, C={C})", "",
              "| kernel | shape | max err | torch err | tolerance | ok |", "|---|---|---|---|---|---|"]
    for r in res["correctness"]:
        lines.append(f"| {r['kernel']} | {r['shape']} | {r['err']:.2e} | {r['torch_err']:.2e} | {r['tol']:.2e} | {'yes' if r['ok'] else 'NO'} |")
    lines += ["", "## Prefill: attention_lse + window_scores vs SDPA (ms, median)", "",
              "| tokens | SDPA | attention_lse | window_scores | both | overhead | h2o_scores |", "|---|---|---|---|---|---|---|"]
    for r in res["prefill"]:
        h2o = f"{r['h2o_scores_ms']:.3f}" if "h2o_scores_ms" in r else "—"
        lines.append(f"| {r['tokens']} | {r['sdpa_ms']:.3f} | {r['attention_lse_ms']:.3f} | {r['window_scores_ms']:.3f} | "
                     f"{r['total_ms']:.3f} | {r['overhead']:+.1%} | {h2o} |")
    lines += ["", "## Decode: Triton over a budget buffer vs SDPA over the full cache (ms, median)", "",
              "| context | budget | SDPA full | Triton budget | Triton full | speedup | SDPA full (graph) | Triton budget (graph) | speedup (graph) |",
              "|---|---|---|---|---|---|---|---|---|"]

    def fmt(x, spec=".4f"):
        return "—" if x is None else format(x, spec)

    for r in res["decode"]:
        lines.append(f"| {r['context']} | {r['budget']} | {r['full_sdpa_ms']:.4f} | {r['budget_triton_ms']:.4f} | "
                     f"{r['full_triton_ms']:.4f} | {r['speedup']:.1f}x | {fmt(r['full_sdpa_graph_ms'])} | "
                     f"{fmt(r['budget_triton_graph_ms'])} | {fmt(r.get('speedup_graph'), '.1f')} |")
    bw = res["bandwidth"]
    lines += ["", f"## Decode memory bandwidth (copy: {bw['copy_gbs']:.0f} GB/s over {bw['copy_bytes'] >> 20} MiB read+write)", "",
              "| context | buffer | slots | K+V MiB | ms | GB/s | of copy |", "|---|---|---|---|---|---|---|"]
    for r in bw["decode"]:
        lines.append(f"| {r['context']} | {r['buffer']} | {r['slots']} | {r['kv_bytes'] / 2**20:.1f} | {r['ms']:.4f} | "
                     f"{r['gbs']:.0f} | {r['fraction']:.0%} |")
    return "\n".join(lines) + "\n"


def targets(res: dict) -> list[dict]:
    worst_overhead = max(r["overhead"] for r in res["prefill"])
    min_speedup = min(r.get("speedup_graph", r["speedup"]) for r in res["decode"])
    frac = res["bandwidth"]["fraction_largest"]
    return [
        dict(name="prefill scoring overhead (worst length)", value=f"{worst_overhead:+.1%}", goal="< 10%", met=worst_overhead < 0.10),
        dict(name="decode speedup, 10% budget vs full cache (worst)", value=f"{min_speedup:.1f}x", goal=">= 5x", met=min_speedup >= 5.0),
        dict(name="decode bandwidth / copy bandwidth (largest buffer)", value=f"{frac:.0%}", goal=">= 70%", met=frac >= 0.70),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU under the Triton interpreter")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default benchmarks/results; temp dir for --dry-run)")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("benchmarks/gpu.py needs a CUDA GPU and none is available. Run it on a GPU machine, or use --dry-run "
              "to exercise the script on the CPU (Triton interpreter, tiny shapes).", file=sys.stderr)
        return 2
    import triton

    cfg = DRY if args.dry_run else FULL
    device = "cuda" if cuda else "cpu"
    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="depthkv-gpu-")) if args.dry_run else Path(__file__).parent / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    res = dict(
        date=datetime.date.today().isoformat(),
        device=torch.cuda.get_device_name() if cuda else f"cpu ({platform.processor() or platform.machine()}), dry run",
        torch=torch.__version__, triton=triton.__version__, python=platform.python_version(), dry_run=args.dry_run,
        shapes=dict(heads=list(cfg["heads"]), dtype=str(cfg["dtype"]).replace("torch.", ""), prefill=list(cfg["prefill"]),
                    decode=list(cfg["decode"]), budget_fraction=cfg["budget"], window=WINDOW, grid=[list(g) for g in cfg["grid"]]),
    )
    stem = out_dir / f"gpu-{res['date']}"

    def checkpoint(section: str) -> None:
        # The JSON is rewritten after each section, so a run cut short keeps what it measured.
        res["completed"] = [*res.get("completed", []), section]
        res["seconds"] = time.perf_counter() - started
        atomic_write_text(stem.with_suffix(".json"), json.dumps(res, indent=2, default=str) + "\n")

    print(f"depthkv GPU benchmark on {res['device']} -> {out_dir}")
    print("correctness ...")
    res["correctness"] = correctness(cfg, device)
    checkpoint("correctness")
    bad = [r for r in res["correctness"] if not r["ok"]]
    for r in bad:
        print(f"  FAILED {r['kernel']} {r['shape']}: err {r['err']:.3e} > tol {r['tol']:.3e}")
    print(f"  {len(res['correctness']) - len(bad)}/{len(res['correctness'])} within tolerance")
    print("prefill ...")
    res["prefill"] = prefill_overhead(cfg, device, cuda)
    checkpoint("prefill")
    print("decode ...")
    res["decode"] = decode_speed(cfg, device, cuda)
    checkpoint("decode")
    res["bandwidth"] = bandwidth(cfg, device, cuda, res["decode"])
    res["targets"] = targets(res)
    checkpoint("bandwidth")
    md = markdown(res)
    atomic_write_text(stem.with_suffix(".md"), md)
    print(md)
    print(f"wrote {stem}.json and {stem}.md in {res['seconds']:.0f} s")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
