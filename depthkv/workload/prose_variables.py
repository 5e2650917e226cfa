"""Variable tracking in natural prose (RULER's VT): ``prose_vartrack``.

A chain ``VAR QPEXR = 12345.``, ``VAR SGTAB = VAR QPEXR.``, ``VAR LMNOP = VAR SGTAB.``, each
assignment after the one it refers to, spread over the prose; distractor chains hold other
values. The question asks for every variable assigned the chain's value; the answer is the
chain's names in order of assignment, space-separated, scored by item recall. Formats in
:mod:`~depthkv.workload.facts`.
"""

from __future__ import annotations

import random

from depthkv.workload.example import Example
from depthkv.workload.facts import VARIABLES_INSTRUCTION, assignment_sentence, holders_question
from depthkv.workload.haystack import Haystack, fact_depths
from depthkv.workload.names import random_number, random_variable

VALUE_DIGITS = 5


def prose_vartrack(
    rng: random.Random,
    haystack: Haystack,
    context_length: int,
    depth: float,
    num_chains: int = 2,
    num_hops: int = 3,
) -> Example:
    """``num_chains`` chains of ``num_hops + 1`` variables; the first is asked. Its assignments are
    evenly spaced over the context from ``depth`` on (wrapping round, kept in chain order); the
    other chains' are at random depths, also in chain order."""
    if num_chains < 1 or num_hops < 1:
        raise ValueError(
            f"prose_vartrack needs num_chains >= 1 and num_hops >= 1, got {num_chains}, {num_hops}"
        )
    names: set[str] = set()
    values: set[str] = set()
    facts: list[tuple[float, str]] = []
    chains = []
    for c in range(num_chains):
        value = random_number(rng, values, VALUE_DIGITS)
        chain = [random_variable(rng, names) for _ in range(num_hops + 1)]
        sources = [value, *chain[:-1]]
        if c == 0:
            spots = sorted((depth + k / (num_hops + 1)) % 1.0 for k in range(num_hops + 1))
        else:
            spots = sorted(rng.random() for _ in chain)
        facts += [
            (spot, assignment_sentence(name, source)) for spot, name, source in zip(spots, chain, sources)
        ]
        chains.append((value, chain))
    context, tokens = haystack.build(rng, context_length, VARIABLES_INSTRUCTION, facts, "prose_vartrack")
    value, chain = chains[0]
    meta = {
        "num_chains": num_chains,
        "num_hops": num_hops,
        "context_tokens": tokens,
        "depths": fact_depths(context, facts[: num_hops + 1]),
        "multi_item": True,
    }
    return Example(context, holders_question(value, len(chain)), " ".join(chain), "prose_vartrack", meta)
