"""Wall time of ``depthkv calibrate`` in one process against ``torchrun`` with N processes.

    python -m benchmarks.sharded_calibration [--nproc 2] [--n-per-task 8] [--out benchmarks/results/sharded-calibration.json]

Runs the same command (the shipped tiny-llama on its default built-in calibration split, or the
options given) three ways: one process with the default thread count, one process with one
thread, and ``torchrun --standalone --nproc-per-node N`` (torchrun gives each rank one thread).
Records each wall time (process start to exit, model loading included) and checks that the
sharded profile equals the one-process profiles (everything but its creation time; bit for bit
at the same thread count per process, since a CPU matrix product's rounding depends on how many
threads split it) and the largest difference of the degradation matrices. On a machine
with as many cores as ranks, N ranks compete with the one-process run's own threads: expect
little speedup there; the split pays where each rank has its own device.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from depthkv.files import atomic_write_text  # noqa: E402


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}{proc.stderr[-3000:]}")
    return time.perf_counter() - start


def content(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("created", None)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--n-per-task", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "sharded-calibration.json")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="depthkv-sharded-"))
    common = ["calibrate", "--model", args.model, "--n-per-task", str(args.n_per_task), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "DEPTHKV_FAILPOINT")}
    runs = {
        "one process": ([sys.executable, "-m", "depthkv", *common, "--out", str(work / "one.json")], env),
        "one process, 1 thread": ([sys.executable, "-m", "depthkv", *common, "--out", str(work / "one1.json")],
                                  {**env, "OMP_NUM_THREADS": "1"}),
        f"torchrun, {args.nproc} processes": (
            [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(args.nproc),
             "-m", "depthkv", *common, "--out", str(work / "sharded.json")], env),
    }
    seconds = {}
    for name, (cmd, run_env) in runs.items():
        seconds[name] = round(timed(cmd, run_env), 2)
        print(f"{name}: {seconds[name]:.1f} s", flush=True)
    sharded = content(work / "sharded.json")
    singles = {"one process": "one.json", "one process, 1 thread": "one1.json"}
    same = {name: content(work / f) == sharded for name, f in singles.items()}
    diff = {name: float(np.abs(np.asarray(content(work / f)["degradation"]) - np.asarray(sharded["degradation"])).max())
            for name, f in singles.items()}
    res = {
        "command": ["depthkv", *common], "nproc": args.nproc, "seconds": seconds,
        "speedup_vs_one_process": round(seconds["one process"] / seconds[f"torchrun, {args.nproc} processes"], 3),
        "sharded_profile_equals": same, "max_abs_degradation_diff": diff, "examples": len(sharded["context_lengths"]),
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version()},
    }
    import torch

    res["machine"]["torch"] = torch.__version__
    atomic_write_text(args.out, json.dumps(res, indent=2) + "\n")
    print(json.dumps(res, indent=2))
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
