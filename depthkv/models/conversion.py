"""A GGUF file into a plain Hugging Face folder: dequantized float32 weights and the tokenizer.

transformers reads GGUF (``from_pretrained(folder, gguf_file=name)``, with the ``gguf`` package)
and dequantizes every tensor to float32, but refuses ``save_pretrained`` on the model it loaded
that way. So the weights move into a plain model built from the same config (without its
``quantization_config``; built on the ``meta`` device, so nothing is initialised for nothing), which
saves as usual. Architectures and their quirks (Gemma's norm weights stored as ``1 + w``, Llama's
permuted query and key rows) are transformers' business; the loaded config is saved as it is.
"""

from __future__ import annotations

from pathlib import Path

from depthkv.files import CorruptFileError
from depthkv.models.registry import require_gguf

__all__ = ["convert_gguf"]


def convert_gguf(gguf: Path, out: Path) -> None:
    """Write the float32 model of ``gguf`` and its tokenizer into folder ``out``.

    Writes ``config.json``, ``generation_config.json``, ``model.safetensors`` and the tokenizer
    files (``tokenizer.json``, ``tokenizer_config.json``, …). Raises ``ValueError`` naming
    ``pip install 'depthkv[gguf]'`` when ``gguf`` or ``accelerate`` is missing.
    """
    require_gguf()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = Path(gguf)
    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    try:
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    except (ValueError, KeyError, IndexError, OSError, EOFError) as exc:
        raise CorruptFileError(
            f"{gguf} cannot be read as a GGUF model ({type(exc).__name__}: {exc}); the file is probably truncated "
            f"or damaged ({gguf.stat().st_size:,} bytes): re-install its package or re-download it"
        ) from None
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict(), strict=True, assign=True)
    plain.tie_weights()
    plain.generation_config = loaded.generation_config
    plain.save_pretrained(out)
    del loaded, plain
    AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(out)
