"""Optional flash-attn wrapper (CUDA only): prefill attention that also returns the log-sum-exp.

flash-attn (Dao et al., https://arxiv.org/abs/2205.14135, ``pip install 'depthkv[flash]'``) is
imported lazily inside the functions, so this module imports fine without it; :func:`available`
says whether it can be used. Semantics are those of :mod:`depthkv.kernels.reference`:

* :func:`attention_lse` — ``flash_attn_func(..., return_attn_probs=True)`` returns the output and
  the per-query LSE; flash-attn >= 2.1's causal mask is bottom-right aligned like ours.

Decode does not use flash-attn: ``flash_attn_with_kvcache`` knows only a valid *prefix length* per
batch row, while a compacted depthkv buffer keeps its empty slots first and its valid slots in any
order, so decode runs the Triton kernel (:mod:`depthkv.kernels.triton_decode`) under
``impl="flash"`` too.

Only fp16/bf16 and head dims flash-attn supports (<= 256, multiple of 8). Layout: flash-attn
takes ``[B, S, H, D]``; our ``[B, H, S, D]`` tensors are passed as transposed views (no copy;
flash-attn needs only the last dim contiguous) and outputs come back as ``[B, H, S, D]`` views.
"""

from __future__ import annotations

import torch

from . import reference as _ref

__all__ = ["attention_lse", "available"]


def available() -> bool:
    """True when a CUDA device is present and ``flash_attn`` imports."""
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except Exception:  # ImportError, or a binary built against another torch (OSError/RuntimeError)
        return False
    return True


def _check(q: torch.Tensor) -> None:
    if not available():
        raise ValueError("impl='flash' needs CUDA and the flash_attn package (pip install 'depthkv[flash]')")
    if q.device.type != "cuda":
        raise ValueError(f"flash-attn kernels need CUDA tensors, got {q.device}")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"flash-attn supports fp16 and bf16 only, got {q.dtype}; use impl='triton' for fp32")
    d = q.shape[-1]
    if d > 256 or d % 8:
        raise ValueError(f"flash-attn supports head dims <= 256 that are multiples of 8, got {d}")


def _last_dim_contiguous(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 else t.contiguous()


def attention_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """flash-attn version of :func:`depthkv.kernels.reference.attention_lse`.

    Args:
        q: ``[B, H, Sq, D]`` fp16/bf16 CUDA. k, v: ``[B, Hkv, Sk, D]`` (``H % Hkv == 0``).
        scale: softmax scale. causal: bottom-right aligned causal mask.

    Returns:
        ``(out [B, H, Sq, D], lse [B, H, Sq] fp32)``.
    """
    b, h, hkv, sq, sk, d = _ref.check_qkv(q, k, v)
    _ref.check_causal(sq, sk, causal)
    _check(q)
    from flash_attn import flash_attn_func

    qt, kt, vt = (_last_dim_contiguous(t.transpose(1, 2)) for t in (q, k, v))
    res = flash_attn_func(qt, kt, vt, dropout_p=0.0, softmax_scale=float(scale), causal=causal, return_attn_probs=True)
    out, lse = res[0], res[1]
    # Some flash-attn 2.x releases round the LSE's query axis up to a multiple of 128.
    return out.transpose(1, 2), lse[..., :sq].float()
