"""A model that overflows (NaN/inf) during calibration is a clear error naming the example and
the layer, never a profile of NaNs."""

from __future__ import annotations

import pytest
import torch

import depthkv
from depthkv.calibration.replay import decoder_layers
from depthkv.workload import Example
from tests.helpers import CharTokenizer, tiny_model


def _examples(n=2):
    return [
        Example(context="k1=42. k2=17. k3=99. " * 4, question=" What is k2?", answer=" 17")
        for _ in range(n)
    ]


def test_overflowing_layer_is_named(tmp_path):
    model = tiny_model("llama")
    with torch.no_grad():
        decoder_layers(model)[1].mlp.down_proj.weight.fill_(float("inf"))  # layer 1 overflows (as fp16 would)
    out = tmp_path / "profile.json"
    with pytest.raises(depthkv.NonFiniteError, match=r"example 0 .* with the full cache is nan; the first layer whose output is not finite is layer 1") as err:
        depthkv.calibrate(model, CharTokenizer(), _examples(), checkpoint=out, progress=False)
    assert "bfloat16 or float32" in str(err.value)
    assert not out.exists()  # nothing written: no profile of NaNs


def test_healthy_model_calibrates(tmp_path):
    profile = depthkv.calibrate(tiny_model("llama"), CharTokenizer(), _examples(), progress=False, n_permutations=50)
    assert profile.n_examples == 2


def test_examples_longer_than_the_position_limit_are_refused_before_work(tmp_path):
    model = tiny_model("llama")  # max_position_embeddings 4096
    examples = _examples(1) + [Example(context="x" * 5000, question=" q?", answer=" a")]
    out = tmp_path / "profile.json"
    with pytest.raises(ValueError, match=r"example 1 .* is 5005 tokens .* more than the model's position limit of 4096"):
        depthkv.calibrate(model, CharTokenizer(), examples, checkpoint=out, progress=False)
    assert not out.exists()  # refused before the first example was measured


def test_evaluation_of_an_overflowing_model_is_an_error():
    model = tiny_model("llama")
    with torch.no_grad():
        decoder_layers(model)[2].self_attn.o_proj.weight.fill_(float("inf"))
    plan = depthkv.uniform_plan(model, 16)
    with pytest.raises(depthkv.NonFiniteError, match=r"example 0 .* the first layer whose output is not finite is layer 2"):
        depthkv.evaluate(model, CharTokenizer(), _examples(), {"uniform": plan}, progress=False)
