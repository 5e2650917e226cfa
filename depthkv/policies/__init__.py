"""Eviction policies inside a layer: which KV slots a layer keeps when it is over its budget.

* :mod:`~depthkv.policies.config` — :class:`PolicyConfig` (name, window, pooling kernel, sinks, seed).
* :mod:`~depthkv.policies.scores` — :func:`score`: per-slot, per-KV-head scores (the reference
  implementations every fast path is tested against).
* :mod:`~depthkv.policies.selection` — :func:`select`: the slots to keep from the scores.

Adding a policy: a name in :data:`POLICIES`, a scorer in ``scores._SCORERS`` (with its math in
:func:`score`'s docstring), ``stateful`` if its scores accumulate across steps; see
``docs/architecture.md``.
"""

from depthkv.policies.config import POLICIES, PolicyConfig, as_policy
from depthkv.policies.scores import attention_probs, pool, score
from depthkv.policies.selection import select

__all__ = ["POLICIES", "PolicyConfig", "as_policy", "attention_probs", "pool", "score", "select"]
