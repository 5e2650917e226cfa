"""The ``depthkv`` attention implementation for ``transformers`` (eager reference path).

Registered on demand (never at import) through transformers' extension points:
``AttentionInterface.register("depthkv", depthkv_attention)`` and
``AttentionMaskInterface.register("depthkv", depthkv_mask)``. The mask function always materialises a
boolean mask over *logical* positions ``[B, 1, q, seen + q]`` (padding included), so padding is never
dropped; the attention function gathers that mask at each slot's logical position, which gives every
layer its own correct mask whatever its budget and whichever tokens it kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F

from .cache import take_active_layer

IMPL_NAME = "depthkv"


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


@contextmanager
def depthkv_attention_enabled(model: Any) -> Iterator[None]:
    """Within the block ``model`` uses the ``depthkv`` attention implementation; restored after."""
    register()
    previous = model.config._attn_implementation
    model.set_attn_implementation(IMPL_NAME)
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def as_bool_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """A boolean "may attend" mask from transformers' bool or additive float mask (same shape)."""
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def slot_mask(
    attention_mask: torch.Tensor | None, positions: torch.Tensor, query_positions: torch.Tensor
) -> torch.Tensor:
    """Mask of this step's queries over a layer's slots.

    Args:
        attention_mask: ``[B or 1, 1 or H, m, L]`` over logical positions (bool or additive), or None
            (pure causal, no padding).
        positions: int64 ``[B, Hkv, n]`` logical position of every slot.
        query_positions: int64 ``[m]`` logical positions of the queries (used when the mask is None).

    Returns:
        bool ``[B, Hkv, m, n]``.
    """
    b, hkv, n = positions.shape
    m = query_positions.shape[0]
    if attention_mask is None:
        return positions[:, :, None, :] <= query_positions[None, None, :, None]
    mask = as_bool_mask(attention_mask)[:, 0]  # heads share the mask in transformers' causal masks
    mask = mask.expand(b, m, mask.shape[-1])
    index = positions[:, :, None, :].expand(b, hkv, m, n)
    return mask[:, None].expand(b, hkv, m, mask.shape[-1]).gather(3, index)


def attend(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, scaling: float
) -> torch.Tensor:
    """Reference GQA attention over slots.

    Args:
        query: ``[B, H, m, D]``; keys, values: ``[B, Hkv, n, D]``; mask: bool ``[B, Hkv, m, n]``.

    Returns:
        ``[B, m, H, D]`` (transformers' attention-output layout). Query rows with no allowed slot
        (padding queries) attend to all slots instead of producing NaN; their outputs are never used.
    """
    groups = query.shape[1] // keys.shape[1]
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    if groups > 1:
        keys = keys.repeat_interleave(groups, dim=1)
        values = values.repeat_interleave(groups, dim=1)
        mask = mask.repeat_interleave(groups, dim=1)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous()


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
    if kwargs.get("sliding_window") is not None:
        raise NotImplementedError(
            f"layer {getattr(module, 'layer_idx', '?')} uses sliding-window attention, which depthkv does not "
            "prune yet; use a model whose layers all use full attention"
        )
    from .static_cache import StaticBudgetLayer

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
