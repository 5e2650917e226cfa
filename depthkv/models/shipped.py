"""The tiny models shipped inside the package: their names and folders.

Each folder ``depthkv/models/<name>/`` holds ``config.json``, ``model.safetensors``, the tokenizer
file and a ``README.md`` model card with its measured accuracy. How they were trained: each
folder's ``training.json`` and card, and the training code in the repository's ``training/`` folder
(not part of the installed package).
"""

from __future__ import annotations

from pathlib import Path

MODELS: list[str] = ["tiny-llama", "tiny-qwen2"]

_HERE = Path(__file__).resolve().parent


def model_dir(name: str) -> Path:
    """The package folder of shipped model ``name`` (raises ``ValueError`` for other names)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; shipped models: {', '.join(MODELS)}")
    return _HERE / name


__all__ = ["MODELS", "model_dir"]
