"""A model's decoder layers, and where its parts run: one device, or several by ``device_map``.

A model loaded with ``from_pretrained(..., device_map=...)`` (or dispatched by accelerate's
``dispatch_model`` / ``cpu_offload`` / ``disk_offload``) runs each block on its *execution device*,
recorded in the accelerate hook the block carries (``module._hf_hook.execution_device``). A block
whose weights are offloaded to CPU RAM or to disk holds them on the ``meta`` device between calls,
so ``next(model.parameters()).device`` says nothing about where anything runs: depthkv never asks
it. Instead:

* :func:`decoder_layers` finds the decoder layers (structurally, for any model family);
* :func:`input_device` is where token ids go (the input embedding's execution device);
* :func:`layer_devices` is where each decoder layer runs, hence where its KV buffers live;
* :func:`model_dtype` is the dtype of the weights (``meta`` tensors keep theirs).

Without accelerate hooks these fall back to the device of the block's own parameters, which is
the whole story for a model on one device.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["decoder_layers", "execution_device", "input_device", "is_dispatched", "layer_devices", "model_dtype"]


def _as_device(value: Any) -> torch.device:
    """accelerate writes execution devices as ``torch.device``, ``"cuda:1"`` or a bare index (an
    accelerator's ordinal)."""
    if isinstance(value, int) and not isinstance(value, bool):
        kind = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        if kind is None:
            raise ValueError(f"device index {value} in a device map, but this machine has no accelerator")
        return torch.device(kind.type, value)
    return torch.device(value)


def _hook_device(module: nn.Module) -> torch.device | None:
    """The execution device of ``module``'s accelerate hook (an ``AlignDevicesHook``, possibly
    inside a ``SequentialHook``), or None."""
    hook = getattr(module, "_hf_hook", None)
    hooks = getattr(hook, "hooks", None) or ([hook] if hook is not None else [])
    for h in hooks:
        dev = getattr(h, "execution_device", None)
        if dev is not None:
            return _as_device(dev)
    return None


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


def execution_device(module: nn.Module) -> torch.device:
    """The device ``module`` computes on.

    The execution device of the nearest accelerate hook on ``module`` or, depth first, on one of
    its submodules; else the device of its first parameter or buffer that is not on ``meta``.

    Raises:
        ValueError: every tensor is on ``meta`` and no hook says where they are loaded to.
    """
    for sub in module.modules():
        dev = _hook_device(sub)
        if dev is not None:
            return dev
    for t in [*module.parameters(), *module.buffers()]:
        if t.device.type != "meta":
            return t.device
    raise ValueError(
        f"cannot tell where {type(module).__name__} runs: its weights are on the meta device and it has no "
        "accelerate hook with an execution_device. Load the model with from_pretrained(..., device_map=...) "
        "or dispatch it with accelerate (dispatch_model, cpu_offload, disk_offload) before using it"
    )


def input_device(model: nn.Module) -> torch.device:
    """Where ``model``'s token ids go: the execution device of its input embeddings (accelerate's
    hook on the model moves them there too; this keeps the first copy away)."""
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    return execution_device(emb if emb is not None else model)


def layer_devices(model: nn.Module) -> list[torch.device]:
    """The execution device of each decoder layer, in layer order (``[num_layers]``)."""
    return [execution_device(layer) for layer in decoder_layers(model)]


def is_dispatched(model: nn.Module) -> bool:
    """Whether accelerate hooks run ``model``'s blocks (a ``device_map``, CPU or disk offload)."""
    return any(hasattr(module, "_hf_hook") for module in model.modules())


def model_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of ``model``'s floating-point weights (the first floating parameter's, ``meta``
    included: an offloaded weight keeps its dtype)."""
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    raise ValueError(f"{type(model).__name__} has no floating-point parameters")
