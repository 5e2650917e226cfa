"""Files depthkv writes and reads: atomic, so a reader never sees half a file and a crash never
loses the previous one.

Every file depthkv writes (profiles, plans, checkpoints, reports, JSONL workloads, plots) goes
through :func:`atomic_file`: the content is written to a temporary file in the destination's
folder, flushed and fsynced, given the mode a plain ``open()`` would give it (readable by others
under the usual umask), then moved over the destination with ``os.replace``. Parent folders are
created.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from depthkv.faults import failpoint

__all__ = [
    "CorruptFileError",
    "FileLockedError",
    "atomic_file",
    "atomic_write_json",
    "atomic_write_jsonl",
    "atomic_write_text",
    "exclusive_lock",
    "read_json",
    "remove_stale_temporaries",
]


class CorruptFileError(ValueError):
    """A file is truncated, corrupted, or not the kind of file expected."""


class FileLockedError(RuntimeError):
    """Another process holds the lock of a file depthkv is about to write for a long time."""


def _umask() -> int:
    """The process umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike, binary: bool = False) -> Iterator[IO[Any]]:
    """Open a temporary file to write; on a clean exit it replaces ``path`` atomically.

    On an exception the temporary file is removed and ``path`` is left as it was.
    Text files are UTF-8 with ``\\n`` line ends.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if binary:
            fh = os.fdopen(fd, "wb")
        else:
            fh = os.fdopen(fd, "w", encoding="utf-8", newline="\n")
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        failpoint("atomic-write")
        # mkstemp makes the file 0600; give it the mode a plain open() would (0666 minus umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns the path."""
    with atomic_file(path) as fh:
        fh.write(text)
    return Path(path)


def _dumps(data: Any, path: str | os.PathLike, indent: int | None) -> str:
    # JSON files escape non-ASCII (\uXXXX); JSONL lines keep the text as it is, one line per row.
    try:
        return json.dumps(data, indent=indent, allow_nan=False, ensure_ascii=indent is not None)
    except ValueError as exc:
        raise ValueError(f"refusing to write {path}: {exc} (NaN/inf are not valid JSON)") from None


def atomic_write_json(path: str | os.PathLike, data: Any) -> Path:
    """Serialise ``data`` (plain JSON types, finite floats only) and write it atomically."""
    return atomic_write_text(path, _dumps(data, path, indent=1) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    """Write one JSON object per line (UTF-8, finite floats only) atomically."""
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(_dumps(row, path, indent=None) + "\n")
    return Path(path)


class _NonFinite(ValueError):
    pass


def _no_constant(name: str) -> float:
    raise _NonFinite(name)


def _finite_float(text: str) -> float:
    value = float(text)
    if value != value or value in (float("inf"), float("-inf")):
        raise _NonFinite(text)
    return value


def read_json(path: str | os.PathLike, kind: str) -> dict[str, Any]:
    """Read a JSON object, turning every way it can be broken into a :class:`CorruptFileError`.

    ``NaN``, ``Infinity`` and numbers that overflow to infinity (``1e999``) are refused: Python's
    ``json`` accepts them, the JSON standard does not, and no depthkv file holds one.

    Args:
        kind: what the file should be (``"profile"``, ``"plan"``), for the messages.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{kind} file {path} does not exist")
    text = path.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise CorruptFileError(
            f"{kind} file {path} is empty; re-create it (it was probably interrupted while written)"
        )
    try:
        data = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except _NonFinite as exc:
        raise CorruptFileError(
            f"{kind} file {path} contains {exc}, which is not a finite number (JSON has no NaN or infinity); "
            "re-create the file"
        ) from None
    except json.JSONDecodeError as exc:
        raise CorruptFileError(
            f"{kind} file {path} is not valid JSON (truncated or corrupted?): {exc.msg} at line {exc.lineno} "
            f"column {exc.colno}. Restore it or re-create it."
        ) from None
    if not isinstance(data, dict):
        raise CorruptFileError(f"{kind} file {path} holds a JSON {type(data).__name__}, expected an object")
    return data


@contextmanager
def exclusive_lock(path: str | os.PathLike, purpose: str) -> Iterator[None]:
    """Hold an exclusive lock on ``<path>.lock`` for the block; refuse at once if another process holds it.

    For long runs that write one file again and again (a calibration checkpoint): two processes
    pointed at the same file must never interleave their writes. The lock is an advisory ``flock``
    on a sibling ``.lock`` file, released by the operating system when the holder exits, however it
    exits (a SIGKILLed run leaves no stale lock; the ``.lock`` file itself stays, empty of meaning).
    The file records the holder's pid, host and start time for the message. POSIX only (Linux,
    macOS); on network filesystems ``flock`` may not see other hosts.

    Raises:
        FileLockedError: another process holds the lock (the message names it and what to do).
    """
    import fcntl
    import socket
    import time

    lock = Path(f"{os.fspath(path)}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode("utf-8", errors="replace").strip() or "unknown process"
            raise FileLockedError(
                f"{path} is in use: another depthkv process is {purpose} into it ({holder}). Wait for it "
                "to finish, or write to another path"
            ) from None
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {stamp}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporary copies a crashed :func:`atomic_file` left beside ``path``; returns them.

    Only safe while no other process writes ``path``: call it under :func:`exclusive_lock`.
    """
    path = Path(path)
    stale = sorted(path.parent.glob(f".{path.name}.*.tmp")) if path.parent.exists() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale
