"""Two-hop fact questions in natural prose: ``prose_multihop``.

``<person> works at <company>.`` and, half the context away, ``<company> is located in <city>.``;
the question asks in which city the person works, so the answer needs both facts. The companies
are invented, so the city cannot be guessed; distractor people, companies and cities are written
the same way at random depths. Formats in :mod:`~depthkv.workload.facts`.
"""

from __future__ import annotations

import random

from depthkv.workload.example import Example
from depthkv.workload.facts import HOPS_INSTRUCTION, city_question, located_in_sentence, works_at_sentence
from depthkv.workload.haystack import Haystack, fact_depths
from depthkv.workload.names import random_city, random_company, random_person


def prose_multihop(
    rng: random.Random, haystack: Haystack, context_length: int, depth: float, num_distractors: int = 2
) -> Example:
    """The asked person's two facts at ``depth`` and ``depth + 0.5`` (mod 1), in either order;
    ``num_distractors`` more people, each with a company and its city, at random depths.

    Example (shortened)::

        ... Ada Hartley works at Northvale Robotics. ... Bruno Quimby works at Ironmoor Foods. ...
        Northvale Robotics is located in Lisbon. ... Ironmoor Foods is located in Oslo. ...

        Question: In which city does Ada Hartley work?
        Answer: Ada Hartley works in the city of                    -> "Lisbon"
    """
    if num_distractors < 0:
        raise ValueError(f"prose_multihop needs num_distractors >= 0, got {num_distractors}")
    people: set[str] = set()
    companies: set[str] = set()
    cities: set[str] = set()
    chains = [
        (random_person(rng, people), random_company(rng, companies), random_city(rng, cities))
        for _ in range(num_distractors + 1)
    ]
    person, company, city = chains[0]
    first, second = depth, (depth + 0.5) % 1.0
    if rng.random() < 0.5:
        first, second = second, first
    facts = [(first, works_at_sentence(person, company)), (second, located_in_sentence(company, city))]
    for other, firm, town in chains[1:]:
        facts += [
            (rng.random(), works_at_sentence(other, firm)),
            (rng.random(), located_in_sentence(firm, town)),
        ]
    context, tokens = haystack.build(rng, context_length, HOPS_INSTRUCTION, facts, "prose_multihop")
    meta = {
        "person": person,
        "company": company,
        "num_distractors": num_distractors,
        "context_tokens": tokens,
        "depths": fact_depths(context, facts[:2]),
    }
    return Example(context, city_question(person), city, "prose_multihop", meta)
