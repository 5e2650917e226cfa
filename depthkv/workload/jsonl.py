"""JSONL storage of examples: one JSON object per line."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from depthkv.files import atomic_write_jsonl
from depthkv.workload.example import Example


def save_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> Path:
    """Write ``examples`` as JSONL (``Example.to_dict`` per line, UTF-8) atomically
    (:func:`depthkv.files.atomic_file`); returns the path."""
    return atomic_write_jsonl(path, (example.to_dict() for example in examples))


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read examples from a JSONL file; blank lines are skipped.

    Each line is an object with string fields ``context``, ``question``, ``answer``, an optional
    ``task`` (default ``"custom"``) and optional ``metadata`` object; any other key is added to
    metadata (``"scorer": "exact"`` or ``"contains"`` and ``"multi_item": true`` choose how the
    example is scored: :mod:`~depthkv.workload.scoring`). Raises ``ValueError`` with the path and
    line number for bytes that are not UTF-8, bad JSON, a missing, mistyped or empty field.
    """
    path = Path(path)
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ValueError(
            f"{path}: line {line}: not valid UTF-8 (byte {raw[err.start]:#04x} at offset {err.start}); "
            "save the file as UTF-8"
        ) from None
    return parse_jsonl(text, source=str(path))


def parse_jsonl(text: str, source: str = "<jsonl>") -> list[Example]:
    """Examples from JSONL ``text``; errors name ``source`` and the line (see ``load_jsonl``)."""
    examples = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(
                f"{source}: line {number}: invalid JSON: {err.msg} (column {err.colno})"
            ) from None
        try:
            examples.append(Example.from_dict(data))
        except ValueError as err:
            raise ValueError(f"{source}: line {number}: {err}") from None
    return examples
