"""Profile: what calibration measured, as a versioned JSON file.

A :class:`Profile` keeps the raw per-example degradation matrix so any statistic can be
recomputed. It is written atomically and checked against the model it is applied to.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from depthkv.files import CorruptFileError
from depthkv.policies import PolicyConfig
from depthkv.profile.budget import Budget, budget_tokens
from depthkv.profile.fingerprints import ModelFingerprint, as_fingerprint
from depthkv.profile.schema import JsonArtefact, check_header, header, now, require
from depthkv.profile.schema import depthkv_version as installed_version

PROFILE_KIND = "depthkv-profile"
METRICS = ("nll", "kl", "score")


@dataclass
class Profile(JsonArtefact):
    """Per-layer sensitivity measured by one-layer-at-a-time ablation.

    Attributes:
        fingerprint: the model it was measured on.
        metric: ``"nll"`` (teacher-forced answer NLL increase), ``"kl"`` (next-token KL) or ``"score"``
            (task-score drop from generation).
        ablation_budgets: the budgets the ablated layer was pruned to; a float in (0, 1] is a fraction
            of each example's prompt, an int is a token count.
        degradation: float64 ``[n_budgets, n_examples, n_layers]``; entry ``[k, i, l]`` is how much worse
            example ``i`` got when only layer ``l`` was pruned to ``ablation_budgets[k]``.
        context_lengths: prompt length in tokens of each example ``[n_examples]``.
        baseline: the metric's full-cache value per example ``[n_examples]`` (NLL, 0 for KL, or score).
        policy: the eviction policy used for ablation.
        workload: the workload's description (name, split, seed, tasks, lengths, hash).
        stats: permutation test, Friedman test and bootstrap CIs (``LayerStats.to_dict()``) or None.
        complete: False while calibration is still running (a partial profile can be resumed).
    """

    KIND = PROFILE_KIND
    NAME = "profile"

    fingerprint: ModelFingerprint
    metric: str
    ablation_budgets: list[Budget]
    degradation: np.ndarray
    context_lengths: list[int]
    baseline: list[float]
    policy: PolicyConfig
    workload: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    complete: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=now)
    depthkv_version: str = field(default_factory=installed_version)

    def __post_init__(self) -> None:
        self.degradation = np.asarray(self.degradation, dtype=np.float64)
        if not isinstance(self.policy, PolicyConfig):
            raise TypeError(
                f"Profile.policy must be a depthkv.PolicyConfig, got {type(self.policy).__name__} "
                "(PolicyConfig.from_dict(d) converts a dict)"
            )
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self, source: str = "profile") -> None:
        """Raise ``CorruptFileError`` when fields are inconsistent with each other."""
        d = self.degradation
        if self.metric not in METRICS:
            raise CorruptFileError(f"{source}: metric {self.metric!r} is not one of {METRICS}")
        if d.ndim != 3:
            raise CorruptFileError(
                f"{source}: degradation must be [n_budgets, n_examples, n_layers]; got shape {d.shape}"
            )
        if d.shape[0] != len(self.ablation_budgets):
            raise CorruptFileError(
                f"{source}: degradation has {d.shape[0]} budget rows but ablation_budgets lists "
                f"{len(self.ablation_budgets)}"
            )
        if d.shape[2] != self.fingerprint.num_layers:
            raise CorruptFileError(
                f"{source}: degradation has {d.shape[2]} layers but the fingerprint says "
                f"{self.fingerprint.num_layers}"
            )
        if len(self.context_lengths) != d.shape[1] or len(self.baseline) != d.shape[1]:
            raise CorruptFileError(
                f"{source}: {d.shape[1]} examples in degradation but {len(self.context_lengths)} context lengths "
                f"and {len(self.baseline)} baseline values"
            )
        if not np.isfinite(d).all():
            raise CorruptFileError(f"{source}: degradation contains NaN or inf")

    # -- derived quantities -----------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return int(self.degradation.shape[2])

    @property
    def n_examples(self) -> int:
        return int(self.degradation.shape[1])

    @property
    def mean_context_length(self) -> float:
        return float(np.mean(self.context_lengths)) if self.context_lengths else 0.0

    def matrix(self, budget_index: int = 0) -> np.ndarray:
        """Degradation ``[n_examples, n_layers]`` at one ablation budget (default: the first)."""
        n = len(self.ablation_budgets)
        if isinstance(budget_index, bool) or not isinstance(budget_index, numbers.Integral) or not 0 <= budget_index < n:
            raise ValueError(
                f"budget_index {budget_index!r} is not one of the profile's ablation budgets: choose 0..{n - 1} "
                f"for {', '.join(f'{i} = {b}' for i, b in enumerate(self.ablation_budgets))}"
            )
        return self.degradation[budget_index]

    def sensitivity(self, budget_index: int = 0) -> np.ndarray:
        """Mean degradation per layer ``[n_layers]`` at one ablation budget."""
        if self.n_examples == 0:
            raise ValueError("the profile holds no examples yet; finish (or resume) calibration first")
        return self.matrix(budget_index).mean(axis=0)

    def curves(self, context_length: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Sensitivity curves for the ``greedy`` strategy.

        Returns ``(budget_points [K] in tokens, ascending; mean degradation [K, n_layers])`` with the
        point "whole context kept, zero degradation" appended. Fractions are converted to tokens at
        ``context_length`` (default: the calibration's mean prompt length).
        """
        ctx = self.mean_context_length if context_length is None else float(context_length)
        points = np.array([budget_tokens(b, ctx) for b in self.ablation_budgets], dtype=np.float64)
        means = self.degradation.mean(axis=1)
        order = np.argsort(points, kind="stable")
        points, means = points[order], means[order]
        if points[-1] < ctx:
            points = np.append(points, ctx)
            means = np.vstack([means, np.zeros((1, self.n_layers))])
        return points, means

    # -- serialisation ----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            **header(PROFILE_KIND),
            "depthkv_version": self.depthkv_version,
            "created": self.created,
            "complete": self.complete,
            "fingerprint": self.fingerprint.to_dict(),
            "metric": self.metric,
            "ablation_budgets": list(self.ablation_budgets),
            "policy": self.policy.to_dict(),
            "workload": self.workload,
            "settings": self.settings,
            "context_lengths": [int(x) for x in self.context_lengths],
            "baseline": [float(x) for x in self.baseline],
            "degradation": self.degradation.tolist(),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> Profile:
        check_header(data, PROFILE_KIND, source)
        required = ["fingerprint", "metric", "ablation_budgets", "degradation", "context_lengths", "baseline", "policy"]
        require(data, required, "profile", source)
        try:
            fp = ModelFingerprint.from_dict(data["fingerprint"])
            degradation = np.asarray(data["degradation"], dtype=np.float64)
            policy = PolicyConfig.from_dict(dict(data["policy"]))
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{source}: malformed field ({exc})") from None
        if degradation.size == 0:
            degradation = degradation.reshape(len(data["ablation_budgets"]), 0, fp.num_layers)
        profile = cls.__new__(cls)
        profile.fingerprint = fp
        profile.metric = data["metric"]
        profile.ablation_budgets = list(data["ablation_budgets"])
        profile.degradation = degradation
        profile.context_lengths = [int(x) for x in data["context_lengths"]]
        profile.baseline = [float(x) for x in data["baseline"]]
        profile.policy = policy
        profile.workload = dict(data.get("workload", {}))
        profile.stats = data.get("stats")
        profile.complete = bool(data.get("complete", True))
        profile.settings = dict(data.get("settings", {}))
        profile.created = str(data.get("created", ""))
        profile.depthkv_version = str(data.get("depthkv_version", ""))
        profile.validate(source)
        return profile

    def check_model(self, model: Any) -> None:
        """Raise ``FingerprintMismatch`` if ``model`` (or its fingerprint) is not the profiled model."""
        self.fingerprint.check(as_fingerprint(model), what="profile")
