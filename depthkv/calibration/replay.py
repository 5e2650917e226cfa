"""Re-using a full run's work during one-layer ablations.

Pruning layer ``l`` changes nothing below it: the hidden states entering layer ``l`` equal the full
run's. So an ablation replays layers ``< l`` (each returns the recorded output of layer ``l - 1``)
and runs only layers ``>= l``. Eviction also never changes the step it happens in, so the context
prefill is shared by every ablation too (see :meth:`depthkv.runtime.cache.BudgetCache.pruned`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from depthkv.runtime.devices import decoder_layers

__all__ = ["decoder_layers", "record_outputs", "replay_below"]


class _Replay(nn.Module):
    """Stand-in for a decoder layer: returns a recorded output instead of computing it."""

    def __init__(self, original: nn.Module, output: Any):
        super().__init__()
        self.output = output
        for attr in ("attention_type", "layer_idx", "is_sliding"):
            if hasattr(original, attr):
                setattr(self, attr, getattr(original, attr))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.output


@contextlib.contextmanager
def replay_below(model: nn.Module, layer: int, output: Any) -> Iterator[None]:
    """Within the block, layers ``< layer`` return ``output`` (the full run's output of ``layer - 1``)."""
    layers = decoder_layers(model)
    originals = [layers[i] for i in range(layer)]
    try:
        for i, orig in enumerate(originals):
            layers[i] = _Replay(orig, output)
        yield
    finally:
        for i, orig in enumerate(originals):
            layers[i] = orig


@contextlib.contextmanager
def record_outputs(model: nn.Module) -> Iterator[list[Any]]:
    """Collect each decoder layer's output during one forward pass (a list indexed by layer)."""
    layers = decoder_layers(model)
    outputs: list[Any] = [None] * len(layers)
    handles = []

    def hook(idx: int):
        def fn(_module: nn.Module, _args: Any, out: Any) -> None:
            outputs[idx] = out.detach() if isinstance(out, torch.Tensor) else out

        return fn

    try:
        for i, lay in enumerate(layers):
            handles.append(lay.register_forward_hook(hook(i)))
        yield outputs
    finally:
        for h in handles:
            h.remove()
