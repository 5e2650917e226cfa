"""The real-model results of ``docs/results.md``, regenerated end to end from ``depthkv`` commands.

Run from the repository root, after the models' cards (``depthkv card``, see
``depthkv/models/cards/``)::

    python benchmarks/real_models.py                        # every step below
    python benchmarks/real_models.py --steps demo           # one kind of step
    python benchmarks/real_models.py --tables-only          # rewrite docs/real/tables.md

Steps (each a ``depthkv`` command, printed before it runs, its wall time kept in
``docs/real/steps.json``):

* ``demo`` — ``depthkv demo --model M --out docs/demo/M`` for SmolLM2-135M and Gemma-3-270M, sized by
  each model's card (its learned natural-text tasks at 2,048 tokens).
* ``transfer`` (SmolLM2) — calibrate on two task families, evaluate the plans on the other two and on
  the same two (``docs/real/smollm2-135m/transfer/``): does a profile carry over to other tasks?
* ``floors`` (SmolLM2) — ``greedy`` and ``proportional`` allocated from the demo's profile with
  floors 32 and 128, on the demo's evaluation examples (``docs/real/smollm2-135m/floors/``).
* ``window`` (SmolLM2, not in the default steps) — the demo again with SnapKV's published settings (observation window 32,
  kernel 7; ``docs/real/smollm2-135m/window32/``).

``docs/real/tables.md`` is written from those files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from floor_study import run  # noqa: E402  (one way to run and time a depthkv step)

MODELS = ("smollm2-135m", "gemma3-270m")
FAMILIES = {"retrieval": ["prose_needle", "prose_multikey"], "reasoning": ["prose_multihop", "prose_vartrack"]}
TRANSFER_MODEL = "smollm2-135m"
TRANSFER_LENGTH = 2048
TRANSFER_N_CALIB = 3  # per task: 6 calibration examples per family
TRANSFER_N_EVAL = 6  # per task: 12 evaluation examples per family
STRATEGIES = ("proportional", "softmax", "greedy")
FLOORS = (32, 128)


def demos(steps: list[dict], models: tuple[str, ...] = MODELS) -> None:
    for model in models:
        run(["demo", "--model", model, "--no-progress", "--out", f"docs/demo/{model}"], steps)


def transfer(steps: list[dict], evaluate_on: tuple[str, ...] = tuple(FAMILIES)) -> None:
    """Calibrate on each family; evaluate both profiles' plans on each family in one run per family
    (one prefill per example serves every plan)."""
    out = Path("docs/real") / TRANSFER_MODEL / "transfer"
    for family, tasks in FAMILIES.items():
        if (out / f"profile-{family}.json").exists():  # calibrated by an earlier run: delete it to redo
            print(f"kept {out / f'profile-{family}.json'}")
            continue
        run(["calibrate", "--model", TRANSFER_MODEL, "--tasks", *tasks, "--n-per-task", str(TRANSFER_N_CALIB),
             "--context-length", str(TRANSFER_LENGTH), "--ablation-budget", "0.2", "0.1", "0.5", "--compress", "prompt", "--no-progress",
             "--out", str(out / f"profile-{family}.json")], steps)
    calibrated, other = list(FAMILIES)
    for strategy in STRATEGIES:
        run(["allocate", str(out / f"profile-{other}.json"), "--budget", "0.2", "--strategy", strategy,
             "--out", str(out / "plans" / f"{other}-{strategy}.json")], steps)
    for evaluated in evaluate_on:
        tasks = FAMILIES[evaluated]
        # The first family's profile is allocated by evaluate itself (with the baselines), the
        # second's plans come as files named after it.
        files = [f"{other}-{s}={out / 'plans' / f'{other}-{s}.json'}" for s in STRATEGIES]
        run(["evaluate", "--model", TRANSFER_MODEL, "--profile", str(out / f"profile-{calibrated}.json"),
             "--plans", *files, "--tasks", *tasks, "--n-per-task", str(TRANSFER_N_EVAL),
             "--context-length", str(TRANSFER_LENGTH), "--budgets", "0.2", "--strategies", *STRATEGIES,
             "--no-controls", "--no-progress", "--out", str(out / f"on-{evaluated}")], steps)


def floors(steps: list[dict]) -> None:
    """``greedy`` and ``proportional`` from the SmolLM2 demo's profile with higher floors (the
    smallest budget of any layer), on the demo's own evaluation examples."""
    demo = Path("docs/demo") / TRANSFER_MODEL
    out = Path("docs/real") / TRANSFER_MODEL / "floors"
    info = json.loads((demo / "results.json").read_text())["info"]
    files = []
    for strategy in STRATEGIES:
        for floor in FLOORS:
            path = out / "plans" / f"{strategy}-floor{floor}.json"
            run(["allocate", str(demo / "profile.json"), "--budget", "0.2", "--strategy", strategy,
                 "--floor", str(floor), "--out", str(path)], steps)
            files.append(f"{strategy}-floor{floor}={path}")
    n_eval = info["n_eval"] // len(info["tasks"])
    run(["evaluate", "--model", TRANSFER_MODEL, "--plans", *files, "--tasks", *info["tasks"], "--n-per-task",
         str(n_eval), "--context-length", str(info["context_length"]), "--compress", "prompt", "--no-progress",
         "--out", str(out)], steps)


def window(steps: list[dict]) -> None:
    run(["demo", "--model", TRANSFER_MODEL, "--window", "32", "--kernel", "7", "--no-progress",
         "--out", f"docs/real/{TRANSFER_MODEL}/window32"], steps)


def _cell(summary: dict) -> str:
    return f"{summary['mean']:.3f} [{summary['low']:.2f}, {summary['high']:.2f}]"


def tables() -> str:
    """The markdown tables of the results page, from the report folders the steps wrote."""
    lines = ["# Real-model tables", "", "Written by `python benchmarks/real_models.py` from `docs/demo/<model>/` and `docs/real/`.", ""]
    folders = [(model, ROOT / "docs" / "demo" / model) for model in MODELS]
    folders.append((f"{TRANSFER_MODEL}, SnapKV window 32, kernel 7", ROOT / "docs" / "real" / TRANSFER_MODEL / "window32"))
    for model, folder in folders:
        if not (folder / "results.json").exists():
            continue
        results = json.loads((folder / "results.json").read_text())
        profile = json.loads((folder / "profile.json").read_text())
        stats = profile["stats"]["by_budget"][0] if profile.get("stats") else None
        deg = profile["degradation"][0]
        n_layers = len(deg[0])
        means = [sum(row[i] for row in deg) / len(deg) for i in range(n_layers)]
        info = results["info"]
        lines += [f"## {model}", "", f"{info['n_calib']} calibration / {info['n_eval']} evaluation examples, tasks "
                  f"{', '.join(info['tasks'])}, context {info['context_length']} tokens, wall {info['wall_s']:.0f} s.", ""]
        if stats:
            lines += [f"Permutation test p = {stats['permutation']['pvalue']:.2g}, Friedman p = {stats['friedman']['pvalue']:.2g}.", ""]
        top = sorted(range(n_layers), key=lambda i: -means[i])[:5]
        lines += ["Most sensitive layers (mean answer-NLL increase, layer pruned alone to 20%): "
                  + ", ".join(f"L{i} {means[i]:+.3f}" for i in top) + ".", ""]
        budgets = info["budgets"]
        lines += ["| method | " + " | ".join(f"{b:g}" for b in budgets) + " |", "|---|" + "---|" * len(budgets)]
        methods = results["methods"]
        names = sorted({n.split("@")[0] for n in methods if "@" in n})
        lines.append("| full cache | " + " | ".join(f"{methods['full']['mean']:.3f}" for _ in budgets) + " |")
        for name in names:
            cells = [_cell(methods[f"{name}@{b}"]) if f"{name}@{b}" in methods else "—" for b in budgets]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        plans = results.get("plans", {})
        lines += ["", "Budgets at 0.2:", ""]
        for name, budget in plans.items():
            if name.endswith("@0.2") and "-shuffled" not in name and "-inverse" not in name:
                lines.append(f"- {name}: {' '.join('full' if b is None else str(b) for b in budget)}")
        lines.append("")
    transfer_dir = ROOT / "docs" / "real" / TRANSFER_MODEL / "transfer"
    calibrated, other = list(FAMILIES)
    header = ["evaluated on", "full", "uniform", "pyramid"] + [
        f"{s} ({c})" for s in STRATEGIES for c in (calibrated, other)
    ]
    rows = []
    for evaluated in FAMILIES:
        path = transfer_dir / f"on-{evaluated}" / "results.json"
        if not path.exists():
            continue
        m = json.loads(path.read_text())["methods"]
        keys = ["uniform@0.2", "pyramid@0.2"] + [
            k for s in STRATEGIES for k in (f"depthkv-{s}@0.2", f"{other}-{s}")
        ]
        rows.append(f"| {evaluated} | {m['full']['mean']:.3f} | "
                    + " | ".join(_cell(m[k]) if k in m else "—" for k in keys) + " |")
    if rows:
        lines += [f"## Transfer ({TRANSFER_MODEL}, 20% of {TRANSFER_LENGTH} tokens)", "",
                  f"Profiles calibrated on {calibrated} ({', '.join(FAMILIES[calibrated])}) and on {other} "
                  f"({', '.join(FAMILIES[other])}); the DepthKV columns name the profile's family.", "",
                  "| " + " | ".join(header) + " |", "|---" * len(header) + "|", *rows, ""]
    floors_file = ROOT / "docs" / "real" / TRANSFER_MODEL / "floors" / "results.json"
    if floors_file.exists():
        m = json.loads(floors_file.read_text())["methods"]
        lines += [f"## Floors ({TRANSFER_MODEL}, 20%, the demo's evaluation examples)", "",
                  "| strategy | " + " | ".join(f"floor {f}" for f in FLOORS) + " |", "|---|" + "---|" * len(FLOORS)]
        for strategy in STRATEGIES:
            lines.append(f"| {strategy} | " + " | ".join(_cell(m[f"{strategy}-floor{f}"]) for f in FLOORS) + " |")
        lines += ["", f"Full cache {m['full']['mean']:.3f}.", ""]
    cards = []
    for model in MODELS:
        path = ROOT / "depthkv" / "models" / "cards" / f"{model}.json"
        if path.exists():
            cards.append(json.loads(path.read_text()))
    if cards:
        lines += ["## Cards: full-cache accuracy per task", "",
                  "| model | task | " + " | ".join(f"{n} tokens" for n in cards[0]["lengths"]) + " | learned |",
                  "|---|---|" + "---|" * len(cards[0]["lengths"]) + "---|"]
        for card in cards:
            for task in card["tasks"]:
                accs = [card["cells"][f"{task}@{n}"]["accuracy"] for n in card["lengths"]]
                lines.append(f"| {card['model']} | {task} | " + " | ".join(f"{a:.2f}" for a in accs)
                             + f" | {card['n']} | {'yes' if task in card['learned_tasks'] else 'no'} |")
        lines += ["", "n: examples per cell (evaluation split); learned: full-cache accuracy at least "
                  f"{cards[0]['learned_threshold']} at {cards[0]['default_length']} tokens.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", nargs="+", default=["demo", "transfer", "floors"], choices=["demo", "transfer", "floors", "window"])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS), help="the demo step's models")
    parser.add_argument("--transfer-on", nargs="+", default=list(FAMILIES), choices=list(FAMILIES),
                        help="the families the transfer step evaluates on")
    parser.add_argument("--tables-only", action="store_true")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    from depthkv.files import atomic_write_json, atomic_write_text

    if not args.tables_only:
        record = ROOT / "docs" / "real" / "steps.json"
        steps = json.loads(record.read_text()) if record.exists() else []
        for name in args.steps:
            if name == "demo":
                demos(steps, tuple(args.models))
            else:
                if name == "transfer":
                    transfer(steps, tuple(args.transfer_on))
                else:
                    {"floors": floors, "window": window}[name](steps)
            atomic_write_json(record, steps)
    atomic_write_text(ROOT / "docs" / "real" / "tables.md", tables())
    print(f"tables written to {ROOT / 'docs' / 'real' / 'tables.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
