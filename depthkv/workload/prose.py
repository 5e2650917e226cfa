"""Natural English prose for the natural-text tasks, read at run time from the Python installation.

The text is not copied into depthkv: it is the language reference and library documentation that
every CPython ships as ``pydoc_data.topics.topics`` (the text behind ``help("assignment")``), a
dict of long English sections. :func:`prose_corpus` turns it into a list of sentences:

1. topics in sorted order, each cut into paragraphs at blank lines;
2. a paragraph is kept if it is flowing text: every line after the first is indented like the
   first (after a bullet such as ``*`` or ``1.``), and no line is a heading underline or a table
   rule, so grammar productions, code examples (whose lines are indented unevenly) and tables
   drop out;
3. its lines are joined, typographic quotes become ASCII ones, ``*emphasis*`` loses its stars,
   and it is split into sentences after ``.``, ``!`` or ``?`` followed by a capital or a quote;
4. a sentence is kept if it is ASCII, has 6-60 words, starts with a capital (or a quote), ends
   with ``"."``, contains no digit (the tasks' answers are numbers), none of the reserved phrases
   the tasks write (``magic number``, ``works at``, ``located in``, ``VAR``), and, outside short
   double-quoted names such as ``"__init__()"`` or ``"async for"``, none of the characters of code
   (``= < > { } [ ] | \\ @ # $ % ^ ~ ` _ *``, ``name(``, ``()``, ``a.b``, ``...``);
5. repeated sentences are kept once.

The same Python installation always gives the same sentences; their sha256 (with
:data:`PROSE_VERSION`, the version of these rules) and the Python version are the corpus's
``source``, which every natural workload records, so a workload made on another Python version
(whose documentation differs) is recognised as different.
"""

from __future__ import annotations

import functools
import hashlib
import platform
import re
from dataclasses import dataclass, field

# Version of the extraction rules above: bump it when they change, so recorded digests differ.
PROSE_VERSION = 1
SOURCE_NAME = "pydoc_data.topics"

# Phrases the task sentences use; a filler sentence with one of them could be mistaken for a fact.
RESERVED_PHRASES = ("magic number", "works at", "located in", "var")

_RULE = re.compile(r"^\s*(?:[*=\-~^+#]{3,}|\+[-=+]*\+|\|.*\|)\s*$")
_BULLET = re.compile(r"^(\s*)(?:[*\-+]|\d+\.|\(\d+\))\s+")
_SENTENCE_END = re.compile(r'(?<=[.!?])\s+(?=[A-Z"])')
_EMPHASIS = re.compile(r"\*(\w[\w\s-]*?)\*")
_QUOTED_NAME = re.compile(r'"[A-Za-z_][A-Za-z_ .]{0,30}(?:\(\))?"')
_CODE = re.compile(r"[=<>{}\[\]|\\@#$%^~`_*\"]|\w\(|\(\)|\w\.\w|::|\.\.\.")
# Each phrase from a word start (``magic numbers`` too); ``var`` as a word (not ``variable``).
_RESERVED = re.compile(r"\b(?:magic number|works at|located in)|\bvar\b", re.IGNORECASE)
_TYPOGRAPHIC = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})
MIN_WORDS, MAX_WORDS = 6, 60


@dataclass(frozen=True)
class ProseCorpus:
    """Sentences of English prose in their source order.

    ``paragraphs[i]`` numbers the source paragraph of ``sentences[i]`` (a filler line breaks
    where it changes); ``source`` says where the text came from (JSON-serialisable; recorded by
    every natural workload).
    """

    sentences: tuple[str, ...]
    paragraphs: tuple[int, ...]
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.sentences:
            raise ValueError("a prose corpus needs at least one sentence")
        if len(self.paragraphs) != len(self.sentences):
            raise ValueError("paragraphs must number every sentence")

    def __len__(self) -> int:
        return len(self.sentences)


def _paragraphs(text: str):
    block: list[str] = []
    for line in [*text.splitlines(), ""]:
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []


def _flowing_text(block: list[str]) -> str | None:
    """The paragraph's text on one line, or ``None`` if it is not flowing prose (rule 2)."""
    if any(_RULE.match(line) for line in block):
        return None
    first = block[0]
    bullet = _BULLET.match(first)
    indent = len(first) - len(first.lstrip())
    if bullet:
        indent += len(bullet.group(0)) - len(bullet.group(1))
    parts = [first[bullet.end() :] if bullet else first.strip()]
    for line in block[1:]:
        if len(line) - len(line.lstrip()) != indent:
            return None
        parts.append(line.strip())
    text = _EMPHASIS.sub(r"\1", " ".join(parts).translate(_TYPOGRAPHIC))
    return re.sub(r"\s+", " ", text).strip()


def is_prose_sentence(sentence: str) -> bool:
    """Whether ``sentence`` passes rule 4 of the module docstring."""
    if not sentence.isascii() or not sentence.endswith(".") or not re.match(r'[A-Z"]', sentence):
        return False
    if not MIN_WORDS <= len(sentence.split()) <= MAX_WORDS:
        return False
    if re.search(r"\d", sentence) or _RESERVED.search(sentence):
        return False
    return not _CODE.search(_QUOTED_NAME.sub("Q", sentence))


def corpus_from_topics(topics: dict[str, str], python_version: str) -> ProseCorpus:
    """The prose sentences of ``topics`` (a dict like ``pydoc_data.topics.topics``), with their
    ``source``: name, Python version, extraction version, counts and the sha256 of the sentences."""
    sentences: list[str] = []
    paragraphs: list[int] = []
    seen: set[str] = set()
    number = 0
    for name in sorted(topics):
        for block in _paragraphs(topics[name]):
            text = _flowing_text(block)
            if text is None:
                continue
            number += 1
            for sentence in _SENTENCE_END.split(text):
                if sentence not in seen and is_prose_sentence(sentence):
                    seen.add(sentence)
                    sentences.append(sentence)
                    paragraphs.append(number)
    digest = hashlib.sha256()
    for sentence, paragraph in zip(sentences, paragraphs):
        digest.update(f"{paragraph}\t{sentence}\n".encode())
    source = {
        "name": SOURCE_NAME,
        "python": python_version,
        "extraction_version": PROSE_VERSION,
        "sentences": len(sentences),
        "characters": sum(len(s) for s in sentences),
        "sha256": digest.hexdigest(),
    }
    return ProseCorpus(tuple(sentences), tuple(paragraphs), source)


@functools.lru_cache(maxsize=1)
def prose_corpus() -> ProseCorpus:
    """The corpus of this Python installation's ``pydoc_data.topics`` (computed once).

    Raises ``RuntimeError`` if the installation lacks ``pydoc_data`` (some distributions strip it).
    """
    try:
        from pydoc_data.topics import topics
    except ImportError as err:  # pragma: no cover - every CPython ships it
        raise RuntimeError(
            "the natural-text tasks read their prose from the Python documentation "
            "(pydoc_data.topics), which this Python installation does not have"
        ) from err
    return corpus_from_topics(topics, platform.python_version())
