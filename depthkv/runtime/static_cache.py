"""StaticBudgetCache: fixed-size per-layer buffers for the compiled path (CUDA-graph friendly).

Layer ``l`` owns buffers ``[B, Hkv, budget_l, D]`` (plus positions, scores and its logical length),
allocated once when the cache is made and marked as static addresses. Every step — prefill or
decode — attends over buffer + new tokens and evicts back to ``budget_l`` *in place*
(``depthkv::attend_evict``), so shapes never change across decode steps: one compiled decode graph
serves every step.

* Under ``torch.compile`` (tracing), ``update`` returns ``depthkv::stage`` — the layer's logical
  keys/values ``[B, Hkv, max_len, D]`` — and the model's attention (SDPA or depthkv's) reads them;
  :func:`depthkv.backend`'s FX pass rewrites that attention into ``attend_evict`` with the layer's
  budget as a literal.
* Eagerly (e.g. the prefill of ``generate`` with a ``CompileConfig``, which transformers keeps eager,
  or any uncompiled call), the depthkv attention
  implementation calls :func:`depthkv.kernels.attend_evict` with the cache's kernel implementation
  (``impl``, the backend's when the model was compiled with :func:`depthkv.compile`), so eager and
  compiled steps run the same kernels.

A full layer (a ``None`` budget in the plan) gets ``max_len`` slots: it never evicts.

Masks are sized ``max_len`` (the largest logical length, prompt + generated tokens), so their shape
is static too.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from depthkv.kernels import LayerBuffers, attend_evict, resolve_impl
from depthkv.kernels.custom_ops import register_ops
from depthkv.policies import PolicyConfig
from depthkv.profile import Plan, fingerprint
from depthkv.runtime.devices import is_dispatched, layer_devices, model_dtype
from depthkv.runtime.handoff import IMPL_NAME, DepthKVUsageError, set_active_layer
from depthkv.runtime.modes import check_mode


class StaticBudgetLayer(CacheLayerMixin):
    """One layer's fixed buffers.

    Attributes:
        keys: ``[B, Hkv, budget, D]``.
        values: ``[B, Hkv, budget, D]``.
        positions: int64 ``[B, Hkv, budget]``, logical position of each slot, -1 = empty.
        scores: float32 ``[B, Hkv, budget]`` accumulated policy scores (stateful policies).
        seen: int64 scalar tensor, tokens seen (logical length), advanced by ``update``.
        impl: the kernel implementation of eager steps (resolved for the buffers' device).
    """

    is_compileable = True
    is_sliding = False
    is_croppable = False

    def __init__(
        self,
        layer_idx: int,
        budget: int,
        policy: PolicyConfig,
        max_len: int,
        shape: tuple[int, int, int],
        dtype: torch.dtype,
        device: torch.device,
        impl: str = "reference",
        mode: str = "evict",
        tail: int = 0,
    ):
        super().__init__()
        if budget < policy.floor:
            raise ValueError(
                f"layer {layer_idx}: budget {budget} is below the {policy.name} policy's floor {policy.floor}"
            )
        check_mode(mode)
        if mode == "evict" and tail:
            raise ValueError(f"layer {layer_idx}: a reserved tail ({tail}) only exists in append mode")
        batch, kv_heads, head_dim = shape
        self.layer_idx = layer_idx
        self.budget = int(budget)
        self.mode = mode
        self.tail = int(tail)
        self.policy = policy
        self.max_len = int(max_len)
        self.device = torch.device(device)
        self.impl = resolve_impl(impl, self.device)
        slots = self.budget + self.tail
        self.keys = torch.zeros((batch, kv_heads, slots, head_dim), dtype=dtype, device=self.device)
        self.values = torch.zeros_like(self.keys)
        self.positions = torch.full((batch, kv_heads, slots), -1, dtype=torch.long, device=self.device)
        self.scores = torch.zeros((batch, kv_heads, slots), dtype=torch.float32, device=self.device)
        self.seen = torch.zeros((), dtype=torch.long, device=self.device)
        for t in (self.keys, self.values, self.positions, self.scores, self.seen):
            torch._dynamo.mark_static_address(t)
        self.is_initialized = True
        self._new: tuple[torch.Tensor, torch.Tensor] | None = None

    def __repr__(self) -> str:
        tail = f", tail={self.tail}" if self.mode == "append" else ""
        return f"StaticBudgetLayer(layer={self.layer_idx}, budget={self.budget}{tail}, max_len={self.max_len})"

    @property
    def append(self) -> bool:
        """True in append mode (single-token steps fill the tail; nothing is evicted)."""
        return self.mode == "append"

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Buffers are allocated at construction (needed for compiled prefill); nothing to do."""

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Hand this step's keys/values ``[B, Hkv, m, D]`` to attention (see the module docstring)."""
        if torch.compiler.is_compiling():
            # Advance the logical length here, with a plain in-place op (like transformers' StaticLayer):
            # the model read it for positions and masks before this layer ran.
            self.seen.add_(key_states.shape[2])
            return torch.ops.depthkv.stage(
                self.keys, self.values, self.positions, self.scores, self.seen,
                key_states, value_states, self.layer_idx, self.max_len, self.budget, self.append,
            )
        if self._new is not None:
            raise DepthKVUsageError(
                f"layer {self.layer_idx}: the previous step never reached depthkv's attention. Eagerly, a "
                "StaticBudgetCache needs the depthkv attention implementation (depthkv.compile or "
                "depthkv.apply set it); compiled, it needs torch.compile(..., backend=depthkv.backend(plan))."
            )
        end = int(self.seen) + key_states.shape[2]
        if end > self.max_len:
            raise ValueError(
                f"layer {self.layer_idx}: {end} tokens exceed the cache's max_len {self.max_len}; "
                "make the StaticBudgetCache with a larger max_len (prompt + new tokens)"
            )
        if self.append and key_states.shape[2] == 1 and not bool((self.positions < 0).any(-1).all()):
            raise ValueError(
                f"layer {self.layer_idx}: append mode's reserved tail ({self.tail} slots after a budget of "
                f"{self.budget}) is full at {end - 1} tokens; make the cache with a larger max_new_tokens, "
                "or use mode='evict' (the budget holds at every step)"
            )
        self._new = (key_states, value_states)
        self.seen.add_(key_states.shape[2])
        set_active_layer(self)
        return key_states, value_states

    @property
    def buffers(self) -> LayerBuffers:
        """The layer's buffers as the attend-and-evict step takes them."""
        return LayerBuffers(self.keys, self.values, self.positions, self.scores, self.seen)

    def attend(self, query: torch.Tensor, mask: torch.Tensor | None, scaling: float) -> torch.Tensor:
        """Eager step: attention + in-place eviction with the layer's ``impl``; returns ``[B, H, m, D]``."""
        if self._new is None:
            raise DepthKVUsageError(f"layer {self.layer_idx}: attention ran without a cache update")
        k_new, v_new = self._new
        self._new = None
        return attend_evict(
            self.impl, query, k_new, v_new, mask, self.buffers, float(scaling), self.budget, self.policy,
            self.layer_idx, self.append,
        )

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.max_len, 0

    def get_seq_length(self) -> torch.Tensor:
        return self.seen

    def get_max_length(self) -> int:
        return self.max_len

    def reset(self) -> None:
        self.keys.zero_()
        self.values.zero_()
        self.positions.fill_(-1)
        self.scores.zero_()
        self.seen.zero_()
        self._new = None

    def nbytes(self) -> int:
        """Bytes of this layer's buffers."""
        tensors = (self.keys, self.values, self.positions, self.scores, self.seen)
        return sum(t.numel() * t.element_size() for t in tensors)


class StaticBudgetCache(Cache):
    """A compileable ``transformers`` Cache with one fixed-size buffer per layer.

    Make it with :meth:`for_model`. ``max_len`` is the largest logical length the cache will see
    (prompt + generated tokens); it sizes the attention mask, not the KV buffers.
    """

    def __init__(self, layers: list[StaticBudgetLayer], max_len: int):
        super().__init__(layers=layers)
        self.max_len = max_len

    @property
    def mode(self) -> str:
        """``"evict"`` or ``"append"``: the cache's decode mode (sliding-window layers always evict)."""
        return getattr(self, "_mode", None) or (self.layers[0].mode if self.layers else "evict")

    @classmethod
    def for_model(
        cls,
        model: Any,
        plan: Plan,
        *,
        batch_size: int = 1,
        max_len: int,
        context_length: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        impl: str | None = None,
        mode: str = "evict",
        max_new_tokens: int | None = None,
    ) -> StaticBudgetCache:
        """Buffers sized by ``plan`` for ``model``.

        Args:
            plan: a :class:`depthkv.Plan` for this model (checked against its fingerprint).
            batch_size: rows of the batch the cache will serve.
            max_len: prompt + new tokens (the largest logical length); also the size of a full
                layer's buffer.
            context_length: for relative plans (budget given as a fraction), the prompt length the
                budgets are sized for (:meth:`Plan.budgets_for`).
            dtype: of the key/value buffers (default: the model's weights').
            device: puts every layer's buffers there; default: each layer's own execution device
                (:func:`depthkv.runtime.devices.layer_devices`), so a model split over devices by a
                ``device_map`` (accelerate, CPU/disk offload included) keeps each layer's cache
                beside the layer.
            impl: kernel implementation of the eager steps (``"auto"``, ``"reference"``,
                ``"triton"``, ``"flash"``); default: the one of the backend ``model`` was compiled
                with by :func:`depthkv.compile`, else ``"auto"``.
            mode: ``"evict"`` (default: each layer holds its budget at every step; a new token
                replaces the lowest-scoring slot) or ``"append"`` (the prompt is compressed to the
                budget once; generated tokens fill a reserved tail of ``max_new_tokens`` slots per
                budgeted layer and nothing is evicted while decoding). Sliding-window layers evict
                in both modes: their window, not a tail, bounds what they can attend to.
            max_new_tokens: append mode's tail: tokens that can be generated after each compression.

        Raises:
            ValueError: a bad mode, or append mode without ``max_new_tokens >= 1``.
            DepthKVUsageError: ``model`` is split by accelerate and was not prepared by
                :func:`depthkv.compile` (or switched to depthkv's attention): a whole-model
                ``torch.compile`` cannot run it with these buffers.
        """
        register_ops()
        check_mode(mode)
        if mode == "append":
            if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
                raise ValueError(
                    f"mode='append' needs max_new_tokens (an int >= 1: the reserved tail per layer), got {max_new_tokens!r}"
                )
        elif max_new_tokens is not None:
            raise ValueError("max_new_tokens sizes append mode's tail; with mode='evict' leave it out")
        plan.check_model(model)
        if is_dispatched(model) and getattr(model.config, "_attn_implementation", None) != IMPL_NAME:
            raise DepthKVUsageError(
                f"this {type(model).__name__} is split over devices by accelerate (a device_map, CPU or disk "
                "offload): its hooks run outside compiled graphs, so torch.compile(model, "
                "backend=depthkv.backend(...)) cannot compile it whole, and the parts it runs eagerly would attend "
                "without depthkv. Use depthkv.compile(model, plan), which compiles it layer by layer"
            )
        budgets = [int(max_len) if b is None else b for b in plan.budgets_for(context_length)]
        full = [b is None for b in plan.budgets_for(context_length)]
        fp = fingerprint(model)
        if impl is None:
            impl = getattr(getattr(model, "_depthkv_backend", None), "impl", "auto")
        shape = (int(batch_size), fp.num_kv_heads, fp.head_dim)
        # each layer's buffers live where that layer runs (a model split by device_map)
        devices = [torch.device(device)] * fp.num_layers if device is not None else layer_devices(model)
        dtype = dtype or model_dtype(model)
        layers = []
        for i, (b, is_full, cap) in enumerate(zip(budgets, full, plan.caps)):
            # a sliding-window layer keeps evicting in append mode: its window bounds what it can use
            layer_mode = "evict" if cap is not None else mode
            tail = int(max_new_tokens) if layer_mode == "append" and not is_full else 0
            layers.append(
                StaticBudgetLayer(i, b, plan.policy, max_len, shape, dtype, devices[i], impl, layer_mode, tail)
            )
        cache = cls(layers, max_len)
        cache._mode = mode
        return cache

    @property
    def budgets(self) -> list[int]:
        return [layer.budget for layer in self.layers]

    def get_seq_length(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[0].seen

    def get_query_offset(self, layer_idx: int = 0) -> torch.Tensor:
        return self.layers[0].seen

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.max_len, 0

    def slots(self) -> list[int]:
        """Slots per layer: the budget, plus the reserved tail in append mode."""
        return [layer.keys.shape[2] for layer in self.layers]

    def held_tokens(self) -> list[int]:
        """Occupied slots per layer (max over batch rows and heads)."""
        return [int((layer.positions >= 0).sum(-1).max()) for layer in self.layers]

    def kv_nbytes(self) -> int:
        """Bytes of the key/value buffers."""
        return sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in self.layers)

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)
