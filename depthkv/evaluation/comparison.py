"""Quality versus KV budget: several methods side by side on one workload.

For every example the context is prefilled once with a recorded full cache per eviction policy
(:mod:`depthkv.calibration.engine`); each method's cache is then derived from it — exactly what
running the model with that method's budgets would hold, since eviction happens after attention —
and the answer is generated greedily after the question. The full-cache baseline uses the same
code path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from depthkv.allocation import allocate
from depthkv.calibration.engine import (
    Engine,
    check_compress,
    distinct_policies,
    encode_text,
    policy_of,
    workload_items,
)
from depthkv.calibration.metrics import default_scorer
from depthkv.calibration.stats import bootstrap_mean_ci
from depthkv.distributed import agree, gather_in_order, world
from depthkv.evaluation.controls import controls_for
from depthkv.profile import Budget, Plan
from depthkv.runtime.attention import depthkv_attention_enabled


@dataclass
class MethodResult:
    """Scores of one method on every example, in workload order."""

    name: str
    scores: list[float]
    tasks: list[str]
    kv_tokens: list[int] = field(default_factory=list)

    def summary(self, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """Mean score with a bootstrap CI, per task as well, and mean KV tokens kept per example."""
        values = np.asarray(self.scores, dtype=np.float64)
        out: dict[str, Any] = {"name": self.name, "n": int(values.size)}
        out.update(_ci(values, confidence, seed))
        per_task = {}
        for task in sorted(set(self.tasks)):
            sel = np.asarray([t == task for t in self.tasks])
            per_task[task] = {"n": int(sel.sum()), **_ci(values[sel], confidence, seed)}
        out["per_task"] = per_task
        if self.kv_tokens:
            out["mean_kv_tokens"] = float(np.mean(self.kv_tokens))
        return out


def _ci(values: np.ndarray, confidence: float, seed: int) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    if values.size == 1 or np.all(values == values[0]):
        v = float(values.mean())
        return {"mean": v, "low": v, "high": v}
    mean, low, high = bootstrap_mean_ci(values, confidence=confidence, n_resamples=2000, seed=seed)
    return {"mean": mean, "low": low, "high": high}


def stop_tokens(tokenizer: Any, stop_at_newline: bool) -> set[int]:
    """Token ids that end a generated answer: the tokenizer's EOS, and a newline when it is one token."""
    stop = set()
    newline = encode_text(tokenizer, "\n", False)
    if stop_at_newline and len(newline) == 1:
        stop.add(newline[0])
    eos = getattr(tokenizer, "eos_token_id", None)
    if isinstance(eos, int):
        stop.add(eos)
    return stop


def evaluate(
    model: Any,
    tokenizer: Any,
    workload: Any,
    methods: dict[str, Plan | None],
    *,
    compress: str = "context",
    scorer: Callable[[Any, str], float] | None = None,
    extra_tokens: int = 2,
    stop_at_newline: bool = True,
    progress: bool = True,
    mode: str = "evict",
    distributed: bool = True,
) -> dict[str, MethodResult]:
    """Score each method on every example of ``workload``.

    Args:
        methods: name → :class:`Plan` (``None`` = full cache). Relative plans are rescaled to each
            example's context length.
        compress: ``"context"`` (compress the context, then ask) or ``"prompt"`` (compress context +
            question, then answer), as in :func:`depthkv.calibrate`.
        scorer: ``scorer(example, prediction)`` (default: :func:`depthkv.workload.score`).
        extra_tokens: tokens generated beyond the reference answer's length (generation also stops at
            a newline when ``stop_at_newline``).
        mode: the decode mode while answering: ``"evict"`` (every generated token keeps each layer
            at its budget) or ``"append"`` (generated tokens are appended; what the KV-compression
            papers evaluate). See :mod:`depthkv.runtime.modes`.
        distributed: inside an initialised ``torch.distributed`` process group (``torchrun``),
            split the examples over the ranks (rank ``r`` takes examples ``r, r + N, ...``) and
            gather the scores: every rank returns the results one process would (workload order).

    Returns:
        name → :class:`MethodResult`.
    """
    scorer = scorer or default_scorer
    check_compress(compress)
    items, _ = workload_items(workload)
    for plan in methods.values():
        if plan is not None:
            plan.check_model(model)
    engines = {pol: Engine(model, tokenizer, pol, compress, mode=mode) for pol in distinct_policies(methods.values())}
    for engine in list(engines.values())[:1]:
        engine.check_fits(items, extra_tokens)  # every example fits, before any work
    stop = stop_tokens(tokenizer, stop_at_newline)
    rank, size = world() if distributed else (0, 1)
    if size > 1:
        agree("this evaluation run", examples=_digest(items), methods=list(methods), compress=compress,
              extra_tokens=extra_tokens, mode=mode)

    def work(indices: list[int]) -> list[dict[str, tuple[float, str, int]]]:
        """name -> (score, task, KV tokens) for each of the examples ``indices``."""
        out = []
        bar = tqdm(total=len(indices) * len(methods), desc="evaluate", unit="run", disable=not progress or rank != 0)
        try:
            with depthkv_attention_enabled(model), torch.inference_mode():
                for number in indices:
                    item = items[number]
                    runs = {pol: engine.run(item) for pol, engine in engines.items()}
                    for run in list(runs.values())[:1]:
                        run.check_finite(number)  # a model that overflows is an error, not a score of garbage
                    row = {}
                    for name, plan in methods.items():
                        run = runs[policy_of(plan)]
                        budgets = [None] * run.engine.n_layers if plan is None else plan.budgets_for(run.context_tokens)
                        tokens = run.generate(run.cache_for(budgets), len(run.answer) + extra_tokens, stop)
                        prediction = tokenizer.decode(tokens, skip_special_tokens=True)
                        row[name] = (float(scorer(item.source, prediction)), item.task, run.kv_tokens(budgets))
                        bar.update(1)
                    out.append(row)
        finally:
            bar.close()
        return out

    rows = gather_in_order(len(items), work) if size > 1 else work(list(range(len(items))))
    results = {name: MethodResult(name, [], []) for name in methods}
    for row in rows:
        for name, (score, task, kv) in row.items():
            results[name].scores.append(score)
            results[name].tasks.append(task)
            results[name].kv_tokens.append(kv)
    return results


def _digest(items: Sequence[Any]) -> str:
    """What the ranks must agree on about the examples: their number and a digest of their texts."""
    h = hashlib.sha256()
    for item in items:
        for text in (item.task, item.context, item.question, item.answer):
            h.update(text.encode("utf-8", "surrogatepass") + b"\0")
    return f"{len(items)} examples, sha256 {h.hexdigest()[:16]}"


BASELINES: tuple[str, ...] = ("uniform", "pyramid")


def method_plans(
    model: Any,
    profile: Any,
    budgets: Sequence[Budget],
    strategies: Sequence[str] = ("proportional", "softmax", "rank", "greedy"),
    policy: str | None = None,
    *,
    baselines: Sequence[str] = BASELINES,
    controls: bool = False,
    control_budgets: Sequence[Budget] | None = None,
    seed: int = 0,
) -> dict[str, Plan | None]:
    """The standard comparison: full cache, uniform SnapKV, PyramidKV and DepthKV strategies per budget.

    Names are ``"full"``, ``"uniform@0.2"``, ``"pyramid@0.2"``, ``"depthkv-<strategy>@0.2"``.
    Strategies that the profile cannot support (``greedy`` without curves) are skipped.

    Args:
        baselines: the profile-free allocations compared against (any of :data:`BASELINES`).
        controls: also each DepthKV plan's controls, ``"depthkv-<strategy>-shuffled@0.2"`` and
            ``"depthkv-<strategy>-inverse@0.2"`` (:mod:`depthkv.evaluation.controls`; ``seed`` is the
            shuffle's seed), right after the plan they control for.
        control_budgets: the budgets whose DepthKV plans get controls (default: every budget).
    """
    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ValueError(f"unknown baseline(s) {unknown}; choose from {', '.join(BASELINES)}")
    methods: dict[str, Plan | None] = {"full": None}
    for b in budgets:
        for base in baselines:
            methods[f"{base}@{b}"] = allocate(profile, b, base, policy=policy)
        for s in strategies:
            if s == "greedy" and len(profile.ablation_budgets) < 2:
                continue
            methods[f"depthkv-{s}@{b}"] = allocate(profile, b, s, policy=policy)
    if not controls:
        return methods
    only = None
    if control_budgets is not None:
        unknown = [c for c in control_budgets if c not in budgets]
        if unknown:
            raise ValueError(f"control budget(s) {unknown} are not among the evaluated budgets {list(budgets)}")
        only = {n for n in methods for c in control_budgets if n.endswith(f"@{c}")}
    return controls_for(methods, profile.sensitivity(), seed, only=only)
