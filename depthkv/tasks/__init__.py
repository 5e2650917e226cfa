"""Synthetic long-context workloads (RULER-style), user JSONL workloads, scoring, byte tokenizer.

Text formats are documented in ``depthkv.tasks.text``; each generator's docstring has an example.
"""

from depthkv.tasks.example import Example
from depthkv.tasks.generators import GENERATORS, MULTI_ITEM_TASKS, TASKS, generate
from depthkv.tasks.io import load_jsonl, parse_jsonl, save_jsonl
from depthkv.tasks.oracle import oracle_answer
from depthkv.tasks.scoring import is_multi_item, score
from depthkv.tasks.tokenizer import BatchEncoding, ByteTokenizer
from depthkv.tasks.workload import DEFAULT_TASKS, Workload, builtin_workload, from_jsonl, split_seed

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
