"""The hand-off from a depthkv cache layer's ``update`` to depthkv's attention function.

transformers' attention modules call ``cache.update(k, v, layer_idx)`` and then the attention
function, which receives the keys/values but not the cache layer. The layer that ran ``update``
last in this context is recorded here and taken by the attention function; a step whose attention
was not depthkv's is detected at the next ``update`` and raises :class:`DepthKVUsageError`.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

__all__ = ["IMPL_NAME", "DepthKVUsageError", "set_active_layer", "take_active_layer"]

IMPL_NAME = "depthkv"  # the name depthkv's attention is registered under with transformers

_ACTIVE_LAYER: ContextVar[Any] = ContextVar("depthkv_active_layer", default=None)


class DepthKVUsageError(RuntimeError):
    """depthkv's cache and attention function were not used together."""


def set_active_layer(layer: Any) -> None:
    """Record ``layer`` (a depthkv cache layer) as the one whose ``update`` ran last."""
    _ACTIVE_LAYER.set(layer)


def take_active_layer() -> Any:
    """Return (and clear) the cache layer whose ``update`` ran last in this context, or None."""
    layer = _ACTIVE_LAYER.get()
    _ACTIVE_LAYER.set(None)
    return layer
