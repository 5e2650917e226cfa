"""Quality versus KV budget: several methods side by side on one workload.

For every example the context is prefilled once with a recorded full cache (per eviction policy);
each method's cache is then derived from it with :meth:`BudgetCache.pruned` — exactly what running
the model with that method's budgets would hold, since eviction happens after attention — and the
answer is generated greedily after the question. The full-cache baseline uses the same code path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .apply import cache_kwarg
from .attention import depthkv_attention_enabled
from .cache import BudgetCache
from .calibrate import encode_example, encode_text
from .fingerprint import fingerprint
from .policies import PolicyConfig
from .profile import Plan
from .stats import bootstrap_mean_ci


@dataclass
class MethodResult:
    """Scores of one method on every example, in workload order."""

    name: str
    scores: list[float]
    tasks: list[str]
    kv_tokens: list[int] = field(default_factory=list)

    def summary(self, confidence: float = 0.95, seed: int = 0) -> dict[str, Any]:
        """Mean score with a bootstrap CI, per task as well, and mean KV tokens kept per example."""
        values = np.asarray(self.scores, dtype=np.float64)
        out: dict[str, Any] = {"name": self.name, "n": int(values.size)}
        out.update(_ci(values, confidence, seed))
        per_task = {}
        for task in sorted(set(self.tasks)):
            sel = np.asarray([t == task for t in self.tasks])
            per_task[task] = {"n": int(sel.sum()), **_ci(values[sel], confidence, seed)}
        out["per_task"] = per_task
        if self.kv_tokens:
            out["mean_kv_tokens"] = float(np.mean(self.kv_tokens))
        return out


def _ci(values: np.ndarray, confidence: float, seed: int) -> dict[str, float]:
    if values.size == 0:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan")}
    if values.size == 1 or np.all(values == values[0]):
        v = float(values.mean())
        return {"mean": v, "low": v, "high": v}
    mean, low, high = bootstrap_mean_ci(values, confidence=confidence, n_resamples=2000, seed=seed)
    return {"mean": mean, "low": low, "high": high}


class _Generator:
    def __init__(self, model: Any, tokenizer: Any, extra_tokens: int, stop_at_newline: bool):
        self.model = model
        self.tokenizer = tokenizer
        self.kw = cache_kwarg(model)
        self.device = next(model.parameters()).device
        self.extra_tokens = extra_tokens
        newline = encode_text(tokenizer, "\n", False)
        self.stop = newline[0] if (stop_at_newline and len(newline) == 1) else None
        self.eos = getattr(tokenizer, "eos_token_id", None)

    def forward(self, ids: list[int], cache: BudgetCache) -> torch.Tensor:
        x = torch.tensor([ids], device=self.device)
        return self.model(x, use_cache=True, **{self.kw: cache}).logits[0, -1]

    def answer(self, cache: BudgetCache, first_logits: torch.Tensor, prefix: list[int], n: int) -> str:
        logits = self.forward(prefix, cache) if prefix else first_logits
        out: list[int] = []
        for step in range(n + self.extra_tokens):
            nxt = int(logits.argmax())
            if nxt in (self.stop, self.eos):
                break
            out.append(nxt)
            if step + 1 < n + self.extra_tokens:
                logits = self.forward([nxt], cache)
        return self.tokenizer.decode(out, skip_special_tokens=True)


def evaluate(
    model: Any,
    tokenizer: Any,
    workload: Any,
    methods: dict[str, Plan | None],
    *,
    compress: str = "context",
    scorer: Callable[[Any, str], float] | None = None,
    extra_tokens: int = 2,
    stop_at_newline: bool = True,
    progress: bool = True,
) -> dict[str, MethodResult]:
    """Score each method on every example of ``workload``.

    Args:
        methods: name → :class:`Plan` (``None`` = full cache). Relative plans are rescaled to each
            example's context length.
        compress: ``"context"`` (compress the context, then ask) or ``"prompt"`` (compress context +
            question, then answer), as in :func:`depthkv.calibrate`.
        scorer: ``scorer(example, prediction)`` (default: :func:`depthkv.tasks.score`).
        extra_tokens: tokens generated beyond the reference answer's length (generation also stops at
            a newline when ``stop_at_newline``).

    Returns:
        name → :class:`MethodResult`.
    """
    if scorer is None:
        from .tasks import score as scorer
    examples = list(getattr(workload, "examples", workload))
    n_layers = fingerprint(model).num_layers
    for plan in methods.values():
        if plan is not None:
            plan.check_model(model)
    policies: dict[str, PolicyConfig] = {}
    for plan in methods.values():
        pol = PolicyConfig.from_dict(plan.policy) if plan is not None else PolicyConfig()
        policies.setdefault(repr(pol), pol)
    gen = _Generator(model, tokenizer, extra_tokens, stop_at_newline)
    results = {name: MethodResult(name, [], []) for name in methods}
    bar = tqdm(total=len(examples) * len(methods), desc="evaluate", unit="run", disable=not progress)
    try:
        with depthkv_attention_enabled(model), torch.inference_mode():
            for ex in examples:
                get = ex.get if isinstance(ex, dict) else (lambda k, _e=ex: getattr(_e, k, None))
                context, question, answer = get("context"), get("question"), get("answer")
                task = get("task") or "custom"
                ctx, prefix, answer_ids = encode_example(tokenizer, context, question, answer, compress)
                n_answer = len(answer_ids)
                recorded = {}
                for key, pol in policies.items():
                    cache = BudgetCache([None] * n_layers, pol, record=True)
                    first = gen.forward(ctx, cache)
                    recorded[key] = (cache, first)
                for name, plan in methods.items():
                    key = repr(PolicyConfig.from_dict(plan.policy) if plan is not None else PolicyConfig())
                    full, first = recorded[key]
                    budgets = [None] * n_layers if plan is None else plan.budgets_for(len(ctx))
                    cache = full.pruned(budgets)
                    kept = sum(min(len(ctx), b) if b is not None else len(ctx) for b in budgets)
                    prediction = gen.answer(cache, first, prefix, n_answer)
                    res = results[name]
                    res.scores.append(float(scorer(ex, prediction)))
                    res.tasks.append(str(task))
                    res.kv_tokens.append(int(kept))
                    bar.update(1)
    finally:
        bar.close()
    return results


def method_plans(
    model: Any,
    profile: Any,
    budgets: Sequence[float | int],
    strategies: Sequence[str] = ("proportional", "softmax", "rank", "greedy"),
    policy: str | None = None,
) -> dict[str, Plan | None]:
    """The standard comparison: full cache, uniform SnapKV, PyramidKV and DepthKV strategies per budget.

    Names are ``"full"``, ``"uniform@0.2"``, ``"pyramid@0.2"``, ``"depthkv-<strategy>@0.2"``.
    Strategies that the profile cannot support (``greedy`` without curves) are skipped.
    """
    from .allocate import allocate

    methods: dict[str, Plan | None] = {"full": None}
    for b in budgets:
        methods[f"uniform@{b}"] = allocate(profile, b, "uniform", policy=policy)
        methods[f"pyramid@{b}"] = allocate(profile, b, "pyramid", policy=policy)
        for s in strategies:
            if s == "greedy" and len(profile.ablation_budgets) < 2:
                continue
            methods[f"depthkv-{s}@{b}"] = allocate(profile, b, s, policy=policy)
    return methods
