"""Evaluation: plans measured whole, methods compared side by side, and the report.

* :mod:`~depthkv.evaluation.comparison` — :func:`evaluate` (accuracy of several plans on a workload)
  and :func:`method_plans` (full cache, uniform SnapKV, PyramidKV and DepthKV at several budgets).
* :mod:`~depthkv.evaluation.plan_check` — :func:`plan_degradation` (a whole plan's degradation on
  the calibration workload) and :func:`tune_floor` (a strategy's floor chosen by it).
* :mod:`~depthkv.evaluation.report` — the report folder (profile, plans, plots, ``report.md``).
"""

from depthkv.evaluation.comparison import MethodResult, evaluate, method_plans
from depthkv.evaluation.plan_check import FloorSearch, default_floors, plan_degradation, tune_floor

__all__ = ["FloorSearch", "MethodResult", "default_floors", "evaluate", "method_plans", "plan_degradation", "tune_floor"]
