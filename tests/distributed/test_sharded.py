"""Calibration and evaluation sharded over processes with torch.distributed (2 CPU ranks over gloo).

Every run here is real: ``torchrun --standalone --nproc-per-node 2`` starts two processes that
join one gloo process group. The sharded profile must equal one process's (same degradation
matrix, statistics, baselines, lengths, workload fingerprint and settings: only the creation time
differs); a job killed with SIGKILL resumes from each rank's shard checkpoint; evaluation's scores
equal one process's; and a rank that fails makes every rank fail instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import depthkv
from depthkv.calibration import shard_checkpoint
from depthkv.cli import main
from depthkv.distributed import gather_in_order, shard
from depthkv.faults import ENV

HERE = Path(__file__).resolve().parent
ARGS = ["--model", "tiny-llama", "--tasks", "kv_retrieval", "--n-per-task", "5", "--context-length", "160",
        "--n-permutations", "300", "--no-progress"]
LAYERS = 6  # tiny-llama
TIMEOUT = 300


def torchrun(*args: str, failpoint: str | None = None) -> tuple[int, str]:
    """``torchrun --standalone --nproc-per-node 2 ARGS`` (a free port of its own); rc and output."""
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if failpoint:
        env[ENV] = failpoint
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def content(path: Path) -> dict:
    """A profile file without its creation time (the one thing two runs may not share)."""
    data = json.loads(path.read_text())
    data.pop("created", None)
    return data


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("single") / "profile.json"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank runs (OMP_NUM_THREADS=1)
    try:
        assert main(["calibrate", *ARGS, "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)
    return content(out)


def test_shards_cover_every_example_once():
    for n in (0, 1, 5, 16):
        for size in (1, 2, 3, 7):
            got = sorted(i for r in range(size) for i in shard(n, r, size))
            assert got == list(range(n))
    with pytest.raises(ValueError, match="need 0 <= rank < size"):
        shard(4, 2, 2)


def test_without_a_process_group_everything_is_this_process_s():
    assert gather_in_order(3, lambda idx: [i * 10 for i in idx]) == [0, 10, 20]


def test_torchrun_calibrate_writes_the_single_process_profile(tmp_path, one_process):
    out = tmp_path / "profile.json"
    rc, log = torchrun("-m", "depthkv", "calibrate", *ARGS, "--out", str(out))
    assert rc == 0, log
    assert log.count("profile written to") == 1  # rank 0 reports; rank 1 is silent
    assert content(out) == one_process
    assert not list(tmp_path.glob("profile.rank*-of-2.json"))  # shards are removed once the profile is whole


def test_killed_sharded_job_resumes_from_each_rank_s_checkpoint(tmp_path, one_process):
    out = tmp_path / "profile.json"
    # every rank kills itself inside its second example (each rank has 2-3 of the 5)
    rc, log = torchrun("-m", "depthkv", "calibrate", *ARGS, "--out", str(out), failpoint=f"calibrate-ablation:{LAYERS + 3}")
    assert rc != 0, log
    assert not out.exists()
    saved = {r: json.loads(shard_checkpoint(out, r, 2).read_text()) for r in range(2) if shard_checkpoint(out, r, 2).exists()}
    assert saved, f"no rank checkpointed its first example\n{log}"
    for part in saved.values():
        assert part["complete"] is False and len(part["context_lengths"]) == 1
        assert part["settings"]["shard"]["ranks"] == 2
    # the same command resumes: each rank measures only what its checkpoint lacks, so a crash point
    # one ablation past the largest remainder is never reached (a rank that started over would be)
    examples = {r: len(shard(5, r, 2)) for r in range(2)}
    left = max((examples[r] - len(saved.get(r, {}).get("context_lengths", []))) * LAYERS for r in range(2))
    rc, log = torchrun("-m", "depthkv", "calibrate", *ARGS, "--out", str(out), failpoint=f"calibrate-ablation:{left + 1}")
    assert rc == 0, log
    assert content(out) == one_process


def test_torchrun_evaluate_equals_one_process(tmp_path):
    plan = tmp_path / "plan.json"
    assert main(["plan", "--model", "tiny-llama", "--budgets", "8", "24", "8", "8", "16", "8", "--out", str(plan)]) == 0
    args = ["evaluate", "--model", "tiny-llama", "--plans", f"p={plan}", "--tasks", "kv_retrieval",
            "--n-per-task", "5", "--context-length", "160", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    rc, log = torchrun("-m", "depthkv", *args, "--out", str(tmp_path / "two.json"))
    assert rc == 0, log
    one, two = (json.loads((tmp_path / f).read_text())["methods"] for f in ("one.json", "two.json"))
    assert one == two


def test_other_commands_refuse_to_run_under_torchrun(tmp_path, monkeypatch, capsys):
    """What a torchrun rank sees (WORLD_SIZE > 1): only calibrate and evaluate split their work;
    any other command stops before joining a group or writing anything."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    args = ["plan", "--model", "tiny-llama", "--budgets", "8", "8", "8", "8", "8", "8", "--out", str(tmp_path / "p.json")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "depthkv: error (rank 1): `depthkv plan` runs as one process; only calibrate and evaluate split" in err
    assert not (tmp_path / "p.json").exists()


@pytest.fixture(scope="module")
def in_group(tmp_path_factory) -> dict[str, list[dict]]:
    """What each rank of one torchrun job got in each case of ``worker.py`` (ok, fail, disagree)."""
    out = tmp_path_factory.mktemp("group")
    rc, log = torchrun(str(HERE / "worker.py"), str(out))
    assert rc == 0, log  # every rank caught its errors and wrote them down
    return {case: [json.loads((out / f"{case}-rank{r}.json").read_text()) for r in range(2)]
            for case in ("ok", "fail", "disagree")}


def test_calibrate_and_evaluate_inside_an_initialised_process_group(in_group):
    ranks = in_group["ok"]
    assert all("error" not in r for r in ranks), ranks
    model, tokenizer = depthkv.load_model("tiny-llama")
    calib = depthkv.workload.builtin_workload(["kv_retrieval"], n_per_task=5, context_length=160)
    evalw = depthkv.workload.builtin_workload(["kv_retrieval"], n_per_task=5, context_length=160, split="evaluation")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        profile = depthkv.calibrate(model, tokenizer, calib, n_permutations=300, progress=False).to_dict()
        plan = depthkv.plan_from_budgets(model, [8, 24, 8, 8, 16, 8])
        res = depthkv.evaluate(model, tokenizer, evalw, {"full": None, "plan": plan}, progress=False)
    finally:
        torch.set_num_threads(threads)
    profile.pop("created")
    expected = {name: {"scores": r.scores, "tasks": r.tasks, "kv": r.kv_tokens} for name, r in res.items()}
    for r in ranks:  # every rank returns what one process computes
        r["profile"].pop("created")
        assert r["profile"] == profile
        assert r["evaluate"] == expected


def test_a_failing_rank_fails_every_rank_instead_of_hanging(in_group):
    errors = [r.get("error") for r in in_group["fail"]]
    assert errors[0] == "RankFailedError: rank 1 of 2 failed: RuntimeError: scorer broke on rank 1"
    assert errors[1] == "RuntimeError: scorer broke on rank 1"


def test_ranks_that_disagree_on_the_workload_are_refused(in_group):
    errors = [r.get("error") for r in in_group["disagree"]]  # rank 1 has one more example
    for error in errors:  # both refuse, before any work
        assert error.startswith("ValueError: the ranks of this calibration run disagree on its workload: rank 0 has"), errors
