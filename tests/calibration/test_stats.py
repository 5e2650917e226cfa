"""Tests for depthkv.stats: power, calibration, invariants, bootstrap CIs, serialisation, errors."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from depthkv.calibration import stats
from depthkv.calibration.stats import (
    BootstrapCI,
    FriedmanResult,
    LayerStats,
    PermutationResult,
    bootstrap_ci,
    bootstrap_mean_ci,
    friedman_test,
    layer_stats,
    permutation_test,
)

FAST = settings(max_examples=40, deadline=None)


def _null_matrix(rng: np.random.Generator, n: int, layers: int, offset_scale: float = 3.0) -> np.ndarray:
    """iid noise plus a per-example offset (example difficulty): layers exchangeable within rows."""
    return rng.normal(size=(n, layers)) + rng.normal(scale=offset_scale, size=(n, 1))


def _planted_matrix(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = _null_matrix(rng, 30, 8, offset_scale=2.0)
    x[:, [2, 5]] += 1.0  # two sensitive layers, shifted by one noise std
    return x


def _brute_force_statistic(x: np.ndarray) -> float:
    n, num_layers = len(x), len(x[0])
    means = [sum(float(x[i][j]) for i in range(n)) / n for j in range(num_layers)]
    grand = sum(means) / num_layers
    return sum((m - grand) ** 2 for m in means) / num_layers


matrices = st.tuples(st.integers(2, 12), st.integers(2, 7)).flatmap(
    lambda shape: arrays(np.float64, shape, elements=st.floats(-1e3, 1e3, allow_nan=False, width=64))
)


# --------------------------------------------------------------------------- permutation test


def test_planted_layer_differences_are_detected():
    x = _planted_matrix()
    perm = permutation_test(x, n_permutations=999, seed=0)
    assert perm.pvalue < 0.01
    assert perm.statistic > perm.null_mean + 3 * perm.null_std
    fried = friedman_test(x)
    assert fried.method == "friedman"
    assert fried.pvalue < 0.01


def test_type_one_error_is_calibrated():
    # Exact test under exchangeability: the rejection rate at alpha must be ~alpha. 1000 nulls keep
    # the band [0.02, 0.09] > 3.5 binomial standard errors wide (deterministic seeds, ~1.5 s).
    rng = np.random.default_rng(2024)
    reps, alpha = 1000, 0.05
    p_perm = np.empty(reps)
    p_fried = np.empty(reps)
    for r in range(reps):
        x = _null_matrix(rng, 20, 6)
        p_perm[r] = permutation_test(x, n_permutations=199, seed=r).pvalue
        p_fried[r] = friedman_test(x).pvalue
    assert 0.02 <= np.mean(p_perm <= alpha) <= 0.09
    assert 0.42 <= np.mean(p_perm <= 0.5) <= 0.58  # roughly uniform, not just right at alpha
    assert 0.02 <= np.mean(p_fried <= alpha) <= 0.09


def test_ties_with_the_observed_statistic_count_as_extreme():
    """[[0, 1], [0, 1]]: half of the row-wise relabelings reproduce T(X) exactly (both rows kept or
    both swapped), the other half give T = 0, so p = P(T* >= T) = 1/2. A test that counted only
    null values clearly above T (``>``, or ``>= 1.05 T``) would report p near 1/(P+1)."""
    x = np.array([[0.0, 1.0], [0.0, 1.0]])
    res = permutation_test(x, n_permutations=4000, seed=0)
    assert res.pvalue == pytest.approx(0.5, abs=0.03)  # > 5 binomial standard errors


def test_pvalue_matches_exhaustive_enumeration():
    """On a 3 x 3 matrix every row-wise relabeling can be listed (6^3 = 216, equally likely under the
    null): the Monte-Carlo p-value converges to the exact fraction with T* >= T."""
    rng = np.random.default_rng(7)
    x = _null_matrix(rng, 3, 3, offset_scale=0.0)
    x[:, 0] += 0.8
    observed = _brute_force_statistic(x)
    perms = list(itertools.permutations(range(3)))
    exact = np.mean(
        [_brute_force_statistic(x[np.arange(3)[:, None], np.array(p)]) >= observed - 1e-12
         for p in itertools.product(perms, repeat=3)]
    )
    assert 0.05 < exact < 0.6  # a p-value a biased count would move
    res = permutation_test(x, n_permutations=20_000, seed=1)
    assert res.pvalue == pytest.approx(exact, abs=0.015)  # ~4 standard errors of the Monte-Carlo estimate


def test_pvalue_is_never_zero():
    x = _planted_matrix()
    x[:, 0] += 100.0  # no permutation comes close
    res = permutation_test(x, n_permutations=50, seed=0)
    assert res.pvalue == pytest.approx(1 / 51)
    assert res.n_permutations == 50


@FAST
@given(x=matrices, seed=st.integers(0, 2**32 - 1))
def test_pvalue_range_and_reproducibility(x, seed):
    a = permutation_test(x, n_permutations=20, seed=seed)
    b = permutation_test(x, n_permutations=20, seed=seed)
    assert a == b
    assert 0.0 < a.pvalue <= 1.0
    assert a.pvalue * 21 == pytest.approx(round(a.pvalue * 21))  # multiple of 1/(P+1)
    assert a.statistic >= 0.0 and a.null_std >= 0.0


def test_different_seeds_give_different_nulls():
    x = _planted_matrix()
    a = permutation_test(x, n_permutations=99, seed=1)
    b = permutation_test(x, n_permutations=99, seed=2)
    assert a.statistic == b.statistic
    assert a.null_mean != b.null_mean


@FAST
@given(x=matrices, data=st.data())
def test_statistic_matches_brute_force_and_ignores_row_order(x, data):
    res = permutation_test(x, n_permutations=1, seed=0)
    assert res.statistic == pytest.approx(_brute_force_statistic(x.tolist()), rel=1e-9, abs=1e-9)
    order = data.draw(st.permutations(range(len(x))))
    shuffled = permutation_test(x[list(order)], n_permutations=1, seed=0)
    assert shuffled.statistic == pytest.approx(res.statistic, rel=1e-12, abs=1e-12)


def test_statistic_ignores_per_example_offsets():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(15, 5))
    shifted = x + rng.normal(scale=10, size=(15, 1))
    a = permutation_test(x, n_permutations=200, seed=0)
    b = permutation_test(shifted, n_permutations=200, seed=0)
    assert b.statistic == pytest.approx(a.statistic, rel=1e-9)
    assert b.pvalue == a.pvalue


def test_null_matches_exhaustive_enumeration_for_tiny_input():
    # 2 examples x 3 layers: 36 equally likely row-wise relabellings; the Monte-Carlo null mean
    # must approach the exact permutation-distribution mean.
    x = np.array([[0.0, 1.0, 5.0], [2.0, 2.5, -1.0]])
    exact = [
        _brute_force_statistic([[x[0][i] for i in p], [x[1][j] for j in q]])
        for p, q in itertools.product(itertools.permutations(range(3)), repeat=2)
    ]
    res = permutation_test(x, n_permutations=20_000, seed=0)
    assert res.null_mean == pytest.approx(np.mean(exact), rel=0.02)
    assert res.null_std == pytest.approx(np.std(exact), rel=0.02)
    exact_p = np.mean(np.asarray(exact) >= res.statistic - 1e-12)
    assert res.pvalue == pytest.approx(exact_p, abs=0.01)


def test_constant_rows_give_pvalue_one():
    x = np.repeat(np.arange(6.0)[:, None], 4, axis=1)  # difficulty varies, layers identical
    res = permutation_test(x, n_permutations=30, seed=0)
    assert res.statistic == 0.0
    assert res.pvalue == 1.0


def test_result_does_not_depend_on_chunk_size(monkeypatch):
    x = _planted_matrix()
    reference = permutation_test(x, n_permutations=101, seed=7)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", x.size * 3)  # 3 permutations per chunk
    assert permutation_test(x, n_permutations=101, seed=7) == reference
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 1)
    assert permutation_test(x, n_permutations=101, seed=7) == reference


def test_accepts_lists_and_int_arrays():
    x = [[1, 2, 3], [2, 3, 5], [0, 1, 1]]
    a = permutation_test(x, n_permutations=10, seed=0)
    b = permutation_test(np.asarray(x, dtype=np.float64), n_permutations=10, seed=0)
    assert a == b


# --------------------------------------------------------------------------- Friedman


def test_friedman_matches_scipy():
    x = _planted_matrix(1)
    res = friedman_test(x)
    ref = scipy.stats.friedmanchisquare(*x.T)
    assert res.statistic == ref.statistic and res.pvalue == ref.pvalue


def test_friedman_two_layers_falls_back_to_wilcoxon():
    x = _planted_matrix(2)[:, [0, 2]]
    res = friedman_test(x)
    ref = scipy.stats.wilcoxon(x[:, 0], x[:, 1])
    assert res.method == "wilcoxon"
    assert (res.statistic, res.pvalue) == (float(ref.statistic), float(ref.pvalue))


@pytest.mark.parametrize("layers", [2, 3, 5])
def test_friedman_identical_values_do_not_crash(layers):
    for x in (np.full((6, layers), 0.3), np.repeat(np.arange(6.0)[:, None], layers, axis=1)):
        res = friedman_test(x)
        assert (res.statistic, res.pvalue) == (0.0, 1.0)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_brackets_mean_and_shrinks_with_more_examples():
    rng = np.random.default_rng(5)
    small = rng.exponential(size=(20, 4)) + np.arange(4)
    large = rng.exponential(size=(500, 4)) + np.arange(4)
    ci_small = bootstrap_ci(small, n_resamples=1000, seed=0)
    ci_large = bootstrap_ci(large, n_resamples=1000, seed=0)
    for ci, x in ((ci_small, small), (ci_large, large)):
        np.testing.assert_allclose(ci.mean, x.mean(axis=0))
        assert np.all(ci.low <= ci.mean) and np.all(ci.mean <= ci.high)
        assert np.all(ci.low < ci.high)
        assert ci.mean.shape == ci.low.shape == ci.high.shape == (4,)
    assert np.all(ci_large.high - ci_large.low < ci_small.high - ci_small.low)
    # ~ 2 * 1.96 * sd / sqrt(n) for a normal approximation (exponential sd = 1).
    np.testing.assert_allclose(ci_large.high - ci_large.low, 2 * 1.96 / np.sqrt(500), rtol=0.2)


def test_bootstrap_ci_wider_at_higher_confidence_and_reproducible():
    x = _planted_matrix(3)
    ci90 = bootstrap_ci(x, confidence=0.90, n_resamples=500, seed=1)
    ci99 = bootstrap_ci(x, confidence=0.99, n_resamples=500, seed=1)
    assert np.all(ci99.high - ci99.low > ci90.high - ci90.low)
    assert bootstrap_ci(x, confidence=0.90, n_resamples=500, seed=1) == ci90
    assert ci90.confidence == 0.90 and ci90.n_resamples == 500


def test_bootstrap_ci_arrays_are_read_only():
    ci = bootstrap_ci(_planted_matrix(), n_resamples=50)
    with pytest.raises(ValueError):
        ci.low[0] = 0.0


def test_bootstrap_ci_chunking_is_invisible(monkeypatch):
    x = _planted_matrix(4)
    reference = bootstrap_ci(x, n_resamples=300, seed=2)
    monkeypatch.setattr(stats, "_CHUNK_ELEMENTS", 7 * x.shape[0])
    assert bootstrap_ci(x, n_resamples=300, seed=2) == reference


@FAST
@given(
    values=arrays(np.float64, st.integers(2, 40), elements=st.floats(-1e3, 1e3, allow_nan=False, width=64)),
    confidence=st.floats(0.01, 0.99),
)
def test_bootstrap_mean_ci_properties(values, confidence):
    mean, low, high = bootstrap_mean_ci(values, confidence=confidence, n_resamples=200, seed=0)
    assert all(isinstance(v, float) for v in (mean, low, high))
    assert mean == pytest.approx(float(np.mean(values)), rel=1e-12, abs=1e-9)
    assert low <= mean <= high
    assert values.min() - 1e-9 <= low and high <= values.max() + 1e-9


def test_bootstrap_mean_ci_constant_and_binary():
    assert bootstrap_mean_ci(np.full(10, 0.7)) == pytest.approx((0.7, 0.7, 0.7))
    acc = np.array([1.0] * 80 + [0.0] * 20)
    mean, low, high = bootstrap_mean_ci(acc, n_resamples=2000, seed=0)
    assert mean == 0.8
    assert low == pytest.approx(0.72, abs=0.03) and high == pytest.approx(0.88, abs=0.03)


def test_bootstrap_mean_ci_agrees_with_bootstrap_ci_column():
    x = _planted_matrix(6)
    ci = bootstrap_ci(x[:, [3]], n_resamples=400, seed=9)
    assert bootstrap_mean_ci(x[:, 3], n_resamples=400, seed=9) == (ci.mean[0], ci.low[0], ci.high[0])


# --------------------------------------------------------------------------- LayerStats


def test_layer_stats_matches_parts_and_round_trips_through_json():
    x = _planted_matrix()
    ls = layer_stats(x, n_permutations=199, confidence=0.9, n_resamples=300, seed=4)
    assert ls.permutation == permutation_test(x, n_permutations=199, seed=4)
    assert ls.friedman == friedman_test(x)
    assert ls.ci == bootstrap_ci(x, confidence=0.9, n_resamples=300, seed=4)

    d = ls.to_dict()
    text = json.dumps(d)
    back = LayerStats.from_dict(json.loads(text))
    assert back == ls
    assert back.to_dict() == d
    assert isinstance(back.ci.mean, np.ndarray) and back.ci.mean.dtype == np.float64
    assert isinstance(back.permutation, PermutationResult)
    assert isinstance(back.friedman, FriedmanResult)
    assert isinstance(back.ci, BootstrapCI)


def test_layer_stats_dict_is_plain_python():
    def check(obj):
        if isinstance(obj, dict):
            assert all(isinstance(k, str) for k in obj)
            for v in obj.values():
                check(v)
        elif isinstance(obj, list):
            for v in obj:
                check(v)
        else:
            assert type(obj) in (float, int, str), type(obj)

    check(layer_stats(_planted_matrix(), n_permutations=20, n_resamples=20).to_dict())


def test_layer_stats_from_dict_reports_missing_keys():
    with pytest.raises(ValueError, match="missing key"):
        LayerStats.from_dict({"permutation": {}})


# --------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        (np.zeros(5), r"2-D array \[examples, layers\]; got shape \(5,\)"),
        (np.zeros((2, 3, 4)), r"2-D array .*got shape \(2, 3, 4\)"),
        (np.zeros((5, 1)), r"at least 2 layers .*got shape \(5, 1\)"),
        (np.zeros((1, 5)), r"at least 2 examples .*got shape \(1, 5\)"),
        (np.zeros((0, 5)), r"at least 2 examples"),
        (
            np.array([[0.0, 1.0], [np.nan, 2.0]]),
            r"finite; found 1 NaN/inf value\(s\), the first at index \(1, 0\)",
        ),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), r"must be finite"),
        ([[1.0, 2.0], [3.0]], r"could not convert"),
        ([["a", "b"], ["c", "d"]], r"could not convert"),
    ],
)
@pytest.mark.parametrize("fn", [permutation_test, friedman_test, layer_stats])
def test_bad_degradation_raises(fn, bad, match):
    with pytest.raises(ValueError, match=match):
        fn(bad)


@pytest.mark.parametrize("n", [0, -3, 2.5, True, "10"])
def test_bad_n_permutations_raises(n):
    with pytest.raises(ValueError, match="n_permutations must be an integer >= 1"):
        permutation_test(_planted_matrix(), n_permutations=n)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"confidence": 0.0}, "strictly between 0 and 1"),
        ({"confidence": 1.0}, "strictly between 0 and 1"),
        ({"confidence": 95}, "strictly between 0 and 1"),
        ({"confidence": "high"}, "strictly between 0 and 1"),
        ({"n_resamples": 0}, "n_resamples must be an integer >= 1"),
    ],
)
def test_bad_bootstrap_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(_planted_matrix(), **kwargs)
    with pytest.raises(ValueError, match=match):
        bootstrap_mean_ci(_planted_matrix()[:, 0], **kwargs)


def test_bootstrap_input_shapes():
    bootstrap_ci(np.zeros((3, 1)))  # one layer is fine for a CI
    with pytest.raises(ValueError, match=r"at least 2 examples"):
        bootstrap_ci(np.zeros((1, 3)))
    with pytest.raises(ValueError, match=r"1-D array \[n\]; got shape \(3, 2\)"):
        bootstrap_mean_ci(np.zeros((3, 2)))
    with pytest.raises(ValueError, match=r"at least 2 entries"):
        bootstrap_mean_ci([1.0])
    with pytest.raises(ValueError, match=r"values must be finite"):
        bootstrap_mean_ci([1.0, float("nan")])
