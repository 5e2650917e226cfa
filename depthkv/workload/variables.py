"""Variable tracking (RULER's VT): follow chains of assignments through filler.

Each chain starts with ``name=value`` (4 digits) and continues with ``name=previous`` lines, each
after the line it refers to. ``num_chains`` chains (one queried, the rest distractors with other
values) are interleaved at random depths in filler. The question ``"\\n?=value:"`` asks for every
variable that holds ``value``: the queried chain's names in order of assignment, space-separated.
With ``num_hops`` hops a chain has ``num_hops + 1`` names; the first is a direct lookup, each
further name needs one more hop, so recall rewards partial tracking.
"""

from __future__ import annotations

import random

from depthkv.workload.example import Example
from depthkv.workload.text import depths, random_value, random_word, scatter, value_question


def variable_tracking(
    rng: random.Random, context_length: int, num_chains: int = 2, num_hops: int = 2
) -> Example:
    """Chains like ``abcd=4821``, ``efgh=abcd``, ``ijkl=efgh``; answer = ``"abcd efgh ijkl"``."""
    if num_chains < 1 or num_hops < 0:
        raise ValueError(f"need num_chains >= 1 and num_hops >= 0, got {num_chains}, {num_hops}")
    names: set[str] = set()
    values: set[str] = set()
    chains = []
    for _ in range(num_chains):
        value = random_value(rng, values)
        chain = [random_word(rng, names) for _ in range(num_hops + 1)]
        lines = [f"{chain[0]}={value}"] + [f"{chain[i]}={chain[i - 1]}" for i in range(1, len(chain))]
        chains.append((value, chain, lines))
    # Interleave the chains, keeping each chain's own order.
    order = [c for c in range(num_chains) for _ in range(num_hops + 1)]
    rng.shuffle(order)
    cursors = [0] * num_chains
    records = []
    for c in order:
        records.append(chains[c][2][cursors[c]])
        cursors[c] += 1
    context = scatter(rng, records, context_length, "variable_tracking")
    value, chain, lines = chains[0]
    meta = {
        "num_chains": num_chains,
        "num_hops": num_hops,
        "depths": depths(context, records),
    }
    return Example(context, value_question(value), " ".join(chain), "variable_tracking", meta)
