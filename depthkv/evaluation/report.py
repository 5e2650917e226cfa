"""Report files: plots (PNG) and a short markdown summary of a calibration + evaluation run (or of
an evaluation of plans alone, without a profile)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from depthkv.evaluation.controls import CONTROLS, is_control
from depthkv.files import atomic_file, atomic_write_json, atomic_write_text
from depthkv.profile import Plan, Profile


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _save_png(fig: Any, path: Path) -> Path:
    """Write ``fig`` as a PNG atomically (:func:`depthkv.files.atomic_file`) and close it."""
    plt = _pyplot()
    try:
        with atomic_file(path, binary=True) as fh:
            fig.savefig(fh, format="png", dpi=120)
    finally:
        plt.close(fig)
    return path


def _layer_ci(profile: Profile) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean = profile.sensitivity()
    if profile.stats:
        ci = profile.stats["by_budget"][0]["ci"]
        return mean, np.asarray(ci["low"]), np.asarray(ci["high"])
    return mean, mean, mean


def plot_sensitivity(profile: Profile, path: Path) -> Path:
    """Per-layer mean degradation with bootstrap CIs (primary ablation budget)."""
    plt = _pyplot()
    mean, low, high = _layer_ci(profile)
    layers = np.arange(profile.n_layers)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.bar(layers, mean, color="#3b6ea8", yerr=[mean - low, high - mean], capsize=3)
    ax.axhline(0, color="black", lw=0.6)
    budget = profile.ablation_budgets[0]
    ax.set_title(f"Layer sensitivity ({profile.metric} increase, layer pruned to {budget})")
    ax.set_xlabel("layer")
    ax.set_ylabel(f"mean {profile.metric} degradation")
    ax.set_xticks(layers)
    fig.tight_layout()
    return _save_png(fig, path)


def plot_budgets(plans: dict[str, Plan], path: Path) -> Path:
    """Per-layer budgets of several plans (e.g. DepthKV vs uniform vs PyramidKV) at one global budget;
    a layer a plan keeps whole is labelled ``full``."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    names = list(plans)
    n_layers = plans[names[0]].n_layers
    width = 0.8 / len(names)
    finite = [b for plan in plans.values() for b in plan.budgets if b is not None]
    top = max(finite, default=1)
    for i, name in enumerate(names):
        x = np.arange(n_layers) + (i - (len(names) - 1) / 2) * width
        heights = [np.nan if b is None else b for b in plans[name].budgets]
        ax.bar(x, heights, width=width, label=name)
        for xi, b in zip(x, plans[name].budgets):
            if b is None:  # a full layer keeps every token: no number to draw
                ax.text(xi, top, "full", rotation=90, ha="center", va="top", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("KV tokens kept")
    ax.set_xticks(np.arange(n_layers))
    ctx = plans[names[0]].context_length
    ax.set_title(f"Per-layer budgets (same total{', at ' + str(ctx) + '-token context' if ctx else ''})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save_png(fig, path)


_NAME = re.compile(r"^(?P<method>.+)@(?P<budget>[0-9.]+)$")


def accuracy_table(summaries: dict[str, dict[str, Any]]) -> dict[str, dict[float, dict[str, float]]]:
    """method → budget → {mean, low, high} from evaluation summaries named ``method@budget``."""
    table: dict[str, dict[float, dict[str, float]]] = {}
    for name, s in summaries.items():
        m = _NAME.match(name)
        if not m:
            continue
        table.setdefault(m["method"], {})[float(m["budget"])] = {k: s[k] for k in ("mean", "low", "high")}
    return table


def plot_accuracy(summaries: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy vs global budget per method, with bootstrap CIs; full cache as a horizontal line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for method, points in sorted(accuracy_table(summaries).items()):
        xs = sorted(points)
        ys = np.array([points[x]["mean"] for x in xs])
        lo = np.array([points[x]["low"] for x in xs])
        hi = np.array([points[x]["high"] for x in xs])
        if method.endswith(tuple(f"-{kind}" for kind in CONTROLS)):
            style = ":x"  # a control (depthkv.evaluation.controls)
        else:
            style = "-o" if method.startswith("depthkv") else "--s"
        ax.plot(xs, ys, style, label=method, ms=4)
        ax.fill_between(xs, lo, hi, alpha=0.12)
    if "full" in summaries:
        ax.axhline(summaries["full"]["mean"], color="black", lw=1, ls=":", label="full cache")
    ax.set_xlabel("global KV budget (fraction of context)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    ax.set_title("Accuracy vs KV budget")
    fig.tight_layout()
    return _save_png(fig, path)


def plot_methods(summaries: dict[str, dict[str, Any]], path: Path) -> Path:
    """Accuracy per method with bootstrap CIs, one bar each (for methods not named ``method@budget``)."""
    plt = _pyplot()
    names = list(summaries)
    mean = np.array([summaries[n]["mean"] for n in names])
    low = np.array([summaries[n]["low"] for n in names])
    high = np.array([summaries[n]["high"] for n in names])
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(names) + 2), 3.6))
    ax.bar(np.arange(len(names)), mean, yerr=[mean - low, high - mean], capsize=3, color="#3b6ea8")
    ax.set_xticks(np.arange(len(names)))
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title("Accuracy per method")
    fig.tight_layout()
    return _save_png(fig, path)


def method_rows(summaries: dict[str, dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Header and rows ``[method, accuracy (CI), KV tokens, accuracy per task ...]``, one per method."""
    tasks = sorted({t for s in summaries.values() for t in s.get("per_task", {})})
    rows = []
    for name, s in summaries.items():
        kv = s.get("mean_kv_tokens")
        per_task = s.get("per_task", {})
        rows.append(
            [name, f"{s['mean']:.3f} [{s['low']:.2f}, {s['high']:.2f}]", "—" if kv is None else f"{kv:.0f}"]
            + [f"{per_task[t]['mean']:.3f}" if t in per_task else "—" for t in tasks]
        )
    return ["method", "accuracy [95% CI]", "KV tokens", *tasks], rows


def control_rows(summaries: dict[str, dict[str, Any]], plans: dict[str, Plan]) -> list[list[str]]:
    """Rows ``[plan, its accuracy, each control's accuracy]``, one per plan that has controls."""

    def cell(name: str) -> str:
        s = summaries.get(name)
        return "—" if s is None else f"{s['mean']:.3f} [{s['low']:.2f}, {s['high']:.2f}]"

    controls: dict[str, dict[str, str]] = {}
    for name, plan in plans.items():
        if is_control(plan):
            controls.setdefault(plan.metadata["control_of"], {})[plan.metadata["control"]] = name
    rows = []
    for source, named in controls.items():
        row = [source, cell(source)]
        for kind in CONTROLS:
            name = named.get(kind)
            same = name is not None and source in plans and plans[name].budgets == plans[source].budgets
            row.append("—" if name is None else cell(name) + (" *same budgets*" if same else ""))
        rows.append(row)
    return rows


def summary_rows(summaries: dict[str, dict[str, Any]], budgets: list[float]) -> list[list[str]]:
    """Rows ``[method, acc@b1 (CI), acc@b2 (CI), ...]`` for the summary table."""
    table = accuracy_table(summaries)
    rows = []
    if "full" in summaries:
        f = summaries["full"]
        rows.append(["full cache"] + [f"{f['mean']:.3f}"] * len(budgets))
    for method in sorted(table):
        cells = []
        for b in budgets:
            p = table[method].get(float(b))
            cells.append("—" if p is None else f"{p['mean']:.3f} [{p['low']:.2f}, {p['high']:.2f}]")
        rows.append([method] + cells)
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def write_report(
    out: Path,
    profile: Profile | None,
    plans: dict[str, Plan],
    summaries: dict[str, dict[str, Any]],
    budgets: list[float],
    info: dict[str, Any],
    all_plans: dict[str, Plan] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """Write profile.json, plans, results.json, the PNG plots and report.md into ``out``.

    ``profile``: the calibration profile (profile.json, the sensitivity plot and the statistics);
    ``None`` reports the plans and accuracies only. ``plans``: method name → plan at the primary
    budget (``plan-<name>.json`` each, and the budgets plot, controls left out of the plot).
    ``all_plans``: ``"<method>@<budget>"`` → plan for every evaluated budget; their per-layer
    budgets go into results.json (``"plans"``) and report.md, so that every accuracy cell can be
    traced to the allocation that produced it; the controls among them
    (:mod:`depthkv.evaluation.controls`) are recorded under ``"controls"`` (what each controls for,
    its seed and layer order). ``extra``: more top-level entries of results.json.

    The accuracy plot is ``accuracy_vs_budget.png`` when some method is named ``method@budget``,
    else ``accuracy.png`` (one bar per method).
    """
    out.mkdir(parents=True, exist_ok=True)
    every = all_plans or {}
    results = {
        "info": info,
        "methods": summaries,
        "plans": {name: plan.budgets for name, plan in every.items()},
        **({"controls": _control_records(every)} if any(is_control(p) for p in every.values()) else {}),
        **(extra or {}),
    }
    files: dict[str, Path] = {}
    if profile is not None:
        files["profile"] = profile.save(out / "profile.json")
    files["results"] = atomic_write_json(out / "results.json", results)
    if profile is not None:
        files["sensitivity_png"] = plot_sensitivity(profile, out / "sensitivity.png")
    plotted = {name: plan for name, plan in plans.items() if not is_control(plan)}
    if plotted:
        files["budgets_png"] = plot_budgets(plotted, out / "budgets.png")
    if accuracy_table(summaries):
        files["accuracy_png"] = plot_accuracy(summaries, out / "accuracy_vs_budget.png")
    else:
        files["accuracy_png"] = plot_methods(summaries, out / "accuracy.png")
    for name, plan in plans.items():
        files[f"plan_{name}"] = plan.save(out / f"plan-{name}.json")
    files["report"] = atomic_write_text(
        out / "report.md",
        render_markdown(profile, plans, summaries, budgets, info, every, accuracy_png=files["accuracy_png"].name),
    )
    return files


def _control_records(plans: dict[str, Plan]) -> dict[str, dict[str, Any]]:
    keys = ("control", "control_of", "seed", "draws", "layer_order", "source_budgets")
    return {
        name: {k: plan.metadata[k] for k in keys if k in plan.metadata}
        for name, plan in plans.items()
        if is_control(plan)
    }


def _budget_rows(plans: dict[str, Plan]) -> list[list[str]]:
    """One table row per plan: its name, per-layer budgets and total."""
    return [
        [name, " ".join("full" if b is None else str(b) for b in plan.budgets), str(plan.total or "—")]
        for name, plan in plans.items()
    ]


def _evaluation_line(info: dict[str, Any]) -> str:
    where = info.get("eval_source") or "evaluation split"
    ctx = info.get("context_length")
    ctx_text = "?" if ctx is None else f"{ctx:.0f}" if isinstance(ctx, float) else str(ctx)
    mode = info.get("mode", "evict")
    return f"Evaluation: {info.get('n_eval', '?')} examples ({where}), context {ctx_text} tokens, decode mode `{mode}`."


def render_markdown(
    profile: Profile | None,
    plans: dict[str, Plan],
    summaries: dict[str, dict[str, Any]],
    budgets: list[float],
    info: dict[str, Any],
    all_plans: dict[str, Plan] | None = None,
    accuracy_png: str = "accuracy_vs_budget.png",
) -> str:
    lines = [
        f"# depthkv report — {info.get('model', '?')}",
        "",
        f"Run: {info.get('created', '')}, {info.get('machine', '')}, wall time {info.get('wall_s', 0):.0f} s.",
    ]
    if profile is not None:
        lines.append(
            f"Calibration: {profile.n_examples} examples ({profile.workload.get('split', '?')} split), metric "
            f"`{profile.metric}`, ablation budget(s) {profile.ablation_budgets}, policy `{profile.policy.name}` "
            f"(window {profile.policy.window}), compressed after the "
            f"{'context + question' if profile.settings.get('compress') == 'prompt' else 'context'}."
        )
    lines += [_evaluation_line(info), ""]
    if profile is not None:
        lines += _sensitivity_section(profile)
    if plans:
        lines += ["## Per-layer budgets", "", markdown_table(["plan", "budgets", "total"], _budget_rows(plans)), ""]
        if any(not is_control(p) for p in plans.values()):
            lines += ["![budgets](budgets.png)", ""]
    if all_plans and len(budgets) > 1:
        lines += [
            "Per-layer budgets at every evaluated global budget (tokens at the evaluation context length):",
            "",
            markdown_table(["plan", "budgets", "total"], _budget_rows(all_plans)),
            "",
        ]
    if accuracy_table(summaries):
        lines += ["## Accuracy vs global budget", ""]
        header = ["method"] + [f"{b:g} of context" for b in budgets]
        lines += [markdown_table(header, summary_rows(summaries, budgets)), ""]
        lines += ["Cells: mean accuracy [95% bootstrap CI over examples].", ""]
    lines += [f"![accuracy]({accuracy_png})", ""]
    if all_plans and any(is_control(p) for p in all_plans.values()):
        lines += [
            "## Controls",
            "",
            "Each DepthKV plan has two controls with the same budgets (the same total, every layer within "
            "its bounds): `-shuffled` gives them to the layers in a seeded random order, `-inverse` gives the "
            "largest ones to the least sensitive layers (`depthkv.evaluation.controls`). If the profile "
            "matters, both should lose accuracy against the plan they control for. Accuracy [95% bootstrap CI]; "
            "*same budgets* marks a control that happens to equal its plan.",
            "",
            markdown_table(["plan", "accuracy", *(f"{kind}" for kind in CONTROLS)], control_rows(summaries, all_plans)),
            "",
        ]
    header, rows = method_rows(summaries)
    lines += ["## Accuracy per method", "", markdown_table(header, rows), ""]
    lines += ["Mean accuracy [95% bootstrap CI over examples], mean KV tokens kept per example over all layers, "
              "and mean accuracy per task.", ""]
    return "\n".join(lines) + "\n"


def _sensitivity_section(profile: Profile) -> list[str]:
    perm = profile.stats["by_budget"][0]["permutation"] if profile.stats else None
    fried = profile.stats["by_budget"][0]["friedman"] if profile.stats else None
    mean, low, high = _layer_ci(profile)
    sens_rows = [[str(i), f"{m:.4f}", f"[{lo:.4f}, {hi:.4f}]"] for i, (m, lo, hi) in enumerate(zip(mean, low, high))]
    lines = ["## Are the layers different?", ""]
    if perm:
        verdict = "yes" if perm["pvalue"] < 0.05 else "not shown at p < 0.05"
        lines += [
            f"Permutation test of equal layer importance: p = {perm['pvalue']:.4g} "
            f"({perm['n_permutations']} permutations); Friedman test: p = {fried['pvalue']:.4g}. "
            f"Layers differ: **{verdict}**.",
            "",
        ]
    lines += [markdown_table(["layer", "mean degradation", "95% CI"], sens_rows), "", "![sensitivity](sensitivity.png)", ""]
    return lines
