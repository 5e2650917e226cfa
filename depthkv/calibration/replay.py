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


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ``ModuleList`` of decoder layers of a ``transformers`` causal LM.

    Found structurally (the ModuleList with ``num_hidden_layers`` entries whose modules contain an
    attention module with ``layer_idx``), so it works across model families without a name table.
    """
    config = getattr(model, "config", None)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    n = getattr(text, "num_hidden_layers", None)
    for _name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n and n:
            first = module[0]
            if any(hasattr(sub, "layer_idx") for sub in first.modules()):
                return module
    raise ValueError(
        f"could not find the decoder layers of {type(model).__name__}: expected an nn.ModuleList of "
        f"{n} layers containing attention modules with a `layer_idx` attribute"
    )


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
