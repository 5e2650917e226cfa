"""Profile (what calibration measured) and Plan (per-layer budgets), as versioned JSON files.

A :class:`Profile` keeps the raw per-example degradation matrix so any statistic can be recomputed;
a :class:`Plan` is what the cache and the compiler consume: one integer token budget per layer.
Both are written atomically and checked against the model they are applied to.
"""

from __future__ import annotations

import datetime as _dt
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .fingerprint import ModelFingerprint, fingerprint
from .jsonio import CorruptFileError, atomic_write_json, read_json

SCHEMA_VERSION = 1
PROFILE_KIND = "depthkv-profile"
PLAN_KIND = "depthkv-plan"
METRICS = ("nll", "kl", "score")


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("depthkv")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def _require(data: dict[str, Any], keys: list[str], kind: str, source: str) -> None:
    missing = [k for k in keys if k not in data]
    if missing:
        raise CorruptFileError(f"{kind} {source} is missing required fields {missing}")


def _check_header(data: dict[str, Any], kind: str, source: str) -> None:
    if data.get("kind") != kind:
        raise CorruptFileError(f"{source} is not a {kind} file (its 'kind' is {data.get('kind')!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CorruptFileError(
            f"{source} has schema version {version!r}; this depthkv reads version {SCHEMA_VERSION}. "
            "Re-create it with this version of depthkv."
        )


def _resolve_fingerprint(model_or_fp: Any) -> ModelFingerprint:
    return model_or_fp if isinstance(model_or_fp, ModelFingerprint) else fingerprint(model_or_fp)


def _budget_tokens(budget: float | int, context_length: float) -> float:
    """An ablation/global budget as tokens: ints are tokens, floats in (0, 1] are fractions of the context."""
    return float(budget) * context_length if isinstance(budget, float) else float(budget)


@dataclass
class Profile:
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
        policy: the eviction policy used for ablation (``PolicyConfig.to_dict()``).
        workload: the workload's description (name, split, seed, tasks, lengths, hash).
        stats: permutation test, Friedman test and bootstrap CIs (``LayerStats.to_dict()``) or None.
        complete: False while calibration is still running (a partial profile can be resumed).
    """

    fingerprint: ModelFingerprint
    metric: str
    ablation_budgets: list[float | int]
    degradation: np.ndarray
    context_lengths: list[int]
    baseline: list[float]
    policy: dict[str, Any]
    workload: dict[str, Any] = field(default_factory=dict)
    stats: dict[str, Any] | None = None
    complete: bool = True
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=_now)
    depthkv_version: str = field(default_factory=_version)

    def __post_init__(self) -> None:
        self.degradation = np.asarray(self.degradation, dtype=np.float64)
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
        points = np.array([_budget_tokens(b, ctx) for b in self.ablation_budgets], dtype=np.float64)
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
            "kind": PROFILE_KIND,
            "schema_version": SCHEMA_VERSION,
            "depthkv_version": self.depthkv_version,
            "created": self.created,
            "complete": self.complete,
            "fingerprint": self.fingerprint.to_dict(),
            "metric": self.metric,
            "ablation_budgets": list(self.ablation_budgets),
            "policy": self.policy,
            "workload": self.workload,
            "settings": self.settings,
            "context_lengths": [int(x) for x in self.context_lengths],
            "baseline": [float(x) for x in self.baseline],
            "degradation": self.degradation.tolist(),
            "stats": self.stats,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "profile") -> Profile:
        _check_header(data, PROFILE_KIND, source)
        required = ["fingerprint", "metric", "ablation_budgets", "degradation", "context_lengths", "baseline", "policy"]
        _require(data, required, "profile", source)
        try:
            fp = ModelFingerprint.from_dict(data["fingerprint"])
            degradation = np.asarray(data["degradation"], dtype=np.float64)
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
        profile.policy = dict(data["policy"])
        profile.workload = dict(data.get("workload", {}))
        profile.stats = data.get("stats")
        profile.complete = bool(data.get("complete", True))
        profile.settings = dict(data.get("settings", {}))
        profile.created = str(data.get("created", ""))
        profile.depthkv_version = str(data.get("depthkv_version", ""))
        profile.validate(source)
        return profile

    def save(self, path: str | os.PathLike) -> Path:
        """Write the profile atomically as JSON; returns the path."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> Profile:
        """Load and validate a profile; with ``model`` also check the fingerprint (naming every difference)."""
        profile = cls.from_dict(read_json(path, "profile"), source=str(path))
        if model is not None:
            profile.check_model(model)
        return profile

    def check_model(self, model: Any) -> None:
        """Raise ``FingerprintMismatch`` if ``model`` (or its fingerprint) is not the profiled model."""
        self.fingerprint.check(_resolve_fingerprint(model), what="profile")


@dataclass
class Plan:
    """Per-layer KV token budgets: what the cache and the compiled model enforce.

    Attributes:
        budgets: tokens kept per layer ``[n_layers]`` at ``context_length``.
        strategy: allocation strategy that produced them.
        policy: eviction policy (``PolicyConfig.to_dict()``) used inside each layer.
        context_length: prompt length the budgets were computed for (None for absolute plans).
        relative: True when the global budget was a fraction of the context; then
            :meth:`budgets_for` rescales the budgets to each prompt's length, keeping their proportions.
        global_budget: the budget as the operator gave it (tokens per layer, or a fraction).
        floor: smallest budget any layer may get (sink + observation window).
        fingerprint: the model the plan belongs to (None for plans made without a profile).
    """

    budgets: list[int]
    strategy: str
    policy: dict[str, Any]
    global_budget: float | int
    floor: int = 0
    context_length: int | None = None
    relative: bool = False
    fingerprint: ModelFingerprint | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.budgets = [int(b) for b in self.budgets]
        if not self.budgets:
            raise ValueError("a plan needs at least one layer budget")
        low = min(self.budgets)
        if low < self.floor or low < 0:
            raise ValueError(f"plan budget {low} is below the floor {self.floor}")
        if self.relative and not self.context_length:
            raise ValueError("a relative plan needs the context_length its budgets were computed for")
        if self.fingerprint is not None and len(self.budgets) != self.fingerprint.num_layers:
            raise ValueError(
                f"plan has {len(self.budgets)} budgets but the model has {self.fingerprint.num_layers} layers"
            )

    @property
    def n_layers(self) -> int:
        return len(self.budgets)

    @property
    def total(self) -> int:
        return int(sum(self.budgets))

    def budgets_for(self, context_length: int) -> list[int]:
        """Budgets for a prompt of ``context_length`` tokens.

        Absolute plans return their budgets unchanged. Relative plans keep the global fraction: the
        total becomes ``round(sum(budgets) * context_length / self.context_length)``, apportioned in
        proportion to the planned budgets (largest remainder, exact sum), never below ``floor``; if the
        fraction would give less than ``floor`` per layer, every layer keeps ``floor``.
        """
        if not self.relative or context_length == self.context_length:
            return list(self.budgets)
        from .allocate_core import apportion

        total = int(round(self.total * context_length / self.context_length))
        total = max(total, self.floor * self.n_layers)
        return [int(x) for x in apportion(np.asarray(self.budgets, dtype=np.float64), total, floor=self.floor)]

    def check_model(self, model: Any) -> None:
        """Raise if the plan does not fit ``model`` (layer count always; full fingerprint when recorded)."""
        fp = _resolve_fingerprint(model)
        if self.fingerprint is not None:
            self.fingerprint.check(fp, what="plan")
        elif fp.num_layers != self.n_layers:
            raise ValueError(
                f"plan has {self.n_layers} layer budgets but the model has {fp.num_layers} layers; "
                "allocate a plan for this model"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": PLAN_KIND,
            "schema_version": SCHEMA_VERSION,
            "budgets": self.budgets,
            "strategy": self.strategy,
            "policy": self.policy,
            "global_budget": self.global_budget,
            "floor": self.floor,
            "context_length": self.context_length,
            "relative": self.relative,
            "fingerprint": None if self.fingerprint is None else self.fingerprint.to_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plan") -> Plan:
        _check_header(data, PLAN_KIND, source)
        _require(data, ["budgets", "strategy", "policy", "global_budget"], "plan", source)
        fp = data.get("fingerprint")
        try:
            return cls(
                budgets=list(data["budgets"]),
                strategy=str(data["strategy"]),
                policy=dict(data["policy"]),
                global_budget=data["global_budget"],
                floor=int(data.get("floor", 0)),
                context_length=data.get("context_length"),
                relative=bool(data.get("relative", False)),
                fingerprint=None if fp is None else ModelFingerprint.from_dict(fp),
                metadata=dict(data.get("metadata", {})),
            )
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{source}: {exc}") from None

    def save(self, path: str | os.PathLike) -> Path:
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> Plan:
        plan = cls.from_dict(read_json(path, "plan"), source=str(path))
        if model is not None:
            plan.check_model(model)
        return plan
