"""Answer a generated example from its text alone, by parsing context and question with regexes.

Used by the tests to prove every generated example is answerable from what the model sees; it
never reads ``task`` or ``metadata``. The formats are documented in ``text.py`` (built-in tasks)
and ``facts.py`` (natural tasks).
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

_NEEDLE_QUESTION = re.compile(
    r"\A\n\nQuestion: What is the special magic number for ([a-z]+-[a-z]+) mentioned in the text above\?"
    r"\nAnswer: The special magic number for \1 is\Z"
)
_CITY_QUESTION = re.compile(
    r"\A\n\nQuestion: In which city does ([A-Z][a-z]+ [A-Z][a-z]+) work\?\nAnswer: \1 works in the city of\Z"
)
_HOLDERS_QUESTION = re.compile(
    r"\A\n\nQuestion: Find all variables that are assigned the value (\d+) in the text above\."
    r"\nAnswer: According to the chains of variable assignments in the text above, (\d+) variables are "
    r"assigned the value \1, they are:\Z"
)
_VAR_ASSIGNMENT = re.compile(r"\bVAR ([A-Z]+) = (\d+|VAR [A-Z]+)\.")


def oracle_answer(example: Example) -> str:
    """The reference answer recovered from ``example.context`` and ``example.question``.

    Raises ``ValueError`` if the question is not in a generated task's format or the context
    cannot answer it.
    """
    question = example.question
    if match := _NEEDLE_QUESTION.match(question):
        return _one(
            example.context, rf"\bOne of the special magic numbers for {match.group(1)} is: (\d+)\.", "needle"
        )
    if match := _CITY_QUESTION.match(question):
        person = re.escape(match.group(1))
        company = _one(
            example.context, rf"(?<!\w){person} works at ([A-Z][a-z]+(?: [A-Z][a-z]+)*)\.", "employer"
        )
        return _one(example.context, rf"(?<!\w){re.escape(company)} is located in ([A-Z][a-z]+)\.", "city")
    if match := _HOLDERS_QUESTION.match(question):
        pairs = [
            (name, source.removeprefix("VAR ")) for name, source in _VAR_ASSIGNMENT.findall(example.context)
        ]
        holders = _holders(pairs, match.group(1))
        if len(holders.split()) != int(match.group(2)):
            raise ValueError(f"the question counts {match.group(2)} variables, the context has {holders!r}")
        return holders
    if match := _TOP_QUESTION.match(question):
        return _top_words(example.context, int(match.group(1)))
    if match := _VALUE_QUESTION.match(question):
        return _holders(_ASSIGNMENT.findall(example.context), match.group(1))
    if match := _KEY_QUESTION.match(question):
        return _values(example.context, match.group(1).split())
    raise ValueError(f"question {question!r} is not in the format of a generated task")


def _values(context: str, keys: list[str]) -> str:
    found: dict[str, list[str]] = {}
    for key, value in _RECORD.findall(context):
        found.setdefault(key, []).append(value)
    missing = [k for k in keys if k not in found]
    if missing:
        raise ValueError(f"no record for key(s) {missing} in the context")
    return " ".join(v for k in keys for v in found[k])


def _one(context: str, pattern: str, what: str) -> str:
    """The one match of ``pattern``'s group in ``context``; ``ValueError`` for none or several."""
    found = re.findall(pattern, context)
    if len(found) != 1:
        raise ValueError(f"expected one {what} in the context, found {len(found)}: {found}")
    return found[0]


def _holders(assignments: list[tuple[str, str]], value: str) -> str:
    """Variables holding ``value`` after each ``(name, number or name)`` assignment is resolved,
    in order of assignment."""
    env: dict[str, str] = {}
    holders = []
    for name, source in assignments:
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
