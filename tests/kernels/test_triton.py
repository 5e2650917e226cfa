"""Triton kernels against the PyTorch reference, over a sparse grid of awkward shapes.

Runs on CPU tensors under the Triton interpreter (``TRITON_INTERPRET=1``, set by conftest before
any kernel module is imported) or on CUDA. Shapes are small: the interpreter executes every
program in Python.

Tolerance (the reference defines correctness; a fast path may differ from it only as much as
PyTorch itself does at the same precision): with ``ref64`` the reference evaluated in fp64 on the
same (already rounded) inputs and ``torch_err = max |reference_in_dtype - ref64|`` the error
PyTorch itself makes at that precision, we require

    max |triton - ref64| <= C * torch_err + tiny_abs

* ``C = 4``: the kernels differ from the reference only in summation order (online softmax,
  split-K, tiled reductions) and, on GPUs, in rounding the probability tile to fp16/bf16 before
  ``p @ v`` (FlashAttention does the same); both are errors of the same order as PyTorch's own.
* ``tiny_abs`` covers cases where PyTorch's error happens to be ~0 (one key: the output is a copy
  of ``v``; the LSE is a single logit) while a correct kernel differs by a few ulps, e.g. through
  ``exp2``/``log2``: ``1e-5 * max(1, max|ref64|)`` for fp32 outputs (about 100 fp32 ulps at
  that scale, far below any real bug), and one ulp (``eps * max(1, max|ref64|)``) for fp16/bf16
  outputs, where two correct fp32 results may round to neighbouring representable values.
"""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton", reason="triton is not installed (optional extra: pip install 'depthkv[triton]')")

from depthkv.kernels import reference as ref  # noqa: E402
from depthkv.kernels import triton_compact, triton_decode, triton_prefill  # noqa: E402

INTERPRETED = triton_prefill._INTERPRETED
if not INTERPRETED and not torch.cuda.is_available():
    pytest.skip(
        "Triton kernels need CUDA, or TRITON_INTERPRET=1 set before depthkv.kernels.triton_* is imported",
        allow_module_level=True,
    )

DEVICE = "cpu" if INTERPRETED else "cuda"
C = 4.0
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


def tiny_abs(dtype: torch.dtype, ref64: torch.Tensor) -> float:
    scale = max(1.0, float(ref64.abs().max())) if ref64.numel() else 1.0
    return (1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps) * scale


def assert_close(name: str, got: torch.Tensor, same: torch.Tensor, ref64: torch.Tensor) -> None:
    """``max|got - ref64| <= C * max|same - ref64| + tiny_abs``, and nothing left unwritten (NaN)."""
    got64, ref64 = got.detach().double().cpu(), ref64.detach().double().cpu()
    assert not torch.isnan(got64).any(), f"{name}: NaN in output (unwritten poisoned element or bad math)"
    assert got.shape == ref64.shape, f"{name}: shape {tuple(got.shape)} != {tuple(ref64.shape)}"
    if got.numel() == 0:
        return
    finite = torch.isfinite(ref64)
    assert torch.equal(got64[~finite], ref64[~finite]), f"{name}: non-finite entries differ"
    err = float((got64 - ref64)[finite].abs().max()) if finite.any() else 0.0
    torch_err = float((same.detach().double().cpu() - ref64)[finite].abs().max()) if finite.any() else 0.0
    tol = C * torch_err + tiny_abs(got.dtype, ref64[finite])
    assert err <= tol, f"{name}: max error {err:.3e} > {C} * torch error {torch_err:.3e} + tiny = {tol:.3e}"


def poisoned(shape, dtype) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=DEVICE)


def randn(*shape, dtype, gen) -> torch.Tensor:
    return torch.randn(*shape, generator=gen, dtype=torch.float32).to(dtype).to(DEVICE)


def f64(*ts):
    return tuple(t.double().cpu() for t in ts)


# ----------------------------------------------------------------------------------------------
# prefill attention
# ----------------------------------------------------------------------------------------------

# (B, H, Hkv, Sq, Sk, D, dtype, causal): S in {1, 17, 127, 1000}, D in {64, 80, 128}, MHA,
# GQA 4:1 / 8:1, MQA, fp32/fp16 (+ one bf16), causal square, chunked (Sq < Sk) and non-causal.
ATTN_CASES = [
    (1, 2, 2, 1, 1, 64, F32, True),
    (1, 4, 1, 17, 17, 80, F32, True),
    (1, 8, 2, 127, 127, 128, F16, True),
    (1, 16, 2, 17, 17, 64, F16, True),
    (2, 4, 4, 17, 17, 80, F16, True),
    (1, 2, 1, 1000, 1000, 64, F32, True),
    (1, 4, 2, 17, 17, 64, BF16, True),
    (1, 4, 2, 17, 40, 128, F32, True),
    (1, 4, 1, 127, 127, 80, F32, False),
    (1, 2, 2, 127, 127, 128, F32, True),
    (2, 2, 1, 5, 9, 64, F16, False),
]


@pytest.mark.parametrize("case", ATTN_CASES, ids=lambda c: "B{}H{}Hkv{}Sq{}Sk{}D{}-{}-{}".format(*c[:6], str(c[6])[6:], "causal" if c[7] else "full"))
def test_attention_lse_matches_reference(case):
    b, h, hkv, sq, sk, d, dtype, causal = case
    gen = torch.Generator().manual_seed(sq * 31 + d)
    q, k, v = randn(b, h, sq, d, dtype=dtype, gen=gen), randn(b, hkv, sk, d, dtype=dtype, gen=gen), randn(b, hkv, sk, d, dtype=dtype, gen=gen)
    scale = d**-0.5
    out, lse = poisoned((b, h, sq, d), dtype), poisoned((b, h, sq), F32)
    got_out, got_lse = triton_prefill.attention_lse(q, k, v, scale, causal, out=out, lse=lse)
    assert got_out is out and got_lse is lse
    same_out, same_lse = ref.attention_lse(q, k, v, scale, causal)
    out64, lse64 = ref.attention_lse(*f64(q, k, v), scale, causal)
    assert_close("out", got_out, same_out, out64)
    assert_close("lse", got_lse, same_lse, lse64)


def test_attention_lse_allocates_and_accepts_strided_inputs():
    gen = torch.Generator().manual_seed(1)
    # [B, S, H, D] storage viewed as [B, H, S, D], like transformers' projections.
    q = randn(1, 17, 4, 64, dtype=F32, gen=gen).transpose(1, 2)
    k = randn(1, 17, 2, 64, dtype=F32, gen=gen).transpose(1, 2)
    v = randn(1, 17, 2, 64, dtype=F32, gen=gen).transpose(1, 2)
    out, lse = triton_prefill.attention_lse(q, k, v, 0.125)
    same_out, same_lse = ref.attention_lse(q, k, v, 0.125)
    out64, lse64 = ref.attention_lse(*f64(q, k, v), 0.125)
    assert out.dtype == F32 and lse.dtype == F32
    assert_close("out", out, same_out, out64)
    assert_close("lse", lse, same_lse, lse64)


def test_attention_lse_rejects_bad_arguments():
    q = torch.zeros(1, 4, 3, 16, device=DEVICE)
    k = torch.zeros(1, 2, 3, 16, device=DEVICE)
    with pytest.raises(ValueError, match="fp32, fp16 or bf16"):
        triton_prefill.attention_lse(q.double(), k.double(), k.double(), 1.0)
    with pytest.raises(ValueError, match="out must be"):
        triton_prefill.attention_lse(q, k, k, 1.0, out=torch.empty(1, 4, 3, 8, device=DEVICE))
    with pytest.raises(ValueError, match="multiple of kv heads"):
        triton_prefill.attention_lse(q, torch.zeros(1, 3, 3, 16, device=DEVICE), torch.zeros(1, 3, 3, 16, device=DEVICE), 1.0)
    with pytest.raises(ValueError, match="Sq=3 > Sk=2"):
        triton_prefill.attention_lse(q, k[:, :, :2], k[:, :, :2], 1.0)


# ----------------------------------------------------------------------------------------------
# SnapKV window / H2O scores
# ----------------------------------------------------------------------------------------------

# (B, H, Hkv, Sq, Sk, D, dtype, window); window None = h2o_scores (every query).
SCORE_CASES = [
    (1, 2, 2, 1, 1, 64, F32, 8),
    (1, 4, 1, 17, 17, 80, F32, 8),
    (1, 8, 2, 127, 127, 128, F16, 16),
    (1, 16, 2, 17, 17, 64, F16, 17),
    (1, 4, 1, 1000, 1000, 64, F32, 32),
    (1, 4, 2, 17, 17, 64, BF16, 8),
    (1, 4, 2, 17, 40, 128, F32, 4),
    (2, 4, 4, 127, 127, 80, F16, None),
    (1, 8, 1, 127, 127, 64, F32, None),
    (1, 4, 2, 17, 17, 64, F32, 0),
    (1, 4, 2, 17, 17, 80, F32, 100),
]


@pytest.mark.parametrize("case", SCORE_CASES, ids=lambda c: "B{}H{}Hkv{}Sq{}Sk{}D{}-{}-w{}".format(*c[:6], str(c[6])[6:], c[7]))
def test_scores_match_reference(case):
    b, h, hkv, sq, sk, d, dtype, window = case
    gen = torch.Generator().manual_seed(sk * 7 + d)
    q, k = randn(b, h, sq, d, dtype=dtype, gen=gen), randn(b, hkv, sk, d, dtype=dtype, gen=gen)
    scale = d**-0.5
    # Every implementation gets the same LSE (the fp64 one, as fp32) so only the scoring differs.
    _, lse64 = ref.attention_lse(*f64(q, k, k), scale)
    lse = lse64.float().to(DEVICE)
    out = poisoned((b, hkv, sk), F32)
    if window is None:
        got = triton_prefill.h2o_scores(q, k, lse, scale, out=out)
        same, want = ref.h2o_scores(q, k, lse, scale), ref.h2o_scores(*f64(q, k, lse), scale)
    else:
        got = triton_prefill.window_scores(q, k, lse, scale, window, out=out)
        same, want = ref.window_scores(q, k, lse, scale, window), ref.window_scores(*f64(q, k, lse), scale, window)
    assert got is out
    assert_close("scores", got, same, want)
    # Each scoring query's probabilities sum to one.
    w = sq if window is None else min(window, sq)
    torch.testing.assert_close(got.sum(-1).cpu(), torch.full((b, hkv), float(w * h // hkv)), rtol=1e-4, atol=1e-4)


def test_scores_from_triton_lse_end_to_end():
    gen = torch.Generator().manual_seed(3)
    q, k, v = randn(1, 8, 127, 64, dtype=F16, gen=gen), randn(1, 2, 127, 64, dtype=F16, gen=gen), randn(1, 2, 127, 64, dtype=F16, gen=gen)
    _, lse = triton_prefill.attention_lse(q, k, v, 0.125)
    got = triton_prefill.window_scores(q, k, lse, 0.125, 16)
    _, same_lse = ref.attention_lse(q, k, v, 0.125)
    same = ref.window_scores(q, k, same_lse, 0.125, 16)
    q64, k64, v64 = f64(q, k, v)
    want = ref.window_scores(q64, k64, ref.attention_lse(q64, k64, v64, 0.125)[1], 0.125, 16)
    assert_close("scores", got, same, want)


# ----------------------------------------------------------------------------------------------
# compaction
# ----------------------------------------------------------------------------------------------

# (B, Hkv, N, K, D, dtype, with_score)
COMPACT_CASES = [
    (1, 1, 1, 1, 64, F32, True),
    (2, 2, 17, 5, 80, F16, True),
    (1, 8, 127, 64, 128, BF16, False),
    (2, 1, 1000, 100, 64, F32, True),
    (1, 2, 17, 17, 80, F32, True),
]


def _keep(b, hkv, n, kk, gen):
    rows = [torch.randperm(n, generator=gen)[:kk].sort().values for _ in range(b * hkv)]
    return torch.stack(rows).reshape(b, hkv, kk).to(DEVICE)


@pytest.mark.parametrize("case", COMPACT_CASES, ids=lambda c: "B{}Hkv{}N{}K{}D{}-{}-{}".format(*c[:5], str(c[5])[6:], "score" if c[6] else "noscore"))
def test_compact_is_exact(case):
    b, hkv, n, kk, d, dtype, with_score = case
    gen = torch.Generator().manual_seed(n + kk)
    keep = _keep(b, hkv, n, kk, gen)
    src_k, src_v = randn(b, hkv, n, d, dtype=dtype, gen=gen), randn(b, hkv, n, d, dtype=dtype, gen=gen)
    src_pos = (torch.arange(n).expand(b, hkv, n) * 3 + 11).contiguous().to(DEVICE)
    src_score = randn(b, hkv, n, dtype=F32, gen=gen) if with_score else None
    dst = [poisoned((b, hkv, kk, d), dtype), poisoned((b, hkv, kk, d), dtype)]
    dst.append(torch.full((b, hkv, kk), -7, dtype=torch.int64, device=DEVICE))
    dst.append(poisoned((b, hkv, kk), F32) if with_score else None)
    want = [torch.zeros_like(x) if x is not None else None for x in dst]
    triton_compact.compact(keep, src_k, src_v, src_pos, src_score, *dst)
    ref.compact(keep, src_k, src_v, src_pos, src_score, *want)
    for name, got, exp in zip(("k", "v", "pos", "score"), dst, want):
        if got is not None:
            assert torch.equal(got, exp), f"dst_{name} differs from the reference gather"
    assert torch.equal(dst[2], src_pos.gather(2, keep)), "kept positions differ"
    assert not (dst[2] == -7).any()


def test_compact_strided_sources_and_different_value_dim():
    gen = torch.Generator().manual_seed(5)
    b, hkv, n, kk = 2, 2, 17, 6
    src_k = randn(b, n, hkv, 80, dtype=F16, gen=gen).transpose(1, 2)  # BSHD storage
    src_v = randn(b, hkv, n, 48, dtype=F16, gen=gen)
    src_pos = torch.arange(n).expand(b, hkv, n).to(DEVICE)  # stride-0 broadcast view
    keep = _keep(b, hkv, n, kk, gen)
    dst = [poisoned((b, hkv, kk, 80), F16), poisoned((b, hkv, kk, 48), F16), torch.full((b, hkv, kk), -7, device=DEVICE)]
    want = [torch.zeros_like(x) for x in dst]
    triton_compact.compact(keep, src_k, src_v, src_pos, None, *dst, None)
    ref.compact(keep, src_k, src_v, src_pos, None, *want, None)
    assert all(torch.equal(g, w) for g, w in zip(dst, want))


def test_compact_out_of_range_index_is_masked_and_aliasing_rejected():
    gen = torch.Generator().manual_seed(6)
    src_k, src_v = randn(1, 1, 8, 16, dtype=F32, gen=gen), randn(1, 1, 8, 16, dtype=F32, gen=gen)
    src_pos = torch.arange(8, device=DEVICE).view(1, 1, 8)
    keep = torch.tensor([[[1, 9]]], device=DEVICE)
    dst = [poisoned((1, 1, 2, 16), F32), poisoned((1, 1, 2, 16), F32), torch.zeros(1, 1, 2, dtype=torch.int64, device=DEVICE)]
    triton_compact.compact(keep, src_k, src_v, src_pos, None, *dst, None)
    assert torch.equal(dst[0][0, 0, 0], src_k[0, 0, 1]) and torch.equal(dst[0][0, 0, 1], torch.zeros(16, device=DEVICE))
    assert dst[2].tolist() == [[[1, -1]]]
    with pytest.raises(ValueError, match=r"\[0, N=8\)"):
        ref.compact(keep, src_k, src_v, src_pos, None, *[torch.zeros_like(x) for x in dst], None)
    with pytest.raises(ValueError, match="overlaps"):
        triton_compact.compact(keep[..., :1], src_k, src_v, src_pos, None, src_k[:, :, :1], dst[1][:, :, :1], dst[2][..., :1], None)


# ----------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------

# (B, H, Hkv, m, N, D, dtype, split_len, valid): valid in all / random (with one fully invalid
# (batch, kv head) row when B * Hkv > 1) / none / prefix.
DECODE_CASES = [
    (1, 2, 2, 1, 1, 64, F32, None, "all"),
    (2, 4, 1, 1, 17, 80, F32, None, "random"),
    (2, 8, 2, 1, 127, 128, F16, 32, "random"),
    (1, 16, 2, 2, 127, 64, F16, None, "random"),
    (1, 4, 4, 1, 1000, 64, F32, None, "random"),
    (2, 4, 2, 1, 17, 64, BF16, 8, "random"),
    (2, 4, 2, 3, 17, 80, F32, 5, "none"),
    (1, 8, 1, 1, 127, 80, F32, 16, "prefix"),
    (1, 8, 8, 1, 1, 128, F16, None, "random"),
]


def _valid(kind, b, hkv, n, gen):
    if kind == "all":
        return torch.ones(b, hkv, n, dtype=torch.bool, device=DEVICE)
    if kind == "none":
        return torch.zeros(b, hkv, n, dtype=torch.bool, device=DEVICE)
    if kind == "prefix":
        return (torch.arange(n) < n // 2 + 1).expand(b, hkv, n).contiguous().to(DEVICE)
    valid = torch.rand(b, hkv, n, generator=gen) < 0.6
    valid[..., -1] = True  # at least one valid slot per row ...
    if b * hkv > 1:
        valid[-1, -1] = False  # ... except one fully invalid (batch, kv head)
    return valid.to(DEVICE)


@pytest.mark.parametrize("case", DECODE_CASES, ids=lambda c: "B{}H{}Hkv{}m{}N{}D{}-{}-split{}-{}".format(*c[:6], str(c[6])[6:], *c[7:]))
def test_decode_attention_matches_reference(case):
    b, h, hkv, m, n, d, dtype, split, kind = case
    gen = torch.Generator().manual_seed(n * 5 + m)
    q, k, v = randn(b, h, m, d, dtype=dtype, gen=gen), randn(b, hkv, n, d, dtype=dtype, gen=gen), randn(b, hkv, n, d, dtype=dtype, gen=gen)
    valid = _valid(kind, b, hkv, n, gen)
    scale = d**-0.5
    out, mass = poisoned((b, h, m, d), dtype), poisoned((b, hkv, n), F32)
    got_out, got_mass = triton_decode.decode_attention(q, k, v, valid, scale, out=out, mass=mass, split_len=split)
    assert got_out is out and got_mass is mass
    same_out, same_mass = ref.decode_attention(q, k, v, valid, scale)
    out64, mass64 = ref.decode_attention(*f64(q, k, v), valid.cpu(), scale)
    assert_close("out", got_out, same_out, out64)
    assert_close("mass", got_mass, same_mass, mass64)
    g = h // hkv
    empty = ~valid.any(-1)
    assert (got_mass[~valid] == 0).all(), "invalid slots must get exactly zero mass"
    assert (got_out.view(b, hkv, g, m, d)[empty] == 0).all(), "rows without a valid slot must give out = 0"
    sums = got_mass.sum(-1).cpu()
    torch.testing.assert_close(sums, (~empty).float().cpu() * g * m, rtol=1e-4, atol=1e-4)


def test_decode_split_plans_agree_and_strided_buffer():
    gen = torch.Generator().manual_seed(9)
    q = randn(1, 8, 1, 64, dtype=F32, gen=gen)
    k = randn(1, 127, 2, 64, dtype=F32, gen=gen).transpose(1, 2)
    v = randn(1, 127, 2, 64, dtype=F32, gen=gen).transpose(1, 2)
    valid = _valid("random", 1, 2, 127, gen)
    results = [triton_decode.decode_attention(q, k, v, valid, 0.125, split_len=s) for s in (7, 64, 1000)]
    out64, mass64 = ref.decode_attention(*f64(q, k, v), valid.cpu(), 0.125)
    same_out, same_mass = ref.decode_attention(q, k, v, valid, 0.125)
    for out, mass in results:
        assert_close("out", out, same_out, out64)
        assert_close("mass", mass, same_mass, mass64)
    with pytest.raises(ValueError, match="split_len"):
        triton_decode.decode_attention(q, k, v, valid, 0.125, split_len=0)
