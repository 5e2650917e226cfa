"""The cache of converted GGUF models: one plain Hugging Face folder per model, checked on every load.

Converting a GGUF (dequantizing it, building the tokenizer) takes tens of seconds on a small CPU;
loading the result as a plain folder takes seconds. So the first load converts once and keeps the
result as an *entry*: ``<cache>/models/<key>/`` with ``config.json``, ``generation_config.json``,
``model.safetensors``, the tokenizer files and ``depthkv_source.json``, the record of what the
entry was built from (the GGUF's path, sha256 and size, the versions of transformers, gguf and
torch, the time the conversion took) and of every file in the entry. ``<cache>`` is
``$DEPTHKV_CACHE`` if set, else ``~/.cache/depthkv``.

**Checks on every load.** Each file is known to the record by its size, modification time
(nanoseconds) and sha256. When a file's size and time are the recorded ones, its recorded sha256
is trusted and nothing is read; when they differ (a reinstalled package, a copied cache, a
``touch``), the file is hashed again: the same content updates the record and the entry is used,
other content is a changed GGUF (the entry is rebuilt from it) or a damaged entry (rebuilt too,
with a warning). A GGUF that its package promises a digest for must also match that digest. What
this does not catch: a file rewritten in place with the same size and its old time restored.

**Writes are atomic.** An entry is built in a temporary folder beside it (``.<key>.build-*``),
every file fsynced, the record written last, and renamed into place; a crash leaves no half
entry, and its leftovers are removed by the next build. A build holds a lock file
(``.<key>.lock``, POSIX ``flock``), so two processes converting the same model at once do the
work once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from depthkv.files import CorruptFileError, atomic_write_json, read_json
from depthkv.models.source import GGUFSource

__all__ = ["CACHE_ENV", "RECORD", "cache_root", "ensure_entry", "entry_dir", "sha256_files"]

log = logging.getLogger("depthkv")

CACHE_ENV = "DEPTHKV_CACHE"
"""The environment variable that names the cache folder (default ``~/.cache/depthkv``)."""

RECORD = "depthkv_source.json"
"""The record file in each entry."""

FORMAT = 2
"""The record's format, and the version of the conversion: an entry of another format is rebuilt.
Raise it whenever the conversion would write something different (2: entries converted while
Gemma 3's sliding window could come out as the config default, 4096, are rebuilt)."""

_REQUIRED = ("config.json", "model.safetensors")


def cache_root() -> Path:
    """``$DEPTHKV_CACHE`` if set (and not empty), else ``~/.cache/depthkv``."""
    value = os.environ.get(CACHE_ENV)
    return Path(value).expanduser() if value else Path.home() / ".cache" / "depthkv"


def entry_dir(key: str) -> Path:
    """The folder of entry ``key`` (it may not exist)."""
    return cache_root() / "models" / key


def sha256_files(paths: Iterable[Path]) -> str:
    """The sha256 of the files' bytes read one after the other (one file: its own sha256)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as fh:
            while block := fh.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _source_stamps(source: GGUFSource) -> list[dict[str, Any]]:
    return [{"path": str(p), **_stamp(p)} for p in source.parts]


# --------------------------------------------------------------------------------------------
# checking an entry


class _Stale(Exception):
    """The entry cannot be used; the message says why. ``damaged``: the entry itself is broken."""

    def __init__(self, reason: str, damaged: bool = False):
        super().__init__(reason)
        self.damaged = damaged


def _check_source(record: dict[str, Any], source: GGUFSource) -> bool:
    """Raise ``_Stale`` if the source's content is not the recorded one; True if the record's
    stamps must be refreshed (same content, new sizes/times or paths)."""
    recorded = record["source"]
    if source.expected_sha256 is not None and recorded["sha256"] != source.expected_sha256:
        raise _Stale(f"the installed package now ships another GGUF (sha256 {source.expected_sha256[:12]}…)")
    if _source_stamps(source) == recorded["parts"]:
        return False
    digest = sha256_files(source.parts)
    if digest != recorded["sha256"]:
        raise _Stale(
            f"the GGUF changed: {source.label} has sha256 {digest[:12]}…, "
            f"the entry was built from {recorded['sha256'][:12]}…"
        )
    return True


def _check_files(entry: Path, record: dict[str, Any]) -> bool:
    """Raise ``_Stale(damaged=True)`` if an entry file is missing or changed; True if stamps changed."""
    files = record["files"]
    absent = [name for name in _REQUIRED if name not in files]
    if absent:
        raise _Stale(f"the record lists no {', '.join(absent)}", damaged=True)
    refresh = False
    for name, known in files.items():
        path = entry / name
        if not path.is_file():
            raise _Stale(f"{name} is missing", damaged=True)
        stamp = _stamp(path)
        if stamp == {"size": known["size"], "mtime_ns": known["mtime_ns"]}:
            continue
        if stamp["size"] != known["size"] or sha256_files([path]) != known["sha256"]:
            raise _Stale(f"{name} is not the file the entry was built with (truncated or changed)", damaged=True)
        known.update(stamp)
        refresh = True
    return refresh


def _check(entry: Path, source: GGUFSource) -> None:
    """Raise ``_Stale`` unless ``entry`` is complete, undamaged and built from ``source``'s bytes."""
    if not entry.is_dir():
        raise _Stale("no entry yet")
    try:
        record = read_json(entry / RECORD, "cache record")
    except FileNotFoundError:
        raise _Stale(f"{RECORD} is missing", damaged=True) from None
    except CorruptFileError as exc:
        raise _Stale(str(exc), damaged=True) from None
    if record.get("format") != FORMAT:
        raise _Stale(f"the record has format {record.get('format')!r}, this depthkv writes {FORMAT}")
    try:
        refresh = _check_source(record, source)
        refresh = _check_files(entry, record) or refresh
    except (KeyError, TypeError) as exc:
        raise _Stale(f"the record is incomplete ({exc!r})", damaged=True) from None
    if refresh:
        record["source"]["parts"] = _source_stamps(source)
        atomic_write_json(entry / RECORD, record)


# --------------------------------------------------------------------------------------------
# building an entry


@contextmanager
def _locked(folder: Path, key: str) -> Iterator[bool]:
    """Hold ``folder/.<key>.lock`` exclusively; yields False where there is no ``flock``."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock, and no clean-up of other builds' leftovers
        yield False
        return
    fd = os.open(folder / f".{key}.lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for name in ("transformers", "gguf", "accelerate", "torch", "depthkv"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _build(entry: Path, key: str, source: GGUFSource, convert: Callable[[Path, Path], None]) -> None:
    """Convert ``source`` into a temporary folder beside ``entry`` and rename it into place."""
    folder = entry.parent
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.build-", dir=folder))
    try:
        start = time.perf_counter()
        stamps = _source_stamps(source)
        digest = sha256_files(source.parts)
        if source.expected_sha256 is not None and digest != source.expected_sha256:
            raise ValueError(
                f"GGUF {source.label} has sha256 {digest}, its package promises {source.expected_sha256}; "
                f"{source.reinstall}"
            )
        work = tmp / ".source"
        work.mkdir()
        convert(source.materialize(work), tmp)
        shutil.rmtree(work)
        if _source_stamps(source) != stamps:
            raise RuntimeError(f"{source.label} changed while it was converted; load it again")
        # mkdtemp makes the folder 0700 and some writers make files 0600: give them the modes a plain
        # mkdir and open() would, so that a shared cache is readable as usual.
        mask = _umask()
        files: dict[str, dict[str, Any]] = {}
        for path in sorted(p for p in tmp.rglob("*") if p.is_file()):
            os.chmod(path, 0o666 & ~mask)
            _fsync(path)
            files[path.relative_to(tmp).as_posix()] = {**_stamp(path), "sha256": sha256_files([path])}
        record = {
            "format": FORMAT,
            "key": key,
            "source": {
                "gguf": source.label,
                "name": source.name,
                "sha256": digest,
                "size": sum(s["size"] for s in stamps),
                "parts": stamps,
            },
            "files": files,
            "size": sum(f["size"] for f in files.values()),
            "dtype": "float32",
            "versions": _versions(),
            "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "convert_seconds": round(time.perf_counter() - start, 1),
        }
        atomic_write_json(tmp / RECORD, record)
        os.chmod(tmp, 0o777 & ~mask)
        _fsync(tmp)
        old = None
        if entry.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{key}.old-", dir=folder))
            os.replace(entry, old / key)
        os.rename(tmp, entry)
        _fsync(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_entry(key: str, source: GGUFSource, convert: Callable[[Path, Path], None]) -> Path:
    """The folder of entry ``key``, built from ``source`` first if it is absent, stale or damaged.

    ``convert(gguf_path, folder)`` writes the plain model and tokenizer files into ``folder``.
    A damaged entry (a file missing, truncated or changed, an unreadable record) is rebuilt with
    a warning; a changed GGUF rebuilds it with an info message.
    """
    entry = entry_dir(key)
    try:
        _check(entry, source)  # the usual case: no lock, nothing read but the record and stat()s
        return entry
    except _Stale:
        pass
    entry.parent.mkdir(parents=True, exist_ok=True)
    with _locked(entry.parent, key) as exclusive:
        try:
            _check(entry, source)  # another process may have built it while this one waited
            return entry
        except _Stale as stale:
            (log.warning if stale.damaged else log.info)(
                "depthkv: building cache entry %s from %s (%s)", entry, source.label, stale
            )
        if exclusive:  # no other build of this key runs: what builds left behind is garbage
            for leftover in [*entry.parent.glob(f".{key}.build-*"), *entry.parent.glob(f".{key}.old-*")]:
                shutil.rmtree(leftover, ignore_errors=True)
        _build(entry, key, source, convert)
    return entry
