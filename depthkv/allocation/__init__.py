"""Allocation: a global KV budget spread over the layers by their measured sensitivity.

* :mod:`~depthkv.allocation.strategies` — the strategies (pure numpy, each with its math):
  ``uniform``, ``proportional``, ``softmax``, ``rank``, ``pyramid``, ``greedy``.
* :mod:`~depthkv.allocation.plans` — :func:`allocate` (profile + budget -> :class:`~depthkv.Plan`),
  :func:`uniform_plan` and :func:`plan_from_budgets` (plans without a profile).
"""

from depthkv.allocation.plans import allocate, plan_from_budgets, uniform_plan
from depthkv.allocation.strategies import DEFAULT_STRATEGY, STRATEGIES, allocate_from_sensitivity

__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "allocate", "allocate_from_sensitivity", "plan_from_budgets", "uniform_plan"]
