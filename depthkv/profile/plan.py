"""Plan: per-layer KV token budgets, what the caches and the compiled model enforce."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from depthkv.files import CorruptFileError
from depthkv.policies import PolicyConfig
from depthkv.profile.apportion import apportion
from depthkv.profile.budget import Budget, check_budget, round_tokens
from depthkv.profile.fingerprints import ModelFingerprint, as_fingerprint
from depthkv.profile.schema import JsonArtefact, check_header, header, require

PLAN_KIND = "depthkv-plan"

MAX_TOKENS = 2**31 - 1  # more tokens than any context; a larger budget is a corrupted number


@dataclass
class Plan(JsonArtefact):
    """Per-layer KV token budgets and the eviction policy inside each layer.

    Attributes:
        budgets: tokens kept per layer ``[n_layers]`` at ``context_length``; ``None`` keeps every
            token of that layer (a full layer, e.g. from :func:`depthkv.plan_from_budgets`).
        strategy: the allocation strategy that produced them (``"explicit"`` for hand-made plans).
        policy: the eviction policy used inside each layer.
        global_budget: the budget as the operator gave it (see :mod:`depthkv.profile.budget`), or
            None for hand-made plans.
        floor: smallest budget any layer may get; at least the policy's floor (window + sinks), which
            is the default.
        context_length: prompt length the budgets were computed for (None for absolute plans).
        relative: True when the global budget was a fraction of the context; then
            :meth:`budgets_for` rescales the budgets to each prompt's length, keeping their proportions.
        fingerprint: the model the plan belongs to (None for plans made without a model).
        metadata: anything else worth keeping (the allocation's total and sensitivities, a floor search).
    """

    KIND = PLAN_KIND
    NAME = "plan"

    budgets: list[int | None]
    strategy: str
    policy: PolicyConfig
    global_budget: Budget | None = None
    floor: int | None = None
    context_length: int | None = None
    relative: bool = False
    fingerprint: ModelFingerprint | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, PolicyConfig):
            raise TypeError(
                f"Plan.policy must be a depthkv.PolicyConfig, got {type(self.policy).__name__} "
                "(PolicyConfig.from_dict(d) converts a dict)"
            )
        self.budgets = [None if b is None else int(b) for b in self.budgets]
        if not self.budgets:
            raise ValueError("a plan needs at least one layer budget")
        self.floor = self.policy.floor if self.floor is None else int(self.floor)
        if self.floor < self.policy.floor:
            raise ValueError(
                f"plan floor {self.floor} is below the {self.policy.name} policy's floor {self.policy.floor} "
                "(observation window + sinks)"
            )
        huge = [(i, b) for i, b in enumerate(self.budgets) if b is not None and b > MAX_TOKENS]
        if huge:
            raise ValueError(
                f"layer {huge[0][0]}: budget {huge[0][1]} is more tokens than any context (at most {MAX_TOKENS}); "
                "use None to keep every token of a layer"
            )
        low = [(i, b) for i, b in enumerate(self.budgets) if b is not None and b < self.floor]
        if low:
            raise ValueError(
                f"layer {low[0][0]}: budget {low[0][1]} is below the plan's floor {self.floor} "
                f"({self.policy.name}: window {self.policy.window}); raise it or use a smaller observation window"
            )
        if self.global_budget is not None:
            self.global_budget = check_budget(self.global_budget, "global_budget")
        if self.relative:
            if not self.context_length:
                raise ValueError("a relative plan needs the context_length its budgets were computed for")
            if None in self.budgets:
                raise ValueError("a relative plan cannot keep whole layers (None budgets); give token budgets")
        if self.fingerprint is not None and len(self.budgets) != self.fingerprint.num_layers:
            raise ValueError(
                f"plan has {len(self.budgets)} budgets but the model has {self.fingerprint.num_layers} layers"
            )

    @property
    def n_layers(self) -> int:
        return len(self.budgets)

    @property
    def full_layers(self) -> list[int]:
        """Layers that keep every token (``None`` budgets)."""
        return [i for i, b in enumerate(self.budgets) if b is None]

    @property
    def caps(self) -> list[int | None]:
        """The most tokens each layer can use: a sliding-window layer's window (from the fingerprint),
        ``None`` (no cap) for a full-attention layer."""
        windows = None if self.fingerprint is None else self.fingerprint.layer_windows
        return list(windows) if windows is not None else [None] * self.n_layers

    @property
    def total(self) -> int | None:
        """Tokens over all layers at ``context_length`` (a sliding layer counts at most its window);
        None when a full-attention layer keeps every token."""
        budgets = self._capped(self.budgets)
        return None if None in budgets else int(sum(budgets))

    def _capped(self, budgets: list[int | None]) -> list[int | None]:
        """Each budget at most its layer's cap; a full (``None``) sliding layer keeps its window."""
        return [cap if b is None else (b if cap is None else min(b, cap)) for b, cap in zip(budgets, self.caps)]

    def budgets_for(self, context_length: int | None) -> list[int | None]:
        """The budgets for a prompt of ``context_length`` tokens: the one place a plan is resolved.

        Absolute plans return their budgets whatever the length. Relative plans keep the global
        fraction: the total becomes ``round_tokens(total * context_length / self.context_length)``,
        apportioned in proportion to the planned budgets (largest remainder, exact sum), never below
        ``floor``; if the fraction would give less than ``floor`` per layer, every layer keeps ``floor``.
        Either way no layer gets more than its cap (:attr:`caps`: a sliding-window layer never holds
        more than its window); what a capped layer cannot use goes to the others, and a total above
        what the layers can hold is cut to it.

        Raises:
            ValueError: a relative plan without ``context_length``.
        """
        if not self.relative:
            return self._capped(list(self.budgets))
        if context_length is None:
            raise ValueError(
                "this plan's budget is a fraction of the context (a relative plan): give context_length, the "
                "prompt length to size its budgets for (depthkv.apply(model, plan).generate does it for you), "
                "or allocate with a token budget"
            )
        if context_length == self.context_length:
            return self._capped(list(self.budgets))
        total = round_tokens(sum(self.budgets) * context_length / self.context_length)
        total = max(total, self.floor * self.n_layers)
        caps = self.caps
        if any(cap is not None for cap in caps):
            room = sum(total if cap is None else cap for cap in caps)
            total = min(total, room)
            limits: list[int | None] | None = caps
        else:
            limits = None
        weights = np.asarray(self.budgets, dtype=np.float64)
        return [int(x) for x in apportion(weights, total, floor=self.floor, max_tokens=limits)]

    def check_model(self, model: Any) -> None:
        """Raise if the plan does not fit ``model`` (layer count always; full fingerprint when recorded)."""
        fp = as_fingerprint(model)
        if self.fingerprint is not None:
            self.fingerprint.check(fp, what="plan")
        elif fp.num_layers != self.n_layers:
            raise ValueError(
                f"plan has {self.n_layers} layer budgets but the model has {fp.num_layers} layers; "
                "allocate a plan for this model"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            **header(PLAN_KIND),
            "budgets": self.budgets,
            "strategy": self.strategy,
            "policy": self.policy.to_dict(),
            "global_budget": self.global_budget,
            "floor": self.floor,
            "context_length": self.context_length,
            "relative": self.relative,
            "fingerprint": None if self.fingerprint is None else self.fingerprint.to_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "plan") -> Plan:
        check_header(data, PLAN_KIND, source)
        require(data, ["budgets", "strategy", "policy"], "plan", source)
        fp = data.get("fingerprint")
        try:
            return cls(
                budgets=list(data["budgets"]),
                strategy=str(data["strategy"]),
                policy=PolicyConfig.from_dict(dict(data["policy"])),
                global_budget=data.get("global_budget"),
                floor=data.get("floor"),
                context_length=data.get("context_length"),
                relative=bool(data.get("relative", False)),
                fingerprint=None if fp is None else ModelFingerprint.from_dict(fp),
                metadata=dict(data.get("metadata", {})),
            )
        except (TypeError, ValueError) as exc:
            raise CorruptFileError(f"{source}: {exc}") from None
