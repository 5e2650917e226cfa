"""The reference kernels against naive fp64 math, and the implementation switch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from depthkv.kernels import reference as ref


def rand(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def naive_probs(q, k, scale, causal=True, valid=None):
    """Explicit fp64 softmax ``[B, H, Sq, Sk]``: K repeated per query head, -inf mask, exp / sum."""
    g = q.shape[1] // k.shape[1]
    kk = k.double().repeat_interleave(g, dim=1)
    logits = torch.einsum("bhid,bhjd->bhij", q.double(), kk) * scale
    sq, sk = q.shape[2], k.shape[2]
    allowed = torch.ones(sq, sk, dtype=torch.bool)
    if causal:
        allowed = torch.arange(sk)[None, :] <= torch.arange(sq)[:, None] + (sk - sq)
    allowed = allowed.expand_as(logits)
    if valid is not None:
        allowed = allowed & valid.repeat_interleave(g, dim=1)[:, :, None, :]
    e = torch.exp(logits - logits.masked_fill(~allowed, float("-inf")).amax(-1, keepdim=True).clamp_min(-1e300))
    e = e.masked_fill(~allowed, 0.0)
    denom = e.sum(-1, keepdim=True)
    return torch.where(denom > 0, e / denom.clamp_min(1e-300), 0.0), logits, allowed


def group_sum(p, hkv):
    """``[B, H, Sq, Sk]`` -> ``[B, Hkv, Sk]``: sum over queries and the query heads of each group."""
    b, h, sq, sk = p.shape
    return p.reshape(b, hkv, h // hkv, sq, sk).sum(dim=(2, 3))


SHAPES = [  # (B, H, Hkv, Sq, Sk, D)
    (1, 2, 2, 1, 1, 8),  # MHA, one token
    (2, 4, 2, 7, 7, 16),  # GQA 2:1
    (1, 8, 1, 9, 9, 12),  # MQA
    (1, 4, 1, 5, 11, 8),  # chunk: Sq < Sk
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("causal", [True, False])
def test_attention_lse_equals_explicit_softmax(shape, causal):
    b, h, hkv, sq, sk, d = shape
    q, k, v = rand(b, h, sq, d, seed=1), rand(b, hkv, sk, d, seed=2), rand(b, hkv, sk, d, seed=3)
    p, logits, allowed = naive_probs(q, k, 0.3, causal)
    want_out = p @ v.repeat_interleave(h // hkv, dim=1)
    want_lse = torch.logsumexp(logits.masked_fill(~allowed, float("-inf")), -1)
    out, lse = ref.attention_lse(q, k, v, 0.3, causal)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(lse, want_lse, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_attention_lse_dtypes(dtype):
    q, k, v = (rand(1, 4, 6, 16, seed=s, dtype=dtype) for s in (1, 2, 3))
    out, lse = ref.attention_lse(q, k[:, :2], v[:, :2], 0.25)
    assert out.dtype == dtype and lse.dtype == torch.float32
    out64, lse64 = ref.attention_lse(q.double(), k[:, :2].double(), v[:, :2].double(), 0.25)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    torch.testing.assert_close(out.double(), out64, rtol=tol, atol=tol)
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-5, atol=1e-5)


def test_causal_output_ignores_future_tokens():
    q, k, v = rand(1, 4, 10, 8, seed=4), rand(1, 2, 10, 8, seed=5), rand(1, 2, 10, 8, seed=6)
    out, lse = ref.attention_lse(q, k, v, 0.5)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 6:] += 100.0
    v2[:, :, 6:] -= 100.0
    out2, lse2 = ref.attention_lse(q, k2, v2, 0.5)
    assert torch.equal(out[:, :, :6], out2[:, :, :6]) and torch.equal(lse[:, :, :6], lse2[:, :, :6])
    assert not torch.allclose(out[:, :, 6:], out2[:, :, 6:])
    # the first query sees only the first key: its output is that value
    torch.testing.assert_close(out[:, :, 0], v[:, :, 0].repeat_interleave(2, dim=1))


def test_gqa_equals_mha_with_repeated_kv():
    q, k, v = rand(2, 8, 7, 8, seed=7), rand(2, 2, 7, 8, seed=8), rand(2, 2, 7, 8, seed=9)
    out, lse = ref.attention_lse(q, k, v, 0.4)
    out_mha, lse_mha = ref.attention_lse(q, k.repeat_interleave(4, 1), v.repeat_interleave(4, 1), 0.4)
    torch.testing.assert_close(out, out_mha, rtol=0, atol=1e-14)
    torch.testing.assert_close(lse, lse_mha, rtol=0, atol=1e-14)
    # query head h uses kv head h // g: heads 0-3 depend on kv head 0 only
    k2 = k.clone()
    k2[:, 1] += rand(2, 7, 8, seed=30)
    out2, _ = ref.attention_lse(q, k2, v, 0.4)
    assert torch.equal(out2[:, :4], out[:, :4]) and not torch.allclose(out2[:, 4:], out[:, 4:])
    s = ref.h2o_scores(q, k, lse, 0.4)
    s_mha = ref.h2o_scores(q, k.repeat_interleave(4, 1), lse, 0.4)
    torch.testing.assert_close(s, s_mha.reshape(2, 2, 4, 7).sum(2), rtol=0, atol=1e-12)


def test_query_blocking_does_not_change_results(monkeypatch):
    q, k, v = rand(1, 4, 33, 8, seed=10), rand(1, 2, 33, 8, seed=11), rand(1, 2, 33, 8, seed=12)
    out, lse = ref.attention_lse(q, k, v, 0.3)
    scores = ref.window_scores(q, k, lse, 0.3, 20)
    monkeypatch.setattr(ref, "_BLOCK_ELEMENTS", 4 * 33 * 3)  # 3 queries per block
    out_b, lse_b = ref.attention_lse(q, k, v, 0.3)
    torch.testing.assert_close(out_b, out, rtol=0, atol=1e-14)
    torch.testing.assert_close(lse_b, lse, rtol=0, atol=1e-14)
    torch.testing.assert_close(ref.window_scores(q, k, lse, 0.3, 20), scores, rtol=0, atol=1e-13)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("window", [0, 1, 3, 100])
def test_scores_are_column_sums_of_the_probability_matrix(shape, window):
    b, h, hkv, sq, sk, d = shape
    q, k, v = rand(b, h, sq, d, seed=13), rand(b, hkv, sk, d, seed=14), rand(b, hkv, sk, d, seed=15)
    p, _, _ = naive_probs(q, k, 0.3)
    _, lse = ref.attention_lse(q, k, v, 0.3)
    w = min(window, sq)
    want = group_sum(p[:, :, sq - w :], hkv)
    got = ref.window_scores(q, k, lse, 0.3, window)
    assert got.shape == (b, hkv, sk)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.sum(-1), torch.full((b, hkv), float(w * h // hkv), dtype=got.dtype))
    torch.testing.assert_close(ref.h2o_scores(q, k, lse, 0.3), group_sum(p, hkv), rtol=1e-12, atol=1e-12)


def test_scores_dtype_and_validation():
    q, k = rand(1, 4, 5, 8, dtype=torch.bfloat16), rand(1, 2, 5, 8, seed=1, dtype=torch.bfloat16)
    _, lse = ref.attention_lse(q, k, k, 0.3)
    assert ref.window_scores(q, k, lse, 0.3, 2).dtype == torch.float32
    with pytest.raises(ValueError, match="window"):
        ref.window_scores(q, k, lse, 0.3, -1)
    with pytest.raises(ValueError, match="lse must be"):
        ref.window_scores(q, k, lse[:, :2], 0.3, 2)


def test_validation_errors_name_the_problem():
    q, k = torch.zeros(1, 4, 3, 8), torch.zeros(1, 3, 3, 8)
    with pytest.raises(ValueError, match="multiple of kv heads"):
        ref.attention_lse(q, k, k, 1.0)
    with pytest.raises(ValueError, match="Sq=3 > Sk=2"):
        ref.attention_lse(q, torch.zeros(1, 2, 2, 8), torch.zeros(1, 2, 2, 8), 1.0)
    with pytest.raises(ValueError, match="one dtype"):
        ref.attention_lse(q, torch.zeros(1, 2, 3, 8, dtype=torch.float16), torch.zeros(1, 2, 3, 8), 1.0)
    with pytest.raises(ValueError, match="4-D"):
        ref.attention_lse(q[0], k, k, 1.0)
    with pytest.raises(ValueError, match="valid must be a bool"):
        ref.decode_attention(q, torch.zeros(1, 2, 3, 8), torch.zeros(1, 2, 3, 8), torch.ones(1, 2, 3), 1.0)


# ----------------------------------------------------------------------------------------------
# decode
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 2, 2, 1, 1, 8), (2, 4, 2, 1, 9, 16), (2, 8, 1, 3, 13, 12)])
def test_decode_equals_masked_softmax(shape):
    b, h, hkv, m, n, d = shape
    q, k, v = rand(b, h, m, d, seed=16), rand(b, hkv, n, d, seed=17), rand(b, hkv, n, d, seed=18)
    valid = torch.rand(b, hkv, n, generator=torch.Generator().manual_seed(19)) < 0.6
    valid[..., 0] = True
    p, _, _ = naive_probs(q, k, 0.3, causal=False, valid=valid)
    out, mass = ref.decode_attention(q, k, v, valid, 0.3)
    torch.testing.assert_close(out, p @ v.repeat_interleave(h // hkv, dim=1), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mass, group_sum(p, hkv), rtol=1e-12, atol=1e-12)
    assert (mass[~valid] == 0).all()


def test_decode_fully_invalid_rows_give_zeros_not_nan():
    q, k, v = rand(2, 4, 2, 8, seed=20), rand(2, 2, 5, 8, seed=21), rand(2, 2, 5, 8, seed=22)
    valid = torch.ones(2, 2, 5, dtype=torch.bool)
    valid[1, 0] = False
    for dtype in (torch.float64, torch.float32, torch.float16):
        out, mass = ref.decode_attention(q.to(dtype), k.to(dtype), v.to(dtype), valid, 0.3)
        assert not out.isnan().any() and not mass.isnan().any()
        assert (out[1, :2] == 0).all() and (mass[1, 0] == 0).all()
        assert out.dtype == dtype and mass.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    out, mass = ref.decode_attention(q, k, v, torch.zeros(2, 2, 5, dtype=torch.bool), 0.3)
    assert (out == 0).all() and (mass == 0).all()


def test_decode_mass_sums_to_group_queries():
    q, k, v = rand(1, 8, 3, 8, seed=23), rand(1, 2, 11, 8, seed=24), rand(1, 2, 11, 8, seed=25)
    _, mass = ref.decode_attention(q, k, v, torch.ones(1, 2, 11, dtype=torch.bool), 0.3)
    torch.testing.assert_close(mass.sum(-1), torch.full((1, 2), 12.0, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# compact
# ----------------------------------------------------------------------------------------------


def test_compact_gathers_in_keep_order_and_handles_aliasing():
    b, hkv, n, d = 2, 2, 9, 4
    src_k, src_v = rand(b, hkv, n, d, seed=26), rand(b, hkv, n, d, seed=27)
    src_pos = torch.arange(n).expand(b, hkv, n) + 100
    src_score = rand(b, hkv, n, seed=28).float()
    keep = torch.tensor([[[0, 3, 8], [1, 2, 7]], [[4, 5, 6], [0, 1, 2]]])
    dst = [torch.empty(b, hkv, 3, d, dtype=torch.float64) for _ in range(2)]
    dst += [torch.empty(b, hkv, 3, dtype=torch.long), torch.empty(b, hkv, 3)]
    ref.compact(keep, src_k, src_v, src_pos, src_score, *dst)
    for bi in range(b):
        for c in range(hkv):
            idx = keep[bi, c]
            assert torch.equal(dst[0][bi, c], src_k[bi, c, idx]) and torch.equal(dst[1][bi, c], src_v[bi, c, idx])
            assert torch.equal(dst[2][bi, c], src_pos[bi, c, idx]) and torch.equal(dst[3][bi, c], src_score[bi, c, idx])
    # in-place compaction into the front of the same storage
    buf = src_k.clone()
    ref.compact(keep, buf, src_v.clone(), src_pos.clone(), None, buf[:, :, :3], torch.empty_like(dst[1]), dst[2], None)
    assert torch.equal(buf[:, :, :3], dst[0])


def test_compact_validation():
    src = torch.zeros(1, 1, 4, 2)
    pos = torch.zeros(1, 1, 4, dtype=torch.long)
    keep = torch.tensor([[[0, 4]]])
    dst = [torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, dtype=torch.long)]
    with pytest.raises(ValueError, match=r"\[0, N=4\)"):
        ref.compact(keep, src, src, pos, None, *dst, None)
    with pytest.raises(ValueError, match="int64"):
        ref.compact(keep.int(), src, src, pos, None, *dst, None)
    with pytest.raises(ValueError, match="dst_k must be"):
        ref.compact(keep, src, src, pos, None, torch.zeros(1, 1, 3, 2), dst[1], dst[2], None)
    with pytest.raises(ValueError, match="both be"):
        ref.compact(keep, src, src, pos, torch.zeros(1, 1, 4), *dst, None)


def test_import_has_no_side_effects():
    code = (
        "import sys, torch, depthkv.kernels, depthkv.kernels.reference, depthkv.kernels.flash\n"
        "print('triton' in sys.modules, 'flash_attn' in sys.modules, torch.cuda.is_initialized())"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.split() == ["False", "False", "False"], res.stdout + res.stderr
