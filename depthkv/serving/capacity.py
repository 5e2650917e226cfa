"""How many sequences fit in a device's memory, full cache against a plan, counted in bytes.

The model of a paged serving engine (vLLM, SGLang) used here, every assumption an argument of
:func:`estimate_capacity` with its default:

* One token's keys and values in one layer take ``2 · Hkv · D · s`` bytes (``Hkv`` KV heads of
  dimension ``D``, ``s`` bytes per element: 2 for bf16/fp16, 1 for fp8), plus ``Hkv ·
  slot_state_bytes`` of per-slot state that a compressing engine keeps beside them (depthkv's own
  caches: 12 bytes per slot and KV head, an int64 position and an fp32 score; 0 for a plain cache).
* For one sequence of ``context_length`` tokens a layer holds: every token (a full-attention layer
  of the full cache), ``min(window, context_length)`` (a sliding-window layer), or
  ``min(slots, context_length)`` (a budgeted layer: its budget, plus append mode's tail).
* Each layer's tokens are rounded **up** to whole blocks of ``block_size`` tokens (default 16,
  vLLM's default), as paged engines allocate.
* The memory for KV blocks is ``device_bytes · utilization − weight_bytes − reserve_bytes``:
  ``utilization`` is the share of the device the engine may use (default 0.9, vLLM's
  ``gpu_memory_utilization``), ``reserve_bytes`` an allowance for activations, CUDA graphs and the
  allocator's slack (default 4 GB; an engine measures its own at start-up, this is assumed).
* The largest batch is ``⌊kv_pool_bytes / bytes_per_sequence⌋`` sequences, each at the full
  ``context_length`` (0 when not even one fits).

Left out: a sliding layer in vLLM can hold one block more than its window (the window's start need
not fall on a block boundary); prefix sharing between sequences; the engine's own cap on concurrent
sequences (vLLM's ``max_num_seqs``); and compute: the batch that fits in memory is not the batch
that meets a latency target.

Units: bytes and tokens throughout; ``GB`` is 10⁹ bytes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from depthkv.serving.validation import check_engine_plan

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_RESERVE_BYTES",
    "DEFAULT_UTILIZATION",
    "GB",
    "CapacityEstimate",
    "blocks_for",
    "engine_plan_capacity",
    "estimate_capacity",
    "kv_bytes_per_token",
    "layer_tokens",
]

GB = 10**9
DEFAULT_BLOCK_SIZE = 16
DEFAULT_UTILIZATION = 0.9
DEFAULT_RESERVE_BYTES = 4 * GB


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive(name: str, value: Any, low: int = 1) -> int:
    if not _is_int(value) or value < low:
        raise ValueError(f"{name} must be a whole number >= {low}, got {value!r}")
    return value


def kv_bytes_per_token(num_kv_heads: int, head_dim: int, dtype_bytes: int = 2, slot_state_bytes: int = 0) -> int:
    """Bytes one token takes in one layer's cache: ``2 · Hkv · D · s + Hkv · slot_state_bytes``.

    Args:
        num_kv_heads: ``Hkv``, KV heads of the layer.
        head_dim: ``D``, dimension of a head.
        dtype_bytes: ``s``, bytes per element of the keys and values (2: bf16/fp16; 1: fp8).
        slot_state_bytes: extra bytes per slot and KV head (depthkv's caches: 12).

    Raises:
        ValueError: a non-positive size (``slot_state_bytes`` may be 0).
    """
    _positive("num_kv_heads", num_kv_heads)
    _positive("head_dim", head_dim)
    _positive("dtype_bytes", dtype_bytes)
    _positive("slot_state_bytes", slot_state_bytes, 0)
    return 2 * num_kv_heads * head_dim * dtype_bytes + num_kv_heads * slot_state_bytes


def blocks_for(tokens: int, block_size: int = DEFAULT_BLOCK_SIZE) -> int:
    """Blocks a paged engine allocates for ``tokens`` tokens: ``⌈tokens / block_size⌉``.

    Raises:
        ValueError: ``tokens < 0`` or ``block_size < 1``.
    """
    _positive("tokens", tokens, 0)
    _positive("block_size", block_size)
    return -(-tokens // block_size)


def _per_layer(name: str, values: Sequence[int | None] | None, num_layers: int) -> list[int | None]:
    if values is None:
        return [None] * num_layers
    values = list(values)
    if len(values) != num_layers:
        raise ValueError(f"{name} has {len(values)} entries for a model of {num_layers} layers; give one per layer")
    for i, v in enumerate(values):
        if v is not None:
            _positive(f"{name}[{i}]", v)
    return values


def layer_tokens(
    context_length: int,
    num_layers: int,
    budgets: Sequence[int | None] | None = None,
    windows: Sequence[int | None] | None = None,
) -> list[int]:
    """Tokens each layer holds for one sequence of ``context_length`` tokens (before block rounding).

    A layer holds ``context_length`` tokens, at most its budget (``budgets[i]``: the slots of a
    budgeted layer; None: no budget) and at most its window (``windows[i]``: a sliding-window
    layer; None: full attention).

    Args:
        context_length: tokens of the sequence (prompt and generated tokens).
        num_layers: layers of the model.
        budgets: ``[num_layers]`` slots per layer, or None for the full cache.
        windows: ``[num_layers]`` sliding windows, or None when every layer attends to everything.

    Returns:
        ``[num_layers]`` token counts.

    Raises:
        ValueError: a length of the wrong size, or a count below 1.
    """
    _positive("context_length", context_length)
    _positive("num_layers", num_layers)
    out = []
    for budget, window in zip(_per_layer("budgets", budgets, num_layers), _per_layer("windows", windows, num_layers)):
        held = context_length
        if budget is not None:
            held = min(held, budget)
        if window is not None:
            held = min(held, window)
        out.append(held)
    return out


@dataclass(frozen=True)
class CapacityEstimate:
    """What fits, with every number it was computed from (bytes and tokens).

    Attributes:
        context_length: tokens of one sequence (prompt and generated tokens).
        num_layers: layers of the model.
        num_kv_heads: KV heads per layer.
        head_dim: dimension of a head.
        dtype_bytes: bytes per element of keys and values.
        slot_state_bytes: extra bytes per slot and KV head.
        block_size: tokens per block of the paged cache.
        kv_bytes_per_token_layer: one token in one layer (:func:`kv_bytes_per_token`).
        kv_bytes_per_token: one token in every layer (the full cache's cost of a token).
        layer_tokens: ``[num_layers]`` tokens each layer holds for one sequence (:func:`layer_tokens`).
        layer_blocks: ``[num_layers]`` blocks each layer allocates (:func:`blocks_for`).
        slots_per_sequence: slots allocated over all layers, ``sum(layer_blocks) · block_size``.
        bytes_per_sequence: ``slots_per_sequence · kv_bytes_per_token_layer``.
        device_bytes: memory of the device.
        utilization: share of it the engine may use.
        usable_bytes: ``⌊device_bytes · utilization⌋``.
        weight_bytes: memory of the weights.
        reserve_bytes: allowance for activations, CUDA graphs, the allocator's slack.
        kv_pool_bytes: ``usable_bytes − weight_bytes − reserve_bytes`` (negative when the weights
            and the reserve do not fit).
        max_batch: ``⌊kv_pool_bytes / bytes_per_sequence⌋`` sequences, at least 0.
    """

    context_length: int
    num_layers: int
    num_kv_heads: int
    head_dim: int
    dtype_bytes: int
    slot_state_bytes: int
    block_size: int
    kv_bytes_per_token_layer: int
    kv_bytes_per_token: int
    layer_tokens: tuple[int, ...]
    layer_blocks: tuple[int, ...]
    slots_per_sequence: int
    bytes_per_sequence: int
    device_bytes: int
    utilization: float
    usable_bytes: int
    weight_bytes: int
    reserve_bytes: int
    kv_pool_bytes: int
    max_batch: int

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of every field (tuples as lists)."""
        data = dataclasses.asdict(self)
        data["layer_tokens"] = list(self.layer_tokens)
        data["layer_blocks"] = list(self.layer_blocks)
        return data


def estimate_capacity(
    *,
    num_layers: int,
    num_kv_heads: int,
    head_dim: int,
    context_length: int,
    device_bytes: int,
    weight_bytes: int,
    budgets: Sequence[int | None] | None = None,
    windows: Sequence[int | None] | None = None,
    dtype_bytes: int = 2,
    block_size: int = DEFAULT_BLOCK_SIZE,
    utilization: float = DEFAULT_UTILIZATION,
    reserve_bytes: int = DEFAULT_RESERVE_BYTES,
    slot_state_bytes: int = 0,
) -> CapacityEstimate:
    """KV bytes per sequence and the largest batch that fits (the model is in this module's docstring).

    Args:
        num_layers: layers of the model.
        num_kv_heads: KV heads per layer.
        head_dim: dimension of a head.
        context_length: tokens of one sequence (prompt and generated tokens); every sequence of the
            batch is this long.
        device_bytes: memory of the device in bytes (an H200's 141 GB: ``141 * GB``).
        weight_bytes: memory of the model's weights in bytes (parameters × bytes per parameter).
        budgets: ``[num_layers]`` slots per layer of a plan (an engine plan's ``slots``: the budget,
            plus append mode's tail; None keeps every token), or None for the full cache.
        windows: ``[num_layers]`` sliding windows (None: full attention), or None when every layer
            attends to the whole context.
        dtype_bytes: bytes per element of keys and values (default 2: bf16/fp16).
        block_size: tokens per block of the paged cache (default 16, vLLM's default).
        utilization: share of the device the engine may use, in (0, 1] (default 0.9, vLLM's
            ``gpu_memory_utilization``).
        reserve_bytes: allowance inside that share for activations, CUDA graphs and the allocator's
            slack (default 4 GB, assumed, not measured).
        slot_state_bytes: extra bytes per slot and KV head (default 0; depthkv's caches keep 12).

    Returns:
        A :class:`CapacityEstimate` with every intermediate number.

    Raises:
        ValueError: a size that is not a positive whole number, a per-layer list of the wrong length,
            ``utilization`` outside (0, 1], negative weight or reserve bytes.
    """
    per_layer = kv_bytes_per_token(num_kv_heads, head_dim, dtype_bytes, slot_state_bytes)
    tokens = layer_tokens(context_length, num_layers, budgets, windows)
    _positive("block_size", block_size)
    _positive("device_bytes", device_bytes)
    _positive("weight_bytes", weight_bytes, 0)
    _positive("reserve_bytes", reserve_bytes, 0)
    if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
        raise ValueError(f"utilization is the share of the device the engine may use, in (0, 1]; got {utilization!r}")
    blocks = [blocks_for(t, block_size) for t in tokens]
    slots = sum(blocks) * block_size
    per_sequence = slots * per_layer
    usable = math.floor(device_bytes * utilization)
    pool = usable - weight_bytes - reserve_bytes
    return CapacityEstimate(
        context_length=context_length,
        num_layers=num_layers,
        num_kv_heads=num_kv_heads,
        head_dim=head_dim,
        dtype_bytes=dtype_bytes,
        slot_state_bytes=slot_state_bytes,
        block_size=block_size,
        kv_bytes_per_token_layer=per_layer,
        kv_bytes_per_token=per_layer * num_layers,
        layer_tokens=tuple(tokens),
        layer_blocks=tuple(blocks),
        slots_per_sequence=slots,
        bytes_per_sequence=per_sequence,
        device_bytes=device_bytes,
        utilization=float(utilization),
        usable_bytes=usable,
        weight_bytes=weight_bytes,
        reserve_bytes=reserve_bytes,
        kv_pool_bytes=pool,
        max_batch=max(0, pool // per_sequence),
    )


def engine_plan_capacity(
    data: dict[str, Any],
    *,
    device_bytes: int,
    weight_bytes: int,
    context_length: int | None = None,
    full_cache: bool = False,
    **assumptions: Any,
) -> CapacityEstimate:
    """:func:`estimate_capacity` for an engine plan (:func:`depthkv.serving.export.engine_plan`).

    The model's layers, KV heads and head dimension, the layers' windows and slots come from
    ``data``; ``assumptions`` are the other keyword arguments of :func:`estimate_capacity`
    (``dtype_bytes``, ``block_size``, ``utilization``, ``reserve_bytes``, ``slot_state_bytes``).

    Args:
        data: an engine plan (checked with :func:`~depthkv.serving.validation.check_engine_plan`).
        device_bytes: memory of the device in bytes.
        weight_bytes: memory of the weights in bytes.
        context_length: tokens of one sequence; default: the plan's ``context_length`` plus its
            ``max_new_tokens``.
        full_cache: True for the same model without the plan (every layer keeps every token,
            sliding layers their window): the baseline to compare with.

    Raises:
        ValueError: the plan does not record the model's KV heads or head dimension (a plan made
            without a model), or has no ``context_length`` and none is given.
    """
    check_engine_plan(data)
    model = data["model"]
    missing = [name for name in ("num_kv_heads", "head_dim") if model[name] is None]
    if missing:
        raise ValueError(
            f"the engine plan does not record the model's {' and '.join(missing)} (its plan was made without a "
            "model): give them to estimate_capacity directly"
        )
    if context_length is None:
        if data["context_length"] is None:
            raise ValueError(
                "the engine plan has no context_length: give context_length, the tokens of one sequence "
                "(or export the plan with one)"
            )
        context_length = data["context_length"] + data["max_new_tokens"]
    layers = data["layers"]
    return estimate_capacity(
        num_layers=model["num_layers"],
        num_kv_heads=model["num_kv_heads"],
        head_dim=model["head_dim"],
        context_length=context_length,
        device_bytes=device_bytes,
        weight_bytes=weight_bytes,
        budgets=None if full_cache else [layer["slots"] for layer in layers],
        windows=[layer["sliding_window"] for layer in layers],
        **assumptions,
    )
