"""Compile cost of ``depthkv.backend(plan)`` with Inductor on the CPU: graph size, the FX pass,
the first prefill and decode calls (trace + pass + Inductor) and a warm decode step.

Run from the repository root (writes JSON and prints a markdown table)::

    python benchmarks/compile_cost.py --out benchmarks/results/compile-cost-cpu.json

Each depth runs in a fresh process with a fresh, empty Inductor cache (``TORCHINDUCTOR_CACHE_DIR``
in a new temporary folder), so every "first call" is a cold compile. One torch thread, random tiny
Llama (hidden 128, 4 query / 2 KV heads), 512-token prompt, uniform 20% budgets, SnapKV.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT, FRACTION, WARM_STEPS = 512, 0.2, 20


def measure(layers: int) -> dict:
    """One depth, in this process (called in a child process by :func:`main`)."""
    import torch

    import depthkv
    from depthkv.runtime.attention import use_depthkv_attention

    sys.path.insert(0, str(ROOT))
    from benchmarks.tiny import tiny_llama

    torch.set_num_threads(1)
    model = tiny_llama(layers)
    plan = depthkv.uniform_plan(model, int(FRACTION * PROMPT))
    be = depthkv.backend(plan)
    cache = be.new_cache(model, max_len=PROMPT + WARM_STEPS + 4)
    use_depthkv_attention(model)
    compiled = torch.compile(model, backend=be, fullgraph=True)
    ids = torch.randint(0, 256, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    tok = torch.tensor([[7]])
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(ids, cache=cache, use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        compiled(tok, cache=cache, use_cache=True)
        decode = time.perf_counter() - start
        steps = []
        for _ in range(WARM_STEPS):
            start = time.perf_counter()
            compiled(tok, cache=cache, use_cache=True)
            steps.append(time.perf_counter() - start)
    reports = be.reports
    return {
        "layers": layers,
        "graph_nodes": [r.nodes for r in reports],
        "pass_ms": [r.seconds * 1e3 for r in reports],
        "first_prefill_s": prefill,
        "first_decode_s": decode,
        "warm_decode_ms": sorted(steps)[len(steps) // 2] * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[6, 8])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "compile-cost-cpu.json")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: measure one depth
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.one)))
        return 0
    import platform

    import torch
    import transformers

    rows = []
    for layers in args.layers:
        with tempfile.TemporaryDirectory() as cache_dir:
            env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache_dir}
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(layers)], env=env, check=True, capture_output=True, text=True
            )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    from depthkv.files import atomic_write_json

    record = {
        "command": "python benchmarks/compile_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, 1 torch thread",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "prompt_tokens": PROMPT,
        "budget_fraction": FRACTION,
        "rows": rows,
    }
    atomic_write_json(args.out, record)
    print("| layers | Dynamo graph nodes | FX pass | first prefill call (trace + pass + Inductor) "
          "| first decode call | warm decode step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        nodes = " / ".join(str(n) for n in r["graph_nodes"])
        passes = " / ".join(f"{ms:.1f}" for ms in r["pass_ms"])
        print(f"| {r['layers']} | {nodes} | {passes} ms | {r['first_prefill_s']:.1f} s | "
              f"{r['first_decode_s']:.1f} s | {r['warm_decode_ms']:.1f} ms |")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
