"""What every depthkv artefact file (profile, plan) carries: kind, schema version, provenance."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any, ClassVar

from depthkv.files import CorruptFileError, atomic_write_json, read_json

SCHEMA_VERSION = 1


def now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def depthkv_version() -> str:
    """The installed depthkv version (``0+unknown`` in a source tree that is not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("depthkv")
    except PackageNotFoundError:
        return "0+unknown"


def header(kind: str) -> dict[str, Any]:
    """The first fields of a file of ``kind``."""
    return {"kind": kind, "schema_version": SCHEMA_VERSION}


def check_header(data: dict[str, Any], kind: str, source: str) -> None:
    """Raise :class:`CorruptFileError` unless ``data`` is a ``kind`` file of this schema version."""
    if data.get("kind") != kind:
        raise CorruptFileError(f"{source} is not a {kind} file (its 'kind' is {data.get('kind')!r})")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CorruptFileError(
            f"{source} has schema version {version!r}; this depthkv reads version {SCHEMA_VERSION}. "
            "Re-create it with this version of depthkv."
        )


def require(data: dict[str, Any], keys: list[str], kind: str, source: str) -> None:
    """Raise :class:`CorruptFileError` naming the ``keys`` missing from ``data``."""
    missing = [k for k in keys if k not in data]
    if missing:
        raise CorruptFileError(f"{kind} {source} is missing required fields {missing}")


def _describe(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc}"
    return f"{type(exc).__name__}: {exc}"


class JsonArtefact:
    """Saving and loading of an artefact class with ``to_dict``, ``from_dict(data, source)`` and
    ``check_model(model)``: one JSON file, written atomically, checked when read."""

    KIND: ClassVar[str]  # the file's "kind" field
    NAME: ClassVar[str]  # what the file is called in messages

    def save(self, path: str | os.PathLike) -> Path:
        """Write as JSON atomically (:func:`depthkv.files.atomic_write_json`); returns the path."""
        return atomic_write_json(path, self.to_dict())  # type: ignore[attr-defined]

    @classmethod
    def load(cls, path: str | os.PathLike, model: Any = None) -> Any:
        """Load and validate a file; with ``model`` also check that it belongs to that model (a
        fingerprint mismatch names every differing field)."""
        data = read_json(path, cls.NAME)
        try:
            artefact = cls.from_dict(data, source=str(path))  # type: ignore[attr-defined]
        except CorruptFileError:
            raise
        except (KeyError, IndexError, TypeError, AttributeError, ValueError, ZeroDivisionError, OverflowError) as exc:
            # whatever a damaged field makes the parser trip on: the file is the problem, say which
            raise CorruptFileError(
                f"{cls.NAME} file {path} is malformed ({_describe(exc)}); re-create it with depthkv, or restore it"
            ) from None
        if model is not None:
            artefact.check_model(model)
        return artefact
