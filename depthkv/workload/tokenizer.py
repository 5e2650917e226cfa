"""A byte-level tokenizer with the parts of the Hugging Face tokenizer API that depthkv uses.

Ids 0..255 are the UTF-8 bytes, then ``<pad>`` = 256, ``<s>`` (bos) = 257, ``</s>`` (eos) = 258:
``vocab_size == len(tokenizer) == 259``. Models often round their embedding table up (e.g. to
320) for speed; ids from 259 up are then unused slots, dropped by ``decode`` when skipping
special tokens and written ``<unused{id}>`` otherwise.

Text is encoded with ``surrogatepass``, so every Python ``str`` (even a lone surrogate) round
trips exactly; decoding replaces only byte sequences that are not valid (e.g. a generation cut in
the middle of a multi-byte character) with U+FFFD.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

CONFIG_NAME = "depthkv_tokenizer.json"
NUM_BYTES = 256


class BatchEncoding(dict):
    """The dict ``ByteTokenizer.__call__`` returns; keys are also attributes, ``.to(device)`` moves
    tensors, like Hugging Face's ``BatchEncoding``."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def to(self, device: Any) -> BatchEncoding:
        return BatchEncoding({k: v.to(device) if hasattr(v, "to") else v for k, v in self.items()})


class ByteTokenizer:
    """UTF-8 bytes as tokens, plus pad/bos/eos. See the module docstring for the id layout.

    ``add_special_tokens=True`` prepends ``<s>`` (as Llama tokenizers do); eos is never added.
    Padding goes on ``padding_side`` (default ``"left"``, what batched generation needs);
    truncation keeps the last ``max_length`` tokens when ``truncation_side == "left"``.
    """

    pad_token = "<pad>"
    bos_token = "<s>"
    eos_token = "</s>"
    unk_token = None
    pad_token_id = NUM_BYTES
    bos_token_id = NUM_BYTES + 1
    eos_token_id = NUM_BYTES + 2
    model_input_names = ("input_ids", "attention_mask")

    def __init__(
        self,
        padding_side: str = "left",
        truncation_side: str = "left",
        model_max_length: int = 1 << 30,
        name_or_path: str = "depthkv-byte",
    ) -> None:
        for name, side in (("padding_side", padding_side), ("truncation_side", truncation_side)):
            if side not in ("left", "right"):
                raise ValueError(f"{name} must be 'left' or 'right', got {side!r}")
        self.padding_side = padding_side
        self.truncation_side = truncation_side
        self.model_max_length = model_max_length
        self.name_or_path = name_or_path

    # -- vocabulary -------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return NUM_BYTES + 3

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def special_tokens(self) -> dict[int, str]:
        return {
            self.pad_token_id: self.pad_token,
            self.bos_token_id: self.bos_token,
            self.eos_token_id: self.eos_token,
        }

    @property
    def all_special_ids(self) -> list[int]:
        return list(self.special_tokens)

    @property
    def all_special_tokens(self) -> list[str]:
        return list(self.special_tokens.values())

    # -- encoding ---------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``: its UTF-8 bytes, after ``<s>`` if ``add_special_tokens``."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        ids = list(text.encode("utf-8", errors="surrogatepass"))
        return [self.bos_token_id, *ids] if add_special_tokens else ids

    def __call__(
        self,
        text: str | Sequence[str],
        add_special_tokens: bool = False,
        return_tensors: str | None = None,
        padding: bool | str = False,
        padding_side: str | None = None,
        truncation: bool = False,
        max_length: int | None = None,
        return_attention_mask: bool = True,
    ) -> BatchEncoding:
        """Encode one text or a batch into ``input_ids`` (and ``attention_mask``).

        ``padding``: ``False`` (none), ``True``/``"longest"`` (to the longest sequence) or
        ``"max_length"`` (to ``max_length``); pad id ``pad_token_id``, mask 0 on padding.
        ``return_tensors``: ``None`` (lists; a single text gives flat lists), ``"pt"`` (torch
        ``int64`` tensors ``[B, S]``) or ``"np"``; a single text then has ``B == 1``. Tensors
        need equal lengths: pad a ragged batch.
        """
        single = isinstance(text, str)
        texts = [text] if single else list(text)
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {side!r}")
        rows = [self.encode(t, add_special_tokens=add_special_tokens) for t in texts]
        if truncation and max_length is not None:
            rows = [self._truncate(row, max_length) for row in rows]
        masks = [[1] * len(row) for row in rows]
        width = self._padded_width(rows, padding, max_length)
        if width is not None:
            rows = [self._pad(row, width, self.pad_token_id, side) for row in rows]
            masks = [self._pad(mask, width, 0, side) for mask in masks]
        out: dict[str, Any] = {"input_ids": rows}
        if return_attention_mask:
            out["attention_mask"] = masks
        if return_tensors is not None:
            out = {k: self._to_tensor(v, return_tensors) for k, v in out.items()}
        elif single:
            out = {k: v[0] for k, v in out.items()}
        return BatchEncoding(out)

    def _truncate(self, row: list[int], max_length: int) -> list[int]:
        if len(row) <= max_length:
            return row
        return row[len(row) - max_length :] if self.truncation_side == "left" else row[:max_length]

    @staticmethod
    def _padded_width(rows: list[list[int]], padding: bool | str, max_length: int | None) -> int | None:
        if padding is False or padding == "do_not_pad":
            return None
        if padding is True or padding == "longest":
            return max((len(r) for r in rows), default=0)
        if padding == "max_length":
            if max_length is None:
                raise ValueError("padding='max_length' needs max_length")
            return max(max_length, *(len(r) for r in rows)) if rows else max_length
        raise ValueError(f"padding must be False, True, 'longest' or 'max_length', got {padding!r}")

    @staticmethod
    def _pad(row: list[int], width: int, value: int, side: str) -> list[int]:
        fill = [value] * (width - len(row))
        return fill + row if side == "left" else row + fill

    @staticmethod
    def _to_tensor(rows: list[list[int]], kind: str) -> Any:
        if len({len(r) for r in rows}) > 1:
            raise ValueError("sequences have different lengths; pass padding=True to return tensors")
        if kind == "pt":
            import torch

            return torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1)
        if kind == "np":
            import numpy as np

            return np.asarray(rows, dtype=np.int64).reshape(len(rows), -1)
        raise ValueError(f"return_tensors must be None, 'pt' or 'np', got {kind!r}")

    # -- decoding ---------------------------------------------------------------------------

    def decode(self, ids: Iterable[int] | Any, skip_special_tokens: bool = True) -> str:
        """Text of ``ids`` (a list, tuple, 1-D tensor or array). Special tokens are dropped, or
        written as ``<pad>``/``<s>``/``</s>`` when ``skip_special_tokens=False``."""
        if hasattr(ids, "tolist"):
            ids = ids.tolist()
        if isinstance(ids, int):
            ids = [ids]
        parts: list[str] = []
        pending = bytearray()
        for token in ids:
            token = int(token)
            if 0 <= token < NUM_BYTES:
                pending.append(token)
                continue
            if token < 0:
                raise ValueError(f"token id {token} is negative")
            if skip_special_tokens:
                continue
            parts.append(_decode_bytes(pending))
            pending.clear()
            parts.append(self.special_tokens.get(token, f"<unused{token}>"))
        parts.append(_decode_bytes(pending))
        return "".join(parts)

    def batch_decode(
        self, sequences: Iterable[Iterable[int]] | Any, skip_special_tokens: bool = True
    ) -> list[str]:
        """``decode`` of each row of ``sequences`` (list of lists, or a 2-D tensor or array)."""
        if hasattr(sequences, "tolist"):
            sequences = sequences.tolist()
        return [self.decode(row, skip_special_tokens=skip_special_tokens) for row in sequences]

    def convert_ids_to_tokens(self, ids: int | Sequence[int]) -> str | list[str]:
        """Token strings: a byte as ``decode`` of it alone, special tokens by name."""
        if isinstance(ids, int):
            return self.decode([ids], skip_special_tokens=False)
        return [self.decode([i], skip_special_tokens=False) for i in ids]

    def get_vocab(self) -> dict[str, int]:
        """Token string to id; bytes 128..255 (not text alone) are named ``<0xHH>``."""
        vocab = {(chr(i) if i < 128 else f"<0x{i:02X}>"): i for i in range(NUM_BYTES)}
        vocab.update({name: i for i, name in self.special_tokens.items()})
        return vocab

    # -- persistence ------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike) -> tuple[str]:
        """Write ``depthkv_tokenizer.json`` into ``save_directory`` (created if missing)."""
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {
            "tokenizer_class": type(self).__name__,
            "version": 1,
            "vocab_size": self.vocab_size,
            "special_tokens": {name: i for i, name in self.special_tokens.items()},
            "padding_side": self.padding_side,
            "truncation_side": self.truncation_side,
            "model_max_length": self.model_max_length,
        }
        path = directory / CONFIG_NAME
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
        return (str(path),)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, **overrides: Any) -> ByteTokenizer:
        """Load a tokenizer written by ``save_pretrained``; keyword arguments override settings."""
        path = Path(directory) / CONFIG_NAME
        if not path.is_file():
            raise FileNotFoundError(
                f"no {CONFIG_NAME} in {directory}; was it written by ByteTokenizer.save_pretrained?"
            )
        config = json.loads(path.read_text(encoding="utf-8"))
        if config.get("tokenizer_class") != cls.__name__:
            raise ValueError(f"{path} describes a {config.get('tokenizer_class')!r}, not a {cls.__name__}")
        expected = {name: i for i, name in cls().special_tokens.items()}
        if config.get("special_tokens") != expected:
            raise ValueError(f"{path} has special tokens {config.get('special_tokens')}, expected {expected}")
        settings = {
            "padding_side": config.get("padding_side", "left"),
            "truncation_side": config.get("truncation_side", "left"),
            "model_max_length": config.get("model_max_length", 1 << 30),
            "name_or_path": str(directory),
        }
        settings.update(overrides)
        return cls(**settings)

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size}, padding_side={self.padding_side!r})"


def _decode_bytes(data: bytes | bytearray) -> str:
    """UTF-8 text of ``data``; surrogates written by ``encode`` come back, other invalid bytes
    become U+FFFD."""
    if not data:
        return ""
    try:
        return bytes(data).decode("utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return bytes(data).decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return bytes(data).decode("utf-8", errors="replace")
