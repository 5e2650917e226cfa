"""plan_degradation(): a whole plan measured at once; tune_floor(): the floor with the lowest of it."""

from __future__ import annotations

import numpy as np
import pytest

import depthkv
from depthkv.evaluation.plan_check import FloorSearch, default_floors, plan_degradation, tune_floor
from tests.helpers import (
    CharTokenizer,
    answer_nll_with_budgets,
    checksum_scorer,
    generated_score,
    tiny_model,
    workload,
)


@pytest.fixture(scope="module")
def model():
    return tiny_model("llama", layers=4)


@pytest.fixture(scope="module")
def profile(model):
    return depthkv.calibrate(
        model, CharTokenizer(), workload(4), ablation_budget=[20, 40], progress=False, n_permutations=19
    )


@pytest.mark.parametrize("metric", ["nll", "kl"])
def test_one_pruned_layer_is_the_profile_s_ablation(model, metric):
    """A plan that prunes only layer l measures what calibration's ablation of layer l measured."""
    wl = workload(3)
    prof = depthkv.calibrate(model, CharTokenizer(), wl, ablation_budget=20, metric=metric, progress=False)
    plans = []
    for layer in range(4):
        budgets = [None] * 4
        budgets[layer] = 20
        plans.append(depthkv.plan_from_budgets(model, budgets))
    got = plan_degradation(model, CharTokenizer(), wl, plans, metric=metric, progress=False)
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got.T, prof.degradation[0], atol=1e-6)


def test_a_whole_plan_equals_running_it(model):
    """Several layers pruned at once: the measured NLL change equals running the model with that
    plan through ``depthkv.apply`` (prompt compressed, then the answer teacher-forced)."""
    wl = workload(2)
    budgets = [16, None, 24, 12]
    plan = depthkv.plan_from_budgets(model, budgets)
    got = plan_degradation(model, CharTokenizer(), wl, plan, compress="prompt", progress=False)
    assert got.shape == (2,)
    for i, ex in enumerate(wl):
        want = answer_nll_with_budgets(model, ex, budgets) - answer_nll_with_budgets(model, ex, [None] * 4)
        assert got[i] == pytest.approx(want, abs=1e-5)


def test_budgets_at_least_the_context_cost_nothing(model):
    plan = depthkv.plan_from_budgets(model, [500, None, 200, 91])
    assert (plan_degradation(model, CharTokenizer(), workload(2), plan, progress=False) == 0).all()


def test_score_metric_is_the_score_drop_of_generating_with_the_plan(model):
    """metric="score" generates token by token with every layer at its budget, as running the plan does."""
    wl = workload(2)
    budgets = [8, 12, None, 10]
    plan = depthkv.plan_from_budgets(model, budgets)
    got = plan_degradation(model, CharTokenizer(), wl, plan, metric="score", scorer=checksum_scorer, progress=False)
    want = [generated_score(model, ex, [None] * 4) - generated_score(model, ex, budgets) for ex in wl]
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-12)


def test_tune_floor_keeps_the_plan_with_the_lowest_joint_degradation(model, profile):
    search = tune_floor(
        model,
        CharTokenizer(),
        workload(3, seed=1),
        profile,
        0.3,
        "proportional",
        metric="nll",
        progress=False,
    )
    assert search.metric == "nll"
    total = search.plans[0].total
    assert search.floors == default_floors(8, total, 4) == [8, 16]  # 0.3 * 90 tokens * 4 layers = 108
    assert [p.floor for p in search.plans] == search.floors
    assert all(p.total == total and min(p.budgets) >= p.floor for p in search.plans)
    assert search.degradation.shape == (2, 3)
    assert search.best == int(np.argmin(search.degradation.mean(axis=1)))
    assert search.plan is search.plans[search.best]
    record = search.to_dict()
    assert record["best_floor"] == search.floors[search.best] and len(record["floors"]) == 2
    # Each candidate is measured exactly as plan_degradation measures it alone.
    alone = plan_degradation(model, CharTokenizer(), workload(3, seed=1), search.plans[1], progress=False)
    np.testing.assert_allclose(search.degradation[1], alone, atol=1e-9)


def test_tune_floor_generates_by_default(model, profile):
    """The default measure is the task score of greedy generation (question and answer evicted as
    in deployment), not the profile's teacher-forced metric."""
    search = tune_floor(model, CharTokenizer(), workload(2), profile, 0.3, floors=[16], progress=False)
    scored = plan_degradation(
        model, CharTokenizer(), workload(2), search.plan, metric="score", progress=False
    )
    assert search.metric == "score" and search.floors == [16]
    np.testing.assert_array_equal(search.degradation[0], scored)


def test_default_floors():
    assert default_floors(8, 1230, 6) == [8, 16, 32, 64, 128]
    assert default_floors(8, 60, 6) == [8]
    assert default_floors(20, 1000, 4) == [20, 32, 64, 128]  # 256 · 4 > 1000


def test_floor_search_ties_go_to_the_smallest_floor(model):
    plans = [depthkv.plan_from_budgets(model, [8] * 4), depthkv.plan_from_budgets(model, [16] * 4)]
    search = FloorSearch(floors=[8, 16], plans=plans, degradation=np.zeros((2, 3)), metric="nll")
    assert search.best == 0


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"floor": 16}, "tune_floor chooses the floor"),
        ({"floors": [4, 16]}, "floor 4: floor 4 is below the snapkv policy's minimum 8"),
        ({"floors": []}, "give at least one floor"),
    ],
)
def test_tune_floor_says_what_is_wrong(model, profile, kwargs, says):
    with pytest.raises(ValueError, match=says):
        tune_floor(model, CharTokenizer(), workload(2), profile, 0.3, progress=False, **kwargs)


def test_plan_degradation_says_what_is_wrong(model):
    plan = depthkv.plan_from_budgets(model, [8] * 4)
    other = depthkv.plan_from_budgets(model, [8] * 4, policy="h2o")
    with pytest.raises(ValueError, match="different eviction policies"):
        plan_degradation(model, CharTokenizer(), workload(1), [plan, other], progress=False)
    with pytest.raises(ValueError, match="give at least one plan"):
        plan_degradation(model, CharTokenizer(), workload(1), [], progress=False)
    with pytest.raises(ValueError, match="unknown metric"):
        plan_degradation(model, CharTokenizer(), workload(1), plan, metric="bleu", progress=False)
    with pytest.raises(ValueError, match="this plan was made for a different model"):
        plan_degradation(
            model,
            CharTokenizer(),
            workload(1),
            depthkv.plan_from_budgets(tiny_model("llama", layers=2), [8, 8]),
            progress=False,
        )


def test_evaluation_and_plan_checks_share_one_rule_for_distinct_policies(model, monkeypatch):
    """Equal policy configurations are one policy (one prefill per example) in both evaluation and
    plan checks: both ask calibration.engine.distinct_policies."""
    from depthkv.calibration import engine
    from depthkv.evaluation import comparison as evaluate_module
    from depthkv.evaluation import plan_check

    same = [
        depthkv.plan_from_budgets(model, [8] * 4),
        depthkv.plan_from_budgets(model, [12] * 4, policy={"name": "snapkv"}),
        depthkv.plan_from_budgets(model, [16] * 4, policy=depthkv.PolicyConfig(window=8)),
    ]
    asked = []
    spy = lambda plans: asked.append(len(list(plans))) or engine.distinct_policies(plans)  # noqa: E731
    for module in (plan_check, evaluate_module):
        monkeypatch.setattr(module, "distinct_policies", spy)
    runs = []
    original = engine.ExampleRun.__init__
    monkeypatch.setattr(engine.ExampleRun, "__init__", lambda self, *a, **k: runs.append(1) or original(self, *a, **k))
    plan_check.plan_degradation(model, CharTokenizer(), workload(2), same, progress=False)
    depthkv.evaluate(model, CharTokenizer(), workload(2), dict(zip("abc", same)), progress=False)
    assert len(asked) == 2 and len(runs) == 2 + 2  # one prefill per example in each
    h2o = depthkv.plan_from_budgets(model, [8] * 4, policy="h2o")
    depthkv.evaluate(model, CharTokenizer(), workload(1), {"a": same[0], "b": h2o}, progress=False)
    assert len(runs) == 4 + 2  # two policies: two prefills
