"""load_engine_plan refuses every malformed engine plan with a CorruptFileError that names the file
and the field: one mutation of a valid export per case (Gemma-3-270M's plan in append mode, so that
full and sliding layers, fractions and tails are all present)."""

from __future__ import annotations

import copy
import json

import pytest

import depthkv
from depthkv.files import CorruptFileError
from depthkv.serving import engine_plan, load_engine_plan
from tests.serving.plans import GEMMA3_PLAN


@pytest.fixture(scope="module")
def valid():
    return engine_plan(depthkv.Plan.load(GEMMA3_PLAN), context_length=4096, mode="append", max_new_tokens=32)


def _set(path: str, value):
    """A mutation that sets ``path`` (``"layers.3.budget"``) to ``value``."""

    def mutate(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


def _delete(path: str):
    def mutate(data):
        *parents, last = path.split(".")
        node = data
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[int(last) if isinstance(node, list) else last]

    return mutate


def _add(path: str, key: str, value):
    def mutate(data):
        node = data
        for part in filter(None, path.split(".")):
            node = node[int(part)] if isinstance(node, list) else node[part]
        node[key] = value

    return mutate


CASES = [
    ("another version", _set("version", 2), "version is 2; this depthkv reads version 1"),
    ("version as text", _set("version", "1"), "version is '1'"),
    ("another format", _set("format", "vllm-config"), "format is 'vllm-config'"),
    ("no totals", _delete("totals"), "the top level is missing field(s) ['totals']"),
    ("unknown field", _add("", "budgets", [1, 2]), "the top level has unknown field(s) ['budgets']"),
    ("layer without budget", _delete("layers.3.budget"), "layers[3] is missing field(s) ['budget']"),
    ("layer with an extra field", _add("layers.4", "heads", 2), "layers[4] has unknown field(s) ['heads']"),
    ("negative budget", _set("layers.3.budget", -5), "layers[3].budget is -5; expected null or a whole number in [1, "),
    ("zero budget", _set("layers.5.budget", 0), "layers[5].budget is 0; expected null or a whole number in [1, "),
    ("budget true", _set("layers.5.budget", True), "layers[5].budget is True"),
    ("fractional budget", _set("layers.5.budget", 12.5), "layers[5].budget is 12.5"),
    ("budget below the policy's floor", _set("layers.1.budget", 3), "layers[1].budget is 3, below the policy's floor 8"),
    ("one layer too few", _delete("layers.17"), "layers has 17 entries but model.num_layers is 18"),
    ("layers not a list", _set("layers", {"0": {}}), "layers is a JSON object"),
    ("layer not an object", _set("layers.2", 512), "layers[2] is a JSON number"),
    ("index out of order", _set("layers.2.index", 7), "layers[2].index is 7"),
    ("unknown attention", _set("layers.0.attention", "global"), "layers[0].attention is 'global'"),
    ("sliding without a window", _set("layers.0.sliding_window", None), "layers[0].sliding_window is None"),
    ("full with a window", _set("layers.5.sliding_window", 512), "layers[5].sliding_window is 512"),
    ("sliding above its window", _set("layers.0.budget", 600), "layers[0].budget is 600, above the layer's sliding window 512"),
    ("sliding keeps all", _set("layers.0.budget", None), "layers[0].budget is null"),
    ("relative without fraction", _set("layers.0.fraction", None), "layers[0].fraction is None"),
    ("negative fraction", _set("layers.0.fraction", -0.1), "layers[0].fraction is -0.1"),
    ("wrong tail", _set("layers.5.tail", 0), "layers[5].tail is 0; in append mode this layer's tail is 32"),
    ("tail on a sliding layer", _set("layers.0.tail", 32), "layers[0].tail is 32"),
    ("wrong slots", _set("layers.5.slots", 5222), "layers[5].slots is 5222; budget + tail is 5254"),
    ("wrong total slots", _set("totals.slots", 1), "totals.slots is 1"),
    ("wrong total budget", _set("totals.budget_tokens", 1), "totals.budget_tokens is 1"),
    ("unknown policy", _set("policy.name", "lru"), "policy is not a valid eviction policy: unknown eviction policy 'lru'"),
    ("policy with a bad kernel", _set("policy.kernel", 4), "policy is not a valid eviction policy"),
    ("policy floor changed", _set("policy.floor", 4), "policy.floor is 4, but the snapkv policy's floor is 8"),
    ("policy stateful changed", _set("policy.stateful", False), "policy.stateful is False"),
    ("unknown mode", _set("mode", "stream"), "mode is 'stream'"),
    ("append without tail", _set("max_new_tokens", 0), "max_new_tokens is 0"),
    ("negative context", _set("context_length", -3), "context_length is -3"),
    ("no layers in the model", _set("model.num_layers", 0), "model.num_layers is 0"),
    ("kv heads as text", _set("model.num_kv_heads", "1"), "model.num_kv_heads is '1'"),
    ("architecture not text", _set("model.architecture", 3), "model.architecture is 3"),
    ("model not an object", _set("model", None), "model is a JSON null"),
    ("relative not a bool", _set("allocation.relative", "yes"), "allocation.relative is 'yes'"),
    ("relative without a length", _set("allocation.context_length", None), "allocation.context_length is null"),
    ("global budget out of range", _set("allocation.global_budget", 1.5), "allocation.global_budget is wrong"),
]


@pytest.mark.parametrize("mutate, says", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_malformed_engine_plan_is_refused_naming_the_file_and_the_field(valid, tmp_path, mutate, says):
    data = copy.deepcopy(valid)
    mutate(data)
    path = tmp_path / "engine.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CorruptFileError) as info:
        load_engine_plan(path)
    message = str(info.value)
    assert str(path) in message
    assert says in message, message


def test_the_unmutated_engine_plan_loads(valid, tmp_path):
    path = tmp_path / "engine.json"
    path.write_text(json.dumps(valid))
    assert load_engine_plan(path) == valid


@pytest.mark.parametrize(
    "text, says",
    [
        ("", "is empty"),
        ('{"format": "depthkv-engine-plan", "version": 1, "layers": [', "not valid JSON"),
        ("[1, 2]", "holds a JSON list"),
        ('{"format": "depthkv-engine-plan", "version": NaN}', "not a finite number"),
    ],
)
def test_a_file_that_is_not_an_engine_plan_is_refused(tmp_path, text, says):
    path = tmp_path / "engine.json"
    path.write_text(text)
    with pytest.raises(CorruptFileError, match=says):
        load_engine_plan(path)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="engine plan file"):
        load_engine_plan(tmp_path / "nothing.json")
