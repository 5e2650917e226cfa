"""BudgetCache: a ``transformers`` Cache whose layers each keep at most their own token budget.

Eager reference design (the compiled path keeps the same semantics in fixed-size buffers):

* ``update`` appends the step's keys/values to the layer's storage and hands the whole storage to
  attention, so the new queries see every token (prefill attends over the full prompt).
* The depthkv attention function (:mod:`depthkv.runtime.attention`) then calls :meth:`BudgetLayer.compress`
  with the step's queries: the layer's eviction policy scores every slot and the layer keeps its
  ``budget`` best slots per KV head. Storage is re-made at the kept size, so evicted tokens'
  memory is really freed.
* Each slot records its *logical* position (its column in the model's attention mask) and whether
  it holds a real token (not padding). The cache reports the logical sequence length, so the
  model's positions (RoPE) and masks stay those of the unpruned run.

The hand-off from ``update`` to attention is :mod:`depthkv.runtime.handoff`; a step whose
attention was not depthkv's is detected at the next ``update`` and raises.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from depthkv.policies import PolicyConfig, score, select
from depthkv.profile import Plan
from depthkv.runtime.handoff import DepthKVUsageError, set_active_layer
from depthkv.runtime.modes import check_mode


class BudgetLayer(CacheLayerMixin):
    """One attention layer's KV storage with a token budget.

    Storage (after a step has been compressed), ``n <= budget`` slots per KV head:

    * keys, values: ``[B, Hkv, n, D]`` in the model's dtype
    * positions: int64 ``[B, Hkv, n]`` logical position of each slot, ascending along ``n``
    * valid: bool ``[B, Hkv, n]`` False for padding tokens
    * scores: float32 ``[B, Hkv, n]`` accumulated policy scores (stateful policies only)

    ``budget=None`` keeps every token (a full-cache layer with the same bookkeeping).
    """

    is_compileable = False
    is_sliding = False
    is_croppable = False

    def __init__(
        self, layer_idx: int, budget: int | None, policy: PolicyConfig, record: bool = False, mode: str = "evict"
    ):
        super().__init__()
        self.mode = check_mode(mode)
        if budget is not None and budget < policy.floor:
            raise ValueError(
                f"layer {layer_idx}: budget {budget} is below the {policy.name} policy's floor {policy.floor} "
                "(observation window + sinks); raise the budget or shrink the window"
            )
        self.layer_idx = layer_idx
        self.budget = budget
        self.policy = policy
        self.seen = 0
        self.positions: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None
        self.scores: torch.Tensor | None = None
        self.pending = 0
        # record=True: a full layer that also keeps the policy's scores of its first step, so that
        # pruned copies at any budget can be made later without re-running the model (calibration).
        self.record = record
        self.recorded: torch.Tensor | None = None

    def __repr__(self) -> str:
        return f"BudgetLayer(layer={self.layer_idx}, budget={self.budget}, held={self.held}, seen={self.seen})"

    @property
    def held(self) -> int:
        """Slots currently stored per KV head."""
        return 0 if self.keys is None else int(self.keys.shape[-2])

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, _ = key_states.shape
        self.device = key_states.device
        self.keys = key_states.new_empty((b, h, 0, key_states.shape[-1]))
        self.values = value_states.new_empty((b, h, 0, value_states.shape[-1]))
        self.positions = torch.empty((b, h, 0), dtype=torch.long, device=self.device)
        self.valid = torch.empty((b, h, 0), dtype=torch.bool, device=self.device)
        self.is_initialized = True

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Append ``key_states``/``value_states`` ``[B, Hkv, m, D]``; return the whole storage ``[B, Hkv, n+m, D]``."""
        if torch.compiler.is_compiling():
            raise DepthKVUsageError(
                "BudgetCache is the eager reference cache and cannot be compiled; for torch.compile use "
                "depthkv.StaticBudgetCache.for_model(model, plan, max_len=...)"
            )
        if self.pending:
            raise DepthKVUsageError(
                f"layer {self.layer_idx}: the previous step's tokens were never compressed, so the model is not "
                "using depthkv's attention. Call depthkv.apply(model, plan) (or compile with depthkv.backend) "
                "before running it with a BudgetCache."
            )
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        b, h, m, _ = key_states.shape
        new_pos = torch.arange(self.seen, self.seen + m, device=self.device).expand(b, h, m)
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.positions = torch.cat([self.positions, new_pos], dim=-1)
        self.valid = torch.cat([self.valid, torch.ones((b, h, m), dtype=torch.bool, device=self.device)], dim=-1)
        if self.scores is not None:
            self.scores = torch.cat([self.scores, self.scores.new_zeros((b, h, m))], dim=-1)
        self.seen += m
        self.pending = m
        set_active_layer(self)
        return self.keys, self.values

    def compress(self, query: torch.Tensor, slot_mask: torch.Tensor, scaling: float) -> None:
        """Evict down to the budget after attention has run.

        Args:
            query: ``[B, H, m, D]`` this step's queries (post-RoPE).
            slot_mask: bool ``[B, Hkv, m, n]``: query ``i`` may attend slot ``j``.
            scaling: the attention's softmax scale.
        """
        step, self.pending = self.pending, 0
        self.valid = slot_mask[:, :, -1, :].clone()
        if self.mode == "append" and step == 1 and self.seen > 1:
            return  # append mode: a generated token joins the tail; nothing is scored or evicted
        n = self.held
        over = self.budget is not None and n > self.budget
        recording = self.record and self.recorded is None
        # A full layer (no budget) never evicts: its scores would never be read (unless recorded).
        keeps_scores = self.policy.stateful and self.budget is not None
        if not (over or keeps_scores or recording):
            return
        scores = score(self.policy, query, self.keys, slot_mask, self.positions, scaling, prev_scores=self.scores)
        if self.policy.stateful:
            self.scores = scores
        if recording:
            self.recorded = scores
        if not over:
            return
        keep = select(self.policy, scores, self.positions, self.valid, self.budget)
        self._gather(keep)

    def _gather(self, keep: torch.Tensor) -> None:
        """Keep slots ``keep`` ``[B, Hkv, k]`` (ascending positions); storage is re-allocated at size ``k``."""
        idx = keep.unsqueeze(-1)
        self.keys = self.keys.gather(2, idx.expand(-1, -1, -1, self.keys.shape[-1]))
        self.values = self.values.gather(2, idx.expand(-1, -1, -1, self.values.shape[-1]))
        self.positions = self.positions.gather(2, keep)
        self.valid = self.valid.gather(2, keep)
        if self.scores is not None:
            self.scores = self.scores.gather(2, keep)

    def shared_copy(self) -> BudgetLayer:
        """A new layer holding the same tensors (safe: updates and evictions never write in place)."""
        if self.pending:
            raise DepthKVUsageError(f"layer {self.layer_idx} has an uncompressed step; finish the forward first")
        twin = BudgetLayer(self.layer_idx, self.budget, self.policy, mode=self.mode)
        for name in ("keys", "values", "positions", "valid", "scores", "seen", "is_initialized"):
            setattr(twin, name, getattr(self, name))
        if self.is_initialized:
            twin.device = self.device
        return twin

    def pruned_copy(self, budget: int | None) -> BudgetLayer:
        """A copy of this recorded full layer evicted to ``budget``, exactly as if it had run with it.

        Selection uses the scores recorded at its first step, so the result equals running the model
        with this budget from the start (eviction happens after attention and never changes the
        step's outputs). ``None`` (or a budget >= the tokens held) gives a shared copy.
        """
        twin = self.shared_copy()
        twin.budget = budget
        if budget is None or budget >= self.held:
            return twin
        if self.recorded is None:
            raise DepthKVUsageError(
                f"layer {self.layer_idx} has no recorded scores; build the cache with record=True"
            )
        if budget < self.policy.floor:
            raise ValueError(f"budget {budget} is below the {self.policy.name} policy's floor {self.policy.floor}")
        keep = select(self.policy, self.recorded, self.positions, self.valid, budget)
        twin._gather(keep)
        return twin

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.seen + query_length, 0

    def get_seq_length(self) -> int:
        return self.seen

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.keys = self.values = self.positions = self.valid = self.scores = None
        self.is_initialized = False
        self.seen = 0
        self.pending = 0

    def _select_batch(self, index: torch.Tensor) -> None:
        for name in ("keys", "values", "positions", "valid", "scores"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index.to(t.device)))

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._select_batch(beam_idx)

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._select_batch(indices)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for name in ("keys", "values", "positions", "valid", "scores"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.repeat_interleave(repeats, dim=0))

    def nbytes(self) -> int:
        """Bytes held by this layer's tensors (keys, values and bookkeeping)."""
        tensors = (self.keys, self.values, self.positions, self.valid, self.scores)
        return sum(t.numel() * t.element_size() for t in tensors if t is not None)


class BudgetCache(Cache):
    """A ``transformers`` Cache with one :class:`BudgetLayer` per decoder layer.

    Args:
        budgets: tokens per layer ``[n_layers]`` (``None`` entries keep everything).
        policy: eviction policy used in every layer.
        mode: ``"evict"`` (every step evicts back to the budget) or ``"append"`` (multi-token
            steps compress to the budget; single generated tokens are appended, nothing evicted:
            a layer then holds its budget plus the tokens generated since the last compression).

    Positions and masks use the logical sequence length (tokens seen so far, padding included, as in
    ``transformers``), the same for every layer, even while some layers are not run (calibration
    replays the lower layers from a full run).
    """

    def __init__(
        self,
        budgets: list[int | None],
        policy: PolicyConfig | None = None,
        record: bool = False,
        mode: str = "evict",
    ):
        policy = policy or PolicyConfig()
        layers = [BudgetLayer(i, b, policy, record=record, mode=mode) for i, b in enumerate(budgets)]
        super().__init__(layers=layers)
        self.policy = policy
        self.mode = mode

    @classmethod
    def from_layers(cls, layers: list[BudgetLayer], policy: PolicyConfig) -> BudgetCache:
        cache = cls.__new__(cls)
        Cache.__init__(cache, layers=layers)
        cache.policy = policy
        cache.mode = layers[0].mode if layers else "evict"
        return cache

    def pruned(
        self, budgets: list[int | None], mode: str = "evict", caps: list[int | None] | None = None
    ) -> BudgetCache:
        """From a recorded full cache (``record=True``), the cache each layer would hold with ``budgets``.

        ``mode`` is the decode mode of the copies (sliding-window layers, those with a cap in
        ``caps``, always evict), as :meth:`from_plan` makes them.
        """
        if len(budgets) != len(self.layers):
            raise ValueError(f"got {len(budgets)} budgets for a cache of {len(self.layers)} layers")
        check_mode(mode)
        caps = caps or [None] * len(self.layers)
        layers = [lay.pruned_copy(b) for lay, b in zip(self.layers, budgets)]
        for layer, cap in zip(layers, caps):
            layer.mode = "evict" if cap is not None else mode
        return BudgetCache.from_layers(layers, self.policy)

    @classmethod
    def from_plan(cls, plan: Plan, context_length: int | None = None, mode: str = "evict") -> BudgetCache:
        """Cache for ``plan``; relative plans need the prompt's ``context_length`` (:meth:`Plan.budgets_for`).

        In append mode, sliding-window layers (the plan's :attr:`~depthkv.Plan.caps`) still evict.
        """
        cache = cls(plan.budgets_for(context_length), plan.policy, mode=mode)
        for layer, cap in zip(cache.layers, plan.caps):
            if cap is not None:
                layer.mode = "evict"  # a sliding-window layer keeps evicting: its window bounds it
        return cache

    @property
    def budgets(self) -> list[int | None]:
        return [layer.budget for layer in self.layers]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return max((layer.seen for layer in self.layers), default=0)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def get_query_offset(self, layer_idx: int = 0) -> int:
        return self.get_seq_length()

    def held_tokens(self) -> list[int]:
        """Slots currently stored per KV head, per layer."""
        return [layer.held for layer in self.layers]

    def nbytes(self) -> int:
        """Bytes held by all layers' tensors."""
        return sum(layer.nbytes() for layer in self.layers)

    def kv_nbytes(self) -> int:
        """Bytes of keys and values only (what a full cache of the same length would compare to)."""
        total = 0
        for layer in self.layers:
            for t in (layer.keys, layer.values):
                if t is not None:
                    total += t.numel() * t.element_size()
        return total
