"""Which kernel implementations exist, which are available where, and the explicit switch.

Three implementations of one kernel API (:mod:`depthkv.kernels.reference` defines the semantics):

* ``"reference"`` — pure PyTorch, any device; defines correctness.
* ``"triton"`` — Triton kernels (``triton_prefill``, ``triton_compact``, ``triton_decode``); CUDA,
  or CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1`` set before they are
  imported — for tests).
* ``"flash"`` — flash-attn's CUDA kernel for the prefill attention (``flash.attention_lse``), with
  the Triton kernels for everything else: flash-attn returns no attention probabilities, and its
  decode kernel needs the valid slots of a buffer to be a prefix, which a compacted buffer's are
  not (empty slots come first).

Nothing is chosen silently: :func:`resolve_impl` takes an explicit name, or ``"auto"`` — flash >
triton > reference on CUDA, reference elsewhere — and logs what ``"auto"`` picked on the
``"depthkv"`` logger. Asking for an implementation that is not available raises ``ValueError``
naming the ones that are. Importing this module imports neither Triton nor flash-attn and does not
initialise CUDA.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import SimpleNamespace

import torch

__all__ = ["IMPLS", "KERNELS", "available_impls", "kernel_table", "resolve_impl"]

IMPLS: tuple[str, ...] = ("reference", "triton", "flash")
KERNELS: tuple[str, ...] = ("attention_lse", "window_scores", "h2o_scores", "compact", "decode_attention")

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


def check_impl_name(impl: str) -> str:
    """``impl`` if it is ``"auto"`` or one of :data:`IMPLS`; else a ``ValueError`` naming them."""
    if impl != "auto" and impl not in IMPLS:
        raise ValueError(f"unknown kernel implementation {impl!r}; choose 'auto' or one of {', '.join(IMPLS)}")
    return impl


def resolve_impl(impl: str, device: str | torch.device | None = None) -> str:
    """Turn ``impl`` (``"auto"`` or one of :data:`IMPLS`) into an available implementation name.

    ``"auto"`` picks flash > triton > reference on CUDA and reference on any other device, and logs
    the choice (INFO on the ``"depthkv"`` logger).

    Raises:
        ValueError: ``impl`` is unknown, or not available on ``device`` (the message names the
            available ones and why ``impl`` is not).
    """
    dev = _as_device(device)
    check_impl_name(impl)
    available = available_impls(dev)
    if impl == "auto":
        order = ("flash", "triton", "reference") if dev.type == "cuda" else ("reference",)
        chosen = next(name for name in order if name in available)
        logger.info("depthkv kernels: impl='auto' on %s -> %r (available: %s)", dev, chosen, ", ".join(available))
        return chosen
    if impl not in available:
        raise ValueError(
            f"kernel implementation {impl!r} is not available on {dev}: {_why_missing(impl, dev)}. "
            f"Available: {', '.join(available)}"
        )
    return impl


def kernel_table(impl: str, device: str | torch.device | None = None) -> SimpleNamespace:
    """The kernel functions of an implementation, after :func:`resolve_impl`.

    Returns a namespace with :data:`KERNELS` (``attention_lse``, ``window_scores``, ``h2o_scores``,
    ``compact``, ``decode_attention``) and ``impl`` (the resolved name). For ``"flash"``,
    ``attention_lse`` comes from :mod:`depthkv.kernels.flash` and the rest from Triton.
    """
    name = resolve_impl(impl, device)
    if name == "reference":
        from depthkv.kernels import reference

        funcs = {kernel: getattr(reference, kernel) for kernel in KERNELS}
    else:
        from depthkv.kernels import triton_compact, triton_decode, triton_prefill

        funcs = {
            "attention_lse": triton_prefill.attention_lse,
            "window_scores": triton_prefill.window_scores,
            "h2o_scores": triton_prefill.h2o_scores,
            "compact": triton_compact.compact,
            "decode_attention": triton_decode.decode_attention,
        }
        if name == "flash":
            from depthkv.kernels import flash

            funcs["attention_lse"] = flash.attention_lse
    return SimpleNamespace(impl=name, **funcs)
