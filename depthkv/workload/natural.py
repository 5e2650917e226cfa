"""The natural-text tasks, by name, and workloads of them sized for a real model's tokenizer.

The built-in tasks (:mod:`~depthkv.workload.generators`) are written for the shipped byte-level
models: a small word list, lengths in characters. These are for pretrained LLMs: RULER-style
tasks hidden in natural English prose (:mod:`~depthkv.workload.prose`, read from the Python
installation, never copied into depthkv), lengths in tokens of the model's tokenizer
(:mod:`~depthkv.workload.haystack`), questions ending in an answer prefix
(:mod:`~depthkv.workload.facts`) and scored with the ``"contains"`` rule
(:mod:`~depthkv.workload.scoring`).

==================  ======================================================  =================
task                what is asked                                           answer
==================  ======================================================  =================
``prose_needle``    the special magic number of one key                     the number
``prose_multikey``  the same among needles of other keys                    the number
``prose_multihop``  X works at Y. ... Y is located in Z. Where does X work?  the city
``prose_vartrack``  every variable assigned a value, through chains         the names (recall)
==================  ======================================================  =================
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from depthkv.workload.example import Example
from depthkv.workload.generators import example_rng
from depthkv.workload.haystack import Haystack, spread_depth, tokenizer_name
from depthkv.workload.prose import ProseCorpus, prose_corpus
from depthkv.workload.prose_hops import prose_multihop
from depthkv.workload.prose_needle import prose_multikey, prose_needle
from depthkv.workload.prose_variables import prose_vartrack
from depthkv.workload.workload import Workload, check_task_request, split_seed

NATURAL_GENERATORS: dict[str, Callable[..., Example]] = {
    "prose_needle": prose_needle,
    "prose_multikey": prose_multikey,
    "prose_multihop": prose_multihop,
    "prose_vartrack": prose_vartrack,
}
NATURAL_TASKS: tuple[str, ...] = tuple(NATURAL_GENERATORS)
# Answers that list several items; scored by recall (see scoring.py).
NATURAL_MULTI_ITEM_TASKS = frozenset({"prose_vartrack"})
# Version of the generators' output for the same seed, tokenizer and text: bump it when it changes.
NATURAL_GENERATOR_VERSION = 1


def generate_natural(
    task: str,
    tokenizer: Any,
    n: int,
    context_length: int,
    seed: int,
    corpus: ProseCorpus | None = None,
    **options,
) -> list[Example]:
    """``n`` examples of natural ``task`` whose contexts have ``context_length`` tokens of ``tokenizer``.

    The count is ``len(tokenizer.encode(context, add_special_tokens=False))`` and is within
    :func:`~depthkv.workload.haystack.length_tolerance` of ``context_length`` (exact in
    practice); every example records it as ``metadata["context_tokens"]``. ``tokenizer`` needs
    only ``encode(text, add_special_tokens=False)``. The text is ``corpus`` (default: this Python
    installation's, :func:`~depthkv.workload.prose.prose_corpus`).

    The same arguments in the same environment give the same examples, and ``n=m`` gives a prefix
    of ``n=m + k``; example ``i``'s main fact sits at depth
    :func:`~depthkv.workload.haystack.spread_depth` (``i``). ``options`` go to the task's generator
    (``num_distractors`` for ``prose_multikey`` and ``prose_multihop``; ``num_chains`` and
    ``num_hops`` for ``prose_vartrack``) and are recorded in each example's metadata, with
    ``"scorer": "contains"``.
    """
    if task not in NATURAL_GENERATORS:
        raise ValueError(f"unknown natural task {task!r}; known: {', '.join(NATURAL_TASKS)}")
    haystack = Haystack(tokenizer, corpus or prose_corpus())
    return _generate(task, haystack, n, context_length, seed, options)


def _generate(
    task: str, haystack: Haystack, n: int, context_length: int, seed: int, options: dict
) -> list[Example]:
    if not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    if not isinstance(context_length, int) or context_length < 1:
        raise ValueError(f"context_length must be a positive int (tokens), got {context_length!r}")
    make = NATURAL_GENERATORS[task]
    name = tokenizer_name(haystack.tokenizer)
    examples = []
    for index in range(n):
        ex = make(example_rng(task, seed, index), haystack, context_length, spread_depth(index), **options)
        meta = {
            "seed": seed,
            "index": index,
            "context_length": context_length,
            "tokenizer": name,
            **options,
            **ex.metadata,
            "scorer": "contains",
        }
        examples.append(Example(ex.context, ex.question, ex.answer, ex.task, meta))
    return examples


def natural_workload(
    tokenizer: Any,
    tasks: list[str] | None = None,
    n_per_task: int = 8,
    context_length: int = 2048,
    split: str = "calibration",
    seed: int = 0,
) -> Workload:
    """``n_per_task`` examples of each natural task (all of :data:`NATURAL_TASKS` if ``None``),
    task by task, ``context_length`` tokens of ``tokenizer`` each.

    Seeds come from :func:`~depthkv.workload.workload.split_seed` (split, task, seed), so the
    ``calibration`` and ``evaluation`` splits never share an example. ``describe()`` records
    ``source="natural"``, the generator version, the tokenizer's name, the text source (Python
    version, sha256 of the sentences) and the examples' sha256: enough for
    :func:`~depthkv.workload.rebuild.rebuild_workload` to make the same examples again and to say
    what differs when it cannot.
    """
    tasks = list(NATURAL_TASKS if tasks is None else tasks)
    check_task_request(
        tasks, NATURAL_TASKS, split, n_per_task, kind="natural", unknown_label="natural task(s)", known_label="known"
    )
    corpus = prose_corpus()
    haystack = Haystack(tokenizer, corpus)
    examples = [
        ex
        for task in tasks
        for ex in _generate(task, haystack, n_per_task, context_length, split_seed(split, task, seed), {})
    ]
    counts = [ex.metadata["context_tokens"] for ex in examples]
    description = {
        "source": "natural",
        "generator_version": NATURAL_GENERATOR_VERSION,
        "n_per_task": n_per_task,
        "target_context_length": context_length,
        "length_unit": "tokens",
        "tokenizer": tokenizer_name(tokenizer),
        "text_source": dict(corpus.source),
        "context_tokens": {"min": min(counts), "max": max(counts), "mean": sum(counts) / len(counts)},
    }
    return Workload(examples, name=f"natural-{split}", seed=seed, split=split, description=description)
