"""A small greedy decode loop over a model forward (eager, compiled, or depthkv-compiled).

``transformers``' ``generate`` works too (see the docs); this loop exists because it keeps every
input shape static across decode steps — the 2-D padding mask is laid out at the cache's
``max_len`` once — which is what a compiled forward needs to never recompile.
"""

from __future__ import annotations

from typing import Any

import torch

from .apply import cache_kwarg


def greedy_generate(
    model: Any,
    input_ids: torch.Tensor,
    cache: Any,
    max_new_tokens: int,
    *,
    attention_mask: torch.Tensor | None = None,
    forward: Any = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with ``cache``.

    Args:
        model: the ``transformers`` model (used for its cache keyword).
        input_ids: int64 ``[B, S]``, left-padded for ``B > 1``.
        cache: a ``BudgetCache`` or ``StaticBudgetCache`` (fresh).
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
    tokens, logits = [], []
    step_ids = input_ids
    length = s
    with torch.inference_mode():
        for _ in range(max_new_tokens):
            m = None if mask is None else (mask if static_len is not None else mask[:, :length])
            out = forward(step_ids, attention_mask=m, use_cache=True, **{kw: cache})
            last = out.logits[:, -1]
            nxt = last.argmax(-1, keepdim=True)
            logits.append(last.float())
            tokens.append(nxt)
            step_ids = nxt
            length += 1
    return torch.cat(tokens, dim=1), torch.stack(logits)
