"""Model fingerprints: what a profile was measured on, so a mismatch is caught before it matters.

A fingerprint is taken from a model's config only (never its weights), so it is cheap and works for
models built from configs. Two models with the same fingerprint have the same attention geometry
(layers, heads, KV heads, head dim, the window of each sliding-window layer) and the same config hash.

Fingerprinting is also where depthkv refuses a model it cannot run correctly, before any work:
attention logit soft-capping (Gemma 2), bidirectional attention, or layer types other than full and
sliding-window attention raise :class:`UnsupportedModelError` naming the family and the feature.
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


class UnsupportedModelError(ValueError):
    """The model uses an attention feature depthkv cannot run with per-layer budgets."""


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
    # The attention window of each layer (None: full attention), or None when every layer attends to
    # the whole context; files written before hybrid models were supported have no such field.
    layer_windows: tuple[int | None, ...] | None = None

    def __post_init__(self) -> None:
        if self.layer_windows is not None:
            object.__setattr__(self, "layer_windows", tuple(self.layer_windows))

    @property
    def is_hybrid(self) -> bool:
        """True when some layers attend to a sliding window (Gemma 3, Mistral with ``sliding_window``)."""
        return self.layer_windows is not None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layer_windows"] = None if self.layer_windows is None else list(self.layer_windows)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelFingerprint:
        names = [f.name for f in fields(cls) if f.name != "layer_windows"]
        missing = [n for n in names if n not in data]
        if missing:
            raise ValueError(f"model fingerprint is missing fields {missing}; expected all of {names}")
        windows = data.get("layer_windows")
        return cls(**{n: data[n] for n in names}, layer_windows=None if windows is None else tuple(windows))

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

    Raises:
        ValueError: the config lacks the attention geometry depthkv needs.
        UnsupportedModelError: the model uses an attention feature depthkv cannot run
            (:func:`check_supported`).
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
    check_supported(text)
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
        layer_windows=attention_windows(text, layers),
    )


def as_fingerprint(model_or_fingerprint: Any) -> ModelFingerprint:
    """``model_or_fingerprint`` itself if it is a fingerprint, else :func:`fingerprint` of it."""
    if isinstance(model_or_fingerprint, ModelFingerprint):
        return model_or_fingerprint
    return fingerprint(model_or_fingerprint)


def attention_windows(text_config: Any, num_layers: int) -> tuple[int | None, ...] | None:
    """Each layer's attention window (None: full attention), or None when no layer has one.

    From ``config.layer_types`` (``"sliding_attention"`` layers get ``config.sliding_window``) or, for
    configs without layer types (Mistral), ``config.sliding_window`` for every layer.
    """
    window = getattr(text_config, "sliding_window", None)
    types = getattr(text_config, "layer_types", None)
    if types is not None:
        windows = tuple(int(window) if t == "sliding_attention" else None for t in types[:num_layers])
    elif window is not None:
        windows = (int(window),) * num_layers
    else:
        windows = (None,) * num_layers
    return windows if any(w is not None for w in windows) else None


_SUPPORTED_LAYER_TYPES = ("full_attention", "sliding_attention")


def check_supported(text_config: Any) -> None:
    """Raise :class:`UnsupportedModelError` for attention features depthkv cannot run correctly."""
    family = str(getattr(text_config, "model_type", type(text_config).__name__))
    if getattr(text_config, "attn_logit_softcapping", None) is not None:
        raise UnsupportedModelError(
            f"{family} soft-caps its attention logits (attn_logit_softcapping="
            f"{text_config.attn_logit_softcapping}); depthkv's attention does not, so its outputs would differ. "
            "Models without soft-capping (Gemma 3, Llama, Qwen, Mistral, ...) are supported"
        )
    if getattr(text_config, "use_bidirectional_attention", False):
        raise UnsupportedModelError(f"{family} uses bidirectional attention; depthkv supports causal language models")
    types = getattr(text_config, "layer_types", None) or []
    other = sorted({t for t in types if t not in _SUPPORTED_LAYER_TYPES})
    if other:
        raise UnsupportedModelError(
            f"{family} has layers of type {other}; depthkv supports {list(_SUPPORTED_LAYER_TYPES)}"
        )
    if "sliding_attention" in types and getattr(text_config, "sliding_window", None) is None:
        raise UnsupportedModelError(f"{family} has sliding-window layers but no sliding_window in its config")
