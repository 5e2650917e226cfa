"""Greedy decoding: the one decode loop every part of depthkv uses.

* :func:`greedy_decode` — the loop itself, over any step function (the calibration and evaluation
  engine runs it on a pruned cache, one row at a time).
* :func:`greedy_generate` — a whole generation from a prompt with a cache (eager, compiled or
  depthkv-compiled forward). ``transformers``' ``generate`` works too (see the docs); this one
  keeps every input shape static across decode steps — the 2-D padding mask is laid out at the
  cache's ``max_len`` once — which is what a compiled forward needs to never recompile.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection
from typing import Any

import torch

__all__ = ["cache_kwarg", "greedy_decode", "greedy_generate", "until_stop"]


def cache_kwarg(model: Any) -> str:
    """Name of the cache keyword of ``model.forward``: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    if "cache" in params:
        return "cache"
    if "past_key_values" in params:
        return "past_key_values"
    raise TypeError(
        f"{type(model).__name__}.forward takes neither `cache` nor `past_key_values`; depthkv needs a "
        "transformers causal LM that accepts a Cache object"
    )


def greedy_decode(
    step: Callable[[torch.Tensor], torch.Tensor],
    logits: torch.Tensor,
    max_new_tokens: int,
    *,
    stop_tokens: Collection[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens from ``logits`` on, feeding each token back through ``step``.

    Args:
        step: ``step(tokens [B, 1]) -> logits [B, V]``: one forward step returning the next-token
            logits (it advances whatever cache it closes over).
        logits: ``[B, V]`` logits predicting the first new token.
        max_new_tokens: tokens to produce at most; ``step`` runs once fewer (the last token is not fed).
        stop_tokens: token ids that end a row; the loop ends early once every row has produced one
            (the stop token is included: cut rows with :func:`until_stop`).

    Returns:
        ``(tokens [B, n], logits [n, B, V] float32)`` with ``n <= max_new_tokens``.
    """
    stop = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=logits.device)
    finished = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    tokens, seen = [], []
    for i in range(max_new_tokens):
        nxt = logits.argmax(-1, keepdim=True)
        tokens.append(nxt)
        seen.append(logits.float())
        if stop.numel():
            finished |= torch.isin(nxt[:, 0], stop)
            if bool(finished.all()):
                break
        if i + 1 < max_new_tokens:
            logits = step(nxt)
    if not tokens:
        return torch.zeros((logits.shape[0], 0), dtype=torch.long, device=logits.device), logits.new_zeros((0, *logits.shape))
    return torch.cat(tokens, dim=1), torch.stack(seen)


def until_stop(tokens: list[int], stop_tokens: Collection[int]) -> list[int]:
    """``tokens`` up to (not including) the first stop token."""
    for i, token in enumerate(tokens):
        if token in stop_tokens:
            return tokens[:i]
    return tokens


def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    forward: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with ``cache`` from a prompt.

    Args:
        model: the ``transformers`` model (used for its cache keyword).
        input_ids: int64 ``[B, S]``, left-padded for ``B > 1``.
        cache: a ``BudgetCache``, ``StaticBudgetCache`` or any transformers cache (fresh).
        max_new_tokens: tokens to generate.
        attention_mask: int/bool ``[B, S]`` (1 = real token) or None.
        forward: the callable to run (default: ``model``; pass the compiled module here).

    Returns:
        ``(tokens [B, max_new_tokens], logits [max_new_tokens, B, V])``.
    """
    forward = forward if forward is not None else model
    kw = cache_kwarg(model)
    b, s = input_ids.shape
    static_len = getattr(cache, "max_len", None)
    mask = None
    if attention_mask is not None:
        width = static_len if static_len is not None else s + max_new_tokens
        if s + max_new_tokens > width:
            raise ValueError(f"prompt {s} + {max_new_tokens} new tokens exceed the cache's max_len {width}")
        mask = torch.ones((b, width), dtype=torch.long, device=input_ids.device)
        mask[:, :s] = attention_mask
    length = s

    def run(ids: torch.Tensor) -> torch.Tensor:
        nonlocal length
        length += ids.shape[1]
        m = None if mask is None else (mask if static_len is not None else mask[:, :length])
        return forward(ids, attention_mask=m, use_cache=True, **{kw: cache}).logits[:, -1]

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1; got {max_new_tokens}")
    with torch.inference_mode():
        length = 0
        first = run(input_ids)
        return greedy_decode(run, first, max_new_tokens)
