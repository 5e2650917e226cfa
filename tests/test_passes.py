"""The FX pass on hand-written graphs: every attention node rewritten with its layer's budget."""

from __future__ import annotations

import operator

import pytest
import torch
import torch.nn.functional as F
from torch import fx

from depthkv.ops import attend_evict_op, stage_op
from depthkv.passes import UnsupportedAttentionError, find_attention, specialize_budgets
from depthkv.policies import PolicyConfig

B, HKV, G, D, MAX = 1, 2, 2, 8, 64


def _placeholder(graph, name, shape, dtype=torch.float32):
    node = graph.placeholder(name)
    node.meta["example_value"] = torch.empty(shape, dtype=dtype, device="meta")
    return node


def build_graph(budgets, *, gqa_form="repeat", break_layer=None, extra_reader=False):
    """A small Dynamo-like graph: per layer, stage -> (repeat_kv) -> sdpa, chained through the output."""
    graph = fx.Graph()
    extra = []
    x = _placeholder(graph, "q0", (B, HKV * G, 1, D))
    mask = _placeholder(graph, "mask", (B, 1, 1, MAX), torch.bool)
    stage = stage_op()
    for layer, budget in enumerate(budgets):
        bufs = [
            _placeholder(graph, f"k_buf{layer}", (B, HKV, budget, D)),
            _placeholder(graph, f"v_buf{layer}", (B, HKV, budget, D)),
            _placeholder(graph, f"pos{layer}", (B, HKV, budget), torch.long),
            _placeholder(graph, f"score{layer}", (B, HKV, budget)),
            _placeholder(graph, f"seen{layer}", (), torch.long),
        ]
        k_new = _placeholder(graph, f"k_new{layer}", (B, HKV, 1, D))
        v_new = _placeholder(graph, f"v_new{layer}", (B, HKV, 1, D))
        st = graph.call_function(stage, (*bufs, k_new, v_new, layer, MAX))
        k = graph.call_function(operator.getitem, (st, 0))
        v = graph.call_function(operator.getitem, (st, 1))
        if layer == break_layer:
            k = k_new  # attention that does not read the cache
        if gqa_form == "repeat":
            idx = (slice(None), slice(None), None, slice(None), slice(None))
            k = graph.call_method("reshape", (graph.call_method("expand", (graph.call_function(operator.getitem, (k, idx)), B, HKV, G, MAX, D)), B, HKV * G, MAX, D))
            v = graph.call_method("reshape", (graph.call_method("expand", (graph.call_function(operator.getitem, (v, idx)), B, HKV, G, MAX, D)), B, HKV * G, MAX, D))
            kwargs = {"attn_mask": mask, "scale": 0.5}
        else:
            kwargs = {"attn_mask": mask, "scale": 0.5, "enable_gqa": True}
        if extra_reader and layer == 0:
            extra.append(graph.call_function(torch.matmul, (x, graph.call_method("transpose", (k, -1, -2)))))
        x = graph.call_function(F.scaled_dot_product_attention, (x, k, v), kwargs)
        x.meta["nn_module_stack"] = {"a": (f"L['self'].model.layers.{layer}.self_attn", object)}
    graph.output((x, *extra) if extra else x)
    return fx.GraphModule(torch.nn.Module(), graph)


@pytest.mark.parametrize("form", ["repeat", "enable_gqa"])
def test_every_attention_node_rewritten_with_its_budget(form):
    budgets = [12, 40, 9, 25]
    gm = build_graph(budgets, gqa_form=form)
    report = specialize_budgets(gm, budgets, PolicyConfig())
    assert report.rewritten == dict(enumerate(budgets))
    ops = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is attend_evict_op()]
    assert len(ops) == len(budgets)
    assert [n.args[10] for n in ops] == budgets  # budget literal
    assert [n.args[16] for n in ops] == [0, 1, 2, 3]  # layer literal
    assert not any(n.op == "call_function" and n.target is F.scaled_dot_product_attention for n in gm.graph.nodes)
    assert not any("stage" in str(n.target) for n in gm.graph.nodes)  # markers and repeat chains removed


def test_pass_rewrites_a_deep_model():
    """64 layers: every one rewritten with its own budget (the pass's cost against depth is measured
    in benchmarks/test_pass_cost.py, not asserted here: wall-clock limits flake under load)."""
    budgets = [8 + i for i in range(64)]
    gm = build_graph(budgets)
    report = specialize_budgets(gm, budgets, PolicyConfig())
    assert report.rewritten == dict(enumerate(budgets))


def test_attention_not_reading_the_cache_is_an_error_naming_the_node():
    gm = build_graph([16, 16, 16], break_layer=1)
    with pytest.raises(UnsupportedAttentionError, match="scaled_dot_product_attention_1"):
        find_attention(gm.graph)


def test_cache_read_by_non_attention_is_an_error():
    gm = build_graph([16, 16], extra_reader=True)
    with pytest.raises(UnsupportedAttentionError, match="not scaled_dot_product_attention"):
        specialize_budgets(gm, [16, 16], PolicyConfig())


def test_buffer_sized_for_another_plan_is_an_error():
    gm = build_graph([16, 16])
    with pytest.raises(UnsupportedAttentionError, match="holds 16 tokens but the plan's budget is 20"):
        specialize_budgets(gm, [16, 20], PolicyConfig())


def test_plan_with_fewer_layers_is_an_error():
    gm = build_graph([16, 16, 16])
    with pytest.raises(UnsupportedAttentionError, match="plan has 2 layers"):
        specialize_budgets(gm, [16, 16], PolicyConfig())
