"""Reference attention over a layer's slots: the math every path shares (pure PyTorch, any device).

A layer's cache holds *slots* in any order, each with the logical position of the token it holds.
Masks over logical positions (transformers' causal + padding masks) are gathered at those positions
to give each layer its own correct mask whatever tokens it kept (:func:`slot_mask`), and
:func:`attend` is grouped-query attention over the slots with that mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["as_bool_mask", "attend", "slot_mask"]


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
        scaling: the softmax scale (the model's own: not always ``D ** -0.5``).

    Returns:
        ``[B, m, H, D]`` (transformers' attention-output layout). Query rows with no allowed slot
        (padding queries) attend to all slots instead of producing NaN; their outputs are never used.
    """
    b, h, m, d = query.shape
    hkv, n = keys.shape[1], keys.shape[2]
    groups = h // hkv
    mask = mask | ~mask.any(dim=-1, keepdim=True)
    if groups > 1:
        # The query heads of a group attend to one KV head: stack them along the query axis
        # ([B, Hkv, g*m, D]) instead of repeating the keys and values g times.
        query = query.reshape(b, hkv, groups * m, d)
        mask = mask[:, :, None].expand(b, hkv, groups, m, n).reshape(b, hkv, groups * m, n)
    out = F.scaled_dot_product_attention(query, keys, values, attn_mask=mask, scale=scaling)
    return out.reshape(b, h, m, values.shape[-1]).transpose(1, 2).contiguous()
