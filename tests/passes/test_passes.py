"""The FX pass on hand-written graphs: every attention node rewritten with its layer's budget."""

from __future__ import annotations

import pytest
import torch.nn.functional as F

from depthkv.kernels.custom_ops import attend_evict_op
from depthkv.passes import UnsupportedAttentionError, find_attention, specialize_budgets
from depthkv.policies import PolicyConfig
from tests.helpers import build_graph


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
