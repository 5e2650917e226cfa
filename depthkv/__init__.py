"""depthkv: layer-dependent KV-cache budgets for long-context inference.

Measure each layer's sensitivity on your workload, spread a fixed global KV budget toward the
sensitive layers, and run (or compile) the model with those per-layer budgets::

    profile = depthkv.calibrate(model, tokenizer, workload)
    plan = depthkv.allocate(profile, budget=0.2)
    with depthkv.apply(model, plan) as handle:           # eager reference path
        out = handle.generate(input_ids, max_new_tokens=32)

This namespace holds the pipeline's verbs, its artefacts and the errors a user can meet; the
packages below are the pipeline's stages, in the order data flows through them (``workload``,
``calibration``, ``profile``, ``allocation``, ``runtime``, ``passes``, ``compiler``, ``kernels``,
``evaluation``; see ``docs/architecture.md``).

Importing depthkv has no side effects: nothing is registered with transformers and no CUDA
context is created until you call one of these functions.
"""

from depthkv.allocation import STRATEGIES, allocate, plan_from_budgets, uniform_plan
from depthkv.calibration import LayerStats, calibrate
from depthkv.calibration.engine import NonFiniteError
from depthkv.compiler import DepthKVBackend, backend, compile
from depthkv.evaluation import FloorSearch, MethodResult, evaluate, plan_degradation, tune_floor
from depthkv.files import CorruptFileError, FileLockedError
from depthkv.kernels.custom_ops import DepthKVGraphError
from depthkv.models import load_model
from depthkv.passes import UnsupportedAttentionError
from depthkv.policies import POLICIES, PolicyConfig
from depthkv.profile import METRICS, FingerprintMismatch, ModelFingerprint, Plan, Profile, fingerprint
from depthkv.profile.fingerprints import UnsupportedModelError
from depthkv.runtime import (
    BudgetCache,
    DepthKVModel,
    DepthKVUsageError,
    StaticBudgetCache,
    apply,
    greedy_generate,
)
from depthkv.workload import Workload, builtin_workload, from_jsonl

__all__ = [
    # the pipeline's verbs
    "builtin_workload",
    "from_jsonl",
    "load_model",
    "calibrate",
    "allocate",
    "uniform_plan",
    "plan_from_budgets",
    "apply",
    "backend",
    "compile",
    "greedy_generate",
    "evaluate",
    "plan_degradation",
    "tune_floor",
    "fingerprint",
    # artefacts and the objects the verbs return
    "Workload",
    "Profile",
    "Plan",
    "PolicyConfig",
    "ModelFingerprint",
    "LayerStats",
    "BudgetCache",
    "StaticBudgetCache",
    "DepthKVModel",
    "DepthKVBackend",
    "FloorSearch",
    "MethodResult",
    "METRICS",
    "POLICIES",
    "STRATEGIES",
    # errors a user can meet
    "CorruptFileError",
    "FileLockedError",
    "NonFiniteError",
    "FingerprintMismatch",
    "UnsupportedModelError",
    "DepthKVUsageError",
    "DepthKVGraphError",
    "UnsupportedAttentionError",
]
