"""Atomic JSON files: a reader never sees half a file, a crash never loses the previous one."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


class CorruptFileError(ValueError):
    """A JSON file is truncated, corrupted or not the kind of file expected."""


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Serialise ``data`` (plain JSON types, finite floats only) and write it atomically."""
    try:
        text = json.dumps(data, indent=1, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"refusing to write {path}: {exc} (NaN/inf are not valid JSON)") from None
    return atomic_write_text(path, text + "\n")


def read_json(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a JSON object, turning every way it can be broken into a :class:`CorruptFileError`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise CorruptFileError(
            f"{kind} file {path} is empty; re-create it (it was probably interrupted while written)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            f"{kind} file {path} is not valid JSON (truncated or corrupted?): {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}. Restore it or re-create it."
        ) from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{kind} file {path} holds a JSON {type(data).__name__}, expected an object")
    return data
