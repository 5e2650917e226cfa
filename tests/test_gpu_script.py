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
    res = subprocess.run(
        [sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    [json_file] = tmp_path.glob("gpu-*.json")
    [md_file] = tmp_path.glob("gpu-*.md")
    data = json.loads(json_file.read_text())
    assert data["dry_run"] is True and data["torch"] and data["triton"] and data["device"]
    assert data["correctness"] and all(row["ok"] for row in data["correctness"])
    assert {r["tokens"] for r in data["prefill"]} == set(data["shapes"]["prefill"])
    assert {r["context"] for r in data["decode"]} == set(data["shapes"]["decode"])
    assert [t["name"] for t in data["targets"]] and "copy_gbs" in data["bandwidth"]
    text = md_file.read_text()
    assert "## Correctness" in text and "## Prefill" in text and "## Decode" in text and "dry run" in text


def test_gpu_script_without_cuda_explains_itself():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("CUDA is available: the script would run the real benchmark")
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "needs a CUDA GPU" in res.stderr and "--dry-run" in res.stderr
