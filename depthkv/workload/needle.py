"""Needle-in-a-haystack and key-value retrieval tasks (RULER's NIAH family).

Every task here writes ``key:value`` record lines (4 lowercase letters, 4 digits) into the
context and asks ``"\\n?key:"`` (or ``"\\n?k1 k2 ...:"``). The answer to a key is all of its
values in order of appearance, space-separated; the answer to several keys is their answers in
query order, space-separated.
"""

from __future__ import annotations

import random

from depthkv.workload.example import Example
from depthkv.workload.text import (
    KEY_LENGTH,
    VALUE_DIGITS,
    depths,
    key_question,
    random_value,
    random_word,
    scatter,
)


def _record(key: str, value: str) -> str:
    return f"{key}:{value}"


def niah_single(rng: random.Random, context_length: int) -> Example:
    """One ``key:value`` needle in filler; asks for its value.

    Example (``generate("niah_single", 1, 96, 0)``; the answer follows the final ``":"``)::

        tree and cat sky.
        river a sat wind bird warm.
        sea and cloud sea.
        sat on wind river we.
        mvmf:1268
        ?mvmf:1268
    """
    key = random_word(rng, set())
    value = random_value(rng)
    record = _record(key, value)
    context = scatter(rng, [record], context_length, "niah_single")
    meta = {"keys": [key], "depths": depths(context, [record])}
    return Example(context, key_question([key]), value, "niah_single", meta)


def niah_multikey(rng: random.Random, context_length: int, num_distractors: int = 3) -> Example:
    """A needle plus ``num_distractors`` other ``key:value`` records; asks for one key."""
    taken_keys: set[str] = set()
    taken_values: set[str] = set()
    pairs = [
        (random_word(rng, taken_keys), random_value(rng, taken_values)) for _ in range(num_distractors + 1)
    ]
    key, value = pairs[rng.randrange(len(pairs))]
    records = [_record(k, v) for k, v in pairs]
    context = scatter(rng, records, context_length, "niah_multikey")
    meta = {"keys": [key], "num_distractors": num_distractors, "depths": depths(context, records)}
    return Example(context, key_question([key]), value, "niah_multikey", meta)


def niah_multivalue(rng: random.Random, context_length: int, num_values: int = 4) -> Example:
    """One key written ``num_values`` times with different values; answer = all values in order."""
    key = random_word(rng, set())
    taken: set[str] = set()
    values = [random_value(rng, taken) for _ in range(num_values)]
    records = [_record(key, v) for v in values]
    context = scatter(rng, records, context_length, "niah_multivalue")
    meta = {"keys": [key], "num_values": num_values, "depths": depths(context, records)}
    return Example(context, key_question([key]), " ".join(values), "niah_multivalue", meta)


def niah_multiquery(rng: random.Random, context_length: int, num_queries: int = 4) -> Example:
    """``num_queries`` needles, all asked at once; answer = their values in query order."""
    taken_keys: set[str] = set()
    taken_values: set[str] = set()
    pairs = [(random_word(rng, taken_keys), random_value(rng, taken_values)) for _ in range(num_queries)]
    records = [_record(k, v) for k, v in pairs]
    context = scatter(rng, records, context_length, "niah_multiquery")
    asked = rng.sample(pairs, len(pairs))
    meta = {"keys": [k for k, _ in asked], "num_queries": num_queries, "depths": depths(context, records)}
    return Example(
        context, key_question([k for k, _ in asked]), " ".join(v for _, v in asked), "niah_multiquery", meta
    )


def kv_retrieval(rng: random.Random, context_length: int) -> Example:
    """A dense list of ``key:value`` lines (no filler) filling the context; asks for one key.

    Keys are distinct; values have 4 digits, except that just enough of them have 5 digits to
    make the context exactly ``context_length`` characters long.
    """
    cost = KEY_LENGTH + 1 + VALUE_DIGITS + 1  # one record line plus its newline
    count, extra = divmod(context_length + 1, cost)
    if count < max(1, extra):
        raise ValueError(
            f"context_length={context_length} is too short for kv_retrieval (needs >= {cost * 9 - 1})"
        )
    long_values = set(rng.sample(range(count), extra))
    taken: set[str] = set()
    pairs = [
        (random_word(rng, taken), random_value(rng, digits=VALUE_DIGITS + (i in long_values)))
        for i in range(count)
    ]
    key, value = pairs[rng.randrange(count)]
    context = "\n".join(_record(k, v) for k, v in pairs)
    meta = {"keys": [key], "num_records": count, "depths": depths(context, [_record(key, value)])}
    return Example(context, key_question([key]), value, "kv_retrieval", meta)
