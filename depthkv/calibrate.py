"""``depthkv.calibrate``: per-layer sensitivity by one-layer-at-a-time ablation.

For each example and each layer ``l``, only layer ``l`` is pruned to the ablation budget (every other
layer keeps its full cache) and the degradation against the full cache is recorded. The context is
prefilled once per example (eviction happens after attention, so the prefill is the same for every
ablation; each layer's policy scores are recorded on the way), and each ablation then runs only the
tokens after the context through layers ``>= l``, replaying the full run's output of layer ``l - 1``
for the layers below (they cannot see the pruning). See ``benchmarks/test_calibrate_reuse.py`` for the
saving over re-running everything.

Metrics (degradation per example and layer):
    ``nll``   mean negative log-likelihood of the answer tokens (teacher forced), pruned − full.
    ``kl``    mean over answer positions of KL(p_full ‖ p_pruned) of the next-token distribution.
    ``score`` task score (greedy generation, scored by the workload's scorer), full − pruned.

Where the cut is (``compress``):
    ``"context"`` (default) the context is prefilled and compressed, then the question and answer
    arrive — the RAG / multi-turn case where questions come after the context is cached.
    ``"prompt"`` the whole prompt (context + question) is prefilled and compressed, then the answer
    — SnapKV's query-aware setting; the first answer token is predicted by the unpruned prefill, so
    single-token answers show no degradation in this mode.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .apply import cache_kwarg
from .attention import depthkv_attention_enabled
from .cache import BudgetCache
from .fingerprint import fingerprint
from .policies import PolicyConfig
from .profile import METRICS, Profile
from .replay import record_outputs, replay_below
from .stats import layer_stats

COMPRESS_MODES = ("context", "prompt")


@dataclass(frozen=True)
class _Item:
    context: str
    question: str
    answer: str
    source: Any


def _items(workload: Any) -> tuple[list[_Item], dict[str, Any]]:
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
                "and 'answer' strings (see depthkv.tasks for the format)"
            )
        if not fields["answer"]:
            raise ValueError(f"workload example {i} has an empty answer; calibration scores the answer tokens")
        items.append(_Item(fields["context"], fields["question"], fields["answer"], ex))
    if not items:
        raise ValueError("the workload has no examples")
    return items, description


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


def _resolve_budget(budget: float | int, context_tokens: int, floor: int) -> int:
    tokens = int(round(budget * context_tokens)) if isinstance(budget, float) else int(budget)
    return max(tokens, floor)


def _check_budgets(budgets: Sequence[float | int]) -> list[float | int]:
    out: list[float | int] = []
    for b in budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)):
            raise TypeError(f"ablation budgets must be ints (tokens) or floats in (0, 1); got {b!r}")
        if isinstance(b, float) and not 0.0 < b < 1.0:
            raise ValueError(f"a fractional ablation budget must be in (0, 1); got {b}")
        if isinstance(b, int) and b < 1:
            raise ValueError(f"a token ablation budget must be >= 1; got {b}")
        out.append(b)
    if not out:
        raise ValueError("give at least one ablation budget")
    return out


def _token_logprobs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


class _Example:
    """One example's full run: recorded context cache, reference log-probs, replayable layer outputs."""

    def __init__(self, runner: _Runner, item: _Item):
        self.runner = runner
        self.item = item
        ctx, rest, answer = encode_example(runner.tokenizer, item.context, item.question, item.answer, runner.compress)
        if not ctx:
            raise ValueError("an example's context encodes to no tokens")
        self.ctx_ids = torch.tensor([ctx], device=runner.device)
        self.prefix = rest  # tokens after the context that are not scored (the question)
        self.answer = answer
        self.tail_ids = torch.tensor([(rest + answer)[:-1]], device=runner.device, dtype=torch.long)
        self.context_tokens = len(ctx)
        self.cache = BudgetCache([None] * runner.n_layers, runner.policy, record=True)
        out = runner.forward(self.ctx_ids, self.cache)
        self.first_logits = out.logits[:, -1:, :]
        self.outputs: list[Any] = []
        if runner.metric != "score":
            with record_outputs(runner.model) as outputs:
                self.ref = self._answer_logprobs(self.cache.pruned([None] * runner.n_layers))
            self.outputs = outputs
        else:
            self.ref_score = self._score(self.cache.pruned([None] * runner.n_layers))

    def _answer_logprobs(self, cache: BudgetCache) -> torch.Tensor:
        """Log-probs ``[len(answer), V]`` of the positions that predict the answer tokens."""
        logits = self.first_logits
        if self.tail_ids.shape[1]:
            logits = torch.cat([logits, self.runner.forward(self.tail_ids, cache).logits], dim=1)
        return _token_logprobs(logits[0, -len(self.answer) :])

    def _score(self, cache: BudgetCache) -> float:
        runner = self.runner
        logits = self.first_logits
        if self.prefix:
            logits = runner.forward(torch.tensor([self.prefix], device=runner.device), cache).logits
        generated: list[int] = []
        for step in range(len(self.answer) + runner.extra_tokens):
            nxt = int(logits[0, -1].argmax())
            generated.append(nxt)
            if step + 1 < len(self.answer) + runner.extra_tokens:
                logits = runner.forward(torch.tensor([[nxt]], device=runner.device), cache).logits
        prediction = runner.tokenizer.decode(generated, skip_special_tokens=True)
        return float(runner.scorer(self.item.source, prediction))

    def degradation(self, layer: int, budget: int) -> float:
        """Degradation when only ``layer`` keeps ``budget`` tokens."""
        if budget >= self.context_tokens:
            return 0.0
        budgets: list[int | None] = [None] * self.runner.n_layers
        budgets[layer] = budget
        return self.joint_degradation(budgets, first_pruned=layer)

    def joint_degradation(self, budgets: Sequence[int | None], first_pruned: int = 0) -> float:
        """Degradation when every layer ``l`` keeps ``budgets[l]`` tokens at once (``None``: all of
        them); ``first_pruned`` (the lowest layer whose budget is below the context) lets the layers
        below it be replayed from the full run."""
        runner = self.runner
        cache = self.cache.pruned(list(budgets))
        if runner.metric == "score":
            return self.ref_score - self._score(cache)
        if runner.reuse and first_pruned > 0 and self.tail_ids.shape[1]:
            with replay_below(runner.model, first_pruned, self.outputs[first_pruned - 1]):
                logp = self._answer_logprobs(cache)
        else:
            logp = self._answer_logprobs(cache)
        if runner.metric == "nll":
            target = torch.tensor(self.answer, device=logp.device)
            idx = torch.arange(len(self.answer), device=logp.device)
            return float((self.ref[idx, target] - logp[idx, target]).mean())
        return float((self.ref.exp() * (self.ref - logp)).sum(-1).mean())


class _Runner:
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        metric: str,
        policy: PolicyConfig,
        compress: str,
        reuse: bool,
        scorer: Callable[[Any, str], float] | None,
        extra_tokens: int,
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.metric = metric
        self.policy = policy
        self.compress = compress
        self.reuse = reuse
        self.extra_tokens = extra_tokens
        self.n_layers = fingerprint(model).num_layers
        self.device = next(model.parameters()).device
        self.kw = cache_kwarg(model)
        if metric == "score" and scorer is None:
            scorer = _default_scorer
        self.scorer = scorer

    def forward(self, ids: torch.Tensor, cache: BudgetCache) -> Any:
        return self.model(ids, use_cache=True, **{self.kw: cache})


def _default_scorer(source: Any, prediction: str) -> float:
    """:func:`depthkv.tasks.score`, for workload examples given as dicts as well as ``Example``."""
    from .tasks import Example, score

    return score(Example.from_dict(source) if isinstance(source, dict) else source, prediction)


def _settings(metric: str, compress: str, budgets: list, policy: PolicyConfig, reuse: bool, extra: int) -> dict:
    return {
        "metric": metric,
        "compress": compress,
        "ablation_budgets": budgets,
        "policy": policy.to_dict(),
        "extra_tokens": extra,
    }


def _resume(checkpoint: str | os.PathLike, model: Any, settings: dict, description: dict) -> Profile | None:
    if not os.path.exists(checkpoint):
        return None
    partial = Profile.load(checkpoint, model=model)
    if partial.settings != settings:
        raise ValueError(
            f"checkpoint {checkpoint} was made with other settings ({partial.settings}) than this run "
            f"({settings}); use another checkpoint path or the same settings to resume"
        )
    if partial.workload != description:
        raise ValueError(
            f"checkpoint {checkpoint} was made on another workload ({partial.workload.get('name')!r}); "
            "use another checkpoint path or the same workload to resume"
        )
    return partial


def calibrate(
    model: Any,
    tokenizer: Any,
    workload: Any,
    *,
    ablation_budget: float | int | Sequence[float | int] = 0.2,
    metric: str = "nll",
    policy: PolicyConfig | str | None = None,
    compress: str = "context",
    checkpoint: str | os.PathLike | None = None,
    n_permutations: int = 10_000,
    seed: int = 0,
    reuse: bool = True,
    scorer: Callable[[Any, str], float] | None = None,
    extra_tokens: int = 0,
    progress: bool = True,
) -> Profile:
    """Measure each layer's sensitivity to KV pruning on ``workload``.

    Args:
        model: a ``transformers`` causal LM in eval mode (its attention implementation is switched to
            ``depthkv`` for the run and restored afterwards).
        tokenizer: a HF tokenizer (or :class:`depthkv.tasks.ByteTokenizer`).
        workload: a :class:`depthkv.tasks.Workload` or a list of examples with ``context``,
            ``question`` and ``answer`` strings.
        ablation_budget: tokens kept by the ablated layer: a float in (0, 1) is a fraction of each
            example's context, an int a token count; a list measures sensitivity curves (for the
            ``greedy`` strategy); the first entry is the primary budget.
        metric: ``"nll"`` (default), ``"kl"`` or ``"score"``.
        policy: eviction policy (default SnapKV).
        compress: ``"context"`` or ``"prompt"`` (see the module docstring).
        checkpoint: a JSON path; the partial profile is written there after every example, and a run
            with the same path, settings and workload resumes where it stopped.
        n_permutations: permutation-test size; ``seed`` its seed.
        reuse: replay the layers below the ablated one (exactly equal results; False for the benchmark).
        scorer: ``scorer(example, prediction) -> float`` for ``metric="score"`` (default: depthkv.tasks.score).
        extra_tokens: extra tokens generated beyond the answer length for ``metric="score"``.

    Returns:
        A complete :class:`Profile` with the degradation matrix and statistics.
    """
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if compress not in COMPRESS_MODES:
        raise ValueError(f"unknown compress mode {compress!r}; choose one of {', '.join(COMPRESS_MODES)}")
    budgets = _check_budgets(ablation_budget if isinstance(ablation_budget, (list, tuple)) else [ablation_budget])
    pol = policy if isinstance(policy, PolicyConfig) else PolicyConfig(name=policy or "snapkv")
    items, description = _items(workload)
    fp = fingerprint(model)
    settings = _settings(metric, compress, budgets, pol, reuse, extra_tokens)
    partial = _resume(checkpoint, model, settings, description) if checkpoint else None
    rows: list[np.ndarray] = list(np.moveaxis(partial.degradation, 1, 0)) if partial else []
    lengths = list(partial.context_lengths) if partial else []
    baseline = list(partial.baseline) if partial else []

    def snapshot(complete: bool) -> Profile:
        deg = np.stack(rows, axis=1) if rows else np.zeros((len(budgets), 0, fp.num_layers))
        return Profile(
            fingerprint=fp,
            metric=metric,
            ablation_budgets=budgets,
            degradation=deg,
            context_lengths=lengths,
            baseline=baseline,
            policy=pol.to_dict(),
            workload=description,
            complete=complete,
            settings=settings,
        )

    runner = _Runner(model, tokenizer, metric, pol, compress, reuse, scorer, extra_tokens)
    todo = items[len(rows) :]
    bar = tqdm(total=len(todo) * fp.num_layers * len(budgets), desc="calibrate", unit="ablation", disable=not progress)
    try:
        with depthkv_attention_enabled(model), torch.inference_mode():
            for item in todo:
                ex = _Example(runner, item)
                row = np.zeros((len(budgets), fp.num_layers))
                for k, budget in enumerate(budgets):
                    tokens = _resolve_budget(budget, ex.context_tokens, pol.floor)
                    for layer in range(fp.num_layers):
                        row[k, layer] = ex.degradation(layer, tokens)
                        bar.update(1)
                rows.append(row)
                lengths.append(ex.context_tokens)
                baseline.append(float(ex.ref_score) if metric == "score" else _baseline_nll(ex))
                if checkpoint:
                    snapshot(False).save(checkpoint)
    finally:
        bar.close()
    profile = snapshot(True)
    profile.stats = compute_stats(profile, n_permutations=n_permutations, seed=seed)
    if checkpoint:
        profile.save(checkpoint)
    return profile


def _baseline_nll(ex: _Example) -> float:
    if ex.runner.metric == "kl":
        return 0.0
    target = torch.tensor(ex.answer, device=ex.ref.device)
    return float(-ex.ref[torch.arange(len(ex.answer)), target].mean())


def compute_stats(profile: Profile, n_permutations: int = 10_000, seed: int = 0) -> dict[str, Any] | None:
    """Permutation test, Friedman test and bootstrap CIs for each ablation budget (None if < 2 examples)."""
    if profile.n_examples < 2 or profile.n_layers < 2:
        return None
    per_budget = [
        layer_stats(profile.matrix(k), n_permutations=n_permutations, seed=seed).to_dict()
        for k in range(len(profile.ablation_budgets))
    ]
    return {"by_budget": per_budget}
