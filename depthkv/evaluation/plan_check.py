"""Measure a whole plan on a workload, and pick the floor of a strategy by that measurement.

A plan is built from one-layer-at-a-time ablations, measured by default as the change in the
answer's teacher-forced NLL: the question and the answer go through the model in one step after
the context is compressed, so nothing of them is ever evicted. When the plan runs, they arrive one
token at a time and a layer with a small budget evicts them too: a layer that keeps 8 tokens keeps
only the last 8. On the tiny models, layer 0 pruned alone to 8 tokens costs nothing in NLL and
about a quarter of the task score in generation (``docs/results.md``).

:func:`plan_degradation` measures plans whole (every layer at its planned budget at once), with
any calibration metric; ``metric="score"`` generates token by token and scores the answers, so it
sees that eviction. :func:`tune_floor` allocates one global budget with several floors (the
smallest budget any layer gets) and keeps the plan whose measured degradation is lowest.

Both use calibration's measurement engine (:mod:`depthkv.calibration.engine`: one prefill per
example, the recorded full cache pruned to each plan), so a plan costs one generation (or one
teacher-forced pass) per example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from depthkv.allocation import DEFAULT_STRATEGY, allocate
from depthkv.calibration.engine import Engine, check_compress, distinct_policies, workload_items
from depthkv.calibration.metrics import Degradation, check_metric
from depthkv.profile import Budget, Plan, Profile
from depthkv.runtime.attention import depthkv_attention_enabled


def plan_degradation(
    model: Any,
    tokenizer: Any,
    workload: Any,
    plans: Plan | Sequence[Plan],
    *,
    metric: str = "nll",
    compress: str = "context",
    scorer: Callable[[Any, str], float] | None = None,
    extra_tokens: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Degradation of ``metric`` with every layer pruned to its planned budget at once.

    ``model``, ``tokenizer``, ``workload``, ``metric``, ``compress``, ``scorer`` and
    ``extra_tokens`` are as in :func:`depthkv.calibrate` (measure on the calibration split, never on
    the evaluation split you will report).

    Args:
        plans: one plan or several, all with the same eviction policy; relative plans are resolved at
            each example's context length (:meth:`Plan.budgets_for`).

    Returns:
        ``[n_plans, n_examples]`` float64 (``[n_examples]`` for a single plan): pruned − full, as in a
        profile (higher is worse; 0 when every layer keeps the whole context).
    """
    single = isinstance(plans, Plan)
    plan_list = [plans] if single else list(plans)
    if not plan_list:
        raise ValueError("give at least one plan")
    check_metric(metric)
    check_compress(compress)
    policies = distinct_policies(plan_list)
    if len(policies) != 1:
        raise ValueError("the plans use different eviction policies; measure each policy's plans separately")
    for plan in plan_list:
        plan.check_model(model)
    items, _ = workload_items(workload)
    engine = Engine(model, tokenizer, policies[0], compress)
    engine.check_fits(items)
    out = np.zeros((len(plan_list), len(items)))
    bar = tqdm(total=out.size, desc="plan check", unit="run", disable=not progress)
    try:
        with depthkv_attention_enabled(model), torch.inference_mode():
            for i, item in enumerate(items):
                run = engine.run(item, record_layers=metric != "score")
                measure = Degradation(run, metric, scorer, extra_tokens)
                for k, plan in enumerate(plan_list):
                    out[k, i] = measure.of(plan.budgets_for(run.context_tokens))
                    bar.update(1)
    finally:
        bar.close()
    return out[0] if single else out


@dataclass
class FloorSearch:
    """The result of :func:`tune_floor`: every floor tried, its plan and joint degradation."""

    floors: list[int]
    plans: list[Plan]
    degradation: np.ndarray  # [n_floors, n_examples]
    metric: str
    best: int = field(init=False)

    def __post_init__(self) -> None:
        self.best = int(np.argmin(self.mean))

    @property
    def mean(self) -> np.ndarray:
        """Mean joint degradation per floor ``[n_floors]``."""
        return self.degradation.mean(axis=1)

    @property
    def plan(self) -> Plan:
        """The plan with the lowest mean joint degradation (the smallest floor on a tie)."""
        return self.plans[self.best]

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.metric,
            "best_floor": self.floors[self.best],
            "floors": [
                {"floor": f, "budgets": p.budgets, "mean_degradation": float(m)}
                for f, p, m in zip(self.floors, self.plans, self.mean)
            ],
        }


def default_floors(policy_floor: int, total: int, n_layers: int) -> list[int]:
    """The policy's floor, then 16, 32, 64, ... while every layer can still get it (``floor·L <= total``)."""
    floors = [policy_floor]
    f = 16
    while f * n_layers <= total:
        if f > policy_floor:
            floors.append(f)
        f *= 2
    return floors


def tune_floor(
    model: Any,
    tokenizer: Any,
    workload: Any,
    profile: Profile,
    budget: Budget,
    strategy: str = DEFAULT_STRATEGY,
    *,
    floors: Sequence[int] | None = None,
    metric: str = "score",
    compress: str | None = None,
    scorer: Callable[[Any, str], float] | None = None,
    progress: bool = True,
    **allocate_kwargs: Any,
) -> FloorSearch:
    """Allocate ``budget`` with ``strategy`` at several floors and measure each plan whole.

    Args:
        profile: from :func:`depthkv.calibrate`. Pass its calibration workload (never the
            evaluation split: that would tune on the test).
        budget: as in :func:`depthkv.allocate`.
        strategy: as in :func:`depthkv.allocate`.
        floors: floors to try (default :func:`default_floors`: the policy's floor, 16, 32, ... up to
            the global budget per layer).
        metric: what is compared (default ``"score"``: greedy generation, token by token, scored by
            ``scorer`` (default :func:`depthkv.workload.score`), so the question and answer are evicted
            as in deployment; ``"nll"`` and ``"kl"`` teacher-force question and answer in one step
            and cannot see that eviction, see ``docs/results.md``).
        compress: default: the profile's (as it was calibrated).
        **allocate_kwargs: the other options of :func:`depthkv.allocate` (not ``floor``).

    Returns:
        A :class:`FloorSearch`; ``.plan`` is the plan with the lowest mean joint degradation.
    """
    if "floor" in allocate_kwargs:
        raise ValueError("tune_floor chooses the floor; give the candidates as floors=[...]")
    if floors is None:
        first = allocate(profile, budget, strategy, **allocate_kwargs)
        floors = default_floors(first.floor, first.total, first.n_layers)
    floors = sorted({int(f) for f in floors})
    if not floors:
        raise ValueError("give at least one floor")
    plans = []
    for f in floors:
        try:
            plans.append(allocate(profile, budget, strategy, floor=f, **allocate_kwargs))
        except ValueError as exc:
            raise ValueError(f"floor {f}: {exc}") from None
    settings = profile.settings or {}
    deg = plan_degradation(
        model,
        tokenizer,
        workload,
        plans,
        metric=metric,
        compress=compress or settings.get("compress", "context"),
        scorer=scorer,
        extra_tokens=int(settings.get("extra_tokens", 0)),
        progress=progress,
    )
    return FloorSearch(floors=list(floors), plans=plans, degradation=deg, metric=metric)
