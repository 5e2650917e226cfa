"""The long soak: many decode steps on the eager and the compiled path, memory sampled as it goes.

    python benchmarks/soak.py [--steps 20000] [--every 1000] [--out benchmarks/results/soak.json]

The shipped ``tiny-llama`` (6 layers) with a 32-token prompt and a uniform budget of 24 tokens per
layer (SnapKV), evict mode: the eager ``BudgetCache`` (``depthkv.apply``) and a compiled
``StaticBudgetCache`` (Inductor). Every ``--every`` steps it records the process's RSS, the cache's
KV bytes and the tokens each layer holds; it reports the RSS drift after the first sample and
whether the held tokens ever left the budget. ``tests/runtime/test_soak.py`` is the 2,000-step
version that runs in CI.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import psutil
import torch

import depthkv
from depthkv.files import atomic_write_json

PROMPT, BUDGET = 32, 24


def run(path: str, steps: int, every: int) -> dict:
    model, _ = depthkv.load_model("tiny-llama")
    plan = depthkv.uniform_plan(model, BUDGET)
    ids = torch.randint(1, 200, (1, PROMPT), generator=torch.Generator().manual_seed(0))
    if path == "eager":
        handle = depthkv.apply(model, plan)
        cache = handle.new_cache(PROMPT)
        step = handle.model
    else:
        torch._dynamo.reset()
        be = depthkv.backend(plan)
        cache = be.new_cache(model, max_len=PROMPT + steps + 1)
        step = torch.compile(model, backend=be, fullgraph=True)
    proc = psutil.Process()
    samples = []
    start = time.perf_counter()
    with torch.inference_mode():
        tok = step(ids, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
        for i in range(1, steps + 1):
            tok = step(tok, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            if i % every == 0:
                samples.append(
                    {"step": i, "rss": proc.memory_info().rss, "kv_bytes": cache.kv_nbytes(),
                     "held": cache.held_tokens(), "length": int(cache.get_seq_length())}
                )
    rss = [s["rss"] for s in samples]
    return {
        "path": path,
        "steps": steps,
        "seconds": time.perf_counter() - start,
        "rss_drift_bytes": max(rss[1:]) - rss[1] if len(rss) > 1 else 0,
        "kv_bytes": sorted({s["kv_bytes"] for s in samples}),
        "held_always_budget": all(set(s["held"]) == {BUDGET} for s in samples),
        "length_ok": all(s["length"] == PROMPT + s["step"] for s in samples),
        "samples": samples,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--every", type=int, default=1000)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "soak.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = [run(path, args.steps, args.every) for path in ("eager", "compiled")]
    for r in results:
        print(
            f"{r['path']:9s} {r['steps']} steps in {r['seconds']:.0f} s: RSS drift {r['rss_drift_bytes'] / 2**20:.2f} MiB, "
            f"KV bytes {r['kv_bytes']}, held = budget throughout: {r['held_always_budget']}, length ok: {r['length_ok']}"
        )
    atomic_write_json(
        args.out, {"machine": platform.machine(), "torch": torch.__version__, "results": results}
    )


if __name__ == "__main__":
    main()
