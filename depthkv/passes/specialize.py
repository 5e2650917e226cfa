"""The FX pass: rewrite every attention node into ``depthkv::attend_evict`` with its layer's budget.

A pure function of (graph, budgets, policy): it finds the attention nodes
(:func:`~depthkv.passes.attention_nodes.find_attention`), replaces each one by the budget-aware op
reading the layer's buffers (the arguments of its ``depthkv::stage`` node), with the layer's budget,
the policy and the layer index as literal constants, and removes the marker and the now-dead K/V
repeat chains. O(nodes).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import fx

from ..ops import attend_evict_op
from ..policies import PolicyConfig
from .attention_nodes import UnsupportedAttentionError, find_attention, is_stage


@dataclass
class PassReport:
    """What one run of the pass did."""

    rewritten: dict[int, int] = field(default_factory=dict)  # layer -> budget baked in
    nodes: int = 0
    seconds: float = 0.0
    impl: str = "reference"


def _keep(node: fx.Node) -> bool:
    """Dead-code elimination keeps side effects: impure ops and in-place methods (``x.add_(1)``)."""
    if node.op == "call_method" and str(node.target).endswith("_") and not str(node.target).endswith("__"):
        return True
    return node.is_impure()


def _meta_shape(node: object) -> tuple[int, ...] | None:
    if not isinstance(node, fx.Node):
        return None
    val = node.meta.get("example_value", node.meta.get("val"))
    return tuple(val.shape) if val is not None and hasattr(val, "shape") else None


def _scale_arg(scale: object) -> object:
    """The softmax scale as the op's ``float`` argument: a literal, or the graph's symbolic float.

    Dynamo makes a module's float attribute (``self.scaling``) a graph input once it has seen it
    change between compilations of the same code (two models of one class with different head
    dims in one process); the op then takes that symbolic value instead of a literal.
    """
    return scale if isinstance(scale, fx.Node) else float(scale)


def specialize_budgets(gm: fx.GraphModule, budgets: list[int], policy: PolicyConfig, impl: str = "reference") -> PassReport:
    """Rewrite ``gm`` in place; returns a :class:`PassReport`.

    Raises:
        UnsupportedAttentionError: an attention node that cannot be mapped to a budgeted cache layer,
            a cache read by something other than attention, or buffers sized for another plan.
    """
    start = time.perf_counter()
    graph = gm.graph
    report = PassReport(nodes=len(graph.nodes))
    op = attend_evict_op()
    for site in find_attention(graph):
        if site.layer >= len(budgets):
            raise UnsupportedAttentionError(
                f"attention node '{site.node.name}' is in layer {site.layer} but the plan has {len(budgets)} layers"
            )
        budget = int(budgets[site.layer])
        k_buf, v_buf, pos_buf, score_buf, seen, k_new, v_new = site.stage.args[:7]
        shape = _meta_shape(k_buf)
        if shape is not None and shape[2] != budget:
            raise UnsupportedAttentionError(
                f"layer {site.layer}: the cache buffer holds {shape[2]} tokens but the plan's budget is {budget}; "
                "make the StaticBudgetCache from the same plan (and context_length) as the backend"
            )
        scale = site.scale
        if scale is None:
            q_shape = _meta_shape(site.query)
            scale = q_shape[-1] ** -0.5 if q_shape else None
        if scale is None:
            raise UnsupportedAttentionError(f"cannot infer the softmax scale of attention node '{site.node.name}'")
        mask = None if site.is_causal else site.mask
        args = (
            site.query, k_new, v_new, mask, k_buf, v_buf, pos_buf, score_buf, seen, _scale_arg(scale), budget,
            policy.name, policy.window, policy.kernel, policy.sinks, policy.seed, site.layer, impl,
        )
        with graph.inserting_before(site.node):
            new = graph.call_function(op, args=args)
        new.meta = dict(site.node.meta)
        site.node.replace_all_uses_with(new)
        graph.erase_node(site.node)
        report.rewritten[site.layer] = budget
    graph.eliminate_dead_code(is_impure_node=_keep)
    leftover = [n for n in graph.nodes if is_stage(n)]
    if leftover:
        users = sorted({u.name for n in leftover for u in n.users})
        raise UnsupportedAttentionError(
            f"the depthkv cache is read by nodes that are not scaled_dot_product_attention ({', '.join(users)}): "
            "an attention form depthkv cannot rewrite. Load the model with attn_implementation='sdpa' or "
            "'depthkv' (depthkv.compile does this)"
        )
    gm.recompile()
    report.seconds = time.perf_counter() - start
    return report
