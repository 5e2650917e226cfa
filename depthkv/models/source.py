"""Where a GGUF file's bytes are: one file, or parts whose concatenation is the file.

A :class:`GGUFSource` is what the cache (:mod:`depthkv.models.cache`) checks an entry against and
what the conversion (:mod:`depthkv.models.conversion`) reads: its digest is the sha256 of the parts
read in order, which for one file is the file's own sha256 and for a split GGUF is the sha256 of
the assembled file, so a split GGUF is checked without being assembled.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GGUFSource", "gguf_file_source"]


@dataclass(frozen=True)
class GGUFSource:
    """The bytes of one GGUF file.

    Attributes:
        name: the GGUF's file name (``SmolLM2-135M-Instruct.Q4_1.gguf``).
        parts: the files whose concatenation, in order, is the GGUF (one for a plain file).
        reinstall: what to run when a part is missing or damaged (for messages).
        expected_sha256: the digest the package that ships the parts promises, if it does.
        assemble: writes the GGUF from the parts to the path it is given and returns that path
            (``None``: concatenate the parts).
    """

    name: str
    parts: tuple[Path, ...]
    reinstall: str
    expected_sha256: str | None = None
    assemble: Callable[[Path], Path] | None = None

    @property
    def label(self) -> str:
        """The GGUF's path, or what it is assembled from."""
        if len(self.parts) == 1:
            return str(self.parts[0])
        return f"{self.name}, assembled from {len(self.parts)} parts: " + ", ".join(map(str, self.parts))

    def check_present(self) -> None:
        """Raise ``FileNotFoundError`` naming the missing parts and the command that restores them."""
        missing = [str(p) for p in self.parts if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"GGUF {self.name}: missing {', '.join(missing)}; {self.reinstall}")

    def materialize(self, folder: Path) -> Path:
        """A GGUF file transformers can read: the file itself, or the parts assembled in ``folder``."""
        if len(self.parts) == 1 and self.assemble is None:
            return self.parts[0]
        target = Path(folder) / self.name
        if self.assemble is not None:
            return Path(self.assemble(target))
        with open(target, "wb") as out:
            for part in self.parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        return target


def gguf_file_source(path: str | os.PathLike) -> GGUFSource:
    """The source of a local ``.gguf`` file (raises ``FileNotFoundError`` if there is none)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"GGUF file {path} does not exist")
    return GGUFSource(name=file.name, parts=(file,), reinstall=f"restore {file}")
