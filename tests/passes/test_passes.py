"""The FX pass on hand-written graphs: every attention node rewritten with its layer's budget."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from depthkv.kernels.custom_ops import attend_evict_op
from depthkv.kernels.decode_step import decode_step_flat
from depthkv.passes import UnsupportedAttentionError, find_attention, specialize_budgets
from depthkv.policies import PolicyConfig
from tests.helpers import build_graph


def _calls(gm, target):
    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target is target]


@pytest.mark.parametrize("form", ["repeat", "enable_gqa"])
def test_every_attention_node_rewritten_with_its_budget(form):
    """A multi-token step: the opaque op with the layer's budget and index as literals."""
    budgets = [12, 40, 9, 25]
    gm = build_graph(budgets, gqa_form=form, m=4)
    report = specialize_budgets(gm, budgets, PolicyConfig())
    assert report.rewritten == dict(enumerate(budgets)) and report.fused == {}
    ops = _calls(gm, attend_evict_op())
    assert len(ops) == len(budgets)
    assert [n.args[10] for n in ops] == budgets  # budget literal
    assert [n.args[16] for n in ops] == [0, 1, 2, 3]  # layer literal
    assert not any(n.op == "call_function" and n.target is F.scaled_dot_product_attention for n in gm.graph.nodes)
    assert not any("stage" in str(n.target) for n in gm.graph.nodes)  # markers and repeat chains removed


@pytest.mark.parametrize("append", [False, True])
def test_single_token_steps_become_graph_operations(append):
    """A decode graph on impl="reference": no opaque op, the sort-free step as a plain function
    Inductor can trace into (its policy and mode literals baked in); on "triton" the fused op."""
    budgets = [12, 40, 9]
    gm = build_graph(budgets, m=1, append=append)
    report = specialize_budgets(gm, budgets, PolicyConfig("h2o", window=3))
    assert report.fused == dict.fromkeys(range(3), "append" if append else "evict")
    assert not _calls(gm, attend_evict_op())
    steps = _calls(gm, decode_step_flat)
    assert len(steps) == 3
    assert [n.args[10:16] for n in steps] == [("h2o", 3, 5, 4, 0, append)] * 3
    gm = build_graph(budgets, m=1, append=append)
    report = specialize_budgets(gm, budgets, PolicyConfig(), impl="triton")
    assert report.fused == {} and len(_calls(gm, attend_evict_op())) == 3
    assert [n.args[18] for n in _calls(gm, attend_evict_op())] == [append] * 3


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
    with pytest.raises(UnsupportedAttentionError, match="holds 16 slots and keeps 16 but the plan's budget is 20"):
        specialize_budgets(gm, [16, 20], PolicyConfig())


def test_plan_with_fewer_layers_is_an_error():
    gm = build_graph([16, 16, 16])
    with pytest.raises(UnsupportedAttentionError, match="plan has 2 layers"):
        specialize_budgets(gm, [16, 16], PolicyConfig())
