"""Serving: a plan as a paged serving engine (vLLM, SGLang) would read it, and what it buys in memory.

* :mod:`~depthkv.serving.export` — :func:`engine_plan`, an engine-neutral JSON description of a
  plan (per-layer attention type, window, token budget, slots), :func:`save_engine_plan`,
  :func:`load_engine_plan`.
* :mod:`~depthkv.serving.validation` — :func:`check_engine_plan`, the format checked field by field.
* :mod:`~depthkv.serving.capacity` — :func:`estimate_capacity`: KV bytes per token and per
  sequence, block rounding, and the largest batch that fits a device, full cache against a plan.

No serving engine is imported or patched here: depthkv ships no vLLM or SGLang plugin. The page
*Serving engines* of the documentation says what an engine would have to do with these files.
"""

from depthkv.serving.capacity import (
    GB,
    CapacityEstimate,
    blocks_for,
    engine_plan_capacity,
    estimate_capacity,
    kv_bytes_per_token,
    layer_tokens,
)
from depthkv.serving.export import engine_plan, load_engine_plan, save_engine_plan
from depthkv.serving.validation import ENGINE_PLAN_FORMAT, ENGINE_PLAN_VERSION, check_engine_plan

__all__ = [
    "ENGINE_PLAN_FORMAT",
    "ENGINE_PLAN_VERSION",
    "GB",
    "CapacityEstimate",
    "blocks_for",
    "check_engine_plan",
    "engine_plan",
    "engine_plan_capacity",
    "estimate_capacity",
    "kv_bytes_per_token",
    "layer_tokens",
    "load_engine_plan",
    "save_engine_plan",
]
