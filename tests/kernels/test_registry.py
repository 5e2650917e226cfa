"""The explicit switch between kernel implementations: what is available where, what "auto" picks."""

from __future__ import annotations

import logging

import pytest
import torch

from depthkv import kernels
from depthkv.kernels import reference as ref
from depthkv.kernels import registry


def test_switch_on_cpu(monkeypatch, caplog):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert kernels.IMPLS == ("reference", "triton", "flash")
    assert kernels.available_impls("cpu") == ["reference"]
    with caplog.at_level(logging.INFO, logger="depthkv"):
        assert kernels.resolve_impl("auto", "cpu") == "reference"
    assert "'reference'" in caplog.text and "auto" in caplog.text
    assert kernels.resolve_impl("reference", torch.device("cpu")) == "reference"
    with pytest.raises(ValueError, match="not available on cpu.*Available: reference"):
        kernels.resolve_impl("triton", "cpu")
    with pytest.raises(ValueError, match="flash-attn needs a CUDA device.*Available: reference"):
        kernels.resolve_impl("flash", "cpu")
    with pytest.raises(ValueError, match="unknown kernel implementation 'fast'"):
        kernels.resolve_impl("fast", "cpu")
    assert kernels.kernel_table("auto", "cpu").attention_lse is ref.attention_lse


def test_switch_with_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.available_impls("cpu") == ["reference", "triton"]
    assert kernels.resolve_impl("auto", "cpu") == "reference"  # the interpreter is for tests, never auto
    assert kernels.resolve_impl("triton", "cpu") == "triton"
    table = kernels.kernel_table("triton", "cpu")
    assert table.impl == "triton" and set(kernels.KERNELS) <= set(vars(table))


def test_cuda_auto_prefers_flash_then_triton(monkeypatch):
    monkeypatch.setattr(registry, "_imports", lambda name: True)
    assert kernels.available_impls("cuda") == ["reference", "triton", "flash"]
    assert kernels.resolve_impl("auto", "cuda") == "flash"
    monkeypatch.setattr(registry, "_imports", lambda name: name == "triton")
    assert kernels.resolve_impl("auto", "cuda") == "triton"
    with pytest.raises(ValueError, match="flash_attn.*Available: reference, triton"):
        kernels.resolve_impl("flash", "cuda")
    monkeypatch.setattr(registry, "_imports", lambda name: False)
    assert kernels.resolve_impl("auto", "cuda:0") == "reference"


def test_flash_module_without_flash_attn():
    from depthkv.kernels import flash

    if flash.available():
        pytest.skip("flash-attn is installed with CUDA here")
    q = torch.zeros(1, 2, 3, 8, dtype=torch.float16)
    with pytest.raises(ValueError, match="flash_attn"):
        flash.attention_lse(q, q, q, 1.0)


def test_flash_decodes_with_the_triton_kernel(monkeypatch):
    """flash-attn's decode kernel needs the valid slots of a buffer to be a prefix and a compacted
    buffer's are not (empty slots first), so ``impl="flash"`` runs flash-attn for the prefill only."""
    pytest.importorskip("triton")
    from depthkv.kernels import flash, triton_decode

    monkeypatch.setattr(registry, "_imports", lambda name: True)
    table = kernels.kernel_table("flash", "cuda")
    assert table.impl == "flash"
    assert table.attention_lse is flash.attention_lse
    assert table.decode_attention is triton_decode.decode_attention
    assert not hasattr(flash, "decode_attention")
