"""The FX pass: rewrite every attention node into budget-aware attention with its layer's budget.

A pure function of (graph, budgets, policy): it finds the attention nodes
(:func:`~depthkv.passes.attention_nodes.find_attention`), replaces each one by the budget-aware step
reading the layer's buffers (the arguments of its ``depthkv::stage`` node), with the layer's budget,
the policy, the layer index and the cache's decode mode as literal constants, and removes the
marker and the now-dead K/V repeat chains. O(nodes).

What replaces an attention node depends on the step's query length (static in the graph):

* one new token on ``impl="reference"``: :func:`~depthkv.kernels.decode_step.decode_step_flat`,
  plain tensor operations (attention, score update, the victim's argmin, in-place writes) that
  AOTAutograd traces and Inductor fuses — no opaque op in a decode graph;
* one new token on ``"triton"``/``"flash"``: ``depthkv::attend_evict``, which runs the fused Triton
  decode kernel (one launch per layer);
* several tokens (prefill, a new turn): ``depthkv::attend_evict``, where selection needs a
  ranking of every slot.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from torch import fx

from depthkv.kernels import LayerBuffers
from depthkv.kernels.custom_ops import attend_evict_args, attend_evict_op
from depthkv.kernels.decode_step import decode_step_flat
from depthkv.passes.attention_nodes import UnsupportedAttentionError, find_attention, is_stage
from depthkv.policies import PolicyConfig


@dataclass
class PassReport:
    """What one run of the pass did."""

    rewritten: dict[int, int] = field(default_factory=dict)  # layer -> budget baked in
    fused: dict[int, str] = field(default_factory=dict)  # layer -> decode mode emitted as graph operations
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


def _stage_literal(site, index: int, name: str) -> int | None:
    """An int literal of the stage marker; None when Dynamo made it a graph input (``keep``)."""
    stage = site.stage
    value = stage.args[index] if len(stage.args) > index else stage.kwargs.get(name)
    if isinstance(value, fx.Node) and name == "keep":
        return None
    if not isinstance(value, int):  # bools are ints
        raise UnsupportedAttentionError(f"layer {site.layer}: the cache marker's {name} is not a literal ({value!r})")
    return int(value)


def _scale_arg(scale: object) -> object:
    """The softmax scale as the op's ``float`` argument: a literal, or the graph's symbolic float.

    Dynamo makes a module's float attribute (``self.scaling``) a graph input once it has seen it
    change between compilations of the same code (two models of one class with different head
    dims in one process); the op then takes that symbolic value instead of a literal.
    """
    return scale if isinstance(scale, fx.Node) else float(scale)


def specialize_budgets(
    gm: fx.GraphModule, budgets: list[int | None], policy: PolicyConfig, impl: str = "reference"
) -> PassReport:
    """Rewrite ``gm`` in place; returns a :class:`PassReport`.

    Args:
        budgets: tokens per layer; ``None`` for a full layer, whose budget is its buffer's size
            (a :class:`~depthkv.StaticBudgetCache` gives full layers ``max_len`` slots).
        policy: the eviction policy baked into every layer.
        impl: the resolved kernel implementation baked into every layer.

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
        k_buf, v_buf, pos_buf, score_buf, seen, k_new, v_new = site.stage.args[:7]
        keep, append = _stage_literal(site, 9, "keep"), bool(_stage_literal(site, 10, "append"))
        shape = _meta_shape(k_buf)
        if keep is None:
            # Dynamo turned the layer's int attribute into a graph input (it saw it change between
            # compilations of the same code): the buffer's size stands for it (evict mode).
            keep = budgets[site.layer] if budgets[site.layer] is not None else shape[2] if shape else None
        if keep is None:
            raise UnsupportedAttentionError(f"layer {site.layer}: cannot tell how many slots the cache keeps")
        budget = keep if budgets[site.layer] is None else int(budgets[site.layer])
        if keep != budget or (shape is not None and (shape[2] < budget or (not append and shape[2] != budget))):
            slots = "?" if shape is None else shape[2]
            raise UnsupportedAttentionError(
                f"layer {site.layer}: the cache buffer holds {slots} slots and keeps {keep} but the plan's budget "
                f"is {budget}; make the StaticBudgetCache from the same plan (and context_length) as the backend"
            )
        scale = site.scale
        if scale is None:
            q_shape = _meta_shape(site.query)
            scale = q_shape[-1] ** -0.5 if q_shape else None
        if scale is None:
            raise UnsupportedAttentionError(f"cannot infer the softmax scale of attention node '{site.node.name}'")
        mask = None if site.is_causal else site.mask
        buffers = LayerBuffers(k_buf, v_buf, pos_buf, score_buf, seen)  # graph nodes standing for the tensors
        args = attend_evict_args(
            site.query, k_new, v_new, mask, buffers, _scale_arg(scale), budget, policy, site.layer, impl, append
        )
        q_shape = _meta_shape(site.query)
        single = q_shape is not None and q_shape[2] == 1
        with graph.inserting_before(site.node):
            if single and impl == "reference":
                # one new token: plain graph operations (attention, scores, argmin, in-place write)
                flat = (*args[:10], *args[11:16], append)
                new = graph.call_function(decode_step_flat, args=flat)
                report.fused[site.layer] = "append" if append else "evict"
            else:
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
