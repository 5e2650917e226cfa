"""The measurement engine: one prefill per example, then any number of pruned caches measured
against the full run.

Eviction happens after attention, so the context prefill is the same whatever each layer's budget:
an :class:`ExampleRun` prefills the context once with a recording full cache
(:class:`~depthkv.BudgetCache` with ``record=True``) and derives the cache any budgets would hold
from it (:meth:`ExampleRun.cache_for`), exactly as running the model with those budgets would.
Everything that measures budgets uses it:

* :func:`depthkv.calibrate` — one layer pruned at a time (:mod:`depthkv.calibration.metrics`);
* :func:`depthkv.plan_degradation` / :func:`depthkv.tune_floor` — whole plans;
* :func:`depthkv.evaluate` — generation scored per method.

Where the cut is (``compress``):
    ``"context"`` (default) the context is prefilled and compressed, then the question and answer
    arrive — the RAG / multi-turn case where questions come after the context is cached.
    ``"prompt"`` the whole prompt (context + question) is prefilled and compressed, then the answer
    — SnapKV's query-aware setting; the first answer token is predicted by the unpruned prefill, so
    single-token answers show no degradation in this mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from depthkv.calibration.replay import record_outputs, replay_below
from depthkv.policies import PolicyConfig
from depthkv.profile import Plan, fingerprint
from depthkv.runtime import BudgetCache, cache_kwarg, greedy_decode
from depthkv.runtime.devices import input_device, model_dtype
from depthkv.runtime.generation import until_stop
from depthkv.runtime.modes import check_mode

__all__ = [
    "COMPRESS_MODES",
    "Engine",
    "ExampleRun",
    "Item",
    "check_compress",
    "distinct_policies",
    "encode_example",
    "encode_text",
    "policy_of",
    "workload_items",
]

COMPRESS_MODES = ("context", "prompt")


class NonFiniteError(ValueError):
    """The model produced NaN or infinity while depthkv measured it (usually fp16 overflow)."""


def first_nonfinite_layer(outputs: Sequence[Any]) -> int | None:
    """Index of the first decoder layer whose recorded output holds NaN or inf (None if none does)."""
    for index, out in enumerate(outputs):
        tensor = out[0] if isinstance(out, (tuple, list)) else out
        if isinstance(tensor, torch.Tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            return index
    return None


def nonfinite_message(number: int, item: Item, context_tokens: int, when: str, value: Any, layer: int | None, dtype: Any) -> str:
    """The message of a :class:`NonFiniteError`: the example, what was measured, the layer."""
    where = f"; the first layer whose output is not finite is layer {layer}" if layer is not None else ""
    return (
        f"example {number} (task {item.task!r}, {context_tokens} context tokens): the measurement {when} is "
        f"{value}{where}. The model overflows in {dtype}: load it in bfloat16 or float32, or shorten the example"
    )


@dataclass(frozen=True)
class Item:
    """One workload example as the engine reads it; ``source`` is the example as given."""

    context: str
    question: str
    answer: str
    task: str
    source: Any


def workload_items(workload: Any) -> tuple[list[Item], dict[str, Any]]:
    """The examples of ``workload`` (a :class:`~depthkv.Workload` or a list of examples, each an
    object or a dict with ``context``, ``question`` and ``answer`` strings) and its description.

    Raises:
        ValueError: an example lacks a string field or has an empty answer, or there is none.
    """
    examples = getattr(workload, "examples", workload)
    describe = getattr(workload, "describe", None)
    description = describe() if callable(describe) else {"name": "custom", "n": len(examples)}
    items = []
    for i, ex in enumerate(examples):
        get = ex.get if isinstance(ex, dict) else (lambda k, _ex=ex: getattr(_ex, k, None))
        fields = {k: get(k) for k in ("context", "question", "answer")}
        bad = [k for k, v in fields.items() if not isinstance(v, str)]
        if bad:
            raise ValueError(
                f"workload example {i} lacks string fields {bad}; each example needs 'context', 'question' "
                "and 'answer' strings (see depthkv.workload for the format)"
            )
        if not fields["answer"]:
            raise ValueError(f"workload example {i} has an empty answer; calibration scores the answer tokens")
        items.append(Item(fields["context"], fields["question"], fields["answer"], str(get("task") or "custom"), ex))
    if not items:
        raise ValueError("the workload has no examples")
    return items, description


def check_compress(compress: str) -> str:
    """``compress`` if it is one of :data:`COMPRESS_MODES`, else a ``ValueError`` naming them."""
    if compress not in COMPRESS_MODES:
        raise ValueError(f"unknown compress mode {compress!r}; choose one of {', '.join(COMPRESS_MODES)}")
    return compress


def encode_text(tokenizer: Any, text: str, special: bool) -> list[int]:
    """Token ids of ``text`` (a Hugging Face-style ``tokenizer(text)["input_ids"]``), with the
    tokenizer's special tokens if ``special``; ``[]`` for empty text (no lone ``<s>``)."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


def encode_example(
    tokenizer: Any, context: str, question: str, answer: str, compress: str
) -> tuple[list[int], list[int], list[int]]:
    """Token ids ``(prefilled and compressed, sent after compression, answer)`` for one example.

    ``compress="context"`` prefills the context (with special tokens) and sends the question after;
    ``"prompt"`` prefills context + question and sends nothing before the answer.
    """
    if compress == "context":
        ctx, rest = encode_text(tokenizer, context, True), encode_text(tokenizer, question, False)
    else:
        ctx, rest = encode_text(tokenizer, context + question, True), []
    return ctx, rest, encode_text(tokenizer, answer, False)


def policy_of(plan: Plan | None) -> PolicyConfig:
    """The eviction policy a plan runs with; ``None`` (the full cache) runs with the default one."""
    return PolicyConfig() if plan is None else plan.policy


def distinct_policies(plans: Iterable[Plan | None]) -> list[PolicyConfig]:
    """The eviction policies of ``plans`` (:func:`policy_of`) without repeats (equal configurations
    are one policy), in first-seen order."""
    return list(dict.fromkeys(policy_of(plan) for plan in plans))


class Engine:
    """A model, its tokenizer and the settings of one measurement run.

    Args:
        model: a ``transformers`` causal LM running with depthkv's attention
            (:func:`depthkv.runtime.attention.depthkv_attention_enabled`).
        policy: the eviction policy of every cache the run derives.
        compress: ``"context"`` or ``"prompt"`` (see the module docstring).
        reuse: replay the layers below the lowest pruned one from the full run (exactly equal
            results, up to float rounding; False recomputes them, for the benchmark).
        mode: the decode mode of the pruned caches (``"evict"`` or ``"append"``,
            :mod:`depthkv.runtime.modes`): what generated tokens do to them.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        policy: PolicyConfig,
        compress: str = "context",
        reuse: bool = True,
        mode: str = "evict",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.policy = policy
        self.compress = check_compress(compress)
        self.reuse = reuse
        self.mode = check_mode(mode)
        fp = fingerprint(model)
        self.n_layers = fp.num_layers
        self.caps = list(fp.layer_windows) if fp.layer_windows is not None else None
        self.device = input_device(model)  # not next(parameters()): see depthkv.runtime.devices
        self.kw = cache_kwarg(model)
        self.keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters

    def forward(self, ids: Sequence[int] | torch.Tensor, cache: BudgetCache, last_only: bool = False) -> Any:
        """One forward step of ``ids`` (a list of token ids, or ``[1, m]``) with ``cache``; with
        ``last_only`` only the last position's logits are computed (a long prefill of a model with a
        large vocabulary would otherwise spend most of its time in the output layer)."""
        if not isinstance(ids, torch.Tensor):
            ids = torch.tensor([list(ids)], device=self.device, dtype=torch.long)
        extra = {"logits_to_keep": 1} if last_only and self.keeps_logits else {}
        return self.model(ids, use_cache=True, **{self.kw: cache}, **extra)

    def run(self, item: Item, record_layers: bool = False) -> ExampleRun:
        """Prefill ``item``'s context once (see :class:`ExampleRun`)."""
        return ExampleRun(self, item, record_layers)

    def check_fits(self, items: Sequence[Item], extra_tokens: int = 0) -> None:
        """Before any work: every example encodes to a non-empty context and fits the model's
        position limit (``max_position_embeddings``) with its question, answer and ``extra_tokens``.

        Raises:
            ValueError: naming the first example that does not, its length and the limit.
        """
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        for number, item in enumerate(items):
            ctx, prefix, answer = encode_example(self.tokenizer, item.context, item.question, item.answer, self.compress)
            if not ctx:
                raise ValueError(f"example {number} (task {item.task!r}): its context encodes to no tokens")
            total = len(ctx) + len(prefix) + len(answer) + extra_tokens
            if limit is not None and total > int(limit):
                raise ValueError(
                    f"example {number} (task {item.task!r}) is {total} tokens (context {len(ctx)}, question "
                    f"{len(prefix)}, answer {len(answer) + extra_tokens}), more than the model's position limit "
                    f"of {limit}; shorten it or leave it out"
                )


class ExampleRun:
    """One example's full run: the recorded context cache and what every pruned cache is compared to.

    Attributes:
        context_tokens: tokens prefilled (and compressed).
        prefix: token ids sent after compression before the answer (the question, in ``"context"`` mode).
        answer: the answer's token ids.
        outputs: with ``record_layers``, each decoder layer's output when the full cache scores the
            answer (replayed below the lowest pruned layer); else empty.
    """

    def __init__(self, engine: Engine, item: Item, record_layers: bool = False):
        self.engine = engine
        self.item = item
        ctx, prefix, answer = encode_example(engine.tokenizer, item.context, item.question, item.answer, engine.compress)
        if not ctx:
            raise ValueError("an example's context encodes to no tokens")
        self.prefix = prefix
        self.answer = answer
        self.context_tokens = len(ctx)
        self.tail_ids = torch.tensor([(prefix + answer)[:-1]], device=engine.device, dtype=torch.long)
        self.cache = BudgetCache([None] * engine.n_layers, engine.policy, record=True)
        self.first_logits = engine.forward(ctx, self.cache, last_only=True).logits[:, -1:, :]
        self.outputs: list[Any] = []
        if record_layers:
            with record_outputs(engine.model) as outputs:
                self.full_logprobs = self.answer_logprobs(self.cache_for([None] * engine.n_layers))
            self.outputs = outputs

    def check_finite(self, number: int) -> None:
        """Raise :class:`NonFiniteError` if the full cache's first logits hold NaN or inf, naming
        example ``number`` and the first layer whose output is not finite (re-run recording them)."""
        if bool(torch.isfinite(self.first_logits).all()):
            return
        probe = self if self.outputs else ExampleRun(self.engine, self.item, record_layers=True)
        layer = first_nonfinite_layer(probe.outputs)
        dtype = model_dtype(self.engine.model)
        raise NonFiniteError(
            nonfinite_message(number, self.item, self.context_tokens, "with the full cache", "not finite", layer, dtype)
        )

    def effective(self, budgets: Sequence[int | None]) -> list[int | None]:
        """``budgets`` with every budget that keeps the whole context written as ``None``."""
        if len(budgets) != self.engine.n_layers:
            raise ValueError(f"got {len(budgets)} budgets for a model with {self.engine.n_layers} layers")
        return [None if b is None or b >= self.context_tokens else int(b) for b in budgets]

    def cache_for(self, budgets: Sequence[int | None]) -> BudgetCache:
        """The cache each layer would hold after the context with ``budgets`` (``None``: everything)."""
        return self.cache.pruned(list(budgets), mode=self.engine.mode, caps=self.engine.caps)

    def kv_tokens(self, budgets: Sequence[int | None]) -> int:
        """Context tokens kept over all layers with ``budgets``."""
        return sum(self.context_tokens if b is None else b for b in self.effective(budgets))

    def answer_logprobs(self, cache: BudgetCache, replay_from: int = 0) -> torch.Tensor:
        """Log-probs ``[len(answer), V]`` (float32) of the positions that predict the answer tokens,
        teacher forced (prefix and answer in one step); ``replay_from > 0`` replays the layers below it."""
        logits = self.first_logits
        if self.tail_ids.shape[1]:
            if replay_from > 0 and self.engine.reuse:
                with replay_below(self.engine.model, replay_from, self.outputs[replay_from - 1]):
                    rest = self.engine.forward(self.tail_ids, cache).logits
            else:
                rest = self.engine.forward(self.tail_ids, cache).logits
            logits = torch.cat([logits, rest], dim=1)
        return torch.log_softmax(logits[0, -len(self.answer) :].float(), dim=-1)

    def generate(self, cache: BudgetCache, max_new_tokens: int, stop_tokens: Collection[int] = ()) -> list[int]:
        """Greedy answer tokens after the prefix, token by token, each evicted as the model runs
        (``stop_tokens`` end the answer and are not included)."""
        engine = self.engine
        logits = engine.forward(self.prefix, cache, last_only=True).logits if self.prefix else self.first_logits
        tokens, _ = greedy_decode(
            lambda t: engine.forward(t, cache).logits[:, -1], logits[:, -1], max_new_tokens, stop_tokens=stop_tokens
        )
        return until_stop(tokens[0].tolist(), stop_tokens)
