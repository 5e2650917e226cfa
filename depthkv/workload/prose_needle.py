"""Needles in natural prose (RULER's NIAH with an essay haystack): ``prose_needle`` and
``prose_multikey``.

A needle is ``One of the special magic numbers for <key> is: <7 digits>.`` (formats in
:mod:`~depthkv.workload.facts`); the question asks for one key's number, the answer is the bare
number.
"""

from __future__ import annotations

import random

from depthkv.workload.example import Example
from depthkv.workload.facts import NEEDLE_INSTRUCTION, needle_question, needle_sentence
from depthkv.workload.haystack import Haystack, fact_depths
from depthkv.workload.names import random_key, random_number

VALUE_DIGITS = 7


def prose_needle(rng: random.Random, haystack: Haystack, context_length: int, depth: float) -> Example:
    """One needle at ``depth`` of the prose; asks for its number.

    Example (shortened)::

        Some special magic numbers are hidden within the following text. ...

        For set elements, the same immutability rules apply as for dictionary keys. One of the
        special magic numbers for quiet-harbor is: 1948774. Python does not enforce ...

        Question: What is the special magic number for quiet-harbor mentioned in the text above?
        Answer: The special magic number for quiet-harbor is        -> "1948774"
    """
    return _needles(rng, haystack, context_length, depth, 0, "prose_needle")


def prose_multikey(
    rng: random.Random, haystack: Haystack, context_length: int, depth: float, num_distractors: int = 3
) -> Example:
    """The asked needle at ``depth`` and ``num_distractors`` needles of other keys (and numbers)
    at random depths."""
    if num_distractors < 1:
        raise ValueError(f"prose_multikey needs num_distractors >= 1, got {num_distractors}")
    return _needles(rng, haystack, context_length, depth, num_distractors, "prose_multikey")


def _needles(
    rng: random.Random, haystack: Haystack, context_length: int, depth: float, distractors: int, task: str
) -> Example:
    keys: set[str] = set()
    values: set[str] = set()
    pairs = [
        (random_key(rng, keys), random_number(rng, values, VALUE_DIGITS)) for _ in range(distractors + 1)
    ]
    key, value = pairs[0]
    facts = [(depth, needle_sentence(key, value))]
    facts += [(rng.random(), needle_sentence(k, v)) for k, v in pairs[1:]]
    context, tokens = haystack.build(rng, context_length, NEEDLE_INSTRUCTION, facts, task)
    meta = {
        "key": key,
        "keys": [k for k, _ in pairs],
        "context_tokens": tokens,
        "depths": fact_depths(context, facts),
    }
    if distractors:
        meta["num_distractors"] = distractors
    return Example(context, needle_question(key), value, task, meta)
