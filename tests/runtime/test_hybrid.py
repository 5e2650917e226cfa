"""Models mixing sliding-window and full-attention layers (Gemma 3; Mistral with a sliding window):
each layer's window is part of the fingerprint, a sliding layer never holds more than its window,
allocation spends the global budget where it can be used, and features depthkv cannot run are
refused before any work. Equivalence with the unmodified model (eager and compiled, prompts longer
than the window) is in the family-parametrized tests of ``test_cache.py`` and ``test_backend.py``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import depthkv
from depthkv.profile.fingerprints import UnsupportedModelError
from tests.helpers import WINDOW, CharTokenizer, make_profile, tiny_model, workload


@pytest.fixture(scope="module")
def gemma3():
    return tiny_model("gemma3")


def _ids(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def test_the_fingerprint_records_each_layer_s_window(gemma3, tmp_path):
    assert depthkv.fingerprint(gemma3).layer_windows == (WINDOW, WINDOW, None)
    assert depthkv.fingerprint(tiny_model("mistral-sliding")).layer_windows == (WINDOW,) * 3
    assert depthkv.fingerprint(tiny_model("llama")).layer_windows is None
    profile = make_profile(gemma3)
    loaded = depthkv.Profile.load(profile.save(tmp_path / "p.json"), model=gemma3)
    assert loaded.fingerprint.layer_windows == (WINDOW, WINDOW, None)
    # Files written before hybrid models were supported have no windows, and still load.
    old = depthkv.fingerprint(tiny_model("llama")).to_dict()
    del old["layer_windows"]
    assert depthkv.ModelFingerprint.from_dict(old).layer_windows is None


@pytest.mark.parametrize("budgets", [[None, None, None], [10, 12, 14]])
def test_a_sliding_layer_never_holds_more_than_its_window(gemma3, budgets):
    plan = depthkv.plan_from_budgets(gemma3, budgets)
    expected = [WINDOW, WINDOW, None] if budgets[0] is None else budgets
    assert plan.budgets_for(None) == expected
    with depthkv.apply(gemma3, plan) as handle, torch.no_grad():
        cache = handle.new_cache()
        handle(_ids(40), cache=cache)
        for step in range(12):
            held = cache.held_tokens()
            assert held[0] <= WINDOW and held[1] <= WINDOW, (step, held)
            assert held[2] == (40 + step if budgets[2] is None else budgets[2])
            handle(torch.tensor([[5 + step]]), cache=cache)


def test_allocation_caps_sliding_layers_and_spends_the_rest_where_it_can_be_used(gemma3):
    """100-token contexts, 3 layers, window 16: the two sliding layers can use 16 tokens each."""
    profile = make_profile(gemma3)
    profile.degradation[:] = np.abs(profile.degradation)
    for strategy in depthkv.STRATEGIES:
        plan = depthkv.allocate(profile, 0.3, strategy)  # 30 per layer on average: 90 in all
        assert plan.caps == [WINDOW, WINDOW, None]
        assert plan.budgets[0] <= WINDOW and plan.budgets[1] <= WINDOW, (strategy, plan.budgets)
        assert plan.total == 90 and min(plan.budgets) >= plan.floor, (strategy, plan.budgets)
    uniform = depthkv.allocate(profile, 0.3, "uniform")
    assert uniform.budgets == [16, 16, 58]  # equal shares, capped; the rest to the full-attention layer
    # A budget above what the layers can hold is cut to it (16 + 16 + the 100-token context).
    big = depthkv.allocate(profile, 0.9, "proportional")
    assert big.total == 132 and big.metadata["requested_total"] == 270
    # Rescaled to a longer prompt, the sliding layers stay at their window and the rest moves.
    longer = uniform.budgets_for(400)
    assert longer[:2] == [16, 16] and sum(longer) == round(90 * 400 / 100)


def test_calibration_sees_no_loss_in_a_sliding_layer_pruned_to_at_least_its_window(gemma3):
    profile = depthkv.calibrate(
        gemma3, CharTokenizer(), workload(2), ablation_budget=[WINDOW + 4, 10], progress=False, n_permutations=9
    )
    assert profile.fingerprint.layer_windows == (WINDOW, WINDOW, None)
    assert np.abs(profile.degradation[0][:, :2]).max() < 1e-5  # a sliding layer attends to its window only
    assert np.any(profile.degradation[0][:, 2] != 0)  # the full-attention layer loses context
    assert np.any(profile.degradation[1][:, :2] != 0)  # below the window, sliding layers lose too


def test_unsupported_attention_features_are_refused_before_any_work():
    import transformers as tf

    config = tf.Gemma2Config(
        vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, attn_logit_softcapping=50.0, sliding_window=16,
    )
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(UnsupportedModelError, match="gemma2 soft-caps its attention logits"):
        depthkv.fingerprint(model)
    with pytest.raises(UnsupportedModelError, match="soft-caps"):
        depthkv.calibrate(model, CharTokenizer(), workload(1), progress=False)
    with pytest.raises(UnsupportedModelError, match="soft-caps"):
        depthkv.uniform_plan(model, 16)
    assert issubclass(depthkv.UnsupportedModelError, ValueError)
