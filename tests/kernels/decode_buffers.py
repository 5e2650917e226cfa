"""Buffers and masks shared by the decode-step tests (reference and Triton)."""

from __future__ import annotations

import torch

from depthkv.kernels import LayerBuffers


def new_buffers(slots: int, b: int, hkv: int, d: int, dtype=torch.float32, device="cpu") -> LayerBuffers:
    """Empty buffers: zero K/V/scores, every position -1, ``seen`` 0."""
    return LayerBuffers(
        torch.zeros(b, hkv, slots, d, dtype=dtype, device=device),
        torch.zeros(b, hkv, slots, d, dtype=dtype, device=device),
        torch.full((b, hkv, slots), -1, dtype=torch.long, device=device),
        torch.zeros(b, hkv, slots, device=device),
        torch.zeros((), dtype=torch.long, device=device),
    )


def clone(bufs: LayerBuffers) -> LayerBuffers:
    return LayerBuffers(*(t.clone() for t in bufs.tensors()))


def padding_mask(pads: list[int], length: int, device="cpu") -> torch.Tensor:
    """bool ``[B, 1, 1, length]``: row ``b`` has ``pads[b]`` left-padding tokens."""
    cols = torch.arange(length)
    return (cols[None, :] >= torch.tensor(pads)[:, None])[:, None, None, :].to(device)


def causal_padding_mask(pads: list[int], m: int, length: int, device="cpu") -> torch.Tensor:
    """bool ``[B, 1, m, length]``: the last ``m`` queries, causal, with left padding."""
    cols = torch.arange(length)
    rows = torch.arange(length - m, length)
    causal = (cols[None, :] <= rows[:, None]).to(device)
    return causal[None, None] & padding_mask(pads, length, device)
