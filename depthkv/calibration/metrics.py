"""Degradation metrics: how much worse one example gets when its cache is pruned.

    ``nll``   mean negative log-likelihood of the answer tokens (teacher forced), pruned − full.
    ``kl``    mean over answer positions of KL(p_full ‖ p_pruned) of the next-token distribution.
    ``score`` task score of greedy generation (scored by the workload's scorer), full − pruned.

``nll`` and ``kl`` send the prefix (question) and the answer in one step after the context is
compressed, so nothing of them is evicted; ``score`` generates token by token, so a layer with a
small budget evicts them as it would in deployment.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from depthkv.calibration.engine import ExampleRun
from depthkv.profile import METRICS

__all__ = ["METRICS", "Degradation", "check_metric", "default_scorer"]

Scorer = Callable[[Any, str], float]


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`, else a ``ValueError`` naming them."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def default_scorer(example: Any, prediction: str) -> float:
    """:func:`depthkv.workload.score` (the built-in tasks' scorer; examples as objects or dicts)."""
    from depthkv.workload import score

    return score(example, prediction)


class Degradation:
    """One example's degradation under any budgets, by one metric.

    Args:
        run: the example's full run (with ``record_layers=True`` for ``nll`` / ``kl``).
        metric: ``"nll"``, ``"kl"`` or ``"score"``.
        scorer: ``scorer(example, prediction) -> float`` for ``"score"`` (default
            :func:`default_scorer`).
        extra_tokens: tokens generated beyond the answer's length for ``"score"``.
    """

    def __init__(self, run: ExampleRun, metric: str, scorer: Scorer | None = None, extra_tokens: int = 0):
        self.run = run
        self.metric = check_metric(metric)
        self.scorer = scorer or default_scorer
        self.extra_tokens = extra_tokens
        if metric == "score":
            self.reference = self._score(run.cache_for([None] * run.engine.n_layers))
        elif not run.outputs and run.engine.n_layers:
            raise ValueError("the nll and kl metrics need an ExampleRun made with record_layers=True")

    def _score(self, cache: Any) -> float:
        run = self.run
        tokens = run.generate(cache, len(run.answer) + self.extra_tokens)
        prediction = run.engine.tokenizer.decode(tokens, skip_special_tokens=True)
        return float(self.scorer(run.item.source, prediction))

    @property
    def baseline(self) -> float:
        """The metric's full-cache value: the answer's NLL, 0 for KL, or the score."""
        if self.metric == "score":
            return self.reference
        if self.metric == "kl":
            return 0.0
        ref = self.run.full_logprobs
        target = torch.tensor(self.run.answer, device=ref.device)
        return float(-ref[torch.arange(len(self.run.answer), device=ref.device), target].mean())

    def of(self, budgets: Sequence[int | None]) -> float:
        """Degradation when every layer ``l`` keeps ``budgets[l]`` tokens at once (``None``: all).

        0 when every layer keeps the whole context. The layers below the lowest pruned one are
        replayed from the full run (:mod:`depthkv.calibration.replay`).
        """
        run = self.run
        budgets = run.effective(budgets)
        pruned = [layer for layer, b in enumerate(budgets) if b is not None]
        if not pruned:
            return 0.0
        cache = run.cache_for(budgets)
        if self.metric == "score":
            return self.reference - self._score(cache)
        ref = run.full_logprobs
        logp = run.answer_logprobs(cache, replay_from=pruned[0])
        if self.metric == "nll":
            target = torch.tensor(run.answer, device=logp.device)
            idx = torch.arange(len(run.answer), device=logp.device)
            return float((ref[idx, target] - logp[idx, target]).mean())
        return float((ref.exp() * (ref - logp)).sum(-1).mean())
