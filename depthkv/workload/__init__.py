"""Workloads: what calibration measures on and evaluation scores.

* Built-in synthetic long-context tasks (RULER-style): :mod:`~depthkv.workload.needle`,
  :mod:`~depthkv.workload.variables`, :mod:`~depthkv.workload.words` (text formats in
  :mod:`~depthkv.workload.text`; each generator's docstring has an example), listed in
  :mod:`~depthkv.workload.generators`.
* :mod:`~depthkv.workload.workload` — :class:`Workload` with its provenance, built-in splits
  (:func:`builtin_workload`) and user JSONL files (:func:`from_jsonl`; format in
  :mod:`~depthkv.workload.jsonl`).
* :mod:`~depthkv.workload.scoring` — :func:`score`; :mod:`~depthkv.workload.oracle` — the right answer
  computed from the context; :mod:`~depthkv.workload.tokenizer` — the byte tokenizer of the shipped
  tiny models.
"""

from depthkv.workload.example import Example
from depthkv.workload.generators import GENERATORS, MULTI_ITEM_TASKS, TASKS, generate
from depthkv.workload.jsonl import load_jsonl, parse_jsonl, save_jsonl
from depthkv.workload.oracle import oracle_answer
from depthkv.workload.scoring import is_multi_item, score
from depthkv.workload.tokenizer import BatchEncoding, ByteTokenizer
from depthkv.workload.workload import DEFAULT_TASKS, Workload, builtin_workload, from_jsonl, split_seed

__all__ = [
    "DEFAULT_TASKS",
    "GENERATORS",
    "MULTI_ITEM_TASKS",
    "TASKS",
    "BatchEncoding",
    "ByteTokenizer",
    "Example",
    "Workload",
    "builtin_workload",
    "from_jsonl",
    "generate",
    "is_multi_item",
    "load_jsonl",
    "oracle_answer",
    "parse_jsonl",
    "save_jsonl",
    "score",
    "split_seed",
]
