"""Workloads: what calibration measures on and evaluation scores.

* Built-in synthetic long-context tasks (RULER-style): :mod:`~depthkv.workload.needle`,
  :mod:`~depthkv.workload.variables`, :mod:`~depthkv.workload.words` (text formats in
  :mod:`~depthkv.workload.text`; each generator's docstring has an example), listed in
  :mod:`~depthkv.workload.generators`.
* :mod:`~depthkv.workload.workload` — :class:`Workload` with its provenance, built-in splits
  (:func:`builtin_workload`) and user JSONL files (:func:`from_jsonl`; format in
  :mod:`~depthkv.workload.jsonl`).
* Natural-text tasks for real models' tokenizers (:mod:`~depthkv.workload.natural`:
  :func:`natural_workload`): RULER-style facts (:mod:`~depthkv.workload.facts`) hidden in English
  prose read from the Python installation (:mod:`~depthkv.workload.prose`), sized in tokens
  (:mod:`~depthkv.workload.haystack`); the families in :mod:`~depthkv.workload.prose_needle`,
  :mod:`~depthkv.workload.prose_hops`, :mod:`~depthkv.workload.prose_variables`, their invented
  names in :mod:`~depthkv.workload.names`.
* :mod:`~depthkv.workload.rebuild` — :func:`rebuild_workload`: a built-in or natural workload
  made again from its description.
* :mod:`~depthkv.workload.scoring` — :func:`score` (``"exact"`` or ``"contains"``, per example);
  :mod:`~depthkv.workload.oracle` — the right answer computed from the context;
  :mod:`~depthkv.workload.tokenizer` — the byte tokenizer of the shipped tiny models.
"""

from depthkv.workload.example import Example
from depthkv.workload.generators import GENERATORS, MULTI_ITEM_TASKS, TASKS, generate
from depthkv.workload.haystack import count_tokens, length_tolerance
from depthkv.workload.jsonl import load_jsonl, parse_jsonl, save_jsonl
from depthkv.workload.natural import (
    NATURAL_MULTI_ITEM_TASKS,
    NATURAL_TASKS,
    generate_natural,
    natural_workload,
)
from depthkv.workload.oracle import oracle_answer
from depthkv.workload.prose import ProseCorpus, prose_corpus
from depthkv.workload.rebuild import rebuild_workload
from depthkv.workload.scoring import SCORERS, contains, is_multi_item, score, scorer_of
from depthkv.workload.tokenizer import BatchEncoding, ByteTokenizer
from depthkv.workload.workload import DEFAULT_TASKS, Workload, builtin_workload, from_jsonl, split_seed

__all__ = [
    "DEFAULT_TASKS",
    "GENERATORS",
    "MULTI_ITEM_TASKS",
    "NATURAL_MULTI_ITEM_TASKS",
    "NATURAL_TASKS",
    "SCORERS",
    "TASKS",
    "BatchEncoding",
    "ByteTokenizer",
    "Example",
    "ProseCorpus",
    "Workload",
    "builtin_workload",
    "contains",
    "count_tokens",
    "from_jsonl",
    "generate",
    "generate_natural",
    "is_multi_item",
    "length_tolerance",
    "load_jsonl",
    "natural_workload",
    "oracle_answer",
    "parse_jsonl",
    "prose_corpus",
    "rebuild_workload",
    "save_jsonl",
    "score",
    "scorer_of",
    "split_seed",
]
