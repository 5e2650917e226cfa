"""The torch.compile backend: :func:`backend` (the FX pass, then Inductor) and :func:`compile`.

The pass itself is :mod:`depthkv.passes`; the custom ops it emits are
:mod:`depthkv.kernels.custom_ops`; the fixed buffers the compiled graphs update are
:class:`~depthkv.StaticBudgetCache`.
"""

from depthkv.compiler.dynamo_backend import DepthKVBackend, backend, compile

__all__ = ["DepthKVBackend", "backend", "compile"]
