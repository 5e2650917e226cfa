"""Models split over devices by accelerate (device_map, CPU and disk offload) on every depthkv path.

This machine has one device, the CPU, so the split is the one accelerate makes there: some blocks'
weights are offloaded (to disk, or to a CPU copy) and sit on the ``meta`` device between calls,
while accelerate's hooks load them and move activations at each call. That is the case that breaks
``next(model.parameters()).device`` (it is ``meta``) and the code path several GPUs take (the
hooks and ``execution_device`` are the same; the GPU script splits a model over CUDA and the CPU).
Each path must give what the unsplit model gives.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from accelerate import cpu_offload

import depthkv
from depthkv import StaticBudgetCache, greedy_generate
from depthkv.cli import main
from depthkv.runtime.attention import depthkv_attention_enabled
from depthkv.runtime.devices import execution_device, input_device, layer_devices
from depthkv.workload import builtin_workload

# tiny-llama's blocks: embeddings, layer 1 and 3 and the output head on disk, the rest on the CPU
DISK_MAP = {
    "model.embed_tokens": "disk", "model.layers.0": "cpu", "model.layers.1": "disk", "model.layers.2": "cpu",
    "model.layers.3": "disk", "model.layers.4": "cpu", "model.layers.5": "cpu", "model.norm": "cpu",
    "model.rotary_emb": "cpu", "lm_head": "disk",
}
BUDGETS = [8, 24, 8, 8, 16, 8]
NEW = 8


@pytest.fixture(scope="module")
def unsplit():
    return depthkv.load_model("tiny-llama")


@pytest.fixture(scope="module", params=["disk-offload", "cpu-offload"])
def split(request, tmp_path_factory):
    """tiny-llama loaded with a device map that offloads to disk, or wrapped whole by accelerate's
    cpu_offload (every weight on meta, loaded into the CPU at each call)."""
    if request.param == "disk-offload":
        model, tokenizer = depthkv.load_model(
            "tiny-llama", device_map=DISK_MAP, offload_folder=tmp_path_factory.mktemp("offload")
        )
    else:
        model, tokenizer = depthkv.load_model("tiny-llama")
        model = cpu_offload(model, execution_device="cpu")
    assert next(model.parameters()).device.type == "meta"  # the assumption depthkv must not make
    return model, tokenizer


@pytest.fixture(scope="module")
def workload():
    return builtin_workload(["kv_retrieval"], n_per_task=2, context_length=160)


def test_devices_are_read_from_accelerate_hooks(split):
    model, _ = split
    assert input_device(model) == torch.device("cpu")
    assert layer_devices(model) == [torch.device("cpu")] * 6


def test_each_layer_s_buffers_live_on_that_layer_s_execution_device(unsplit, monkeypatch):
    """A layer whose hook says it runs elsewhere gets its buffers there (meta stands in for a second
    GPU: a model-wide device would put layer 2's buffers on the CPU)."""
    model, _ = unsplit
    layer = model.model.layers[2]
    monkeypatch.setattr(layer, "_hf_hook", type("Hook", (), {"execution_device": "meta"})(), raising=False)
    assert execution_device(layer) == torch.device("meta")
    plan = depthkv.plan_from_budgets(model, BUDGETS)
    with depthkv_attention_enabled(model):  # a hooked model needs depthkv's attention (as depthkv.compile sets)
        cache = StaticBudgetCache.for_model(model, plan, max_len=64, impl="reference")
    assert [lay.keys.device.type for lay in cache.layers] == ["cpu", "cpu", "meta", "cpu", "cpu", "cpu"]
    assert [lay.positions.device.type for lay in cache.layers] == ["cpu", "cpu", "meta", "cpu", "cpu", "cpu"]


@pytest.fixture(scope="module")
def methods(unsplit):
    return {"full": None, "plan": depthkv.plan_from_budgets(unsplit[0], BUDGETS)}


@pytest.fixture(scope="module")
def reference(unsplit, workload, methods):
    """The unsplit model's profile and scores in both decode modes (computed once)."""
    profile = depthkv.calibrate(*unsplit, workload, n_permutations=200, progress=False)
    scores = {mode: depthkv.evaluate(*unsplit, workload, methods, progress=False, mode=mode) for mode in ("evict", "append")}
    return profile, scores


def test_calibrate_gives_the_unsplit_profile(split, workload, reference):
    ref = reference[0]
    got = depthkv.calibrate(*split, workload, n_permutations=200, progress=False)
    np.testing.assert_allclose(got.degradation, ref.degradation, rtol=1e-5, atol=1e-6)
    assert got.context_lengths == ref.context_lengths and got.fingerprint == ref.fingerprint


@pytest.mark.parametrize("mode", ["evict", "append"])
def test_evaluate_gives_the_unsplit_scores(split, workload, methods, reference, mode):
    ref = reference[1][mode]
    got = depthkv.evaluate(*split, workload, methods, progress=False, mode=mode)
    assert {k: (r.scores, r.kv_tokens) for k, r in got.items()} == {k: (r.scores, r.kv_tokens) for k, r in ref.items()}


def _prompt(tokenizer, workload):
    return torch.tensor([tokenizer.encode(workload.examples[0].context)])


def test_apply_and_generate_give_the_unsplit_tokens(unsplit, split, workload):
    plan = depthkv.plan_from_budgets(unsplit[0], BUDGETS)
    ids = _prompt(unsplit[1], workload)
    outs = []
    for model, _ in (unsplit, split):
        handle = depthkv.apply(model, plan)
        try:
            outs.append(greedy_generate(model, ids, handle.new_cache(ids.shape[1]), NEW))
        finally:
            handle.remove()
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-4, atol=1e-4)


def test_compiled_static_cache_gives_the_unsplit_tokens(unsplit, workload, tmp_path):
    """depthkv.compile on a model loaded with a disk-offloading device map compiles each decoder
    layer (accelerate's hooks run outside graphs): every layer's attention is rewritten in the
    prefill and the decode graphs."""
    torch._dynamo.reset()
    plan = depthkv.plan_from_budgets(unsplit[0], BUDGETS)
    ids = _prompt(unsplit[1], workload)
    handle = depthkv.apply(unsplit[0], plan)
    try:
        ref = greedy_generate(unsplit[0], ids, handle.new_cache(ids.shape[1]), NEW)
    finally:
        handle.remove()
    model, _ = depthkv.load_model("tiny-llama", device_map=DISK_MAP, offload_folder=tmp_path)
    try:
        depthkv.compile(model, plan, context_length=ids.shape[1], inner="aot_eager")
        cache = StaticBudgetCache.for_model(model, plan, max_len=ids.shape[1] + NEW, context_length=ids.shape[1])
        got = greedy_generate(model, ids, cache, NEW)
    finally:
        torch._dynamo.reset()
    assert torch.equal(got[0], ref[0])
    torch.testing.assert_close(got[1], ref[1], rtol=1e-4, atol=1e-4)
    rewritten = sorted(layer for report in model._depthkv_backend.reports for layer in report.rewritten)
    assert rewritten == sorted(list(range(6)) * 2)  # prefill and decode, every layer once each


def test_cli_runs_on_a_device_map(tmp_path, workload):
    """`depthkv calibrate --device-map ... --offload-folder ...` writes the unsplit model's profile."""
    import json

    common = ["calibrate", "--tasks", "kv_retrieval", "--n-per-task", "2", "--context-length", "160",
              "--n-permutations", "100", "--no-progress"]
    assert main([*common, "--out", str(tmp_path / "one.json")]) == 0
    assert main([*common, "--device-map", json.dumps(DISK_MAP), "--offload-folder", str(tmp_path / "off"),
                 "--out", str(tmp_path / "split.json")]) == 0
    one, split = (json.loads((tmp_path / f).read_text()) for f in ("one.json", "split.json"))
    np.testing.assert_allclose(split["degradation"], one["degradation"], rtol=1e-5, atol=1e-6)
    assert main([*common, "--offload-folder", str(tmp_path), "--out", str(tmp_path / "x.json")]) == 2


@pytest.mark.parametrize(
    ("value", "says"),
    [("[1, 2]", "a device map is a JSON object"), ("{not json", "neither auto/balanced"),
     ("missing-map.json", "does not exist"), ('{"model.layers.0": 1.5}', "a device map is a JSON object")],
)
def test_a_bad_device_map_is_refused_with_what_is_wrong(value, says, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["calibrate", "--device-map", value, "--out", "never.json"])
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_whole_model_torch_compile_of_a_split_model_is_refused_with_the_way_out(unsplit, tmp_path):
    """torch.compile(model, backend=depthkv.backend(plan)) cannot compile a dispatched model whole
    (accelerate's hooks break every graph, and the fragments Dynamo runs eagerly would attend with
    SDPA over the static buffers): making its cache says so and names depthkv.compile."""
    model, _ = depthkv.load_model("tiny-llama", device_map=DISK_MAP, offload_folder=tmp_path)
    plan = depthkv.plan_from_budgets(unsplit[0], BUDGETS)
    with pytest.raises(depthkv.DepthKVUsageError, match=r"split over devices by accelerate.*Use depthkv.compile"):
        StaticBudgetCache.for_model(model, plan, max_len=64)
    StaticBudgetCache.for_model(unsplit[0], plan, max_len=64)  # one device: torch.compile(model, ...) works
    with depthkv_attention_enabled(model):  # what depthkv.compile does first: then the cache is made
        StaticBudgetCache.for_model(model, plan, max_len=64)
