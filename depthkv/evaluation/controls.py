"""Controls: a DepthKV plan's own budgets, given to the wrong layers.

A DepthKV plan changes two things at once against uniform SnapKV: the *shape* of its budgets (a
few large ones, many at the floor) and *which layer* gets which. The controls keep the first and
break the second, so that a gain over uniform can be credited to the sensitivity profile and not
merely to an unequal split:

* ``shuffled``: the plan's budgets over the layers in a seeded random order;
* ``inverse``: the largest budgets to the *least* sensitive layers (by the profile's sensitivity).

Both are permutations of the plan's budgets (the same multiset), so they keep the total exactly,
and every layer keeps its bounds: each value is at least the plan's floor because every budget of
the plan is, and a layer with a cap (:attr:`depthkv.Plan.caps`: a sliding-window layer's window)
is only given a value within it. The budgets permuted are those the layers hold
(:func:`held_budgets`: a budget above its layer's cap counts as the cap, as :attr:`Plan.total`
counts it).

Math. Let ``v_(1) >= v_(2) >= ... >= v_(L)`` be the budgets the plan's layers hold, sorted in
descending order, and ``π`` an order of the ``L`` layers:

* shuffled: ``π`` is a uniformly random permutation drawn with
  ``numpy.random.default_rng(SeedSequence([seed, crc32(name)]))``, so each plan (``name``, e.g.
  ``"depthkv-greedy@0.2"``) gets its own draw and the same draw on every run and machine; a ``π``
  that gives every layer its own budget back is rejected and drawn again, so the shuffle is a
  uniform draw among the orders that move some budget (the plan compared with itself would
  control for nothing);
* inverse: ``π`` sorts the layers by ascending sensitivity ``s_l`` (the profile's mean
  degradation at its primary ablation budget), ties to the lower layer index.

For ``k = 1 .. L``, ``v_(k)`` goes to the first layer of ``π`` that has no budget yet and whose
cap ``c_l`` is at least ``v_(k)`` (no cap: ``c_l = ∞``). Without caps, layer ``π_k`` simply gets
``v_(k)``: the shuffled control is a uniformly random permutation of the budgets (one that moves
some budget), and the inverse
gives the ``k``-th least sensitive layer the ``k``-th largest budget. With caps the rule never gets
stuck: the plan itself is a feasible assignment, so for every ``k`` at least ``k`` layers have
``c_l >= v_(k)`` (Hall's condition, the eligible sets being nested: a larger value fits fewer
layers); giving ``v_(1)`` to any eligible layer removes one layer from every eligible set and one
value from every count, so the condition still holds for the values left.

The control plans are named ``depthkv-<strategy>-shuffled@<budget>`` and
``depthkv-<strategy>-inverse@<budget>`` and record in their metadata what they control for, the
layer order ``π``, the source plan's budgets, and for the shuffle its seed and number of draws.
"""

from __future__ import annotations

import dataclasses
import re
import zlib
from collections.abc import Collection, Sequence
from typing import Any

import numpy as np

from depthkv.profile import Plan

__all__ = [
    "CONTROLS",
    "control_name",
    "controls_for",
    "held_budgets",
    "inverse",
    "is_control",
    "layer_caps",
    "permute_budgets",
    "shuffled",
]

CONTROLS: tuple[str, ...] = ("shuffled", "inverse")
MAX_DRAWS = 100  # shuffles drawn at most, looking for one that moves some budget

_DEPTHKV = re.compile(r"^depthkv-(?P<strategy>.+)@(?P<budget>[0-9.]+)$")


def layer_caps(plan: Plan) -> list[int | None]:
    """The most tokens each layer of ``plan`` can hold (:attr:`depthkv.Plan.caps`: a sliding-window
    layer's window, ``None`` for a full-attention layer)."""
    caps = list(getattr(plan, "caps", None) or [None] * plan.n_layers)
    if len(caps) != plan.n_layers:
        raise ValueError(f"the plan records {len(caps)} layer caps for {plan.n_layers} layers")
    return [None if c is None else int(c) for c in caps]


def held_budgets(plan: Plan) -> list[int]:
    """What each layer of ``plan`` really holds: its budget, at most its cap (a sliding layer's
    ``None`` budget is its window), as :attr:`depthkv.Plan.total` counts them.

    Raises:
        ValueError: a full-attention layer keeps every token (``None``): there is no number to move.
    """
    held = [cap if b is None else (b if cap is None else min(b, cap)) for b, cap in zip(plan.budgets, layer_caps(plan))]
    full = [i for i, b in enumerate(held) if b is None]
    if full:
        raise ValueError(f"a control permutes a plan's token budgets; this plan keeps layer(s) {full} whole")
    return [int(b) for b in held]


def permute_budgets(
    budgets: Sequence[int], order: Sequence[int], caps: Sequence[int | None] | None = None
) -> list[int]:
    """Budgets ``budgets`` reassigned to the layers: the ``k``-th largest value to the first layer of
    ``order`` that is still free and whose cap holds it (the rule in this module's docstring).

    Args:
        budgets: one integer budget per layer ``[L]``.
        order: a permutation of ``range(L)``, the layers in the order they are served.
        caps: per-layer caps ``[L]`` (``None`` = uncapped), or ``None`` for no caps at all.

    Returns:
        A permutation of ``budgets`` (same multiset, same total), each within its layer's cap.

    Raises:
        ValueError: ``order`` is not a permutation of the layers, or no assignment fits the caps
            (impossible for a plan whose own budgets fit them).
    """
    values = [int(b) for b in budgets]
    n = len(values)
    order = [int(i) for i in order]
    if sorted(order) != list(range(n)):
        raise ValueError(f"order must be a permutation of the {n} layers; got {order}")
    caps = [None] * n if caps is None else list(caps)
    if len(caps) != n:
        raise ValueError(f"got {len(caps)} caps for {n} layers")
    out: list[int | None] = [None] * n
    for value in sorted(values, reverse=True):
        layer = next((i for i in order if out[i] is None and (caps[i] is None or caps[i] >= value)), None)
        if layer is None:
            raise ValueError(f"no free layer can hold a budget of {value} tokens within its cap (caps {caps})")
        out[layer] = value
    return [int(v) for v in out]


def _control(plan: Plan, kind: str, source: str | None, order: Sequence[int], extra: dict[str, Any]) -> Plan:
    budgets = permute_budgets(held_budgets(plan), order, layer_caps(plan))
    metadata = {
        **plan.metadata,
        "control": kind,
        "control_of": source,
        "source_strategy": plan.strategy,
        "source_budgets": list(plan.budgets),
        "layer_order": [int(i) for i in order],
        **extra,
    }
    # replace() keeps every other field of the plan (policy, floor, context length, caps, ...).
    return dataclasses.replace(plan, budgets=budgets, strategy=f"{plan.strategy}-{kind}", metadata=metadata)


def _seed_for(seed: int, name: str | None) -> np.random.SeedSequence:
    return np.random.SeedSequence([int(seed), zlib.crc32((name or "").encode("utf-8"))])


def shuffled(plan: Plan, seed: int = 0, name: str | None = None) -> Plan:
    """``plan``'s budgets over the layers in a random order drawn from ``seed`` and ``name``.

    Deterministic: the same ``(seed, name)`` gives the same order on every run and machine
    (``numpy.random.default_rng(SeedSequence([seed, crc32(name)]))``). An order that would give
    every layer its own budget back is drawn again (up to :data:`MAX_DRAWS` draws; a plan whose
    layers all hold the same budget has no other order), so the control differs from the plan
    whenever it can. The total and every layer's bounds are kept (module docstring); the seed, the
    order and the number of draws are recorded in the metadata.
    """
    rng = np.random.default_rng(_seed_for(seed, name))
    held, caps = held_budgets(plan), layer_caps(plan)
    draws = 0
    while True:
        order, draws = rng.permutation(plan.n_layers).tolist(), draws + 1
        if draws == MAX_DRAWS or permute_budgets(held, order, caps) != held:
            break
    return _control(plan, "shuffled", name, order, {"seed": int(seed), "draws": draws})


def inverse(plan: Plan, sensitivity: Sequence[float], name: str | None = None) -> Plan:
    """``plan``'s budgets with the largest ones to the least sensitive layers.

    Layers are served by ascending ``sensitivity`` (``[L]``, higher = pruning hurts more), ties to
    the lower layer index; the ``k``-th served layer gets the ``k``-th largest budget (within its
    cap, module docstring). The total and every layer's bounds are kept.
    """
    s = np.asarray(sensitivity, dtype=np.float64)
    if s.shape != (plan.n_layers,):
        raise ValueError(f"sensitivity must have one value per layer ({plan.n_layers}); got shape {s.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("sensitivity must be finite")
    order = np.lexsort((np.arange(plan.n_layers), s)).tolist()
    return _control(plan, "inverse", name, order, {"sensitivity": [float(x) for x in s]})


def control_name(name: str, kind: str) -> str:
    """``"depthkv-greedy@0.2"`` → ``"depthkv-greedy-<kind>@0.2"``."""
    m = _DEPTHKV.match(name)
    if not m:
        raise ValueError(f"{name!r} is not a DepthKV method name (depthkv-<strategy>@<budget>)")
    return f"depthkv-{m['strategy']}-{kind}@{m['budget']}"


def is_control(plan: Plan | None) -> bool:
    """Whether ``plan`` is a control made here."""
    return plan is not None and plan.metadata.get("control") in CONTROLS


def controls_for(
    methods: dict[str, Plan | None],
    sensitivity: Sequence[float],
    seed: int = 0,
    only: Collection[str] | None = None,
) -> dict[str, Plan | None]:
    """``methods`` with both controls after each DepthKV plan (``depthkv-<strategy>@<budget>``), or
    after those of them named in ``only``.

    Other methods (the full cache, baselines, plan files, existing controls) are kept as they are
    and get no controls.
    """
    out: dict[str, Plan | None] = {}
    for name, plan in methods.items():
        out[name] = plan
        if plan is None or is_control(plan) or not _DEPTHKV.match(name) or (only is not None and name not in only):
            continue
        for kind in CONTROLS:
            cname = control_name(name, kind)
            if cname in methods:
                raise ValueError(f"a method is already named {cname!r}, the name of a control; rename it")
            out[cname] = shuffled(plan, seed, name) if kind == "shuffled" else inverse(plan, sensitivity, name)
    return out
