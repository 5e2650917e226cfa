"""Progressive depth for the tiny models: train a shallow model first, then add layers.

A content-matching ("induction") circuit forms in far fewer steps in a 2-layer model than in a
6-layer one, and each step is cheaper (training/LOG.md). ``grow_model`` turns a trained shallow model
into the preset's full depth without changing what it computes: the trained layers stay at the
bottom, the new layers go on top with their output projections (attention ``o_proj`` and MLP
``down_proj``) set to zero, so each new layer starts as the identity on the residual stream and
learns from there. ``carry_adam_state`` keeps the optimizer's moments of the parameters that both
models share, so training continues without a restart of Adam's statistics.
"""

from __future__ import annotations

from typing import Any

import torch

# The two projections that write a layer's output into the residual stream (Llama and Qwen2 names).
_OUTPUT_PROJECTIONS = ("self_attn.o_proj", "mlp.down_proj")


def grow_model(small: torch.nn.Module, large: torch.nn.Module) -> torch.nn.Module:
    """Copy ``small`` (L layers) into ``large`` (a freshly initialized model of the same family and
    width with more layers) and zero the output projections of ``large``'s layers L and up.

    Returns ``large``, which then computes exactly what ``small`` computes (up to float rounding).
    Raises ``ValueError`` when ``large`` is not deeper or the shared parameters differ in shape.
    """
    small_layers = small.config.num_hidden_layers
    large_layers = large.config.num_hidden_layers
    if large_layers <= small_layers:
        raise ValueError(f"cannot grow a {small_layers}-layer model into {large_layers} layers; the target must be deeper")
    large_state = large.state_dict()
    for name, tensor in small.state_dict().items():
        if name not in large_state or large_state[name].shape != tensor.shape:
            raise ValueError(
                f"parameter {name} ({tuple(tensor.shape)}) has no match in the deeper model; grow only "
                "between models of the same family and width"
            )
    large.load_state_dict(small.state_dict(), strict=False)
    with torch.no_grad():
        for index in range(small_layers, large_layers):
            layer = large.model.layers[index]
            for path in _OUTPUT_PROJECTIONS:
                module = layer.get_submodule(path)
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return large


def carry_adam_state(
    small: torch.nn.Module, old: torch.optim.Optimizer, large: torch.nn.Module, new: torch.optim.Optimizer
) -> int:
    """Give ``new`` (an optimizer over ``large``) the per-parameter state ``old`` kept for the same
    parameter names of ``small`` (Adam's step count and moments). Returns how many parameters got
    state; the new layers start with none, as at the start of training."""
    large_params = dict(large.named_parameters())
    carried = 0
    for name, param in small.named_parameters():
        state: dict[str, Any] | None = old.state.get(param)
        if state:
            new.state[large_params[name]] = {
                k: v.clone() if torch.is_tensor(v) else v for k, v in state.items()
            }
            carried += 1
    return carried
