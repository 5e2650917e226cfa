"""Evaluation: plans measured whole, methods compared side by side, and the report.

* :mod:`~depthkv.evaluation.comparison` — :func:`evaluate` (accuracy of several plans on a workload)
  and :func:`method_plans` (full cache, uniform SnapKV, PyramidKV and DepthKV at several budgets).
* :mod:`~depthkv.evaluation.controls` — each DepthKV plan's controls: its budgets shuffled over the
  layers (:func:`shuffled`) and given to the least sensitive layers first (:func:`inverse`).
* :mod:`~depthkv.evaluation.plan_check` — :func:`plan_degradation` (a whole plan's degradation on
  the calibration workload) and :func:`tune_floor` (a strategy's floor chosen by it).
* :mod:`~depthkv.evaluation.report` — the report folder (profile, plans, plots, ``report.md``).
"""

from depthkv.evaluation.comparison import BASELINES, MethodResult, evaluate, method_plans
from depthkv.evaluation.controls import CONTROLS, controls_for, inverse, shuffled
from depthkv.evaluation.plan_check import FloorSearch, default_floors, plan_degradation, tune_floor

__all__ = [
    "BASELINES",
    "CONTROLS",
    "FloorSearch",
    "MethodResult",
    "controls_for",
    "default_floors",
    "evaluate",
    "inverse",
    "method_plans",
    "plan_degradation",
    "shuffled",
    "tune_floor",
]
