"""Model fingerprints: what a profile was measured on, so a mismatch is caught before it matters.

A fingerprint is taken from a model's config only (never its weights), so it is cheap and works for
models built from configs. Two models with the same fingerprint have the same attention geometry
(layers, heads, KV heads, head dim) and the same config hash.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from typing import Any

# Config keys that do not change what a profile measured (runtime switches, bookkeeping).
_VOLATILE_KEYS = frozenset(
    {
        "_name_or_path",
        "name_or_path",
        "transformers_version",
        "torch_dtype",
        "dtype",
        "_attn_implementation",
        "_attn_implementation_internal",
        "attn_implementation",
        "_experts_implementation",
        "use_cache",
        "output_attentions",
        "output_hidden_states",
        "return_dict",
        "_commit_hash",
        "architectures",
    }
)


class FingerprintMismatch(ValueError):
    """A profile or plan was made for a different model than the one it is applied to."""


@dataclass(frozen=True)
class ModelFingerprint:
    """Attention geometry and config hash of a causal LM."""

    architecture: str
    model_type: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_size: int
    vocab_size: int
    config_hash: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"model fingerprint is missing fields {missing}; expected all of {names}")
        return cls(**{n: data[n] for n in names})

    def differences(self, other: ModelFingerprint) -> list[str]:
        """Human-readable list of fields that differ: ``"num_layers: profile has 4, model has 32"``."""
        out = []
        for f in fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a != b:
                out.append(f"{f.name}: profile has {a!r}, model has {b!r}")
        return out

    def check(self, other: ModelFingerprint, what: str = "profile") -> None:
        """Raise :class:`FingerprintMismatch` naming every differing field."""
        diffs = self.differences(other)
        if diffs:
            raise FingerprintMismatch(
                f"this {what} was made for a different model ({'; '.join(diffs)}). "
                f"Re-run depthkv.calibrate on this model, or load the {what} that belongs to it."
            )


def _text_config(config: Any) -> Any:
    getter = getattr(config, "get_text_config", None)
    return getter(decoder=True) if callable(getter) else config


def config_hash(config: Any) -> str:
    """sha256 (first 16 hex digits) of the config's JSON, without runtime-only keys."""
    data = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    data = {k: v for k, v in data.items() if k not in _VOLATILE_KEYS}
    blob = json.dumps(data, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def fingerprint(model_or_config: Any) -> ModelFingerprint:
    """Fingerprint of a ``transformers`` causal LM (or its config).

    Raises ``ValueError`` if the config lacks the attention geometry depthkv needs.
    """
    config = getattr(model_or_config, "config", model_or_config)
    text = _text_config(config)
    try:
        layers = int(text.num_hidden_layers)
        heads = int(text.num_attention_heads)
        hidden = int(text.hidden_size)
    except AttributeError as exc:
        raise ValueError(
            f"cannot fingerprint {type(config).__name__}: it has no {exc.name!r}; depthkv supports decoder-only "
            "transformers causal LMs with num_hidden_layers / num_attention_heads / hidden_size in their config"
        ) from None
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    archs = getattr(config, "architectures", None) or []
    model = model_or_config if hasattr(model_or_config, "config") else None
    if model is not None:
        arch = type(model).__name__
    else:
        arch = archs[0] if archs else str(getattr(text, "model_type", "unknown"))
    return ModelFingerprint(
        architecture=str(arch),
        model_type=str(getattr(text, "model_type", "")),
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=hidden,
        vocab_size=int(getattr(text, "vocab_size", 0) or 0),
        config_hash=config_hash(text),
    )


def as_fingerprint(model_or_fingerprint: Any) -> ModelFingerprint:
    """``model_or_fingerprint`` itself if it is a fingerprint, else :func:`fingerprint` of it."""
    if isinstance(model_or_fingerprint, ModelFingerprint):
        return model_or_fingerprint
    return fingerprint(model_or_fingerprint)
