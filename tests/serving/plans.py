"""Plans the serving tests share: the shipped demo plans of docs/demo/ (two tiny models and two real
ones, Gemma-3-270M with sliding-window layers among them) and plans allocated from a profile of a
Gemma-3-like config (no weights needed: a fingerprint comes from the config alone)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

import depthkv
from tests.helpers import WINDOW, tiny_config

ROOT = Path(__file__).resolve().parents[2]
DEMO_PLANS = sorted((ROOT / "docs" / "demo").glob("*/plan-*.json"))
GEMMA3_PLAN = ROOT / "docs" / "demo" / "gemma3-270m" / "plan-depthkv-greedy.json"
# Gemma-3-270M: every sixth layer attends to the whole context, the others to a window of 512.
GEMMA3_FULL_LAYERS = (5, 11, 17)
GEMMA3_WINDOW = 512


def hybrid_fingerprint(layers: int = 6) -> depthkv.ModelFingerprint:
    """A Gemma-3-like model: layers 2 and 5 full attention, the others a window of ``WINDOW`` tokens."""
    return depthkv.fingerprint(tiny_config("gemma3", layers=layers))


def hybrid_profile(layers: int = 6, context: int = 100) -> depthkv.Profile:
    """A profile of :func:`hybrid_fingerprint` with made-up sensitivities at two ablation budgets."""
    rng = np.random.default_rng(0)
    return depthkv.Profile(
        fingerprint=hybrid_fingerprint(layers),
        metric="nll",
        ablation_budgets=[0.2, 0.5],
        degradation=rng.gamma(1.0, size=(2, 4, layers)),
        context_lengths=[context] * 4,
        baseline=[1.5] * 4,
        policy=depthkv.PolicyConfig(),
        workload={"name": "test"},
    )


__all__ = ["DEMO_PLANS", "GEMMA3_FULL_LAYERS", "GEMMA3_PLAN", "GEMMA3_WINDOW", "WINDOW", "hybrid_fingerprint", "hybrid_profile"]
