"""evaluate(): methods side by side from one recorded prefill; report files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import depthkv
from depthkv.evaluation import evaluate, method_plans
from depthkv.evaluation.report import write_report
from depthkv.workload import ByteTokenizer, builtin_workload
from tests.helpers import CharTokenizer, workload


@pytest.fixture(scope="module")
def setup():
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    )
    model = tf.AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    tok = ByteTokenizer()
    cal = builtin_workload(["niah_single", "kv_retrieval"], n_per_task=2, context_length=200, split="calibration")
    profile = depthkv.calibrate(model, tok, cal, ablation_budget=[0.2, 0.5], progress=False, n_permutations=99)
    return model, tok, profile


def test_methods_side_by_side(setup):
    model, tok, profile = setup
    ev = builtin_workload(["niah_single", "kv_retrieval"], n_per_task=2, context_length=200, split="evaluation")
    methods = method_plans(model, profile, [0.1, 0.2], strategies=("proportional", "greedy"))
    assert set(methods) == {
        "full", "uniform@0.1", "pyramid@0.1", "depthkv-proportional@0.1", "depthkv-greedy@0.1",
        "uniform@0.2", "pyramid@0.2", "depthkv-proportional@0.2", "depthkv-greedy@0.2",
    }
    results = evaluate(model, tok, ev, methods, progress=False)
    for name, res in results.items():
        assert len(res.scores) == 4 and set(res.tasks) == {"niah_single", "kv_retrieval"}
        s = res.summary()
        assert s["low"] <= s["mean"] <= s["high"]
        if name != "full":
            ctx = 200
            frac = float(name.split("@")[1])
            assert np.mean(res.kv_tokens) == pytest.approx(frac * ctx * 3, rel=0.05)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("mode", ["evict", "append"])
def test_pruned_cache_generation_equals_apply(mode):
    """evaluate's derived caches generate exactly what depthkv.apply generates with the same plan,
    in either decode mode (append: the generated tokens join the cache, evict: they replace)."""
    from tests.helpers import tiny_model

    model = tiny_model("qwen2")
    ex = workload(1)[0]
    plan = depthkv.plan_from_budgets(model, [12, 30, 9])
    tok = CharTokenizer()
    preds = []
    scorer = lambda e, p: preds.append(p) or 0.0  # noqa: E731
    evaluate(
        model, tok, [ex], {"p": plan}, compress="prompt", scorer=scorer, progress=False, stop_at_newline=False,
        extra_tokens=12, mode=mode,
    )
    ids = torch.tensor([tok(ex["context"] + ex["question"])["input_ids"]])
    n = len(tok(ex["answer"])["input_ids"]) + 12
    handle = depthkv.apply(model, plan, mode=mode)
    try:
        out = handle.generate(ids, max_new_tokens=n, do_sample=False)
    finally:
        handle.remove()
    assert preds[0] == tok.decode(out[0, ids.shape[1] :].tolist())
    preds.clear()
    other = "append" if mode == "evict" else "evict"
    evaluate(
        model, tok, [ex], {"p": plan}, compress="prompt", scorer=scorer, progress=False, stop_at_newline=False,
        extra_tokens=12, mode=other,
    )
    assert preds[0] != tok.decode(out[0, ids.shape[1] :].tolist())  # the mode matters: not a no-op


def test_write_report(setup, tmp_path):
    model, tok, profile = setup
    methods = method_plans(model, profile, [0.2], strategies=("proportional",))
    summaries = {
        name: {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 4, "per_task": {}} for name in methods
    }
    plans = {k.split("@")[0]: v for k, v in methods.items() if v is not None}
    files = write_report(tmp_path, profile, plans, summaries, [0.2], {"model": "random", "n_eval": 4})
    for key in ("profile", "results", "sensitivity_png", "budgets_png", "accuracy_png", "report"):
        assert files[key].exists() and files[key].stat().st_size > 0
    assert json.loads(files["results"].read_text())["methods"]["full"]["mean"] == 0.5
    text = files["report"].read_text()
    assert "Permutation test" in text and "depthkv-proportional" in text
    assert depthkv.Profile.load(files["profile"], model=model).n_examples == 4


def test_write_report_keeps_the_plan_of_every_budget(setup, tmp_path):
    """Accuracy is reported at several budgets; the allocation behind each cell is kept too."""
    model, tok, profile = setup
    methods = method_plans(model, profile, [0.2, 0.5], strategies=("proportional",))
    summaries = {name: {"mean": 0.5, "low": 0.4, "high": 0.6, "n": 4, "per_task": {}} for name in methods}
    every = {k: v for k, v in methods.items() if v is not None}
    primary = {k.split("@")[0]: v for k, v in every.items() if k.endswith("@0.2")}
    files = write_report(tmp_path, profile, primary, summaries, [0.2, 0.5], {"model": "random"}, all_plans=every)
    saved = json.loads(files["results"].read_text())["plans"]
    assert set(saved) == set(every) and "depthkv-proportional@0.5" in saved
    for name, plan in every.items():
        assert saved[name] == plan.budgets and len(saved[name]) == plan.n_layers
    assert sum(saved["uniform@0.5"]) > sum(saved["uniform@0.2"])
    text = files["report"].read_text()
    assert "| depthkv-proportional@0.5 | " + " ".join(map(str, every["depthkv-proportional@0.5"].budgets)) in text
    assert not (tmp_path / "plan-uniform@0.5.json").exists()  # one plan file per method: the primary budget


def test_method_plans_with_controls(setup):
    """The demo's comparison: baselines to choose, both controls of every DepthKV plan, same totals."""
    model, tok, profile = setup
    methods = method_plans(model, profile, [0.3], strategies=("proportional",), baselines=("uniform",), controls=True)
    assert list(methods) == ["full", "uniform@0.3", "depthkv-proportional@0.3",
                             "depthkv-proportional-shuffled@0.3", "depthkv-proportional-inverse@0.3"]
    source = methods["depthkv-proportional@0.3"]
    for kind in ("shuffled", "inverse"):
        control = methods[f"depthkv-proportional-{kind}@0.3"]
        assert sorted(control.budgets) == sorted(source.budgets) and control.total == source.total
        assert min(control.budgets) >= source.floor and control.metadata["control"] == kind
    inverse = methods["depthkv-proportional-inverse@0.3"].budgets
    assert inverse[int(np.argmin(profile.sensitivity()))] == max(source.budgets)
    assert inverse[int(np.argmax(profile.sensitivity()))] == min(source.budgets)
    with pytest.raises(ValueError, match="unknown baseline"):
        method_plans(model, profile, [0.3], baselines=("snapkv",))


def test_method_plans_with_controls_at_chosen_budgets_only(setup):
    """`control_budgets` (the real models' demo: the primary budget) gives controls to the DepthKV
    plans of those budgets and of no other; a budget that is not evaluated is an error."""
    model, tok, profile = setup
    methods = method_plans(
        model, profile, [0.2, 0.3], strategies=("proportional",), baselines=(), controls=True, control_budgets=[0.3]
    )
    assert list(methods) == ["full", "depthkv-proportional@0.2", "depthkv-proportional@0.3",
                             "depthkv-proportional-shuffled@0.3", "depthkv-proportional-inverse@0.3"]
    every = method_plans(model, profile, [0.2, 0.3], strategies=("proportional",), baselines=(), controls=True)
    assert "depthkv-proportional-shuffled@0.2" in every
    with pytest.raises(ValueError, match="not among the evaluated budgets"):
        method_plans(model, profile, [0.2], strategies=("proportional",), controls=True, control_budgets=[0.3])
