"""The embedded tiny models and the loader for them and for local checkpoints.

``load_model("tiny-llama")`` loads a model shipped in this package (folder
``depthkv/models/<name>/``: ``config.json``, ``model.safetensors``, the tokenizer file and a
``README.md`` model card with its measured accuracy); any other string is a local Hugging Face
checkpoint directory. Nothing is downloaded: everything loads with ``local_files_only=True``.
How the shipped models were trained: each folder's ``training.json`` and model card, and the
training code in the repository's ``training/`` folder (not part of the installed package).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

MODELS: list[str] = ["tiny-llama", "tiny-qwen2"]

_HERE = Path(__file__).resolve().parent


def model_dir(name: str) -> Path:
    """The package folder of shipped model ``name`` (raises ``ValueError`` for other names)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; shipped models: {', '.join(MODELS)}")
    return _HERE / name


def load_model(name_or_path: str | os.PathLike, device: Any = "cpu", dtype: Any = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of a shipped model name (see ``MODELS``) or a local checkpoint folder.

    The model is an ``AutoModelForCausalLM`` with ``attn_implementation="sdpa"``, moved to
    ``device``, in ``eval()`` mode; ``dtype`` (e.g. ``torch.bfloat16``) casts its weights,
    ``None`` keeps the stored dtype. The tokenizer is depthkv's ``ByteTokenizer`` when the folder
    has its ``depthkv_tokenizer.json``, else ``AutoTokenizer`` of the folder. Raises
    ``ValueError`` for a name that is neither shipped nor an existing directory.
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
    elif Path(key).is_dir():
        path = Path(key)
    else:
        raise ValueError(
            f"{key!r} is neither a shipped model nor a local checkpoint directory; "
            f"shipped models: {', '.join(MODELS)}"
        )
    kwargs: dict[str, Any] = {"local_files_only": True, "attn_implementation": "sdpa"}
    if dtype is not None:
        kwargs["dtype"] = dtype
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    model.to(device)
    model.eval()
    if (path / CONFIG_NAME).is_file():
        tokenizer = ByteTokenizer.from_pretrained(path)
    else:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model, tokenizer


__all__ = ["MODELS", "load_model", "model_dir"]
