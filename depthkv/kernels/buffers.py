"""One layer's fixed-size KV buffers, as the attend-and-evict step reads and updates them."""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LayerBuffers"]


@dataclass
class LayerBuffers:
    """The buffers of one layer of a :class:`~depthkv.StaticBudgetCache` (updated in place).

    Attributes:
        keys: ``[B, Hkv, n, D]`` in the model's dtype; ``n`` is the layer's budget.
        values: ``[B, Hkv, n, D]`` in the model's dtype.
        positions: int64 ``[B, Hkv, n]``: logical position of the token in each slot, -1 = empty.
        scores: float32 ``[B, Hkv, n]``: accumulated policy scores (stateful policies).
        seen: int64 ``[]``: the logical length *including* the step being attended (the cache
            advances it before attention, as transformers' static layers do).
    """

    keys: torch.Tensor
    values: torch.Tensor
    positions: torch.Tensor
    scores: torch.Tensor
    seen: torch.Tensor

    @property
    def slots(self) -> int:
        """Slots per batch row and KV head (the layer's budget)."""
        return int(self.keys.shape[2])

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(keys, values, positions, scores, seen)``: the flat form the custom op takes."""
        return self.keys, self.values, self.positions, self.scores, self.seen
