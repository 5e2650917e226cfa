"""engine_plan(plan): the budgets are the plan's (Plan.budgets_for, the only resolution), the layer
types and windows the fingerprint's, the slots as docs/decode.md counts them; a saved engine plan
reads back equal; bad arguments are refused before anything is written."""

from __future__ import annotations

import json

import pytest

import depthkv
from depthkv.files import CorruptFileError
from depthkv.serving import check_engine_plan, engine_plan, load_engine_plan, save_engine_plan
from depthkv.serving.validation import LAYER_FIELDS, MODEL_FIELDS, TOP_FIELDS
from tests.serving.plans import (
    DEMO_PLANS,
    GEMMA3_FULL_LAYERS,
    GEMMA3_PLAN,
    GEMMA3_WINDOW,
    WINDOW,
    hybrid_fingerprint,
    hybrid_profile,
)

CONTEXTS = (None, 64, 1000, 2081, 4096, 131_072)


def _resolved_at(plan: depthkv.Plan, context: int | None) -> int | None:
    return plan.context_length if context is None and plan.relative else context


def _check_against_plan(plan: depthkv.Plan, data: dict, context: int | None) -> None:
    """Every layer of ``data`` against ``plan``: budget, type, window, fraction."""
    assert check_engine_plan(data) is data
    assert [layer["budget"] for layer in data["layers"]] == plan.budgets_for(_resolved_at(plan, context))
    windows = plan.caps
    assert [layer["sliding_window"] for layer in data["layers"]] == windows
    assert [layer["attention"] for layer in data["layers"]] == ["full" if w is None else "sliding" for w in windows]
    assert [layer["index"] for layer in data["layers"]] == list(range(plan.n_layers))
    if plan.relative:
        assert [layer["fraction"] for layer in data["layers"]] == [b / plan.context_length for b in plan.budgets]
    else:
        assert all(layer["fraction"] is None for layer in data["layers"])
    assert json.loads(json.dumps(data, allow_nan=False)) == data  # plain JSON types, nothing else


@pytest.mark.parametrize("path", DEMO_PLANS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_shipped_plans_export_the_budgets_depthkv_runs(path):
    plan = depthkv.Plan.load(path)
    for context in CONTEXTS:
        data = engine_plan(plan, context_length=context)
        _check_against_plan(plan, data, context)
        assert data["context_length"] == context
        assert data["model"] == {name: getattr(plan.fingerprint, name) for name in MODEL_FIELDS}


def test_gemma3_s_sliding_layers_are_sliding_and_stay_within_their_window():
    plan = depthkv.Plan.load(GEMMA3_PLAN)
    for context in CONTEXTS:
        layers = engine_plan(plan, context_length=context)["layers"]
        full = [layer["index"] for layer in layers if layer["attention"] == "full"]
        assert tuple(full) == GEMMA3_FULL_LAYERS
        for layer in layers:
            if layer["index"] in GEMMA3_FULL_LAYERS:
                assert layer["sliding_window"] is None
            else:
                assert layer["attention"] == "sliding" and layer["sliding_window"] == GEMMA3_WINDOW
                assert layer["budget"] <= GEMMA3_WINDOW


@pytest.mark.parametrize("strategy", depthkv.STRATEGIES)
@pytest.mark.parametrize("budget, context", [(0.1, 400), (0.3, 100), (0.05, 1000), (12, 100)])
def test_plans_allocated_for_a_hybrid_model(strategy, budget, context):
    plan = depthkv.allocate(hybrid_profile(context=context), budget, strategy)
    assert plan.fingerprint.is_hybrid
    for at in (None, 50, 100, 400, 1000, 5000):
        data = engine_plan(plan, context_length=at)
        _check_against_plan(plan, data, at)
        kinds = [layer["attention"] for layer in data["layers"]]
        assert kinds == ["sliding", "sliding", "full", "sliding", "sliding", "full"]
        assert all(layer["budget"] <= WINDOW for layer in data["layers"] if layer["attention"] == "sliding")
        assert data["totals"]["budget_tokens"] == sum(plan.budgets_for(_resolved_at(plan, at)))


def test_append_mode_reserves_a_tail_on_budgeted_full_attention_layers_only():
    """docs/decode.md: append mode holds budget + max_new_tokens slots; sliding layers evict in both
    modes; a full (None) layer has no tail and grows with the sequence."""
    fp = hybrid_fingerprint()
    plan = depthkv.Plan(budgets=[12, 16, None, 8, 10, 40], strategy="explicit", policy=depthkv.PolicyConfig(),
                        fingerprint=fp)
    data = engine_plan(plan, mode="append", max_new_tokens=32)
    assert [layer["tail"] for layer in data["layers"]] == [0, 0, 0, 0, 0, 32]
    assert [layer["slots"] for layer in data["layers"]] == [12, 16, None, 8, 10, 72]
    assert data["totals"] == {"budget_tokens": None, "slots": None}
    evict = engine_plan(plan)
    assert [layer["slots"] for layer in evict["layers"]] == [12, 16, None, 8, 10, 40]
    assert evict["max_new_tokens"] == 0 and evict["mode"] == "evict"

    whole = depthkv.Plan(budgets=[12, 16, 30, 8, 10, 40], strategy="explicit", policy=depthkv.PolicyConfig(),
                         fingerprint=fp)
    data = engine_plan(whole, mode="append", max_new_tokens=5)
    assert data["totals"] == {"budget_tokens": 116, "slots": 126}
    assert engine_plan(whole)["totals"] == {"budget_tokens": 116, "slots": 116}


def test_a_sliding_layer_that_keeps_everything_keeps_its_window():
    plan = depthkv.Plan(budgets=[None] * 6, strategy="explicit", policy=depthkv.PolicyConfig(),
                        fingerprint=hybrid_fingerprint())
    layers = engine_plan(plan)["layers"]
    assert [layer["budget"] for layer in layers] == [WINDOW, WINDOW, None, WINDOW, WINDOW, None]


def test_the_policy_has_every_parameter():
    policy = depthkv.PolicyConfig(name="streaming", window=4, kernel=3, sinks=2, seed=7)
    plan = depthkv.Plan(budgets=[8, 9], strategy="explicit", policy=policy)
    assert engine_plan(plan)["policy"] == {
        "name": "streaming", "window": 4, "kernel": 3, "sinks": 2, "seed": 7, "floor": 6, "stateful": False,
    }
    snap = engine_plan(depthkv.Plan(budgets=[8, 9], strategy="explicit", policy=depthkv.PolicyConfig()))["policy"]
    assert snap["floor"] == 8 and snap["stateful"] is True


def test_a_plan_made_without_a_model_states_what_it_does_not_know():
    plan = depthkv.Plan(budgets=[8, 16, None], strategy="explicit", policy=depthkv.PolicyConfig())
    data = engine_plan(plan)
    assert data["model"] == {name: (3 if name == "num_layers" else None) for name in MODEL_FIELDS}
    assert [layer["attention"] for layer in data["layers"]] == ["full"] * 3
    assert data["allocation"] == {
        "strategy": "explicit", "global_budget": None, "relative": False, "context_length": None, "floor": 8,
    }
    assert list(data) == list(TOP_FIELDS)
    assert all(list(layer) == list(LAYER_FIELDS) for layer in data["layers"])


def test_saved_engine_plans_read_back_equal(tmp_path):
    for path in (GEMMA3_PLAN, DEMO_PLANS[0]):
        plan = depthkv.Plan.load(path)
        for kwargs in ({}, {"context_length": 4096, "mode": "append", "max_new_tokens": 32}):
            data = engine_plan(plan, **kwargs)
            out = save_engine_plan(tmp_path / "engine.json", data)
            assert load_engine_plan(out) == data
            assert json.loads(out.read_text()) == data


def test_save_refuses_a_malformed_engine_plan_and_leaves_the_file_as_it_was(tmp_path):
    data = engine_plan(depthkv.Plan.load(GEMMA3_PLAN))
    out = tmp_path / "engine.json"
    broken = json.loads(json.dumps(data))
    broken["layers"][3]["budget"] = -4
    with pytest.raises(CorruptFileError, match=r"layers\[3\]\.budget is -4"):
        save_engine_plan(out, broken)
    assert not out.exists() and not list(tmp_path.iterdir())
    save_engine_plan(out, data)
    before = out.read_text()
    with pytest.raises(CorruptFileError):
        save_engine_plan(out, broken)
    assert out.read_text() == before


@pytest.mark.parametrize(
    "kwargs, says",
    [
        ({"context_length": 0}, "context_length"),
        ({"context_length": -5}, "context_length"),
        ({"context_length": True}, "context_length"),
        ({"context_length": 1.5}, "context_length"),
        ({"context_length": 2**31}, "context_length"),
        ({"mode": "stream"}, "unknown decode mode"),
        ({"mode": "evict", "max_new_tokens": 3}, "evict mode"),
        ({"mode": "append"}, "max_new_tokens >= 1"),
        ({"mode": "append", "max_new_tokens": -1}, "max_new_tokens"),
        ({"max_new_tokens": 2.0}, "max_new_tokens"),
    ],
)
def test_bad_arguments_say_what_is_wrong(kwargs, says):
    plan = depthkv.Plan.load(GEMMA3_PLAN)
    with pytest.raises(ValueError, match=says):
        engine_plan(plan, **kwargs)


def test_only_a_plan_is_exported():
    with pytest.raises(TypeError, match="depthkv.Plan"):
        engine_plan(json.loads(GEMMA3_PLAN.read_text()))
