"""``depthkv.backend(plan_or_profile, ...)``: a torch.compile backend that bakes per-layer budgets in.

    cache = depthkv.StaticBudgetCache.for_model(model, plan, max_len=prompt_len + new_tokens)
    compiled = torch.compile(model, backend=depthkv.backend(plan))
    out = compiled(input_ids, cache=cache, use_cache=True)

The backend runs the FX pass (:func:`depthkv.passes.specialize_budgets`) on the Dynamo-level graph,
then hands the graph to Inductor (``compile_fx``) with the ``mode=`` / ``options=`` that torch.compile
passes to custom backends (transformers' ``CompileConfig`` passes ``mode="reduce-overhead"``).

The backend's kernel implementation (``impl``) is the one compiled graphs run; the eager steps of a
:class:`~depthkv.StaticBudgetCache` (the prefill of ``generate`` with a ``CompileConfig``, or any
uncompiled call) run the cache's ``impl``. Make the cache
with :meth:`DepthKVBackend.new_cache` (or after :func:`compile`) and both are the same.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

from depthkv.allocation import DEFAULT_STRATEGY, allocate
from depthkv.kernels import resolve_impl
from depthkv.kernels.custom_ops import register_ops
from depthkv.kernels.registry import check_impl_name
from depthkv.passes import PassReport, specialize_budgets
from depthkv.policies import PolicyConfig
from depthkv.profile import Budget, Plan, Profile
from depthkv.runtime import StaticBudgetCache
from depthkv.runtime.attention import use_depthkv_attention
from depthkv.runtime.devices import decoder_layers, is_dispatched

log = logging.getLogger("depthkv")
INNER = ("inductor", "aot_eager", "eager")


class DepthKVBackend:
    """The callable torch.compile gets. ``reports`` holds one :class:`PassReport` per compiled graph."""

    def __init__(self, plan: Plan, context_length: int | None, impl: str, inner: str):
        self.plan = plan
        self.context_length = context_length
        self.budgets = plan.budgets_for(context_length)
        self.impl = impl
        self.inner = inner
        self.reports: list[PassReport] = []

    @property
    def policy(self) -> PolicyConfig:
        return self.plan.policy

    def new_cache(
        self,
        model: Any,
        *,
        max_len: int,
        batch_size: int = 1,
        dtype: torch.dtype | None = None,
        device: Any = None,
        mode: str = "evict",
        max_new_tokens: int | None = None,
    ) -> StaticBudgetCache:
        """The :class:`~depthkv.StaticBudgetCache` this backend's graphs expect: the same plan,
        ``context_length`` and kernel implementation (for the eager steps); ``mode`` and
        ``max_new_tokens`` as in :meth:`StaticBudgetCache.for_model`."""
        return StaticBudgetCache.for_model(
            model, self.plan, batch_size=batch_size, max_len=max_len, context_length=self.context_length,
            dtype=dtype, device=device, impl=self.impl, mode=mode, max_new_tokens=max_new_tokens,
        )

    def __deepcopy__(self, memo: dict) -> DepthKVBackend:
        # transformers' CompileConfig.to_dict() deep-copies its backend; keep one backend (and its reports).
        return self

    def __repr__(self) -> str:
        return f"depthkv.backend(budgets={self.budgets}, policy={self.policy.name}, inner={self.inner})"

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: list[Any], **kwargs: Any) -> Callable:
        mode = kwargs.pop("mode", None)
        options = dict(kwargs.pop("options", None) or {})
        device = next((t.device for t in example_inputs if isinstance(t, torch.Tensor)), torch.device("cpu"))
        impl = resolve_impl(self.impl, device)
        report = specialize_budgets(gm, self.budgets, self.policy, impl=impl)
        report.impl = impl
        self.reports.append(report)
        log.info("depthkv pass: %d attention nodes rewritten in %.1f ms", len(report.rewritten), report.seconds * 1e3)
        if self.inner == "eager":
            return gm.forward
        if self.inner == "aot_eager":
            return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx

        patches = dict(list_mode_options(mode)) if mode else {}
        patches.update(options)
        # Inductor's locality reordering moves the attention's read of the value buffer after the
        # decode step's in-place write to it, which forces a copy of the whole buffer at every
        # step; without it the writes stay in place. Scoped to this graph; options= can override.
        patches.setdefault("reorder_for_locality", False)
        return compile_fx(gm, example_inputs, config_patches=patches)


def backend(
    plan_or_profile: Plan | Profile,
    *,
    budget: Budget | None = None,
    strategy: str = DEFAULT_STRATEGY,
    policy: PolicyConfig | str | None = None,
    context_length: int | None = None,
    impl: str = "auto",
    inner: str = "inductor",
) -> DepthKVBackend:
    """A torch.compile backend with per-layer KV budgets compiled in.

    Args:
        plan_or_profile: a :class:`Plan`, or a :class:`Profile` (then ``budget`` and ``strategy`` are
            passed to :func:`depthkv.allocate`).
        budget: global budget for a profile: tokens per layer (int) or fraction of the context (float).
        context_length: prompt length to size the buffers for when the budget is a fraction.
        impl: kernel implementation (``"auto"``, ``"reference"``, ``"triton"``, ``"flash"``).
        inner: compiler after the pass: ``"inductor"`` (default), ``"aot_eager"`` or ``"eager"``.

    Raises:
        ValueError: a bad budget/strategy, a budget below the policy's floor, a relative plan without
            ``context_length``, or an unknown ``inner`` — before anything is compiled.
    """
    check_impl_name(impl)
    if inner not in INNER:
        raise ValueError(f"unknown inner compiler {inner!r}; choose one of {', '.join(INNER)}")
    if isinstance(plan_or_profile, Profile):
        if budget is None:
            raise ValueError("backend(profile) needs budget= (tokens per layer, or a fraction of the context)")
        plan = allocate(plan_or_profile, budget, strategy, policy=policy)
    elif isinstance(plan_or_profile, Plan):
        plan = plan_or_profile
        if budget is not None or policy is not None:
            raise ValueError("budget= and policy= apply to a profile; this is already a plan")
    else:
        raise TypeError(
            f"backend() needs a depthkv Plan or Profile, got {type(plan_or_profile).__name__}"
        )
    register_ops()
    return DepthKVBackend(plan, context_length, impl, inner)


def compile(  # noqa: A001 - mirrors torch.compile
    model: Any,
    plan: Plan,
    *,
    context_length: int | None = None,
    inner: str = "inductor",
    impl: str = "auto",
    **compile_kwargs: Any,
) -> Any:
    """``torch.compile`` a model's forward with depthkv's backend; returns the model.

    Checks the plan against the model, switches the model to the ``depthkv`` attention implementation
    (so steps that run eagerly also keep the budgets), and compiles
    ``model.forward`` in place so ``model.generate`` uses it. ``compile_kwargs`` go to torch.compile.
    The backend is kept as ``model._depthkv_backend``: :meth:`StaticBudgetCache.for_model` takes
    its kernel implementation for the eager steps.

    A model split over devices by accelerate (``from_pretrained(..., device_map=...)``, CPU or disk
    offload) is compiled layer by layer instead (:func:`compile_layers`): accelerate's hooks run
    outside graphs by design, so a whole-model graph does not exist there.
    """
    plan.check_model(model)
    use_depthkv_attention(model)
    be = backend(plan, context_length=context_length, inner=inner, impl=impl)
    if is_dispatched(model):
        compile_layers(model, be, **compile_kwargs)
    else:
        model.forward = torch.compile(model.forward, backend=be, **compile_kwargs)
    model._depthkv_backend = be
    return model


def compile_layers(model: Any, be: DepthKVBackend, **compile_kwargs: Any) -> None:
    """Compile each decoder layer's computation of a model split by accelerate (regional compilation).

    accelerate runs its hooks (moving activations between devices, loading offloaded weights)
    outside any graph (they are ``torch.compiler.disable``-d), so compiling the whole forward would
    only give fragments between hooks. Instead each decoder layer's own forward (the function inside
    its hook, ``_old_forward``) is compiled with ``be``; the hooks, the embeddings and the output
    head run eagerly around them. Dynamo keeps one compiled graph per layer and step shape (the
    layer index is a constant of its graph), so its recompile limit is raised to fit them.
    """
    layers = decoder_layers(model)
    need = 4 * len(layers)  # prefill and decode graphs per layer, with room for a second prefill shape
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, name) and getattr(torch._dynamo.config, name) < need:
            log.info("depthkv.compile: torch._dynamo.config.%s raised to %d (one graph per layer)", name, need)
            setattr(torch._dynamo.config, name, need)
    for layer in layers:
        attr = "_old_forward" if hasattr(layer, "_hf_hook") else "forward"
        setattr(layer, attr, torch.compile(getattr(layer, attr), backend=be, **compile_kwargs))
