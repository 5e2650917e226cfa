"""Kernels: the attend-and-evict step and the kernels it is built from, one per implementation.

* :mod:`~depthkv.kernels.attention` — reference attention over a layer's slots (the math every path
  shares).
* :mod:`~depthkv.kernels.evict_reference` — the attend-and-evict step in pure PyTorch: it defines
  correctness. :mod:`~depthkv.kernels.evict_fast` — the same step on the fast kernels.
* :mod:`~depthkv.kernels.reference`, :mod:`~depthkv.kernels.triton_prefill`,
  :mod:`~depthkv.kernels.triton_decode`, :mod:`~depthkv.kernels.triton_compact`,
  :mod:`~depthkv.kernels.flash` — the kernel API (``attention_lse``, ``window_scores``,
  ``h2o_scores``, ``compact``, ``decode_attention``) per implementation.
* :mod:`~depthkv.kernels.registry` — which implementations are available where, and the explicit
  switch (:func:`resolve_impl`, :func:`kernel_table`); :mod:`~depthkv.kernels.dispatch` — the one
  entry point :func:`attend_evict`.
* :mod:`~depthkv.kernels.custom_ops` — the step as a ``torch.library`` custom op for compiled graphs.

Importing this package has no side effects: it imports neither Triton nor flash-attn and does not
initialise CUDA; those happen inside the functions that need them.
"""

from depthkv.kernels.buffers import LayerBuffers
from depthkv.kernels.dispatch import attend_evict
from depthkv.kernels.registry import IMPLS, KERNELS, available_impls, kernel_table, resolve_impl

__all__ = ["IMPLS", "KERNELS", "LayerBuffers", "attend_evict", "available_impls", "kernel_table", "resolve_impl"]
