"""The artefacts: what calibration measured (:class:`Profile`), per-layer budgets (:class:`Plan`),
the model they belong to (:class:`ModelFingerprint`), and the budget vocabulary they share.

* :mod:`~depthkv.profile.budget` — what a budget means (tokens or a fraction of the context) and
  the one rounding rule.
* :mod:`~depthkv.profile.apportion` — exact integer shares of a token total.
* :mod:`~depthkv.profile.fingerprints`, :mod:`~depthkv.profile.plan`, :mod:`~depthkv.profile.profile`.

Both files are versioned JSON (:mod:`~depthkv.profile.schema`) written atomically
(:mod:`depthkv.files`).
"""

from depthkv.profile.budget import Budget, budget_tokens, check_budget, parse_budget, round_tokens
from depthkv.profile.fingerprints import (
    FingerprintMismatch,
    ModelFingerprint,
    UnsupportedModelError,
    fingerprint,
)
from depthkv.profile.plan import Plan
from depthkv.profile.profile import METRICS, Profile

__all__ = [
    "METRICS",
    "Budget",
    "FingerprintMismatch",
    "ModelFingerprint",
    "Plan",
    "Profile",
    "UnsupportedModelError",
    "budget_tokens",
    "check_budget",
    "fingerprint",
    "parse_budget",
    "round_tokens",
]
