"""``allocate(profile, budget, strategy=...) -> Plan``: per-layer budgets from a calibration profile.

The strategies and their math live in :mod:`depthkv.allocate_core`
(:func:`~depthkv.allocate_core.allocate_from_sensitivity`); this module turns a profile and an
operator's global budget into a :class:`~depthkv.profile.Plan`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .allocate_core import STRATEGIES, allocate_from_sensitivity
from .fingerprint import fingerprint
from .policies import PolicyConfig
from .profile import Plan, Profile


def _resolve_budget(budget: float | int, context_length: float | None) -> tuple[float, bool]:
    """Per-layer average budget in tokens, and whether it is relative to the context."""
    if isinstance(budget, bool) or not isinstance(budget, (int, float, np.integer, np.floating)):
        raise TypeError(f"budget must be an int (tokens per layer) or a float fraction in (0, 1]; got {budget!r}")
    if isinstance(budget, (float, np.floating)):
        if not 0.0 < budget <= 1.0:
            raise ValueError(
                f"a float budget is a fraction of the context and must be in (0, 1]; got {budget}. "
                "Give an int for a number of tokens per layer."
            )
        if not context_length:
            raise ValueError("a fractional budget needs a context length (the profile has no examples)")
        return float(budget) * float(context_length), True
    if budget < 1:
        raise ValueError(f"a token budget must be at least 1 token per layer; got {budget}")
    return float(budget), False


def _policy(policy: PolicyConfig | dict | str | None, default: dict | None = None) -> PolicyConfig:
    if isinstance(policy, PolicyConfig):
        return policy
    if isinstance(policy, str):
        return PolicyConfig(name=policy)
    if isinstance(policy, dict):
        return PolicyConfig.from_dict(policy)
    return PolicyConfig.from_dict(default) if default else PolicyConfig()


def _plan(
    sensitivity: np.ndarray,
    budget: float | int,
    strategy: str,
    policy: PolicyConfig,
    context_length: float | None,
    floor: int | None,
    max_tokens: int | None,
    temperature: float,
    curves: tuple[np.ndarray, np.ndarray] | None,
    fp: Any,
) -> Plan:
    per_layer, relative = _resolve_budget(budget, context_length)
    n_layers = int(sensitivity.shape[0])
    floor = policy.floor if floor is None else int(floor)
    if floor < policy.floor:
        raise ValueError(
            f"floor {floor} is below the {policy.name} policy's minimum {policy.floor} (window + sinks)"
        )
    if max_tokens is None and context_length:
        max_tokens = max(int(round(context_length)), floor)
    total = int(round(per_layer * n_layers))
    if total < floor * n_layers:
        raise ValueError(
            f"global budget of {per_layer:.1f} tokens per layer is below the floor of {floor} tokens "
            f"({policy.name}: window {policy.window}{', sinks ' + str(policy.sinks) if policy.name == 'streaming' else ''}); "
            f"raise the budget to at least {floor} tokens per layer"
            + (f" ({floor / context_length:.3f} of the {context_length:.0f}-token context)" if context_length else "")
            + " or use a smaller observation window"
        )
    budgets = allocate_from_sensitivity(
        sensitivity,
        total,
        strategy,
        floor=floor,
        max_tokens=max_tokens,
        temperature=temperature,
        window=policy.window,
        curves=curves,
    )
    return Plan(
        budgets=[int(b) for b in budgets],
        strategy=strategy,
        policy=policy.to_dict(),
        global_budget=budget,
        floor=floor,
        context_length=int(round(context_length)) if context_length else None,
        relative=relative,
        fingerprint=fp,
        metadata={"total": total, "sensitivity": [float(s) for s in sensitivity]},
    )


def allocate(
    profile: Profile,
    budget: float | int,
    strategy: str = "proportional",
    *,
    policy: PolicyConfig | dict | str | None = None,
    floor: int | None = None,
    max_tokens: int | None = None,
    temperature: float = 1.0,
    context_length: float | None = None,
    budget_index: int = 0,
) -> Plan:
    """Spread a global KV budget across layers by the profile's measured sensitivity.

    Args:
        profile: from :func:`depthkv.calibrate`.
        budget: an int is tokens per layer on average (total = budget × layers); a float in (0, 1] is a
            fraction of the context (relative plan: rescaled to each prompt's length at run time).
        strategy: one of ``uniform, proportional, softmax, rank, pyramid, greedy``.
        policy: eviction policy inside each layer (default: the policy used for calibration).
        floor: smallest budget of any layer (default and minimum: the policy's window + sinks).
        max_tokens: largest budget of any layer (default: the context length).
        temperature: for ``softmax``.
        context_length: reference context length for fractions (default: calibration's mean prompt).
        budget_index: which ablation budget's sensitivities to use (default: the first).

    Returns:
        A :class:`Plan` whose budgets sum exactly to the global total.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    ctx = float(context_length) if context_length else (profile.mean_context_length or None)
    curves = None
    if strategy == "greedy":
        if len(profile.ablation_budgets) < 2:
            raise ValueError(
                "strategy 'greedy' needs sensitivity curves: calibrate with several ablation budgets, "
                "e.g. depthkv.calibrate(..., ablation_budget=[0.1, 0.2, 0.5])"
            )
        curves = profile.curves(ctx)
    return _plan(
        profile.sensitivity(budget_index),
        budget,
        strategy,
        _policy(policy, profile.policy),
        ctx,
        floor,
        max_tokens,
        temperature,
        curves,
        profile.fingerprint,
    )


def uniform_plan(
    model: Any,
    budget: float | int,
    *,
    policy: PolicyConfig | dict | str | None = None,
    context_length: float | None = None,
    floor: int | None = None,
) -> Plan:
    """Same budget in every layer (the uniform baseline, e.g. uniform SnapKV), without a profile."""
    fp = fingerprint(model)
    return _plan(
        np.zeros(fp.num_layers),
        budget,
        "uniform",
        _policy(policy),
        context_length,
        floor,
        None,
        1.0,
        None,
        fp,
    )


def plan_from_budgets(
    model: Any, budgets: list[int | None] | list[int], *, policy: PolicyConfig | dict | str | None = None
) -> Plan:
    """A plan with explicit per-layer token budgets (e.g. to prune one layer only)."""
    fp = fingerprint(model)
    pol = _policy(policy)
    if len(budgets) != fp.num_layers:
        raise ValueError(f"got {len(budgets)} budgets for a model with {fp.num_layers} layers")
    big = 1 << 30  # "keep everything" for None entries
    values = [big if b is None else int(b) for b in budgets]
    return Plan(
        budgets=values,
        strategy="explicit",
        policy=pol.to_dict(),
        global_budget=int(np.mean(values)),
        floor=min(pol.floor, min(values)),
        fingerprint=fp,
    )
