"""The ``depthkv`` attention implementation for ``transformers``: where a model's attention meets
depthkv's caches.

Registered on demand (never at import) through transformers' extension points:
``AttentionInterface.register("depthkv", depthkv_attention)`` and
``AttentionMaskInterface.register("depthkv", depthkv_mask)``. The mask function always materialises a
boolean mask over *logical* positions ``[B, 1, q, seen + q]`` (padding included), so padding is never
dropped; the attention function gathers that mask at each slot's logical position, which gives every
layer its own correct mask whatever its budget and whichever tokens it kept
(:func:`depthkv.kernels.attention.slot_mask`).

Eagerly the function dispatches on the cache layer: a :class:`~depthkv.BudgetCache` layer attends
over its slots and then evicts (:meth:`~depthkv.runtime.cache.BudgetLayer.compress`); a
:class:`~depthkv.StaticBudgetCache` layer runs the attend-and-evict kernel of its ``impl``. While
a graph is traced it emits plain SDPA, which :func:`depthkv.backend`'s FX pass rewrites.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from depthkv.kernels.attention import attend, slot_mask
from depthkv.runtime.handoff import IMPL_NAME, take_active_layer
from depthkv.runtime.static_cache import StaticBudgetLayer


def depthkv_mask(*args: Any, **kwargs: Any) -> torch.Tensor:
    """transformers' SDPA mask, never skipped (``allow_is_causal_skip=False``): bool ``[B, 1, q, kv]``."""
    from transformers.masking_utils import sdpa_mask

    kwargs["allow_is_causal_skip"] = False
    kwargs["allow_is_bidirectional_skip"] = False
    return sdpa_mask(*args, **kwargs)


def register() -> None:
    """Register the ``depthkv`` attention and mask functions with transformers (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(IMPL_NAME, depthkv_attention)
    AttentionMaskInterface.register(IMPL_NAME, depthkv_mask)


def use_depthkv_attention(model: Any) -> str | None:
    """Switch ``model`` to the ``depthkv`` attention implementation (registering it first).

    Returns the implementation it used before, or None if it already used depthkv's.
    """
    register()
    previous = getattr(model.config, "_attn_implementation", None)
    model.set_attn_implementation(IMPL_NAME)
    return None if previous == IMPL_NAME else previous


@contextmanager
def depthkv_attention_enabled(model: Any) -> Iterator[None]:
    """Within the block ``model`` uses the ``depthkv`` attention implementation; restored after."""
    previous = use_depthkv_attention(model)
    try:
        yield
    finally:
        if previous is not None:
            model.set_attn_implementation(previous)


def depthkv_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    dropout: float = 0.0,
    scaling: float | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function: attend over the layer's slots, then let the layer evict.

    Args:
        query: ``[B, H, m, D]``; key, value: ``[B, Hkv, n, D]`` as returned by the cache's ``update``.
        attention_mask: ``[B, 1, m, L]`` over logical positions (from :func:`depthkv_mask`).

    Returns:
        ``([B, m, H, D], None)``.
    """
    if dropout and module.training:
        raise ValueError("depthkv attention is for inference; put the model in eval() mode (dropout > 0 given)")
    scaling = float(scaling if scaling is not None else query.shape[-1] ** -0.5)
    if torch.compiler.is_compiling():
        # Traced: emit plain SDPA over what the cache handed us (a StaticBudgetCache's logical K/V);
        # depthkv.backend's FX pass rewrites it into the budget-aware op of this layer.
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attention_mask, scale=scaling, enable_gqa=query.shape[1] != key.shape[1]
        )
        return out.transpose(1, 2).contiguous(), None
    layer = take_active_layer()
    if isinstance(layer, StaticBudgetLayer):
        return layer.attend(query, attention_mask, scaling).transpose(1, 2).contiguous(), None
    if layer is None or key is not layer.keys:
        # No depthkv cache (use_cache=False or another cache): plain causal attention, nothing to evict.
        m, n = query.shape[2], key.shape[2]
        positions = torch.arange(n, device=key.device).expand(key.shape[0], key.shape[1], n)
        qpos = torch.arange(n - m, n, device=key.device)
        mask = slot_mask(attention_mask, positions, qpos)
        return attend(query, key, value, mask, scaling), None
    if getattr(module, "layer_idx", layer.layer_idx) != layer.layer_idx:
        raise RuntimeError(
            f"depthkv cache layer {layer.layer_idx} was updated but attention runs for layer {module.layer_idx}"
        )
    m = query.shape[2]
    qpos = torch.arange(layer.seen - m, layer.seen, device=query.device)
    mask = slot_mask(attention_mask, layer.positions, qpos)
    out = attend(query, key, value, mask, scaling)
    layer.compress(query, mask, scaling)
    return out, None
