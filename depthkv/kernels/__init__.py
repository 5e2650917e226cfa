"""Attention/eviction kernels and the explicit switch between their implementations.

Three implementations of one API (:mod:`depthkv.kernels.reference` defines the semantics):

* ``"reference"`` — pure PyTorch, any device; defines correctness.
* ``"triton"`` — Triton kernels (``triton_prefill``, ``triton_compact``, ``triton_decode``); CUDA,
  or CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before they are
  imported — for tests).
* ``"flash"`` — flash-attn's CUDA kernels for the attention itself (``flash``), with the Triton
  kernels for scores and compaction (flash-attn returns no attention probabilities).

Nothing is chosen silently: :func:`resolve_impl` takes an explicit name, or ``"auto"`` — flash >
triton > reference on CUDA, reference elsewhere — and logs what ``"auto"`` picked on the
``"depthkv"`` logger. Asking for an implementation that is not available raises ``ValueError``
naming the ones that are.

Importing this package has no side effects: it imports neither Triton nor flash-attn and does not
initialise CUDA; those happen inside the functions that need them.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import SimpleNamespace

import torch

__all__ = ["IMPLS", "available_impls", "ops", "resolve_impl"]

IMPLS: tuple[str, ...] = ("reference", "triton", "flash")
OPS: tuple[str, ...] = ("attention_lse", "window_scores", "h2o_scores", "compact", "decode_attention")

logger = logging.getLogger("depthkv")


def _as_device(device: str | torch.device | None) -> torch.device:
    return torch.device("cpu") if device is None else torch.device(device)


def _imports(module: str) -> bool:
    try:
        importlib.import_module(module)
    except Exception:  # ImportError, or a broken binary extension (OSError, RuntimeError)
        return False
    return True


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def available_impls(device: str | torch.device | None = None) -> list[str]:
    """The implementations usable for tensors on ``device`` (default CPU), in :data:`IMPLS` order.

    ``reference`` always; ``triton`` when ``triton`` imports and the device is CUDA or
    ``TRITON_INTERPRET=1``; ``flash`` when the device is CUDA and ``flash_attn`` imports.
    """
    dev = _as_device(device)
    found = ["reference"]
    if (dev.type == "cuda" or _interpreting()) and _imports("triton"):
        found.append("triton")
    if dev.type == "cuda" and _imports("flash_attn"):
        found.append("flash")
    return found


def _why_missing(impl: str, dev: torch.device) -> str:
    if impl == "triton":
        if dev.type != "cuda" and not _interpreting():
            return f"Triton kernels need a CUDA device (got {dev}; TRITON_INTERPRET=1 runs them on the CPU, for tests)"
        return "the 'triton' package does not import (pip install 'depthkv[triton]')"
    if dev.type != "cuda":
        return f"flash-attn needs a CUDA device (got {dev})"
    return "the 'flash_attn' package does not import (pip install 'depthkv[flash]')"


def resolve_impl(impl: str, device: str | torch.device | None = None) -> str:
    """Turn ``impl`` (``"auto"`` or one of :data:`IMPLS`) into an available implementation name.

    ``"auto"`` picks flash > triton > reference on CUDA and reference on any other device, and logs
    the choice (INFO on the ``"depthkv"`` logger).

    Raises:
        ValueError: ``impl`` is unknown, or not available on ``device`` (the message names the
            available ones and why ``impl`` is not).
    """
    dev = _as_device(device)
    if impl == "auto":
        available = available_impls(dev)
        order = ("flash", "triton", "reference") if dev.type == "cuda" else ("reference",)
        chosen = next(name for name in order if name in available)
        logger.info("depthkv kernels: impl='auto' on %s -> %r (available: %s)", dev, chosen, ", ".join(available))
        return chosen
    if impl not in IMPLS:
        raise ValueError(f"unknown kernel implementation {impl!r}; expected 'auto' or one of {', '.join(IMPLS)}")
    available = available_impls(dev)
    if impl not in available:
        raise ValueError(
            f"kernel implementation {impl!r} is not available on {dev}: {_why_missing(impl, dev)}. "
            f"Available: {', '.join(available)}"
        )
    return impl


def ops(impl: str, device: str | torch.device | None = None) -> SimpleNamespace:
    """The kernel functions of an implementation, after :func:`resolve_impl`.

    Returns a namespace with :data:`OPS` (``attention_lse``, ``window_scores``, ``h2o_scores``,
    ``compact``, ``decode_attention``) and ``impl`` (the resolved name). For ``"flash"``, the
    attention functions come from :mod:`depthkv.kernels.flash` and the rest from Triton.
    """
    name = resolve_impl(impl, device)
    if name == "reference":
        from . import reference as ref

        funcs = {op: getattr(ref, op) for op in OPS}
    else:
        from . import triton_compact, triton_decode, triton_prefill

        funcs = {
            "attention_lse": triton_prefill.attention_lse,
            "window_scores": triton_prefill.window_scores,
            "h2o_scores": triton_prefill.h2o_scores,
            "compact": triton_compact.compact,
            "decode_attention": triton_decode.decode_attention,
        }
        if name == "flash":
            from . import flash

            funcs["attention_lse"] = flash.attention_lse
            funcs["decode_attention"] = flash.decode_attention
    return SimpleNamespace(impl=name, **funcs)
