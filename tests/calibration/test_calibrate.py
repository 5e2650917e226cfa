"""calibrate(): one degradation row per layer, reuse is exact, resume continues."""

from __future__ import annotations

import numpy as np
import pytest

import depthkv
from depthkv.calibration.engine import ExampleRun
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


def test_one_row_per_layer_with_stats(model):
    profile = depthkv.calibrate(model, CharTokenizer(), workload(), progress=False, n_permutations=199)
    assert profile.degradation.shape == (1, 5, 4)
    assert profile.complete
    assert np.isfinite(profile.degradation).all()
    assert (profile.degradation != 0).any()
    stats = depthkv.LayerStats.from_dict(profile.stats["by_budget"][0])
    assert 0 < stats.permutation.pvalue <= 1
    assert profile.context_lengths == [90] * 5
    assert model.config._attn_implementation == "sdpa"  # restored


@pytest.mark.parametrize("metric", ["nll", "kl"])
def test_reuse_equals_recomputing_every_layer(model, metric):
    kw = dict(progress=False, n_permutations=19, metric=metric, ablation_budget=[0.15, 0.4])
    fast = depthkv.calibrate(model, CharTokenizer(), workload(3), **kw)
    slow = depthkv.calibrate(model, CharTokenizer(), workload(3), reuse=False, **kw)
    np.testing.assert_allclose(fast.degradation, slow.degradation, atol=1e-5)


def test_matches_apply_with_one_layer_pruned(model):
    """The ablation of layer l equals running the model with a plan that prunes only layer l."""
    wl = workload(1)
    profile = depthkv.calibrate(model, CharTokenizer(), wl, progress=False, ablation_budget=20, compress="prompt")
    full = answer_nll_with_budgets(model, wl[0], [None] * 4)
    for layer in range(4):
        budgets = [None] * 4
        budgets[layer] = 20
        pruned = answer_nll_with_budgets(model, wl[0], budgets)
        assert profile.degradation[0, 0, layer] == pytest.approx(pruned - full, abs=1e-5)


def test_budget_at_least_context_gives_zero(model):
    profile = depthkv.calibrate(model, CharTokenizer(), workload(2), ablation_budget=500, progress=False)
    assert (profile.degradation == 0).all()


def test_resume_after_interruption(model, tmp_path, monkeypatch):
    ckpt = tmp_path / "partial.json"
    wl = workload(4)
    reference = depthkv.calibrate(model, CharTokenizer(), wl, progress=False, n_permutations=99)

    calls = {"n": 0}
    original = ExampleRun.__init__

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        original(self, *args, **kwargs)

    monkeypatch.setattr(ExampleRun, "__init__", flaky)
    with pytest.raises(KeyboardInterrupt):
        depthkv.calibrate(model, CharTokenizer(), wl, progress=False, checkpoint=ckpt, n_permutations=99)
    partial = depthkv.Profile.load(ckpt)
    assert not partial.complete and partial.n_examples == 2

    calls["n"] = 100  # no more interruptions; count the examples actually run
    resumed = depthkv.calibrate(model, CharTokenizer(), wl, progress=False, checkpoint=ckpt, n_permutations=99)
    assert calls["n"] == 102  # only the two missing examples were computed
    np.testing.assert_allclose(resumed.degradation, reference.degradation, atol=1e-6)
    assert depthkv.Profile.load(ckpt).complete


def test_resume_refuses_other_settings(model, tmp_path):
    ckpt = tmp_path / "p.json"
    depthkv.calibrate(model, CharTokenizer(), workload(2), progress=False, checkpoint=ckpt, n_permutations=9)
    with pytest.raises(ValueError, match="other settings"):
        depthkv.calibrate(model, CharTokenizer(), workload(2), metric="kl", progress=False, checkpoint=ckpt)


def test_bad_inputs(model):
    with pytest.raises(ValueError, match="metric"):
        depthkv.calibrate(model, CharTokenizer(), workload(1), metric="rouge")
    with pytest.raises(ValueError, match="lacks string fields"):
        depthkv.calibrate(model, CharTokenizer(), [{"context": "abc"}])
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        depthkv.calibrate(model, CharTokenizer(), workload(1), ablation_budget=1.5)
    with pytest.raises(ValueError, match="compress"):
        depthkv.calibrate(model, CharTokenizer(), workload(1), compress="all")


def test_score_metric_is_the_score_drop_of_running_the_plan(model):
    """metric="score": each entry is the scorer's value with the full cache minus its value when
    the model generates with only that layer pruned, as running it through depthkv.apply gives."""
    wl = workload(2)
    profile = depthkv.calibrate(
        model, CharTokenizer(), wl, metric="score", scorer=checksum_scorer, ablation_budget=12,
        progress=False, n_permutations=19,
    )
    expected = np.zeros((2, 4))
    for i, ex in enumerate(wl):
        full = generated_score(model, ex, [None] * 4)
        assert profile.baseline[i] == pytest.approx(full)
        for layer in range(4):
            budgets = [None] * 4
            budgets[layer] = 12
            expected[i, layer] = full - generated_score(model, ex, budgets)
    assert np.abs(expected).max() > 0  # pruning changes what is generated: the check can fail
    np.testing.assert_allclose(profile.degradation[0], expected, atol=1e-12)


def test_score_metric_with_dict_examples(model):
    """metric="score" scores a workload given as plain dicts with the default scorer (it used to
    need ``Example`` objects and failed with an AttributeError)."""
    profile = depthkv.calibrate(
        model, CharTokenizer(), workload(2), metric="score", ablation_budget=8, progress=False, n_permutations=19
    )
    assert profile.degradation.shape == (1, 2, 4)
    assert np.all((profile.degradation >= -1) & (profile.degradation <= 1))


def test_resume_refuses_a_checkpoint_made_with_other_reuse(model, tmp_path):
    """``reuse`` is part of the settings (replayed and recomputed layers agree only up to float
    rounding), so a checkpoint resumes only with the same value."""
    ckpt = tmp_path / "p.json"
    depthkv.calibrate(model, CharTokenizer(), workload(2), progress=False, checkpoint=ckpt, n_permutations=9)
    assert depthkv.Profile.load(ckpt).settings["reuse"] is True
    with pytest.raises(ValueError, match="other settings"):
        depthkv.calibrate(model, CharTokenizer(), workload(2), reuse=False, progress=False, checkpoint=ckpt)
