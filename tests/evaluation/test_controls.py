"""Controls (depthkv.evaluation.controls): a plan's own budgets given to the wrong layers."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from depthkv.evaluation.controls import (
    MAX_DRAWS,
    controls_for,
    held_budgets,
    inverse,
    layer_caps,
    permute_budgets,
    shuffled,
)
from depthkv.policies import PolicyConfig
from depthkv.profile import Plan


def plan_of(budgets, floor=8, **kwargs) -> Plan:
    return Plan(budgets=list(budgets), strategy="greedy", policy=PolicyConfig(), floor=floor, **kwargs)


SENSITIVITY = [0.3, 5.0, -0.1, 0.2, 0.2, 1.0]
BUDGETS = [20, 300, 8, 40, 16, 100]


def test_shuffled_is_a_seeded_permutation_with_the_same_total():
    plan = plan_of(BUDGETS, relative=True, context_length=512, global_budget=0.2)
    control = shuffled(plan, seed=0, name="depthkv-greedy@0.2")
    assert Counter(control.budgets) == Counter(plan.budgets) and control.total == plan.total
    assert control.budgets != plan.budgets  # this seed moves them (recorded below)
    again = shuffled(plan, seed=0, name="depthkv-greedy@0.2")
    assert again.budgets == control.budgets  # deterministic
    assert shuffled(plan, seed=1, name="depthkv-greedy@0.2").budgets != control.budgets
    meta = control.metadata
    assert meta["control"] == "shuffled" and meta["seed"] == 0 and meta["control_of"] == "depthkv-greedy@0.2"
    order = meta["layer_order"]
    assert sorted(order) == list(range(6)) and meta["source_budgets"] == BUDGETS
    # The recorded order is the rule: the k-th largest budget goes to layer order[k].
    assert [control.budgets[layer] for layer in order] == sorted(BUDGETS, reverse=True)
    # Everything else of the plan is kept: policy, floor, the relative sizing, the strategy named.
    assert (control.floor, control.relative, control.context_length, control.global_budget) == (8, True, 512, 0.2)
    assert control.strategy == "greedy-shuffled"
    # At another prompt length the control is still a permutation of the plan's budgets.
    assert Counter(control.budgets_for(700)) == Counter(plan.budgets_for(700))


def test_shuffles_are_uniform_over_the_orders_that_move_a_budget():
    """Over many seeds every other layer is as likely to get the largest budget; the plan itself
    (the one order that moves nothing) is drawn again, and the draws are recorded."""
    plan = plan_of([8, 8, 8, 64])
    controls = [shuffled(plan, seed=s, name="p") for s in range(300)]
    top = Counter(int(np.argmax(c.budgets)) for c in controls)
    assert set(top) == {0, 1, 2} and min(top.values()) > 70, top
    assert {1, 2} <= {c.metadata["draws"] for c in controls}  # redrawn when it came out as the plan
    same = shuffled(plan_of([16, 16, 16]), seed=0)  # no other order exists: kept after MAX_DRAWS
    assert same.budgets == [16, 16, 16] and same.metadata["draws"] == MAX_DRAWS


def test_inverse_gives_the_least_sensitive_layer_the_largest_budget():
    plan = plan_of(BUDGETS)
    control = inverse(plan, SENSITIVITY, name="depthkv-greedy@0.2")
    assert Counter(control.budgets) == Counter(BUDGETS) and control.total == plan.total
    assert control.budgets[2] == 300  # layer 2 is the least sensitive
    assert control.budgets[1] == 8  # layer 1 the most: it gets the smallest
    # Ascending sensitivity, descending budgets; the tie (layers 3 and 4) goes to the lower index.
    assert control.budgets == [20, 8, 300, 100, 40, 16]
    assert control.metadata["layer_order"] == [2, 3, 4, 0, 5, 1]
    assert control.metadata["sensitivity"] == SENSITIVITY


def test_controls_keep_every_layer_within_its_cap():
    """A sliding-window layer (Gemma 3: layers 0, 1, 3, 4 attend to 16 tokens) never gets more than its window."""
    from depthkv.profile import fingerprint
    from tests.helpers import WINDOW, tiny_config

    fp = fingerprint(tiny_config("gemma3", layers=6))
    caps = [WINDOW, WINDOW, None, WINDOW, WINDOW, None]
    plan = plan_of([16, 8, 300, 16, 12, 100], fingerprint=fp)
    assert layer_caps(plan) == caps == plan.caps
    inv = inverse(plan, SENSITIVITY)
    assert inv.caps == caps and inv.total == plan.total  # the same model: the same caps
    # Layer 2 (least sensitive) takes 300; layers 3, 4 and 0 cannot hold 100, so layer 5 does.
    assert inv.budgets == [12, 8, 300, 16, 16, 100]
    for seed in range(50):
        sh = shuffled(plan, seed=seed)
        assert Counter(sh.budgets) == Counter(plan.budgets)
        assert all(c is None or b <= c for b, c in zip(sh.budgets, caps)), (seed, sh.budgets)
    # A budget above the window (or None, the window) counts as the window, as Plan.total counts it.
    loose = plan_of([None, 8, 300, 40, 12, 100], fingerprint=fp)
    assert held_budgets(loose) == [16, 8, 300, 16, 12, 100] and inverse(loose, SENSITIVITY).total == loose.total
    assert layer_caps(plan_of(BUDGETS)) == [None] * 6


@given(
    data=st.lists(st.tuples(st.integers(8, 200), st.integers(0, 40) | st.none()), min_size=1, max_size=12),
    seed=st.integers(0, 2**16),
)
def test_permute_budgets_is_a_permutation_within_caps_whenever_the_plan_fits_them(data, seed):
    """Any caps the original budgets fit (cap >= budget), any layer order: the rule never gets stuck."""
    budgets = [b for b, _ in data]
    caps = [None if extra is None else b + extra for b, extra in data]
    order = np.random.default_rng(seed).permutation(len(budgets)).tolist()
    out = permute_budgets(budgets, order, caps)
    assert Counter(out) == Counter(budgets)
    assert all(c is None or b <= c for b, c in zip(out, caps))
    if all(c is None for c in caps):
        assert [out[i] for i in order] == sorted(budgets, reverse=True)


def test_controls_refuse_what_they_cannot_permute():
    with pytest.raises(ValueError, match="keeps layer"):
        shuffled(plan_of([8, None, 16]))
    with pytest.raises(ValueError, match="one value per layer"):
        inverse(plan_of([8, 16]), [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="permutation of the 3 layers"):
        permute_budgets([8, 9, 10], [0, 0, 1])
    with pytest.raises(ValueError, match="within its cap"):
        permute_budgets([8, 90], [0, 1], [10, 10])


def test_controls_for_adds_both_after_each_depthkv_plan():
    plans = {"full": None, "uniform@0.2": plan_of([50, 50, 50]), "depthkv-greedy@0.2": plan_of([8, 134, 8])}
    out = controls_for(plans, [0.0, 3.0, 1.0], seed=0)
    assert list(out) == ["full", "uniform@0.2", "depthkv-greedy@0.2",
                         "depthkv-greedy-shuffled@0.2", "depthkv-greedy-inverse@0.2"]
    assert out["depthkv-greedy-inverse@0.2"].budgets == [134, 8, 8]
    with pytest.raises(ValueError, match="already named"):
        controls_for({**plans, "depthkv-greedy-inverse@0.2": plan_of([8, 8, 134])}, [0.0, 3.0, 1.0])
