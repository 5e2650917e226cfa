"""Runtime: running a model with per-layer budgets.

* :mod:`~depthkv.runtime.cache` — :class:`BudgetCache`, the eager reference cache (storage re-made
  at the kept size: memory really freed).
* :mod:`~depthkv.runtime.static_cache` — :class:`StaticBudgetCache`, fixed per-layer buffers for
  compiled models and CUDA graphs.
* :mod:`~depthkv.runtime.modes` — the decode modes, ``evict`` and ``append``.
* :mod:`~depthkv.runtime.attention` — the ``depthkv`` attention implementation registered with
  transformers; :mod:`~depthkv.runtime.handoff` — how a cache layer reaches it.
* :mod:`~depthkv.runtime.handle` — :func:`apply` (eager runs and ``generate``).
* :mod:`~depthkv.runtime.generation` — the one greedy decode loop.
"""

from depthkv.runtime.cache import BudgetCache, BudgetLayer
from depthkv.runtime.generation import cache_kwarg, greedy_decode, greedy_generate
from depthkv.runtime.handle import DepthKVModel, apply
from depthkv.runtime.handoff import DepthKVUsageError
from depthkv.runtime.modes import MODES
from depthkv.runtime.static_cache import StaticBudgetCache, StaticBudgetLayer

__all__ = [
    "BudgetCache",
    "BudgetLayer",
    "DepthKVModel",
    "DepthKVUsageError",
    "MODES",
    "StaticBudgetCache",
    "StaticBudgetLayer",
    "apply",
    "cache_kwarg",
    "greedy_decode",
    "greedy_generate",
]
