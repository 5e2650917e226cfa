"""Scoring a model's continuation against an example's reference answer.

Two scorers; each example names its own in ``metadata["scorer"]``:

- ``"exact"``: the prediction's answer text must equal the reference (what the shipped byte-level
  models are measured with: they answer in the task's format and stop).
- ``"contains"``: the reference must appear in the prediction (RULER's string match, what real
  models need: they answer ``" 1948774."`` or ``"It is 1948774"``).

Without ``metadata["scorer"]``, the built-in byte tasks (``TASKS``) use ``"exact"`` and every other
example (custom data, the natural tasks) ``"contains"``. The natural tasks also write
``"scorer": "contains"`` into their metadata, and a JSONL line's top-level ``"scorer"`` lands in
metadata.

Rules, in order:

1. The prediction is stripped of surrounding whitespace. If the reference answer is one line
   (all generated answers are), only the start of the prediction counts: for ``"exact"`` its
   first line (a model that keeps generating past the answer, ``"5306\\nthe sun ..."``, is judged
   on ``"5306"``), for ``"contains"`` its first paragraph, up to the first blank line (a real
   model's list may take a line an item, ``"1. QPEXR\\n2. SGTAB"``, while a model that goes on
   with a question of its own, ``" 1948774.\\n\\nQuestion: ..."``, is judged on ``"1948774."``).
2. ``"exact"``, one answer: 1.0 if that text equals ``answer.strip()``, else 0.0 (case and inner
   whitespace matter).
3. ``"contains"``, one answer: 1.0 if the reference occurs in that text, else 0.0, where

   - case is ignored (both sides ``casefold()``) and runs of whitespace count as one space;
   - the occurrence must not continue a word or a number of the prediction: the character before
     it, if its first character is a letter or digit, and the one after it, if its last is, must
     not be a letter or digit. So ``1948774`` is found in ``" 1948774."``, ``"(1948774)"`` and
     ``"is 1948774, I think"``, but ``48774`` is not found in ``"1948774"``, nor ``Oslo`` in
     ``"Oslovia"``, nor ``1948774`` in ``"19487745"``;
   - an empty reference scores 1.0 only against an empty prediction.
4. Multi-item examples (tasks in ``MULTI_ITEM_TASKS`` or ``NATURAL_MULTI_ITEM_TASKS``, or
   ``metadata["multi_item"]`` true) score the recall of the reference's items, split on
   whitespace and commas:

   - ``"exact"``: the fraction of answer items found among the prediction's items, counted as
     multisets (an item listed twice in the answer must appear twice);
   - ``"contains"``: the fraction of answer items each found in the text by rule 3 (as RULER:
     each item counted on its own, so a repeated item is found by one occurrence).

   Order and extra items are not penalised, as in RULER.
"""

from __future__ import annotations

import re
from collections import Counter

from depthkv.workload.example import Example
from depthkv.workload.generators import MULTI_ITEM_TASKS, TASKS
from depthkv.workload.natural import NATURAL_MULTI_ITEM_TASKS

SCORERS: tuple[str, ...] = ("exact", "contains")

_ITEM_SPLIT = re.compile(r"[\s,]+")
_SPACES = re.compile(r"\s+")
_LINE_END = re.compile(r"\n")
_BLANK_LINE = re.compile(r"\n[^\S\n]*\n")


def is_multi_item(example: Example) -> bool:
    """Whether ``example`` is scored by item recall rather than as one answer (rule 4)."""
    return (
        example.task in MULTI_ITEM_TASKS
        or example.task in NATURAL_MULTI_ITEM_TASKS
        or bool(example.metadata.get("multi_item", False))
    )


def scorer_of(example: Example) -> str:
    """The scorer ``example`` is scored with: ``metadata["scorer"]``, else ``"exact"`` for the
    built-in byte tasks and ``"contains"`` for every other task. Raises ``ValueError`` for an
    unknown name."""
    name = example.metadata.get("scorer")
    if name is None:
        return "exact" if example.task in TASKS else "contains"
    if name not in SCORERS:
        raise ValueError(
            f"unknown scorer {name!r} in the example's metadata; choose one of {', '.join(SCORERS)}"
        )
    return name


def answer_text(example: Example, prediction: str, scorer: str = "exact") -> str:
    """The part of ``prediction`` that ``scorer`` compares with the answer (rule 1)."""
    text = prediction.strip()
    if "\n" not in example.answer.strip():
        end = _BLANK_LINE if scorer == "contains" else _LINE_END
        text = end.split(text, maxsplit=1)[0].strip()
    return text


def answer_items(text: str) -> list[str]:
    """The items of a multi-item answer or prediction (rule 4): split on whitespace and commas."""
    return [item for item in _ITEM_SPLIT.split(text) if item]


def contains(reference: str, text: str) -> bool:
    """Whether ``reference`` occurs in ``text`` by rule 3 (case ignored, whitespace runs as one
    space, not inside a longer word or number)."""
    needle = _SPACES.sub(" ", reference.strip()).casefold()
    hay = _SPACES.sub(" ", text.strip()).casefold()
    if not needle:
        return not hay
    check_before = needle[0].isalnum()
    check_after = needle[-1].isalnum()
    at = hay.find(needle)
    while at >= 0:
        end = at + len(needle)
        before_ok = not (check_before and at > 0 and hay[at - 1].isalnum())
        after_ok = not (check_after and end < len(hay) and hay[end].isalnum())
        if before_ok and after_ok:
            return True
        at = hay.find(needle, at + 1)
    return False


def exact_score(example: Example, prediction: str) -> float:
    """The ``"exact"`` scorer (rules 1, 2 and 4)."""
    text = answer_text(example, prediction, "exact")
    if not is_multi_item(example):
        return 1.0 if text == example.answer.strip() else 0.0
    items = Counter(answer_items(example.answer))
    if not items:
        return 1.0 if not text else 0.0
    predicted = Counter(answer_items(text))
    found = sum(min(count, predicted[item]) for item, count in items.items())
    return found / sum(items.values())


def contains_score(example: Example, prediction: str) -> float:
    """The ``"contains"`` scorer (rules 1, 3 and 4)."""
    text = answer_text(example, prediction, "contains")
    if not is_multi_item(example):
        return 1.0 if contains(example.answer, text) else 0.0
    items = answer_items(example.answer)
    if not items:
        return 1.0 if not text else 0.0
    return sum(contains(item, text) for item in items) / len(items)


def score(example: Example | dict, prediction: str) -> float:
    """Score in [0, 1] of ``prediction`` (the model's continuation of ``example.prompt``) by the
    example's scorer (:func:`scorer_of`).

    ``example`` may be an :class:`Example` or its dict form (a workload line).
    """
    if isinstance(example, dict):
        example = Example.from_dict(example)
    if scorer_of(example) == "exact":
        return exact_score(example, prediction)
    return contains_score(example, prediction)
