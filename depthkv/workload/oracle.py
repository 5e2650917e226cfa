"""Answer a built-in example from its text alone, by parsing context and question with regexes.

Used by the tests to prove every generated example is answerable from what the model sees; it
never reads ``task`` or ``metadata``. The formats are documented in ``text.py``.
"""

from __future__ import annotations

import re
from collections import Counter

from depthkv.workload.example import Example
from depthkv.workload.words import top_words

_TOP_QUESTION = re.compile(r"\A\n\?top(\d+):\Z")
_VALUE_QUESTION = re.compile(r"\A\n\?=(\d+):\Z")
_KEY_QUESTION = re.compile(r"\A\n\?([a-z]+(?: [a-z]+)*):\Z")
_RECORD = re.compile(r"^([a-z]+):(\d+)$", re.MULTILINE)
_ASSIGNMENT = re.compile(r"^([a-z]+)=([a-z]+|\d+)$", re.MULTILINE)
_WORD = re.compile(r"[a-z]+")


def oracle_answer(example: Example) -> str:
    """The reference answer recovered from ``example.context`` and ``example.question``.

    Raises ``ValueError`` if the question has no built-in format or the context cannot answer it.
    """
    question = example.question
    if match := _TOP_QUESTION.match(question):
        return _top_words(example.context, int(match.group(1)))
    if match := _VALUE_QUESTION.match(question):
        return _holders(example.context, match.group(1))
    if match := _KEY_QUESTION.match(question):
        return _values(example.context, match.group(1).split())
    raise ValueError(f"question {question!r} is not in a built-in task format")


def _values(context: str, keys: list[str]) -> str:
    found: dict[str, list[str]] = {}
    for key, value in _RECORD.findall(context):
        found.setdefault(key, []).append(value)
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"no record for key(s) {missing} in the context")
    return " ".join(v for k in keys for v in found[k])


def _holders(context: str, value: str) -> str:
    """Variables holding ``value`` after each assignment is resolved, in order of assignment."""
    env: dict[str, str] = {}
    holders = []
    for name, source in _ASSIGNMENT.findall(context):
        if source.isdigit():
            env[name] = source
        elif source in env:
            env[name] = env[source]
        else:
            raise ValueError(f"variable {source!r} is used before it is assigned")
        if env[name] == value:
            holders.append(name)
    if not holders:
        raise ValueError(f"no variable holds {value}")
    return " ".join(holders)


def _top_words(context: str, k: int) -> str:
    words = _WORD.findall(context)
    counts = Counter(words)
    first_seen: dict[str, int] = {}
    for i, word in enumerate(words):
        first_seen.setdefault(word, i)
    ranked = top_words(counts, first_seen, k + 1)
    if len(ranked) < k or (len(ranked) > k and counts[ranked[k - 1]] == counts[ranked[k]]):
        raise ValueError(f"the top {k} words are not uniquely determined")
    return " ".join(ranked[:k])
