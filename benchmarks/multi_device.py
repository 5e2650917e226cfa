"""A model split over devices by accelerate: every depthkv path against the unsplit model.

    python -m benchmarks.multi_device [--out benchmarks/results/multi-device.json]

With CUDA, the shipped tiny-llama is split by a device map: the embeddings and layers 0-1 on
``cuda:0``, layer 2 offloaded to disk, layers 3-5 and the output head on ``cuda:1`` when there is
a second GPU, else offloaded to CPU RAM (accelerate then runs them on ``cuda:0``, loading their
weights at each call). Without CUDA (the CI dry run of
``benchmarks/gpu.py``), the split is the CPU with layers offloaded to disk. For each split it checks,
against the same model unsplit on the first device:

* each decoder layer's execution device, and that every :class:`depthkv.StaticBudgetCache` layer's
  buffers are on it;
* ``depthkv.calibrate``: the degradation matrix (close: devices round differently);
* ``depthkv.evaluate``: the scores, in evict and append mode;
* ``depthkv.apply`` + greedy generation: the tokens, and the logits (close);
* ``depthkv.compile`` (layer by layer on a dispatched model) + ``StaticBudgetCache``: the tokens,
  and that every layer's attention was rewritten in the prefill and decode graphs.

Writes a JSON of what was checked and prints one line per check; exit status 1 if one failed.
Called by ``benchmarks/gpu.py`` as its ``multi_device`` section.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import depthkv  # noqa: E402
from depthkv.files import atomic_write_text  # noqa: E402
from depthkv.runtime.attention import depthkv_attention_enabled  # noqa: E402
from depthkv.runtime.devices import layer_devices  # noqa: E402
from depthkv.workload import builtin_workload  # noqa: E402

BUDGETS = [8, 24, 8, 8, 16, 8]  # tiny-llama's 6 layers
NEW = 8
LAYERS = 6


def device_map(cuda: bool) -> tuple[dict[str, Any], str]:
    """The split and a description of it."""
    if not cuda:
        where = ["cpu", "disk", "cpu", "disk", "cpu", "cpu"]
        first, last = "cpu", "cpu"
        text = "CPU, layers 1 and 3 offloaded to disk"
    elif torch.cuda.device_count() > 1:
        where = ["cuda:0", "cuda:0", "disk", "cuda:1", "cuda:1", "cuda:1"]
        first, last = "cuda:0", "cuda:1"
        text = "cuda:0 (embeddings, layers 0-1), layer 2 offloaded to disk (runs on cuda:0), cuda:1 (layers 3-5, head)"
    else:  # one GPU: accelerate runs CPU- and disk-offloaded blocks on it, loading their weights per call
        where = ["cuda:0", "cuda:0", "disk", "cpu", "cpu", "cpu"]
        first, last = "cuda:0", "cpu"
        text = "cuda:0; layer 2 offloaded to disk, layers 3-5 and the head to CPU RAM (all run on cuda:0)"
    dm: dict[str, Any] = {"model.embed_tokens": first, "model.rotary_emb": first}
    dm.update({f"model.layers.{i}": w for i, w in enumerate(where)})
    dm.update({"model.norm": last, "lm_head": last})
    return dm, text


def run(cuda: bool) -> dict[str, Any]:
    start = time.perf_counter()
    first = "cuda:0" if cuda else "cpu"
    ref_model, tok = depthkv.load_model("tiny-llama", device=first)
    dm, text = device_map(cuda)
    split, _ = depthkv.load_model("tiny-llama", device_map=dm, offload_folder=tempfile.mkdtemp(prefix="depthkv-offload-"))
    calib = builtin_workload(["kv_retrieval"], n_per_task=2, context_length=160)
    evalw = builtin_workload(["kv_retrieval"], n_per_task=2, context_length=160, split="evaluation")
    plan = depthkv.plan_from_budgets(ref_model, BUDGETS)
    checks: list[dict[str, Any]] = []

    def check(name: str, ok: bool, detail: Any) -> None:
        checks.append({"check": name, "ok": bool(ok), "detail": detail})
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}", flush=True)

    devices = [str(d) for d in layer_devices(split)]
    with depthkv_attention_enabled(split):  # a dispatched model's static cache needs depthkv's attention
        cache = depthkv.StaticBudgetCache.for_model(split, plan, max_len=64)
    buffers = [str(layer.keys.device) for layer in cache.layers]
    check("layer buffers on each layer's execution device", buffers == devices, {"layers": devices, "buffers": buffers})

    ref_p = depthkv.calibrate(ref_model, tok, calib, n_permutations=200, progress=False)
    got_p = depthkv.calibrate(split, tok, calib, n_permutations=200, progress=False)
    diff = float(np.abs(ref_p.degradation - got_p.degradation).max())
    check("calibrate: degradation matrix", np.allclose(got_p.degradation, ref_p.degradation, rtol=1e-3, atol=1e-3),
          {"max_abs_diff": diff})

    for mode in ("evict", "append"):
        methods = {"full": None, "plan": plan}
        ref_e = depthkv.evaluate(ref_model, tok, evalw, methods, progress=False, mode=mode)
        got_e = depthkv.evaluate(split, tok, evalw, methods, progress=False, mode=mode)
        scores = {k: (got_e[k].scores, ref_e[k].scores) for k in methods}
        check(f"evaluate ({mode}): scores", all(a == b for a, b in scores.values()), scores)

    ids = torch.tensor([tok.encode(calib.examples[0].context)], device=first)
    outs = []
    for model in (ref_model, split):
        handle = depthkv.apply(model, plan)
        try:
            outs.append(depthkv.greedy_generate(model, ids, handle.new_cache(ids.shape[1]), NEW))
        finally:
            handle.remove()
    ldiff = float((outs[0][1].float().cpu() - outs[1][1].float().cpu()).abs().max())
    check("apply + generate: tokens", torch.equal(outs[0][0].cpu(), outs[1][0].cpu()), {"max_logit_diff": ldiff})

    torch._dynamo.reset()
    depthkv.compile(split, plan, context_length=ids.shape[1], inner="aot_eager")
    cache = depthkv.StaticBudgetCache.for_model(split, plan, max_len=ids.shape[1] + NEW, context_length=ids.shape[1])
    got = depthkv.greedy_generate(split, ids, cache, NEW)
    rewritten = sorted(layer for r in split._depthkv_backend.reports for layer in r.rewritten)
    check("compile (per layer) + StaticBudgetCache: tokens", torch.equal(got[0].cpu(), outs[0][0].cpu()),
          {"rewritten_layers": rewritten})
    check("compile: every layer rewritten in prefill and decode", rewritten == sorted(list(range(LAYERS)) * 2), rewritten)
    torch._dynamo.reset()
    return {"split": text, "device_map": dm, "gpus": torch.cuda.device_count() if cuda else 0,
            "checks": checks, "ok": all(c["ok"] for c in checks), "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="JSON of the checks (default: print only)")
    args = parser.parse_args(argv)
    res = run(torch.cuda.is_available())
    if args.out:
        atomic_write_text(args.out, json.dumps(res, indent=2, default=str) + "\n")
    print(f"{sum(c['ok'] for c in res['checks'])}/{len(res['checks'])} checks passed on: {res['split']}")
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
