"""Deterministic generation of the built-in synthetic tasks, by name."""

from __future__ import annotations

import random
from collections.abc import Callable

from depthkv.workload.example import Example
from depthkv.workload.needle import kv_retrieval, niah_multikey, niah_multiquery, niah_multivalue, niah_single
from depthkv.workload.variables import variable_tracking
from depthkv.workload.words import common_words, frequent_words

GENERATORS: dict[str, Callable[..., Example]] = {
    "niah_single": niah_single,
    "niah_multikey": niah_multikey,
    "niah_multivalue": niah_multivalue,
    "niah_multiquery": niah_multiquery,
    "variable_tracking": variable_tracking,
    "common_words": common_words,
    "frequent_words": frequent_words,
    "kv_retrieval": kv_retrieval,
}
TASKS: tuple[str, ...] = tuple(GENERATORS)

# Answers that list several items; scored by recall (see scoring.py).
MULTI_ITEM_TASKS = frozenset(
    {"niah_multivalue", "niah_multiquery", "variable_tracking", "common_words", "frequent_words"}
)


def example_rng(task: str, seed: int, index: int) -> random.Random:
    """The generator of example ``index``: independent of ``n`` and of every other example.

    Seeding ``random.Random`` with a str hashes it with SHA-512 (stable across runs and
    processes, unlike the salted built-in ``hash``).
    """
    return random.Random(f"depthkv/{task}/{seed}/{index}")


def generate(task: str, n: int, context_length: int, seed: int, **options) -> list[Example]:
    """``n`` examples of ``task`` whose contexts have ``context_length`` characters.

    Contexts are never longer than ``context_length`` and at most 4 characters shorter (exact for
    the needle and key-value tasks, except when 1-2 characters cannot hold a filler line).
    The same arguments always give the same examples; ``generate(..., n=m)`` is a prefix of
    ``generate(..., n=m + k)``. ``options`` go to the task's generator (e.g. ``num_distractors``
    for ``niah_multikey``, ``num_chains``/``num_hops`` for ``variable_tracking``) and are
    recorded in each example's metadata.
    """
    if task not in GENERATORS:
        raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(TASKS)}")
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError(f"context_length must be a positive int, got {context_length!r}")
    make = GENERATORS[task]
    examples = []
    for index in range(n):
        ex = make(example_rng(task, seed, index), context_length, **options)
        meta = {"seed": seed, "index": index, "context_length": context_length, **options, **ex.metadata}
        examples.append(Example(ex.context, ex.question, ex.answer, ex.task, meta))
    return examples
