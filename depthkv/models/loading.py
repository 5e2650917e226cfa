"""``load_model``: a shipped tiny model, a real pretrained model, a GGUF file or a local folder.

Nothing is downloaded: everything loads with ``local_files_only=True``. A real model (see
:data:`~depthkv.models.registry.REAL_MODELS`) or a ``.gguf`` file is converted once into a plain
Hugging Face folder in the cache (:mod:`depthkv.models.cache`) and loaded from there.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

from depthkv.files import CorruptFileError
from depthkv.models.cache import ensure_entry
from depthkv.models.conversion import convert_gguf
from depthkv.models.registry import REAL_MODELS, find_source
from depthkv.models.shipped import MODELS, model_dir
from depthkv.models.source import GGUFSource, gguf_file_source

__all__ = ["gguf_folder", "load_model"]


def _is_gguf(key: str) -> bool:
    return key.lower().endswith(".gguf")


def _entry_key(source: GGUFSource) -> str:
    """A GGUF file's entry: its name and a digest of its absolute path (two files, two entries)."""
    path = str(source.parts[0])
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80]
    return f"{stem}-{hashlib.sha256(path.encode()).hexdigest()[:12]}"


def gguf_folder(name_or_path: str | os.PathLike) -> Path:
    """The cached plain Hugging Face folder of a real model or a ``.gguf`` file, converting it on
    first use (and again when the GGUF changed or the entry is damaged).

    Raises ``ValueError`` naming the install command when the model's package, or ``gguf`` and
    ``accelerate`` (needed to convert), is missing; ``FileNotFoundError`` for a missing file.
    """
    key = os.fspath(name_or_path)
    if key in REAL_MODELS:
        return ensure_entry(key, find_source(key), convert_gguf)
    if _is_gguf(key):
        source = gguf_file_source(key)
        return ensure_entry(_entry_key(source), source, convert_gguf)
    raise ValueError(f"{key!r} is neither a real model ({', '.join(REAL_MODELS)}) nor a .gguf file")


def _unknown(key: str) -> ValueError:
    return ValueError(
        f"{key!r} is not a model name, a .gguf file or a local checkpoint directory; "
        f"shipped models: {', '.join(MODELS)}; real pretrained models: {', '.join(REAL_MODELS)} "
        f"(install commands: {'; '.join(m.install for m in REAL_MODELS.values())})"
    )


def _unreadable(path: Path, exc: BaseException) -> str:
    return (
        f"cannot load the model in {path}: {type(exc).__name__}: {exc}. Are its weights complete (a truncated or "
        "corrupted model.safetensors)? Re-copy or re-download the checkpoint"
    )


def load_model(
    name_or_path: str | os.PathLike,
    device: Any = "cpu",
    dtype: Any = None,
    *,
    device_map: str | dict[str, Any] | None = None,
    offload_folder: str | os.PathLike | None = None,
) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a model name, a ``.gguf`` file or a local checkpoint folder.

    * a shipped tiny model (``MODELS``: ``"tiny-llama"``, ``"tiny-qwen2"``), from the package;
    * a real pretrained model (``REAL_MODELS``: ``"smollm2-135m"``, ``"gemma3-270m"``) or a path
      ending in ``.gguf``: converted once into the cache, then loaded from it (:func:`gguf_folder`);
    * any other existing directory: a local Hugging Face checkpoint.

    The model is an ``AutoModelForCausalLM`` with ``attn_implementation="sdpa"``, moved to
    ``device``, in ``eval()`` mode; ``dtype`` (e.g. ``torch.bfloat16``) casts its weights,
    ``None`` keeps the stored dtype (float32 for a GGUF: its dequantized weights). The tokenizer is
    depthkv's ``ByteTokenizer`` when the folder has its ``depthkv_tokenizer.json``, else
    ``AutoTokenizer`` of the folder. Raises ``ValueError`` for anything else (the message lists
    every model name) and for a real model whose package is missing (it names the install
    command).

    ``device_map`` splits the model over devices instead of moving it to ``device``: accelerate's
    ``"auto"``/``"balanced"``/``"sequential"``, or a dict from module names (``"model.layers.3"``)
    to a device (``"cuda:1"``, ``"cpu"``, or ``"disk"`` to offload to ``offload_folder``), exactly
    as transformers' ``from_pretrained`` takes it. Every depthkv path runs on such a model: each
    layer's cache lives on that layer's execution device (:mod:`depthkv.runtime.devices`).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from depthkv.workload.tokenizer import CONFIG_NAME, ByteTokenizer

    key = os.fspath(name_or_path)
    if key in MODELS:
        path = model_dir(key)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"shipped model {key!r} is missing its files in {path}; reinstall depthkv"
            )
    elif key in REAL_MODELS or _is_gguf(key):
        path = gguf_folder(key)
    elif Path(key).is_dir():
        path = Path(key)
    else:
        raise _unknown(key)
    # never run code shipped with a checkpoint (trust_remote_code), never fetch anything
    kwargs: dict[str, Any] = {"local_files_only": True, "attn_implementation": "sdpa", "trust_remote_code": False}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if device_map is not None:
        kwargs["device_map"] = device_map
        if offload_folder is not None:
            kwargs["offload_folder"] = os.fspath(offload_folder)
    elif offload_folder is not None:
        raise ValueError("offload_folder is where a device_map's 'disk' entries go; give a device_map with it")
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as exc:  # safetensors' own error type, whatever the loader's version calls it
        if "safetensor" not in type(exc).__name__.lower():
            raise
        raise CorruptFileError(_unreadable(path, exc)) from None
    if device_map is None:
        model.to(device)
    model.eval()
    if (path / CONFIG_NAME).is_file():
        tokenizer = ByteTokenizer.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer
