"""benchmarks/gpu.py runs end to end in --dry-run mode (CPU, Triton interpreter, tiny shapes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def test_gpu_script_dry_run_writes_json_and_markdown(tmp_path):
    pytest.importorskip("triton", reason="triton is not installed (optional extra depthkv[triton])")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the script must set it itself
    # One serving context (of the dry run's two) halves the slowest part: every serving row compiles
    # the tiny model and runs the fused step under the interpreter.
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path), "--contexts", "128"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    [json_file] = tmp_path.glob("gpu-*.json")
    [md_file] = tmp_path.glob("gpu-*.md")
    data = json.loads(json_file.read_text())
    assert data["dry_run"] is True and data["torch"] and data["triton"] and data["transformers"] and data["device"]
    assert data["completed"] == ["correctness", "prefill", "decode", "bandwidth", "multi_device", "serving"], data.get("serving_error")
    # the multi-device section: a model split by a device map (CPU + disk offload here) on every path
    assert data["multi_device"]["ok"] and len(data["multi_device"]["checks"]) == 7, data["multi_device"]

    # correctness, with the fused decode step (evict and append: output and buffer state)
    assert data["correctness"] and all(row["ok"] for row in data["correctness"])
    fused = {row["kernel"] for row in data["correctness"] if row["kernel"].startswith("decode_step.")}
    assert fused == {f"decode_step.{m}.{what}" for m in ("evict", "append") for what in ("out", "state")}

    assert {r["tokens"] for r in data["prefill"]} == set(data["shapes"]["prefill"])

    # decode attention: full SDPA vs the fused step at each budget, eager and graph (None on the CPU)
    assert {r["context"] for r in data["decode"]} == set(data["shapes"]["decode"])
    for row in data["decode"]:
        assert row["full_sdpa_ms"] > 0 and row["full_sdpa_graph_ms"] is None
        names = {v["name"] for v in row["variants"]}
        assert {"evict@10%", "evict@20%", "append@10%", "three-launch@10%"} <= names
        for v in row["variants"]:
            assert v["ms"] > 0 and v["speedup"] > 0 and v["graph_ms"] is None and v["slots"] >= v["budget"]
    bw = data["bandwidth"]
    assert bw["copy_gbs"] > 0 and bw["largest"]["variant"] == "evict@20%" and bw["fraction_largest"] is not None

    # serving: every variant at every context, batch 1 and the largest batch, with tokens/s
    serving = data["serving"]
    assert serving["cuda_graphs"].startswith("skipped") and serving["model"]["layers"] == 2
    assert serving["contexts"] == [128]
    rows = serving["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r], rows
    variants = {"full", "evict@10%", "evict@20%", "append@10%", "append@20%"}
    for ctx in serving["contexts"]:
        for kind in ("1", "largest"):
            got = {r["variant"]: r for r in rows if r["context"] == ctx and r["batch_kind"] == kind}
            assert set(got) == variants
            for r in got.values():
                assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["batch"] >= 1 and r["cache_bytes_per_row"] > 0
                assert r["vs_full"] > 0
                assert (r["batch"] == 1) if kind == "1" else (r["batch"] == r["batch_planned"] >= 1)
                if kind == "1":
                    assert r["tokens_per_s_32_layers"] > 0
        by = {r["variant"]: r["cache_bytes_per_row"] for r in rows if r["context"] == ctx and r["batch_kind"] == "1"}
        assert by["evict@10%"] < by["evict@20%"] < by["full"]
    real = serving["real_model"]
    assert real["layers"] == 32 and len(real["rows"]) == len(variants) * len(serving["contexts"])
    assert all(r["max_batch"] >= 1 for r in real["rows"])

    # targets: prefill, decode eager and graph speedups, bandwidth
    names = [t["name"] for t in data["targets"]]
    assert len(names) == 4 and any("eager" in n for n in names) and any("CUDA graph" in n for n in names)
    assert next(t for t in data["targets"] if "CUDA graph" in t["name"])["met"] is None  # not measured on the CPU
    text = md_file.read_text()
    for heading in ("## Targets", "## Correctness", "## Prefill", "## Decode attention", "## Decode memory bandwidth",
                    "## Serving", "## Largest batch"):
        assert heading in text, heading
    assert "dry run" in text


def test_gpu_script_without_cuda_explains_itself():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the script would run the real benchmark")
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "needs a CUDA GPU" in res.stderr and "--dry-run" in res.stderr
