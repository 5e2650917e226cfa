"""A plan as a serving engine would read it: the engine plan, one plain JSON object.

:func:`engine_plan` turns a :class:`~depthkv.profile.plan.Plan` into a description that needs no
depthkv to read: the model's attention geometry, the eviction policy and all its parameters, the
decode mode, and one entry per layer with its attention type, its window, the tokens it keeps and
the cache slots it needs. :func:`save_engine_plan` writes it atomically and
:func:`load_engine_plan` reads it back, checking every field
(:func:`~depthkv.serving.validation.check_engine_plan`).

The fields (format ``"depthkv-engine-plan"``, version 1):

* ``format``, ``version``: what the file is; a reader refuses another format or version.
* ``model``: ``architecture``, ``model_type``, ``num_layers``, ``num_heads``, ``num_kv_heads``,
  ``head_dim``, ``hidden_size``, ``vocab_size``, ``config_hash`` from the plan's fingerprint;
  null where the plan has no fingerprint (``num_layers`` is then the plan's layer count). The KV
  dtype is not recorded: depthkv's fingerprint leaves it out, and the engine's own dtype applies.
* ``allocation``: how the budgets were made: ``strategy``, ``global_budget`` (a fraction of the
  context or tokens per layer, null for hand-made plans), ``relative``, ``context_length`` (the
  prompt length the budgets were computed for; null for absolute plans), ``floor``.
* ``policy``: the eviction policy inside each layer, every field of
  :class:`~depthkv.policies.config.PolicyConfig` (``name``, ``window``, ``kernel``, ``sinks``,
  ``seed``) plus the derived ``floor`` (slots always kept) and ``stateful`` (scores accumulate
  across steps and must be kept per slot).
* ``mode``: the decode mode, ``"evict"`` or ``"append"`` (:mod:`depthkv.runtime.modes`);
  ``max_new_tokens``: append mode's reserved tail per budgeted full-attention layer (0 in evict mode).
* ``context_length``: the prompt length the per-layer budgets are resolved for
  (:meth:`~depthkv.profile.plan.Plan.budgets_for`); null: as planned (a relative plan's budgets at
  its own ``allocation.context_length``; an absolute plan's, which hold at every length).
* ``layers``: one entry per layer, in order:

    * ``index``: the layer's position, 0-based.
    * ``attention``: ``"full"`` or ``"sliding"`` (from the fingerprint's layer windows).
    * ``sliding_window``: the window of a sliding layer, in tokens; null for a full layer.
    * ``budget``: tokens the layer keeps after compression; null keeps every token (a full
      layer). A sliding layer's budget is never above its window.
    * ``fraction``: for a relative plan, the layer's planned budget over the planned context length
      (its share of the context at ``allocation.context_length``); null for an absolute plan.
      The tokens at another length come from exporting again at that length (largest-remainder
      apportionment with the windows as caps, :meth:`~depthkv.profile.plan.Plan.budgets_for`), not
      from ``fraction × length``.
    * ``tail``: slots reserved for generated tokens: ``max_new_tokens`` for a budgeted
      full-attention layer in append mode, else 0 (sliding layers evict in both modes).
    * ``slots``: cache slots the layer needs per sequence, ``budget + tail``; null when the layer
      keeps every token (it grows with the sequence, as in an engine without depthkv).

* ``totals``: ``budget_tokens`` (sum of the budgets) and ``slots`` (sum of the slots) over all
  layers, per sequence; null when a layer keeps every token.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from depthkv.files import atomic_write_json, read_json
from depthkv.profile.plan import MAX_TOKENS, Plan
from depthkv.runtime.modes import check_mode
from depthkv.serving.validation import (
    ENGINE_PLAN_FORMAT,
    ENGINE_PLAN_VERSION,
    MODEL_FIELDS,
    check_engine_plan,
)

__all__ = ["engine_plan", "load_engine_plan", "save_engine_plan"]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_arguments(plan: Any, context_length: Any, mode: Any, max_new_tokens: Any) -> None:
    if not isinstance(plan, Plan):
        raise TypeError(f"engine_plan takes a depthkv.Plan (Plan.load(path) reads one), got {type(plan).__name__}")
    if context_length is not None and not (_is_int(context_length) and 1 <= context_length <= MAX_TOKENS):
        raise ValueError(
            f"context_length is the prompt length in tokens to size the budgets for, a whole number in "
            f"[1, {MAX_TOKENS}] (or None: as planned); got {context_length!r}"
        )
    check_mode(mode)
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    if mode == "append" and max_new_tokens < 1:
        raise ValueError(
            "mode='append' reserves a tail of max_new_tokens slots per budgeted layer for the generated tokens: "
            "give max_new_tokens >= 1 (the longest answer), or use mode='evict'"
        )
    if mode == "evict" and max_new_tokens:
        raise ValueError(
            f"max_new_tokens ({max_new_tokens}) sizes append mode's tail; in evict mode generated tokens replace "
            "the lowest-scoring slot and need no tail: leave it at 0, or use mode='append'"
        )


def _model(plan: Plan) -> dict[str, Any]:
    fp = plan.fingerprint
    if fp is None:
        return {name: (plan.n_layers if name == "num_layers" else None) for name in MODEL_FIELDS}
    return {name: getattr(fp, name) for name in MODEL_FIELDS}


def engine_plan(
    plan: Plan,
    *,
    context_length: int | None = None,
    mode: str = "evict",
    max_new_tokens: int = 0,
) -> dict[str, Any]:
    """The engine-neutral description of ``plan`` (the fields are in this module's docstring).

    Every layer's ``budget`` is ``plan.budgets_for(context_length)`` (for a relative plan without
    ``context_length``: its budgets at the planned length), so an engine keeps exactly the tokens
    depthkv's own caches keep.

    Args:
        plan: the plan to export.
        context_length: prompt length in tokens to resolve a relative plan's budgets for; None: as
            planned. An absolute plan's budgets are the same at every length.
        mode: ``"evict"`` (a generated token replaces the lowest-scoring slot; ``slots = budget``)
            or ``"append"`` (generated tokens fill a reserved tail; ``slots = budget + max_new_tokens``
            on budgeted full-attention layers), as in :mod:`depthkv.runtime.modes`.
        max_new_tokens: append mode's tail per layer, in tokens (>= 1); 0 in evict mode.

    Returns:
        A dict of plain JSON types (no NaN), valid for :func:`~depthkv.serving.validation.check_engine_plan`.

    Raises:
        TypeError: ``plan`` is not a :class:`~depthkv.profile.plan.Plan`.
        ValueError: a bad ``context_length``, ``mode`` or ``max_new_tokens`` (the message says which
            values would be right).
    """
    _check_arguments(plan, context_length, mode, max_new_tokens)
    resolve_at = plan.context_length if context_length is None and plan.relative else context_length
    budgets = plan.budgets_for(resolve_at)
    layers = []
    for i, (budget, window) in enumerate(zip(budgets, plan.caps)):
        tail = max_new_tokens if mode == "append" and window is None and budget is not None else 0
        layers.append(
            {
                "index": i,
                "attention": "full" if window is None else "sliding",
                "sliding_window": window,
                "budget": budget,
                "fraction": plan.budgets[i] / plan.context_length if plan.relative else None,
                "tail": tail,
                "slots": None if budget is None else budget + tail,
            }
        )
    kept = [layer["budget"] for layer in layers]
    slots = [layer["slots"] for layer in layers]
    return {
        "format": ENGINE_PLAN_FORMAT,
        "version": ENGINE_PLAN_VERSION,
        "model": _model(plan),
        "allocation": {
            "strategy": plan.strategy,
            "global_budget": plan.global_budget,
            "relative": plan.relative,
            "context_length": plan.context_length,
            "floor": plan.floor,
        },
        "policy": {**plan.policy.to_dict(), "floor": plan.policy.floor, "stateful": plan.policy.stateful},
        "mode": mode,
        "max_new_tokens": max_new_tokens,
        "context_length": context_length,
        "layers": layers,
        "totals": {
            "budget_tokens": None if None in kept else sum(kept),
            "slots": None if None in slots else sum(slots),
        },
    }


def save_engine_plan(path: str | os.PathLike, data: dict[str, Any]) -> Path:
    """Write an engine plan as JSON atomically (:func:`depthkv.files.atomic_write_json`); returns the path.

    The data is checked first (:func:`~depthkv.serving.validation.check_engine_plan`): a malformed
    engine plan is never written, and ``path`` is left as it was.

    Raises:
        depthkv.files.CorruptFileError: ``data`` is not a valid engine plan (a ``ValueError``).
    """
    check_engine_plan(data, source=f"engine plan for {path}")
    return atomic_write_json(path, data)


def load_engine_plan(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check an engine plan written by :func:`save_engine_plan` (or by hand).

    Raises:
        FileNotFoundError: no such file.
        depthkv.files.CorruptFileError: the file is not JSON, or not a valid engine plan of this
            version; the message names the file and the field that is wrong.
    """
    data = read_json(path, "engine plan")
    return check_engine_plan(data, source=f"engine plan {path}")
