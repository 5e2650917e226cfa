"""One rank of the in-process-group tests (``tests/distributed/test_sharded.py``), run by torchrun.

``python worker.py OUT``: joins the gloo group torchrun describes and, in one group, one case after
another, calls ``depthkv.calibrate`` / ``depthkv.evaluate`` inside it, writing what this rank got
to ``OUT/<case>-rank<r>.json``:

* ``ok``: calibrate and evaluate, both sharded;
* ``fail``: rank 1's scorer raises, so every rank must raise instead of waiting for rank 1 forever;
* ``disagree``: rank 1 is given another workload, so both must refuse before any work.

Each case completes its collectives on every rank, so the group serves the next case.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

import depthkv
from depthkv.workload import builtin_workload

CASES = ("ok", "fail", "disagree")


def run_case(case: str, rank: int, model, tokenizer) -> dict:
    more = case == "disagree" and rank == 1
    calib = builtin_workload(["kv_retrieval"], n_per_task=6 if more else 5, context_length=160)
    evalw = builtin_workload(["kv_retrieval"], n_per_task=5, context_length=160, split="evaluation")
    result: dict = {"rank": rank}
    try:
        if case in ("ok", "disagree"):
            profile = depthkv.calibrate(model, tokenizer, calib, n_permutations=300, progress=False)
            result["profile"] = profile.to_dict()
        if case in ("ok", "fail"):
            plan = depthkv.plan_from_budgets(model, [8, 24, 8, 8, 16, 8])

            def scorer(example, prediction):
                if case == "fail" and rank == 1:
                    raise RuntimeError("scorer broke on rank 1")
                return depthkv.workload.score(example, prediction)

            res = depthkv.evaluate(model, tokenizer, evalw, {"full": None, "plan": plan}, scorer=scorer, progress=False)
            result["evaluate"] = {n: {"scores": r.scores, "tasks": r.tasks, "kv": r.kv_tokens} for n, r in res.items()}
    except Exception as exc:  # the test reads what each rank raised
        result["error"] = f"{type(exc).__name__}: {exc}"
    return result


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model, tokenizer = depthkv.load_model("tiny-llama")
    for case in CASES:
        (out / f"{case}-rank{rank}.json").write_text(json.dumps(run_case(case, rank, model, tokenizer)))
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
