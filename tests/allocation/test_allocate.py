"""allocate(profile, budget) -> Plan: budgets, bounds, relative plans, errors."""

from __future__ import annotations

import numpy as np
import pytest

import depthkv
from depthkv import STRATEGIES
from tests.helpers import make_profile, tiny_model


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=3)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("budget", [0.1, 0.2, 0.5, 16, 40])
def test_every_strategy_sums_exactly(model, strategy, budget):
    profile = make_profile(model)
    plan = depthkv.allocate(profile, budget, strategy)
    per_layer = budget * 100 if isinstance(budget, float) else budget
    assert plan.total == round(per_layer * 3)
    assert min(plan.budgets) >= plan.floor >= 8
    assert max(plan.budgets) <= 100
    assert plan.relative == isinstance(budget, float)


def test_sensitive_layers_get_more(model):
    profile = make_profile(model)
    profile.degradation[:] = 0
    profile.degradation[0, :, 1] = 1.0
    plan = depthkv.allocate(profile, 0.3, "proportional")
    assert plan.budgets[1] == max(plan.budgets)
    assert plan.budgets[0] == plan.budgets[2] == plan.floor


def test_relative_plan_rescales_to_context(model):
    plan = depthkv.allocate(make_profile(model), 0.2, "rank")
    assert plan.budgets_for(100) == plan.budgets
    bigger = plan.budgets_for(1000)
    assert sum(bigger) == 600
    assert np.argsort(bigger).tolist() == np.argsort(plan.budgets).tolist()
    assert min(plan.budgets_for(10)) == plan.floor


def test_errors_are_helpful(model):
    profile = make_profile(model)
    with pytest.raises(ValueError, match="unknown strategy"):
        depthkv.allocate(profile, 0.2, "magic")
    with pytest.raises(ValueError, match="below the floor"):
        depthkv.allocate(profile, 4)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        depthkv.allocate(profile, 1.5)
    single = make_profile(model)
    single.ablation_budgets = [0.2]
    single.degradation = single.degradation[:1]
    with pytest.raises(ValueError, match="several ablation budgets"):
        depthkv.allocate(single, 0.2, "greedy")


def test_uniform_plan_without_profile(model):
    plan = depthkv.uniform_plan(model, 24, policy="streaming")
    assert plan.budgets == [24, 24, 24] and plan.floor == 12


def test_global_total_is_rounded_not_truncated(model):
    """0.29 of a 100-token context is 28.999... tokens per layer in floating point: the global total
    over 3 layers is round(86.999...) = 87, not 86."""
    plan = depthkv.allocate(make_profile(model), 0.29, "uniform")
    assert plan.total == 87
    assert plan.metadata["total"] == 87


def test_relative_plan_rescaled_total_is_rounded(model):
    """A relative plan's total scales with the context and is rounded: 87 * 133 / 100 = 115.71 -> 116."""
    plan = depthkv.allocate(make_profile(model), 0.29, "proportional")
    assert plan.total == 87 and plan.context_length == 100
    assert sum(plan.budgets_for(133)) == 116
    assert sum(plan.budgets_for(150)) == 130  # 130.5 rounds half to even, as Python's round does


def test_explicit_plans_keep_full_layers_whole_and_check_the_floor_at_once(model):
    """plan_from_budgets: ``None`` keeps a layer whole (no fake global budget of ~10^9 tokens), the
    floor stays the policy's, and a budget below it is an error when the plan is made."""
    plan = depthkv.plan_from_budgets(model, [None, 16, 12])
    assert plan.budgets == [None, 16, 12] and plan.full_layers == [0]
    assert plan.global_budget is None and plan.total is None and plan.floor == 8
    with pytest.raises(ValueError, match="layer 1: budget 4 is below the plan's floor 8"):
        depthkv.plan_from_budgets(model, [None, 4, 16])
    streaming = depthkv.plan_from_budgets(model, [None, 12, 12], policy="streaming")
    assert streaming.floor == 12


def test_one_default_strategy_everywhere(model):
    """The strategy used when none is named is `softmax` (re-chosen on the real models, issue 18),
    and the same one in Python, the backend, tune_floor and the command line."""
    import argparse
    import inspect

    from depthkv.allocation import DEFAULT_STRATEGY, allocate_from_sensitivity
    from depthkv.cli import allocate as cli_allocate
    from depthkv.cli import tune_floor as cli_tune
    from depthkv.evaluation.plan_check import tune_floor

    assert DEFAULT_STRATEGY == "softmax"
    assert depthkv.allocate(make_profile(model), 0.2).strategy == DEFAULT_STRATEGY
    for function in (depthkv.allocate, depthkv.backend, tune_floor, allocate_from_sensitivity):
        assert inspect.signature(function).parameters["strategy"].default == DEFAULT_STRATEGY, function
    for add in (cli_allocate.add_parsers, cli_tune.add_parser):
        sub = argparse.ArgumentParser().add_subparsers()
        add(sub)
        for name, parser in sub.choices.items():
            if any(a.dest == "strategy" for a in parser._actions):
                assert parser.get_default("strategy") == DEFAULT_STRATEGY, name
