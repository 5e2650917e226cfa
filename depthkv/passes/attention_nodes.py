"""Finding attention in a Dynamo-level FX graph and the cache layer it reads.

At the Dynamo level attention is one node, ``torch.nn.functional.scaled_dot_product_attention``,
whether the model's attention implementation is ``sdpa`` (K/V possibly repeated for GQA with an
``x[:, :, None].expand(...).reshape(...)`` chain when a mask is passed) or ``depthkv`` (which emits
SDPA with ``enable_gqa`` while tracing). Its key argument is traced back through view-like nodes to
the ``depthkv::stage`` node of a :class:`~depthkv.runtime.static_cache.StaticBudgetLayer`, whose arguments
are that layer's buffers and whose ``layer_idx`` literal names the layer. The node's module path
(``nn_module_stack``) is the cross-check.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import fx

SDPA_TARGETS = (F.scaled_dot_product_attention, torch._C._nn.scaled_dot_product_attention)
# Nodes that only re-view their first argument (what repeat_kv, slicing and layout changes emit).
_VIEW_METHODS = frozenset({"expand", "reshape", "view", "contiguous", "clone", "to", "transpose", "unsqueeze"})
_VIEW_FUNCTIONS = frozenset({torch.reshape, torch.repeat_interleave, torch.Tensor.contiguous})
_LAYER_PATH = re.compile(r"layers[._\[]+(\d+)")


class UnsupportedAttentionError(ValueError):
    """An attention node depthkv cannot map to a budgeted cache layer."""


@dataclass
class AttentionSite:
    """One attention node and what it reads."""

    node: fx.Node
    stage: fx.Node
    layer: int
    scale: float | None
    is_causal: bool

    # Read from the node when asked: earlier rewrites may have replaced the nodes they point to.
    @property
    def query(self) -> fx.Node:
        return _arg(self.node, 0, "query")

    @property
    def mask(self) -> fx.Node | None:
        return _arg(self.node, 3, "attn_mask")


def is_sdpa(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in SDPA_TARGETS


def is_stage(node: fx.Node) -> bool:
    return node.op == "call_function" and "depthkv.stage" in str(node.target)


def _arg(node: fx.Node, index: int, name: str, default=None):
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def trace_to_stage(value: object) -> fx.Node | None:
    """Follow view-like nodes from an attention input back to a ``depthkv::stage`` node."""
    node = value
    for _ in range(32):
        if not isinstance(node, fx.Node):
            return None
        if node.op == "call_function" and node.target is operator.getitem:
            src = node.args[0]
            if isinstance(src, fx.Node) and is_stage(src):
                return src
            node = src
        elif node.op == "call_method" and node.target in _VIEW_METHODS:
            node = node.args[0]
        elif node.op == "call_function" and node.target in _VIEW_FUNCTIONS:
            node = node.args[0]
        else:
            return None
    return None


def module_layer(node: fx.Node) -> int | None:
    """Layer index from the node's module path (``...layers.3.self_attn``), if any."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _cls in reversed(list(stack.values())):
        match = _LAYER_PATH.search(str(path))
        if match:
            return int(match.group(1))
    return None


def find_attention(graph: fx.Graph) -> list[AttentionSite]:
    """Every attention node of ``graph`` with its layer; raises naming any node it cannot map.

    Raises:
        UnsupportedAttentionError: an attention node that does not read a depthkv static cache, or
            whose layer cannot be determined, or a layer read twice.
    """
    sites: list[AttentionSite] = []
    for node in graph.nodes:
        if not is_sdpa(node):
            continue
        stage = trace_to_stage(_arg(node, 1, "key"))
        if stage is None or trace_to_stage(_arg(node, 2, "value")) is not stage:
            raise UnsupportedAttentionError(
                f"attention node '{node.name}' (module {module_layer(node)}) does not read its keys/values from a "
                "depthkv StaticBudgetCache. Run the compiled model with "
                "cache=depthkv.StaticBudgetCache.for_model(model, plan, max_len=...) and use_cache=True"
            )
        layer = stage.args[7] if len(stage.args) > 7 else stage.kwargs.get("layer_idx")
        if not isinstance(layer, int):
            layer = module_layer(node)
        if layer is None:
            raise UnsupportedAttentionError(f"cannot tell which layer attention node '{node.name}' belongs to")
        path_layer = module_layer(node)
        if path_layer is not None and path_layer != layer:
            raise UnsupportedAttentionError(
                f"attention node '{node.name}' sits in layer {path_layer} but reads the cache of layer {layer}"
            )
        if _arg(node, 4, "dropout_p", 0.0):
            raise UnsupportedAttentionError(f"attention node '{node.name}' uses dropout; call model.eval()")
        sites.append(
            AttentionSite(
                node=node,
                stage=stage,
                layer=layer,
                scale=node.kwargs.get("scale"),
                is_causal=bool(_arg(node, 5, "is_causal", False)),
            )
        )
    layers = [s.layer for s in sites]
    dupes = sorted({x for x in layers if layers.count(x) > 1})
    if dupes:
        raise UnsupportedAttentionError(f"layers {dupes} are attended more than once in one graph")
    return sites
