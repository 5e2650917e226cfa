"""A direct test of key matching, logged while the tiny models train.

The training exact match mixes two skills: copying *some* value out of the context (learned early)
and finding the value of the *asked* key (the plateau; training/LOG.md). ``key_matching`` measures
the second alone: record lists of ``k`` records (``abcd:1234`` lines) and one question
``"\\n?key:"``; is the greedy next token the first digit of the asked key's value? Copying some
record scores about ``1/k + (1 - 1/k)/9`` (first digits coincide), matching scores 1.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import torch

from depthkv.workload.text import key_question, random_value, random_word

KEY_MATCH_COUNTS = (2, 4, 8)


def copy_chance(count: int) -> float:
    """First-digit accuracy of a model that copies a random record's value (no matching)."""
    return 1 / count + (1 - 1 / count) / 9


def key_match_prompts(rng: random.Random, count: int, n: int) -> tuple[list[str], list[str]]:
    """``n`` prompts of ``count`` records and a question (all the same length), and the first
    digit each one's answer starts with."""
    prompts, digits = [], []
    for _ in range(n):
        keys: set[str] = set()
        values: set[str] = set()
        pairs = [(random_word(rng, keys), random_value(rng, values)) for _ in range(count)]
        key, value = pairs[rng.randrange(count)]
        prompts.append("\n".join(f"{k}:{v}" for k, v in pairs) + key_question([key]))
        digits.append(value[0])
    return prompts, digits


@torch.no_grad()
def key_matching(
    model: Any, tokenizer: Any, counts: Sequence[int] = KEY_MATCH_COUNTS, n: int = 64, seed: int = 0
) -> dict[str, float]:
    """``{str(k): accuracy}``: share of ``n`` prompts with ``k`` records whose greedy next token is
    the asked value's first digit. Same prompts for a given ``seed``; restores the model's
    train/eval mode; one forward pass of ``[n, S]`` per ``k``."""
    if n < 1 or not counts or min(counts) < 1:
        raise ValueError(f"key_matching needs n >= 1 and counts >= 1, got n={n}, counts={list(counts)}")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    rng = random.Random(f"depthkv-key-matching/{seed}")
    out = {}
    try:
        for count in counts:
            prompts, digits = key_match_prompts(rng, count, n)
            ids = torch.tensor([tokenizer.encode(p, add_special_tokens=True) for p in prompts], device=device)
            predicted = model(input_ids=ids).logits[:, -1].argmax(-1).tolist()
            want = [tokenizer.encode(d)[0] for d in digits]
            out[str(count)] = round(sum(p == w for p, w in zip(predicted, want)) / n, 3)
    finally:
        model.train(was_training)
    return out
