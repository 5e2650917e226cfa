"""FX passes of depthkv's torch.compile backend: pure functions of (graph, plan).

* :mod:`~depthkv.passes.attention_nodes` — find every attention node of a Dynamo-level graph and
  the cache layer it reads (:func:`find_attention`).
* :mod:`~depthkv.passes.specialize` — rewrite each into ``depthkv::attend_evict`` with its layer's
  budget as a literal (:func:`specialize_budgets`).
"""

from depthkv.passes.attention_nodes import AttentionSite, UnsupportedAttentionError, find_attention
from depthkv.passes.specialize import PassReport, specialize_budgets

__all__ = ["AttentionSite", "PassReport", "UnsupportedAttentionError", "find_attention", "specialize_budgets"]
