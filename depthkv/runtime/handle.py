"""``depthkv.apply(model, plan)``: eager generation with per-layer budgets (the reference path).

The compiled path (``torch.compile(model, backend=depthkv.backend(...))``) must match what this
produces. ``apply`` switches the model to the ``depthkv`` attention implementation (registered with
transformers' ``AttentionInterface`` on first use) and returns a handle that builds a fresh
:class:`~depthkv.BudgetCache` for every call. The handle is a context manager: leaving the
``with`` block restores the model's attention.
"""

from __future__ import annotations

from typing import Any

import torch

from depthkv.profile import Plan
from depthkv.runtime.attention import use_depthkv_attention
from depthkv.runtime.cache import BudgetCache
from depthkv.runtime.generation import cache_kwarg
from depthkv.runtime.modes import check_mode

__all__ = ["DepthKVModel", "apply"]


class DepthKVModel:
    """A model running with per-layer KV budgets. Obtain it with :func:`apply`.

    Attributes:
        model: the wrapped ``transformers`` model (its attention implementation is ``"depthkv"``).
        plan: the per-layer budgets and eviction policy.
    """

    def __init__(self, model: Any, plan: Plan, previous_impl: str | None, mode: str = "evict"):
        self.model = model
        self.plan = plan
        self.mode = check_mode(mode)
        self._previous_impl = previous_impl
        self._cache_kw = cache_kwarg(model)

    def new_cache(self, context_length: int | None = None) -> BudgetCache:
        """A fresh cache for one prompt (``context_length`` tokens, needed for relative plans)."""
        return BudgetCache.from_plan(self.plan, context_length, mode=self.mode)

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        """``model.generate`` with a fresh :class:`BudgetCache`; every ``generate`` keyword works.

        Args:
            input_ids: int64 ``[B, S]`` (left-padded for B > 1, with ``attention_mask``).
        """
        if kwargs.get(self._cache_kw) is None:
            kwargs[self._cache_kw] = self.new_cache(int(input_ids.shape[1]))
        return self.model.generate(input_ids, **kwargs)

    def __call__(self, input_ids: torch.Tensor, cache: BudgetCache | None = None, **kwargs: Any) -> Any:
        """One forward pass; pass ``cache`` to continue a sequence (a fresh one is made otherwise)."""
        cache = cache if cache is not None else self.new_cache(int(input_ids.shape[1]))
        kwargs[self._cache_kw] = cache
        kwargs.setdefault("use_cache", True)
        return self.model(input_ids, **kwargs)

    def remove(self) -> Any:
        """Restore the model's previous attention implementation; returns the model."""
        if self._previous_impl is not None:
            self.model.set_attn_implementation(self._previous_impl)
        return self.model

    def __enter__(self) -> DepthKVModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()


def apply(model: Any, plan: Plan, *, mode: str = "evict") -> DepthKVModel:
    """Run ``model`` with ``plan``'s per-layer budgets (eager; no compilation).

    Args:
        model: a ``transformers`` causal LM (Llama, Qwen2/3, Mistral, Gemma, Phi-3, ...).
        plan: from :func:`depthkv.allocate` (or :func:`depthkv.uniform_plan`).
        mode: ``"evict"`` (the budget holds at every decode step) or ``"append"`` (the prompt is
            compressed once; generated tokens are appended without eviction).

    Returns:
        A :class:`DepthKVModel`; use it as a context manager (``with depthkv.apply(model, plan) as
        handle:``) or call ``handle.remove()`` to restore the model's attention.

    Raises:
        FingerprintMismatch / ValueError: the plan belongs to another model.
    """
    if not isinstance(plan, Plan):
        raise TypeError(
            f"apply() needs a depthkv.Plan, got {type(plan).__name__}; make one with "
            "depthkv.allocate(profile, budget) or depthkv.uniform_plan(model, budget)"
        )
    plan.check_model(model)
    check_mode(mode)
    return DepthKVModel(model, plan, use_depthkv_attention(model), mode)
