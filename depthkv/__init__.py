"""depthkv: layer-dependent KV-cache budgets for long-context inference.

Measure each layer's sensitivity on your workload, spread a fixed global KV budget toward the
sensitive layers, and run (or compile) the model with those per-layer budgets::

    profile = depthkv.calibrate(model, tokenizer, workload)
    plan = depthkv.allocate(profile, budget=0.2)
    handle = depthkv.apply(model, plan)          # eager reference path
    out = handle.generate(input_ids, max_new_tokens=32)

Importing depthkv has no side effects: nothing is registered with transformers and no CUDA
context is created until you call one of these functions.
"""

from .allocate import allocate, plan_from_budgets, uniform_plan
from .allocate_core import STRATEGIES, allocate_from_sensitivity
from .apply import DepthKVModel, apply
from .backend import DepthKVBackend, backend, compile
from .cache import BudgetCache, BudgetLayer, DepthKVUsageError
from .calibrate import calibrate
from .fingerprint import FingerprintMismatch, ModelFingerprint, fingerprint
from .generation import greedy_generate
from .jsonio import CorruptFileError
from .plan_check import FloorSearch, plan_degradation, tune_floor
from .policies import POLICIES, PolicyConfig
from .profile import Plan, Profile
from .static_cache import StaticBudgetCache
from .stats import LayerStats, permutation_test


def load_model(name_or_path: str, **kwargs):
    """Load a shipped tiny model (``"tiny-llama"``, ...) or a local HF checkpoint: ``(model, tokenizer)``."""
    from .models import load_model as _load

    return _load(name_or_path, **kwargs)


__all__ = [
    "POLICIES",
    "STRATEGIES",
    "BudgetCache",
    "BudgetLayer",
    "DepthKVBackend",
    "StaticBudgetCache",
    "CorruptFileError",
    "DepthKVModel",
    "DepthKVUsageError",
    "FingerprintMismatch",
    "FloorSearch",
    "LayerStats",
    "ModelFingerprint",
    "Plan",
    "PolicyConfig",
    "Profile",
    "allocate",
    "allocate_from_sensitivity",
    "apply",
    "backend",
    "compile",
    "greedy_generate",
    "calibrate",
    "fingerprint",
    "load_model",
    "permutation_test",
    "plan_degradation",
    "plan_from_budgets",
    "tune_floor",
    "uniform_plan",
]
