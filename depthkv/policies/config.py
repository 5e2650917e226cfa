"""Which eviction policy a layer uses, and its parameters (:class:`PolicyConfig`).

The policies themselves (scores and selection) are in :mod:`depthkv.policies.scores` and
:mod:`depthkv.policies.selection`; this module is only the configuration, which plans and profiles
hold and write to their JSON files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

__all__ = ["POLICIES", "PolicyConfig", "as_policy"]

POLICIES: tuple[str, ...] = ("snapkv", "h2o", "streaming", "tova", "knorm", "random")

_STATEFUL = ("snapkv", "h2o")


def _check_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"PolicyConfig.{name} must be an int, got {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class PolicyConfig:
    """Which eviction policy a layer uses, and its parameters.

    Attributes:
        name: one of :data:`POLICIES`.
        window: observation window ``w``. The ``w`` most recent valid tokens are always kept; snapkv
            scores with the last ``w`` queries of a step. ``>= 0``.
        kernel: snapkv's 1-D average-pooling kernel along the slot axis; odd, ``>= 1``
            (1 = no pooling).
        sinks: streaming only: the first ``sinks`` valid tokens are always kept. ``>= 0``.
        seed: seed of the ``random`` policy's generator.
    """

    name: str = "snapkv"
    window: int = 8
    kernel: int = 5
    sinks: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.name not in POLICIES:
            raise ValueError(f"unknown eviction policy {self.name!r}; expected one of {', '.join(POLICIES)}")
        for field in ("window", "kernel", "sinks", "seed"):
            _check_int(field, getattr(self, field))
        if self.window < 0:
            raise ValueError(f"PolicyConfig.window must be >= 0, got {self.window}")
        if self.kernel < 1 or self.kernel % 2 == 0:
            raise ValueError(f"PolicyConfig.kernel must be odd and >= 1 (e.g. 1, 5, 7), got {self.kernel}")
        if self.sinks < 0:
            raise ValueError(f"PolicyConfig.sinks must be >= 0, got {self.sinks}")

    @property
    def floor(self) -> int:
        """Smallest allowed budget: the slots :func:`select` always keeps.

        ``window``, plus ``sinks`` for ``streaming``.
        """
        return self.window + (self.sinks if self.name == "streaming" else 0)

    @property
    def stateful(self) -> bool:
        """True when scores accumulate across steps (``snapkv``, ``h2o``): the cache must carry them."""
        return self.name in _STATEFUL

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PolicyConfig:
        """Inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones are an error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown PolicyConfig field(s) {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)


def as_policy(policy: PolicyConfig | dict | str | None, default: PolicyConfig | None = None) -> PolicyConfig:
    """A :class:`PolicyConfig` from a config, its dict, a policy name, or None (``default``, else SnapKV)."""
    if isinstance(policy, PolicyConfig):
        return policy
    if isinstance(policy, str):
        return PolicyConfig(name=policy)
    if isinstance(policy, dict):
        return PolicyConfig.from_dict(policy)
    if policy is None:
        return default or PolicyConfig()
    raise TypeError(f"policy must be a PolicyConfig, a dict or a policy name; got {type(policy).__name__}")
