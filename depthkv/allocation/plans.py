"""``allocate(profile, budget, strategy=...) -> Plan``: per-layer budgets from a calibration profile.

The strategies and their math live in :mod:`depthkv.allocation.strategies`
(:func:`~depthkv.allocation.strategies.allocate_from_sensitivity`); this module turns a profile and
an operator's global budget (:mod:`depthkv.profile.budget`) into a :class:`~depthkv.Plan`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from depthkv.allocation.strategies import DEFAULT_STRATEGY, STRATEGIES, allocate_from_sensitivity
from depthkv.policies import PolicyConfig, as_policy
from depthkv.profile import Budget, Plan, Profile, budget_tokens, check_budget, fingerprint, round_tokens
from depthkv.profile.budget import is_fraction


def _plan(
    sensitivity: np.ndarray,
    budget: Budget,
    strategy: str,
    policy: PolicyConfig,
    context_length: float | None,
    floor: int | None,
    max_tokens: int | None,
    temperature: float,
    curves: tuple[np.ndarray, np.ndarray] | None,
    fp: Any,
) -> Plan:
    budget = check_budget(budget)
    relative = is_fraction(budget)
    if relative and not context_length:
        raise ValueError("a fractional budget needs a context length (the profile has no examples)")
    per_layer = budget_tokens(budget, context_length or 0.0)
    n_layers = int(sensitivity.shape[0])
    floor = policy.floor if floor is None else int(floor)
    if floor < policy.floor:
        raise ValueError(
            f"floor {floor} is below the {policy.name} policy's minimum {policy.floor} (window + sinks)"
        )
    if max_tokens is None and context_length:
        max_tokens = max(round_tokens(context_length), floor)
    total = round_tokens(per_layer * n_layers)
    if total < floor * n_layers:
        sinks = f", sinks {policy.sinks}" if policy.name == "streaming" else ""
        relative_floor = f" ({floor / context_length:.3f} of the {context_length:.0f}-token context)" if context_length else ""
        raise ValueError(
            f"global budget of {per_layer:.1f} tokens per layer is below the floor of {floor} tokens "
            f"({policy.name}: window {policy.window}{sinks}); raise the budget to at least {floor} tokens per "
            f"layer{relative_floor} or use a smaller observation window"
        )
    metadata: dict[str, Any] = {"total": total}
    limits, room = _layer_caps(fp, max_tokens, n_layers)
    if room is not None and total > room:
        # Sliding-window layers cannot use more than their window: the plan holds what the layers can.
        metadata.update(total=room, requested_total=total)
        total = room
    budgets = allocate_from_sensitivity(
        sensitivity,
        total,
        strategy,
        floor=floor,
        max_tokens=limits,
        temperature=temperature,
        window=policy.window,
        curves=curves,
    )
    metadata["sensitivity"] = [float(s) for s in sensitivity]
    return Plan(
        budgets=[int(b) for b in budgets],
        strategy=strategy,
        policy=policy,
        global_budget=budget,
        floor=floor,
        context_length=round_tokens(context_length) if context_length else None,
        relative=relative,
        fingerprint=fp,
        metadata=metadata,
    )


def _layer_caps(fp: Any, max_tokens: int | None, n_layers: int) -> tuple[Any, int | None]:
    """The per-layer caps for the strategies, and the tokens all layers can hold.

    A model without sliding-window layers has one cap, ``max_tokens`` (a total above it is an error).
    A hybrid model's sliding layer is capped at its window (and ``max_tokens``), so the rest of the
    global budget goes to the layers that can use it, and a total above what all layers can hold is
    cut to that (``room``; None when unlimited).
    """
    windows = None if fp is None else fp.layer_windows
    if windows is None:
        return max_tokens, None
    caps = [max_tokens if w is None else (w if max_tokens is None else min(w, max_tokens)) for w in windows]
    room = None if None in caps else int(sum(caps))
    return caps, room


def allocate(
    profile: Profile,
    budget: Budget,
    strategy: str = DEFAULT_STRATEGY,
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
            The total is rounded to the nearest token (:func:`depthkv.profile.round_tokens`).
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
        as_policy(policy, profile.policy),
        ctx,
        floor,
        max_tokens,
        temperature,
        curves,
        profile.fingerprint,
    )


def uniform_plan(
    model: Any,
    budget: Budget,
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
        as_policy(policy),
        context_length,
        floor,
        None,
        1.0,
        None,
        fp,
    )


def plan_from_budgets(
    model: Any, budgets: list[int | None], *, policy: PolicyConfig | dict | str | None = None
) -> Plan:
    """A plan with explicit per-layer token budgets (e.g. to prune one layer only).

    ``None`` keeps every token of that layer (a full layer). Every other budget must be at least the
    policy's floor (window + sinks): a smaller one is an error here, not when a cache is built.
    """
    fp = fingerprint(model)
    if len(budgets) != fp.num_layers:
        raise ValueError(f"got {len(budgets)} budgets for a model with {fp.num_layers} layers")
    return Plan(budgets=list(budgets), strategy="explicit", policy=as_policy(policy), fingerprint=fp)
