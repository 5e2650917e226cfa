"""The floor study of ``docs/results.md`` ("The floor, and tune_floor"), regenerated end to end.

Run from the repository root (about 30 minutes on a 2-core CPU)::

    python benchmarks/floor_study.py                       # both shipped models
    python benchmarks/floor_study.py --models tiny-llama   # one

Every step is a ``depthkv`` command (printed before it runs), starting from the committed demo
profile ``docs/demo/<model>/profile.json``; every output lands in ``docs/floor/<model>/``:

* ``profile-score.json`` — the one-layer ablations with ``metric="score"`` at 8 tokens and at 20%
  on the demo's calibration split; for tiny-llama also ``profile-nll-1pct.json`` (``nll`` with a 1%
  point added to the demo's ablation budgets).
* ``plans/*.json`` — allocations at fixed floors, hand-made per-layer budgets, the plans
  ``depthkv tune-floor`` chose (with every floor's calibration score in their metadata), and
  ``greedy`` from the 1% profile.
* ``evaluation.json`` — all of those plans and the full cache scored on the demo's evaluation
  split (``depthkv evaluate``: 32 examples per learned task, context 1,024).
* ``steps.json`` — each command with its wall time.

``docs/floor/tables.md`` is then written from those files: the tables of the results page.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = (0.1, 0.2, 0.3)
STRATEGIES = ("proportional", "greedy")
# (budget, strategy, floors) of the fixed-floor table.
FIXED_FLOORS = {
    "tiny-llama": [(0.1, "proportional", (8, 32)), (0.2, "proportional", (8, 32, 64)),
                   (0.2, "greedy", (8, 32, 64)), (0.3, "proportional", (8, 64)), (0.3, "greedy", (8, 64))],
    "tiny-qwen2": [(0.1, "proportional", (8, 32)), (0.1, "greedy", (8, 32)), (0.2, "proportional", (8, 32, 64)),
                   (0.2, "greedy", (8, 32, 64)), (0.3, "proportional", (8, 64)), (0.3, "greedy", (8, 64))],
}
# Hand-made per-layer budgets (tiny-llama, 20% and 30% of 1,025 tokens over 6 layers).
FIXED_BUDGETS = {
    "tiny-llama": ["8 1025 8 173 8 8", "8 1025 45 62 45 45", "64 1025 8 117 8 8",
                   "8 1025 197 205 205 205", "64 1025 197 205 205 149"],
    "tiny-qwen2": [],
}


def run(argv: list[str], steps: list[dict]) -> None:
    """One ``depthkv`` command, in this process; stops the study on failure."""
    from depthkv.cli import main

    print("$ depthkv " + shlex.join(argv), flush=True)
    start = time.time()
    status = main([*argv])
    steps.append({"command": "depthkv " + shlex.join(argv), "status": status, "wall_s": round(time.time() - start, 1)})
    if status != 0:
        raise SystemExit(f"step failed (status {status}): depthkv {shlex.join(argv)}")


def study(model: str, steps: list[dict]) -> None:
    demo = Path("docs") / "demo" / model / "profile.json"
    out = Path("docs") / "floor" / model
    plans = out / "plans"
    plans.mkdir(parents=True, exist_ok=True)
    quiet = ["--no-progress"]
    calib = ["--model", model, "--n-per-task", "12", "--split", "calibration", *quiet]
    run(["calibrate", *calib, "--metric", "score", "--ablation-budget", "8", "0.2", "--n-permutations", "999",
         "--out", str(out / "profile-score.json")], steps)
    named: list[str] = []
    for budget, strategy, floors in FIXED_FLOORS[model]:
        for floor in floors:
            name = f"{strategy}@{budget}-floor{floor}"
            run(["allocate", str(demo), "--budget", str(budget), "--strategy", strategy, "--floor", str(floor),
                 "--out", str(plans / f"{name}.json")], steps)
            named.append(f"{name}={plans / f'{name}.json'}")
    for budgets in FIXED_BUDGETS[model]:
        name = "budgets-" + budgets.replace(" ", "-")
        run(["plan", "--model", model, "--budgets", *budgets.split(), "--out", str(plans / f"{name}.json")], steps)
        named.append(f"{name}={plans / f'{name}.json'}")
    for budget in BUDGETS:
        for strategy in STRATEGIES:
            name = f"tuned-{strategy}@{budget}"
            run(["tune-floor", str(demo), "--model", model, "--budget", str(budget), "--strategy", strategy,
                 *quiet, "--out", str(plans / f"{name}.json")], steps)
            named.append(f"{name}={plans / f'{name}.json'}")
    if model == "tiny-llama":
        one_pct = out / "profile-nll-1pct.json"
        run(["calibrate", *calib, "--metric", "nll", "--ablation-budget", "0.2", "0.1", "0.5", "0.01",
             "--out", str(one_pct)], steps)
        for budget in (0.2, 0.3):
            name = f"greedy-1pct@{budget}"
            run(["allocate", str(one_pct), "--budget", str(budget), "--strategy", "greedy",
                 "--out", str(plans / f"{name}.json")], steps)
            named.append(f"{name}={plans / f'{name}.json'}")
    run(["evaluate", "--model", model, "--plans", *named, *quiet, "--out", str(out / "evaluation.json")], steps)


def _cell(summary: dict) -> str:
    return f"{summary['mean']:.3f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def tables(models: list[str]) -> str:
    """The markdown tables of the results page, from the files :func:`study` wrote."""
    lines = ["# Floor study tables", "", "Written by `python benchmarks/floor_study.py` from `docs/floor/<model>/`.", ""]
    for model in models:
        out = ROOT / "docs" / "floor" / model
        ev = json.loads((out / "evaluation.json").read_text())
        methods = ev["methods"]
        score = json.loads((out / "profile-score.json").read_text())
        deg = score["degradation"]  # [budgets, examples, layers]
        lines += [f"## {model}", "", "One-layer ablations, `metric=\"score\"` (drop of the task score, 0-1), calibration split:", ""]
        n_layers = len(deg[0][0])
        lines += ["| ablation budget | " + " | ".join(f"L{i}" for i in range(n_layers)) + " |",
                  "|---|" + "---|" * n_layers]
        for k, budget in enumerate(score["ablation_budgets"]):
            means = [sum(row[i] for row in deg[k]) / len(deg[k]) for i in range(n_layers)]
            lines.append(f"| {budget} | " + " | ".join(f"{m:.3f}" for m in means) + " |")
        one_pct = out / "profile-nll-1pct.json"
        if one_pct.exists():  # the same layers by answer NLL (nats) at 1% of the context
            nll = json.loads(one_pct.read_text())
            k = nll["ablation_budgets"].index(0.01)
            means = [sum(row[i] for row in nll["degradation"][k]) / len(nll["degradation"][k]) for i in range(n_layers)]
            lines.append("| 0.01, `nll` (nats) | " + " | ".join(f"{m:.3f}" for m in means) + " |")
        lines += ["", f"Evaluation split, {methods['full']['n']} examples; full cache {methods['full']['mean']:.3f}.", "",
                  "| plan | budgets | accuracy [95% CI] |", "|---|---|---|"]
        for name, plan in ev["plans"].items():
            budgets = " ".join("full" if b is None else str(b) for b in plan["budgets"])
            lines.append(f"| {name} | {budgets} | {_cell(methods[name])} |")
        lines += ["", "`tune-floor` (calibration split, `metric=\"score\"`): mean score drop per floor, the floor kept:", "",
                  "| plan | floors tried (mean drop) | kept |", "|---|---|---|"]
        for name in ev["plans"]:
            if not name.startswith("tuned-"):
                continue
            search = json.loads((out / "plans" / f"{name}.json").read_text())["metadata"]["floor_search"]
            tried = ", ".join(f"{r['floor']}: {r['mean_degradation']:.3f}" for r in search["floors"])
            lines.append(f"| {name} | {tried} | {search['best_floor']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["tiny-llama", "tiny-qwen2"])
    parser.add_argument("--tables-only", action="store_true", help="rewrite docs/floor/tables.md from the outputs")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)  # the commands (recorded in the outputs) name paths relative to the repository
    from depthkv.files import atomic_write_json, atomic_write_text

    if not args.tables_only:
        for model in args.models:
            steps: list[dict] = []
            study(model, steps)
            atomic_write_json(ROOT / "docs" / "floor" / model / "steps.json", steps)
    done = [m for m in ("tiny-llama", "tiny-qwen2") if (ROOT / "docs" / "floor" / m / "evaluation.json").exists()]
    atomic_write_text(ROOT / "docs" / "floor" / "tables.md", tables(done))
    print(f"tables written to {ROOT / 'docs' / 'floor' / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
