"""Progressive depth (training.grow and training.train's ``start_layers``/``grow_stage``)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from training import train as T
from training.grow import carry_adam_state, grow_model

WIDTH = dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1)
TWO_LAYERS = dict(family="llama", num_hidden_layers=2, **WIDTH)
STAGES = (
    {"context": 48, "min_context": 20, "max_keys": 4, "batch_tokens": 192, "kinds": {"dense": 1.0}},
    {"context": 96, "min_context": 48, "max_keys": 6, "batch_tokens": 256, "kinds": T.KINDS},
)


def _model(family: str, layers: int, seed: int):
    return T.new_model({"family": family, "num_hidden_layers": layers, **WIDTH}, seed, 0.05)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_a_grown_model_computes_what_the_small_one_did(family):
    small, large = _model(family, 2, 0), _model(family, 5, 1)
    ids = torch.randint(0, 259, (2, 30))
    before = small(input_ids=ids).logits
    grown = grow_model(small, large)
    assert grown.config.num_hidden_layers == 5
    torch.testing.assert_close(grown(input_ids=ids).logits, before, rtol=0, atol=1e-6)
    for index in range(2, 5):  # new layers: random reads, zero writes
        layer = grown.model.layers[index]
        assert not layer.self_attn.o_proj.weight.any() and not layer.mlp.down_proj.weight.any()
        assert layer.self_attn.q_proj.weight.any()
    for name, tensor in small.state_dict().items():
        assert torch.equal(grown.state_dict()[name], tensor), name
    # ...and it trains: the new layers' outputs move off zero after one step.
    optimizer = torch.optim.AdamW(grown.parameters(), lr=1e-2)
    grown(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert grown.model.layers[4].self_attn.o_proj.weight.any()


def test_growing_needs_a_deeper_model_of_the_same_width():
    with pytest.raises(ValueError, match="must be deeper"):
        grow_model(_model("llama", 3, 0), _model("llama", 3, 0))
    wide = T.new_model({"family": "llama", "num_hidden_layers": 4, **{**WIDTH, "hidden_size": 64}}, 0, 0.05)
    with pytest.raises(ValueError, match="same family and width"):
        grow_model(_model("llama", 2, 0), wide)


def test_adam_state_carries_over_for_the_shared_parameters():
    small, large = _model("llama", 1, 0), _model("llama", 3, 1)
    old = torch.optim.AdamW(small.parameters(), lr=1e-3)
    ids = torch.randint(0, 259, (1, 12))
    small(input_ids=ids, labels=ids).loss.backward()
    old.step()
    grow_model(small, large)
    new = torch.optim.AdamW(large.parameters(), lr=1e-3)
    carried = carry_adam_state(small, old, large, new)
    assert carried == len(list(small.parameters()))
    shared = dict(small.named_parameters())
    for name, param in large.named_parameters():
        if name in shared:
            assert torch.equal(new.state[param]["exp_avg"], old.state[shared[name]]["exp_avg"]), name
        else:
            assert param not in new.state, name


def _run(tmp_path, monkeypatch, name: str, **overrides):
    monkeypatch.setitem(T.PRESETS, "tiny-llama", TWO_LAYERS)
    cfg = T.TrainConfig(
        name="tiny-llama",
        stages=STAGES,
        steps=20,
        stage_steps=(8,),
        warmup_steps=4,
        start_layers=1,
        grow_stage=1,
        **overrides,
    )
    return cfg, tmp_path / name, tmp_path / f"{name}-work"


def test_training_grows_at_its_stage_and_a_run_cut_after_the_growth_resumes_exactly(tmp_path, monkeypatch):
    cfg, out, work = _run(tmp_path, monkeypatch, "whole")
    summary = T.train(cfg, out, work, log=lambda m: None)
    transitions = summary["curriculum"]["transitions"]
    assert transitions[0]["step"] == 8 and transitions[1] == {"step": 8, "grew_to_layers": 2}
    assert "--start-layers 1 --grow-stage 1" in summary["reproduce"]
    from depthkv.models import load_model

    model, _ = load_model(str(out))
    assert model.config.num_hidden_layers == 2
    # Cut after the growth (the checkpoint holds the grown model) and before it: both resume exactly.
    whole = load_file(out / "model.safetensors")
    for cut in (5, 12):
        cut_cfg, cut_out, cut_work = _run(tmp_path, monkeypatch, f"cut{cut}", stop_at=cut)
        T.train(cut_cfg, cut_out, cut_work, log=lambda m: None)
        resumed_cfg, _, _ = _run(tmp_path, monkeypatch, f"cut{cut}")
        T.train(resumed_cfg, cut_out, cut_work, resume=True, log=lambda m: None)
        resumed = load_file(cut_out / "model.safetensors")
        assert whole.keys() == resumed.keys()
        for key in whole:
            assert torch.equal(whole[key], resumed[key]), (cut, key)
    record = json.loads((out / "training.json").read_text())
    assert record["config"]["start_layers"] == 1


def test_bad_growth_settings_are_clear_errors(monkeypatch):
    monkeypatch.setitem(T.PRESETS, "tiny-llama", TWO_LAYERS)
    with pytest.raises(ValueError, match="start_layers must be between 1 and 1"):
        T.check_run_settings(T.TrainConfig(name="tiny-llama", stages=STAGES, start_layers=2, grow_stage=1))
    with pytest.raises(ValueError, match=r"grow_stage must name a later curriculum stage, 1\.\.1"):
        T.check_run_settings(T.TrainConfig(name="tiny-llama", stages=STAGES, start_layers=1, grow_stage=0))


def test_shallow_bias_off_keeps_the_biases_at_zero_until_the_growth(monkeypatch):
    monkeypatch.setitem(T.PRESETS, "tiny-qwen2", dict(TWO_LAYERS, family="qwen2"))
    cfg = T.TrainConfig(name="tiny-qwen2", stages=STAGES, start_layers=1, grow_stage=1, shallow_bias=False)
    small, large = T.model_at(cfg, 1), T.model_at(cfg, 2)
    biases = {id(p) for name, p in small.named_parameters() if name.endswith("_proj.bias")}
    assert len(biases) == 3  # Qwen2's q/k/v
    trained = {id(p) for group in T.new_optimizer(cfg, small).param_groups for p in group["params"]}
    assert not biases & trained and len(trained) == len(list(small.parameters())) - 3
    grown = grow_model(small, large)
    everything = {id(p) for group in T.new_optimizer(cfg, grown).param_groups for p in group["params"]}
    assert everything == {id(p) for p in grown.parameters()}
    on = T.TrainConfig(name="tiny-qwen2", stages=STAGES, start_layers=1, grow_stage=1)
    assert biases <= {id(p) for group in T.new_optimizer(on, small).param_groups for p in group["params"]}
