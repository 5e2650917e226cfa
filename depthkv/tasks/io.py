"""JSONL storage of examples: one JSON object per line."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from depthkv.tasks.example import Example


def save_jsonl(examples: Iterable[Example], path: str | os.PathLike) -> None:
    """Write ``examples`` as JSONL (``Example.to_dict`` per line, UTF-8) atomically.

    The lines go to a temporary file in the same directory, which then replaces ``path`` with
    ``os.replace``: readers see the old file or the complete new one, never a partial one.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for example in examples:
                f.write(json.dumps(example.to_dict(), ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_jsonl(path: str | os.PathLike) -> list[Example]:
    """Read examples from a JSONL file; blank lines are skipped.

    Each line is an object with string fields ``context``, ``question``, ``answer``, an optional
    ``task`` (default ``"custom"``) and optional ``metadata`` object; any other key is added to
    metadata. Raises ``ValueError`` with the path and line number for bad JSON, a missing field or a wrong
    type.
    """
    path = Path(path)
    return parse_jsonl(path.read_bytes().decode("utf-8-sig"), source=str(path))


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
