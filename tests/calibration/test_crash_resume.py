"""Crash and resume for real: ``depthkv calibrate`` killed with SIGKILL, resumed, same profile.

Each run is a separate process (``python -m depthkv calibrate``). A crash is injected with
``DEPTHKV_FAILPOINT`` (:mod:`depthkv.faults`): the process sends itself SIGKILL — no ``finally``,
no cleanup — in the middle of an example, or between writing a checkpoint's temporary copy and
moving it into place. The resumed run must give the uninterrupted run's profile bit for bit (the
degradation matrix, baselines, lengths and every statistic). Two runs on one checkpoint: the
second refuses with a clear error and never writes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from depthkv.faults import ENV

ARGS = ["--model", "tiny-llama", "--tasks", "kv_retrieval", "--n-per-task", "3", "--context-length", "192",
        "--n-permutations", "300", "--no-progress"]
LAYERS = 6  # tiny-llama


def calibrate(out: Path, failpoint: str | None = None, wait: bool = True):
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint
    cmd = [sys.executable, "-m", "depthkv", "calibrate", *ARGS, "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not wait:
        return proc
    out_text, err = proc.communicate(timeout=600)
    return proc.returncode, out_text + err


def profile_content(path: Path) -> dict:
    data = json.loads(path.read_text())
    return {k: data[k] for k in ("degradation", "baseline", "context_lengths", "stats", "complete", "workload")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("whole") / "profile.json"
    rc, log = calibrate(out)
    assert rc == 0, log
    return profile_content(out)


@pytest.mark.parametrize(
    ("point", "examples_saved"),
    [
        (f"calibrate-ablation:{LAYERS + 3}", 1),  # killed inside the second example
        ("atomic-write:2", 1),  # killed after the second checkpoint's temporary copy, before its rename
    ],
    ids=["mid-example", "mid-checkpoint-write"],
)
def test_sigkill_then_resume_gives_the_uninterrupted_profile(tmp_path, uninterrupted, point, examples_saved):
    out = tmp_path / "profile.json"
    rc, log = calibrate(out, failpoint=point)
    assert rc == -signal.SIGKILL, f"the run was not killed at {point}: rc {rc}\n{log}"
    saved = json.loads(out.read_text())  # the checkpoint is whole (never half-written) ...
    assert saved["complete"] is False and len(saved["context_lengths"]) == examples_saved
    rc, log = calibrate(out)  # ... and the same command resumes from it
    assert rc == 0, log
    assert profile_content(out) == uninterrupted
    assert not list(tmp_path.glob(".profile.json.*.tmp"))  # a killed write's temporary copy is cleaned up


def test_second_process_on_the_same_checkpoint_refuses(tmp_path):
    out = tmp_path / "profile.json"
    first = calibrate(out, failpoint="calibrate-ablation:2:pause", wait=False)
    try:
        deadline = time.monotonic() + 300
        lock = Path(f"{out}.lock")
        while not (lock.exists() and lock.read_text().strip()) and first.poll() is None:
            assert time.monotonic() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        time.sleep(2)  # the first run is inside its example loop (paused at the failpoint)
        rc, log = calibrate(out)
        assert rc != 0
        assert f"{out} is in use: another depthkv process is calibrating into it (pid {first.pid}" in log, log
        assert "Wait for it to finish, or write to another path" in log
        assert not out.exists()  # the refused run wrote nothing (and the paused one has no example yet)
    finally:
        first.kill()
        first.wait()
    rc, log = calibrate(out)  # the killed holder left no stale lock
    assert rc == 0, log
