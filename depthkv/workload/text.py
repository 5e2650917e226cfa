"""The text format shared by the built-in tasks: filler, keys, values, questions, layout.

The format is compact and regular so that tiny byte-level models can learn it:

- one item per line; lines are joined by ``"\\n"`` and the context has no trailing newline;
- filler lines are short sentences of lowercase words from ``FILLER_WORDS`` ending in ``"."``;
- a key-value record is ``key:value`` (4 lowercase letters, a colon, 4 or 5 digits);
- a variable assignment is ``name=value`` or ``name=other`` (see ``variables.py``);
- questions start with ``"\\n?"`` and end with ``":"``; the answer follows with no space:

  ``"\\n?abcd:"``             values of key ``abcd``, in order of appearance, space-separated
  ``"\\n?abcd efgh:"``        values of each key in query order, space-separated
  ``"\\n?=4821:"``            variables that hold 4821, in order of assignment
  ``"\\n?top3:"``             the 3 most frequent words, most frequent first

Context lengths are in characters (== tokens for the byte tokenizer on this ASCII text).
"""

from __future__ import annotations

import random
import string

KEY_LENGTH = 4
VALUE_DIGITS = 4

FILLER_WORDS: dict[int, tuple[str, ...]] = {
    1: ("a",),
    2: ("is", "it", "we", "on", "up", "in", "so"),
    3: ("the", "sun", "dog", "cat", "red", "big", "sky", "sea", "ran", "sat", "and", "old"),
    4: ("tree", "blue", "warm", "bird", "fish", "runs", "very", "calm", "rain", "wind", "hill"),
    5: ("green", "water", "grass", "small", "light", "stone", "river", "cloud"),
}
_ALL_FILLER = tuple(w for words in FILLER_WORDS.values() for w in words)
_MAX_WORD = max(FILLER_WORDS)
_RESERVED = frozenset(_ALL_FILLER) | {"top"}


def key_question(keys: list[str]) -> str:
    """Question asking for the values of ``keys`` (one or several)."""
    return "\n?" + " ".join(keys) + ":"


def value_question(value: str) -> str:
    """Question asking which variables hold ``value``."""
    return f"\n?={value}:"


def top_question(k: int) -> str:
    """Question asking for the ``k`` most frequent words."""
    return f"\n?top{k}:"


def random_word(rng: random.Random, taken: set[str], length: int = KEY_LENGTH) -> str:
    """A fresh lowercase word not in ``taken`` nor a filler word; added to ``taken``."""
    while True:
        word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
        if word not in taken and word not in _RESERVED:
            taken.add(word)
            return word


def random_value(rng: random.Random, taken: set[str] | None = None, digits: int = VALUE_DIGITS) -> str:
    """A decimal number of exactly ``digits`` digits (no leading zero); unique if ``taken`` given."""
    while True:
        value = str(rng.randint(10 ** (digits - 1), 10**digits - 1))
        if taken is None:
            return value
        if value not in taken:
            taken.add(value)
            return value


def filler_sentence(rng: random.Random) -> str:
    """A short sentence of 3 to 6 filler words, e.g. ``"the sun is warm."``."""
    return " ".join(rng.choice(_ALL_FILLER) for _ in range(rng.randint(3, 6))) + "."


def exact_sentence(rng: random.Random, length: int) -> str:
    """A filler sentence of exactly ``length`` characters (``length >= 2``), final ``"."`` included."""
    if length < 2:
        raise ValueError(f"a sentence needs at least 2 characters, got {length}")
    room = length - 1  # characters for words and the spaces between them
    words = []
    while room > _MAX_WORD:
        # Leave room for a space and at least a one-letter word after this one.
        size = rng.randint(2, min(_MAX_WORD, room - 2))
        words.append(rng.choice(FILLER_WORDS[size]))
        room -= size + 1
    words.append(rng.choice(FILLER_WORDS[room]))
    return " ".join(words) + "."


def filler_lines(rng: random.Random, budget: int) -> list[str]:
    """Filler lines whose total cost ``sum(len(line) + 1)`` is exactly ``budget``.

    A budget of 1 or 2 cannot hold a line (the shortest is ``"a."`` plus its newline); those
    characters stay unused and the result is empty.
    """
    lines: list[str] = []
    remaining = budget
    while remaining >= 3:
        sentence = filler_sentence(rng)
        if remaining - (len(sentence) + 1) >= 3:
            lines.append(sentence)
            remaining -= len(sentence) + 1
        else:
            lines.append(exact_sentence(rng, remaining - 1))
            remaining = 0
    return lines


def records_cost(records: list[str]) -> int:
    """Characters ``records`` take as lines of a context (each line plus its newline)."""
    return sum(len(r) + 1 for r in records)


def scatter(rng: random.Random, records: list[str], context_length: int, task: str) -> str:
    """Insert ``records`` (keeping their order) at random depths of filler text.

    The result has ``context_length`` characters, or 1-2 fewer when the filler budget cannot hold
    a line. Raises ``ValueError`` when the records alone do not fit.
    """
    budget = context_length + 1 - records_cost(records)
    if budget < 0:
        raise ValueError(
            f"context_length={context_length} is too short for {task}: its records alone take "
            f"{records_cost(records) - 1} characters"
        )
    filler = filler_lines(rng, budget)
    slots = sorted(rng.randint(0, len(filler)) for _ in records)
    lines: list[str] = []
    pending = list(zip(slots, records))
    position = 0
    for index, line in enumerate(filler):
        while position < len(pending) and pending[position][0] == index:
            lines.append(pending[position][1])
            position += 1
        lines.append(line)
    lines.extend(record for _, record in pending[position:])
    return "\n".join(lines)


def depths(context: str, records: list[str]) -> list[float]:
    """Relative position (0 = start, 1 = end) of each record line in ``context``."""
    result = []
    start = 0
    for record in records:
        at = ("\n" + context + "\n").index("\n" + record + "\n", start)
        result.append(round(at / max(1, len(context)), 4))
        start = at + 1
    return result
