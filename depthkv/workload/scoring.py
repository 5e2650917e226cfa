"""Scoring a model's continuation against an example's reference answer.

Rules, in order:

1. The prediction is stripped of surrounding whitespace. If the reference answer is one line
   (all built-in answers are), only the prediction's first line counts: a model that keeps
   generating past the answer (``"5306\\nthe sun ..."``) is judged on ``"5306"``.
2. Single-answer examples score 1.0 if that text equals ``answer.strip()`` exactly, else 0.0
   (case and inner whitespace matter).
3. Multi-item examples (tasks in ``MULTI_ITEM_TASKS``, or ``metadata["multi_item"]`` true for
   custom data) score the recall of the answer's items: answer and prediction are split into
   items on whitespace and commas; the score is the fraction of answer
   items found among the prediction's items, counted as multisets (an item listed twice in the
   answer must appear twice). Order and extra items are not penalised, as in RULER.
"""

from __future__ import annotations

import re
from collections import Counter

from depthkv.workload.example import Example
from depthkv.workload.generators import MULTI_ITEM_TASKS

_ITEM_SPLIT = re.compile(r"[\s,]+")


def is_multi_item(example: Example) -> bool:
    """Whether ``example`` is scored by item recall rather than exact match."""
    return example.task in MULTI_ITEM_TASKS or bool(example.metadata.get("multi_item", False))


def answer_text(example: Example, prediction: str) -> str:
    """The part of ``prediction`` that is compared with the answer (rule 1)."""
    text = prediction.strip()
    if "\n" not in example.answer.strip():
        text = text.split("\n", 1)[0].strip()
    return text


def answer_items(text: str) -> list[str]:
    """The items of a multi-item answer or prediction (rule 3): split on whitespace and commas."""
    return [item for item in _ITEM_SPLIT.split(text) if item]


def score(example: Example | dict, prediction: str) -> float:
    """Score in [0, 1] of ``prediction`` (the model's continuation of ``example.prompt``).

    ``example`` may be an :class:`Example` or its dict form (a workload line).
    """
    if isinstance(example, dict):
        example = Example.from_dict(example)
    text = answer_text(example, prediction)
    if not is_multi_item(example):
        return 1.0 if text == example.answer.strip() else 0.0
    items = Counter(answer_items(example.answer))
    if not items:
        return 1.0 if not text else 0.0
    predicted = Counter(answer_items(text))
    found = sum(min(count, predicted[item]) for item, count in items.items())
    return found / sum(items.values())
