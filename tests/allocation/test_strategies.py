"""Tests for depthkv.allocate_core: exact integer budgets for every strategy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depthkv.allocation.strategies import STRATEGIES, allocate_from_sensitivity
from depthkv.profile.apportion import apportion

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Values that make sensitivities awkward: zeros, negatives, ties, tiny and large magnitudes.
AWKWARD = [0.0, -0.5, 1.0, 1.0, 2.5, 1e-12, -1e-9, 1e3]
SENSITIVITY_VALUE = st.one_of(
    st.sampled_from(AWKWARD), st.floats(min_value=-5, max_value=50, allow_nan=False, allow_subnormal=False)
)


def curve_loss(budgets, points, degradation):
    """Total degradation of a plan under the piecewise-linear (clamped) curve model."""
    return float(sum(np.interp(b, points, degradation[:, i]) for i, b in enumerate(budgets)))


@st.composite
def budgets(draw, max_layers=80):
    """(n, total, floor, max_tokens) that are feasible."""
    n = draw(st.integers(1, max_layers))
    floor = draw(st.integers(0, 40))
    total = n * floor + draw(st.integers(0, 4000))
    max_tokens = None
    if draw(st.booleans()):
        lowest = max(floor, -(-total // n))
        max_tokens = lowest + draw(st.integers(0, 300))
    return n, total, floor, max_tokens


@st.composite
def random_curves(draw, n):
    """Arbitrary valid curves (not necessarily monotone or convex)."""
    k = draw(st.integers(1, 5))
    gaps = draw(st.lists(st.floats(0.5, 400), min_size=k, max_size=k))
    points = np.cumsum(gaps) - gaps[0] + draw(st.floats(0, 100))
    if draw(st.booleans()):
        points = np.round(points)
        points = np.unique(points)
    k = points.shape[0]
    deg = draw(st.lists(st.floats(-1, 5, allow_subnormal=False), min_size=k * n, max_size=k * n))
    return points, np.asarray(deg).reshape(k, n)


@st.composite
def convex_curves(draw, n, start=0.0):
    """Convex, non-increasing curves whose first point is ``start`` (so convex on [start, inf))."""
    k = draw(st.integers(2, 5))
    gaps = np.asarray(
        draw(st.lists(st.sampled_from([1.0, 2.5, 7.0, 10.0, 33.3, 120.0]), min_size=k - 1, max_size=k - 1))
    )
    points = start + np.r_[0.0, np.cumsum(gaps)]
    deg = np.empty((k, n))
    for layer in range(n):
        slopes = sorted(
            draw(st.lists(st.floats(0, 2, allow_subnormal=False), min_size=k - 1, max_size=k - 1)),
            reverse=True,
        )
        tail = draw(st.floats(0, 1, allow_subnormal=False))
        deg[-1, layer] = tail
        for j in range(k - 2, -1, -1):
            deg[j, layer] = deg[j + 1, layer] + slopes[j] * gaps[j]
    return points, deg


def check_plan(plan, total, floor, max_tokens, n):
    assert plan.dtype == np.int64
    assert plan.shape == (n,)
    assert int(plan.sum()) == total
    assert plan.min() >= floor
    if max_tokens is not None:
        assert plan.max() <= max_tokens


# ----------------------------------------------------------------------------------------------
# Invariants for every strategy
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
@SETTINGS
@given(data=st.data())
def test_every_strategy_exact_sum_and_bounds(strategy, data):
    n, total, floor, max_tokens = data.draw(budgets())
    s = np.asarray(data.draw(st.lists(SENSITIVITY_VALUE, min_size=n, max_size=n)))
    kwargs = {}
    if strategy == "softmax":
        kwargs["temperature"] = data.draw(st.sampled_from([1e-3, 0.1, 1.0, 10.0, 1e4]))
    if strategy == "pyramid":
        kwargs["window"] = data.draw(st.integers(0, total // n))
        kwargs["beta"] = data.draw(st.sampled_from([1.0, 2.0, 20.0, 100.0]))
    if strategy == "greedy":
        kwargs["curves"] = data.draw(random_curves(n))
    plan = allocate_from_sensitivity(s, total, strategy, floor=floor, max_tokens=max_tokens, **kwargs)
    check_plan(plan, total, floor, max_tokens, n)


@SETTINGS
@given(data=st.data())
def test_apportion_exact_sum_and_bounds(data):
    n, total, floor, max_tokens = data.draw(budgets())
    w = np.asarray(
        data.draw(st.lists(st.sampled_from([0.0, 0.0, 1.0, 3.0, 1e-15, 1e6]), min_size=n, max_size=n))
    )
    plan = apportion(w, total, floor, max_tokens)
    check_plan(plan, total, floor, max_tokens, n)
    # Monotone in the weights.
    order = np.argsort(w, kind="stable")
    assert np.all(np.diff(plan[order])[np.diff(w[order]) > 0] >= 0)


def test_apportion_caps_and_redistributes_cake_style():
    # Layer 0 is offered 90 of 100 but capped at 40; the other 60 are offered to layers 1 and 2 in
    # ratio 4:1 (48, 12), so layer 1 caps too and layer 2 takes the remaining 20.
    plan = apportion([9.0, 0.8, 0.2], 100, floor=0, max_tokens=40)
    np.testing.assert_array_equal(plan, [40, 40, 20])
    plan = apportion([9.0, 2.0, 1.0], 100, floor=0, max_tokens=70)
    np.testing.assert_array_equal(plan, [70, 20, 10])


def test_apportion_zero_weights_get_only_what_weighted_layers_cannot_take():
    np.testing.assert_array_equal(apportion([1.0, 0.0, 0.0], 10, floor=1), [8, 1, 1])
    np.testing.assert_array_equal(apportion([1.0, 0.0, 0.0], 10, floor=1, max_tokens=4), [4, 3, 3])
    np.testing.assert_array_equal(apportion([0.0, 0.0, 0.0], 10), [4, 3, 3])


def test_largest_remainder_ties_go_to_lower_layer_index():
    np.testing.assert_array_equal(apportion([1.0, 1.0, 1.0, 1.0], 6), [2, 2, 1, 1])


# ----------------------------------------------------------------------------------------------
# Shape of each strategy
# ----------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_uniform_is_as_equal_as_possible(data):
    n, total, floor, max_tokens = data.draw(budgets())
    s = np.asarray(data.draw(st.lists(SENSITIVITY_VALUE, min_size=n, max_size=n)))
    plan = allocate_from_sensitivity(s, total, "uniform", floor=floor, max_tokens=max_tokens)
    assert plan.max() - plan.min() <= 1


@pytest.mark.parametrize("strategy", ["proportional", "rank", "softmax"])
@SETTINGS
@given(data=st.data())
def test_more_sensitive_layers_never_get_fewer_tokens(strategy, data):
    n, total, floor, max_tokens = data.draw(budgets())
    s = np.asarray(data.draw(st.lists(SENSITIVITY_VALUE, min_size=n, max_size=n)))
    plan = allocate_from_sensitivity(s, total, strategy, floor=floor, max_tokens=max_tokens)
    # proportional clips negatives to 0, so only the clipped order is meaningful for it.
    key = np.clip(s, 0, None) if strategy == "proportional" else s
    higher, lower = np.nonzero(key[:, None] > key[None, :])
    assert np.all(plan[higher] >= plan[lower])


def test_proportional_follows_the_sensitivity_and_clips_negatives():
    plan = allocate_from_sensitivity([1.0, 3.0, -2.0, 0.0], 400, "proportional")
    np.testing.assert_array_equal(plan, [100, 300, 0, 0])
    # Scale invariance, and all-zero / all-negative → uniform.
    np.testing.assert_array_equal(
        allocate_from_sensitivity([1e-8, 3e-8, -2e-8, 0.0], 400, "proportional"), plan
    )
    np.testing.assert_array_equal(allocate_from_sensitivity([0.0] * 4, 400, "proportional"), [100] * 4)
    np.testing.assert_array_equal(allocate_from_sensitivity([-1.0, -3.0], 10, "proportional"), [5, 5])


def test_softmax_temperature_limits():
    s = np.array([0.1, 0.9, 0.3, 0.2, 0.05])
    hot = allocate_from_sensitivity(s, 1003, "softmax", temperature=1e6)
    assert hot.max() - hot.min() <= 1
    cold = allocate_from_sensitivity(s, 1003, "softmax", temperature=1e-3, floor=16)
    np.testing.assert_array_equal(cold, [16, 1003 - 4 * 16, 16, 16, 16])
    # Constant sensitivity (std 0) is uniform at any temperature.
    flat = allocate_from_sensitivity([0.3] * 3, 30, "softmax", temperature=1e-3)
    np.testing.assert_array_equal(flat, [10, 10, 10])


def test_softmax_is_scale_free():
    s = np.array([0.1, 0.9, 0.3, 0.2])
    a = allocate_from_sensitivity(s, 1000, "softmax", temperature=0.7)
    b = allocate_from_sensitivity(s * 1e4 - 3, 1000, "softmax", temperature=0.7)
    np.testing.assert_array_equal(a, b)


def test_rank_uses_average_ranks_for_ties():
    # ranks: 1, 2.5, 2.5, 4 → weights sum 10
    plan = allocate_from_sensitivity([0.0, 5.0, 5.0, 9.0], 100, "rank")
    np.testing.assert_array_equal(plan, [10, 25, 25, 40])


# ----------------------------------------------------------------------------------------------
# Pyramid
# ----------------------------------------------------------------------------------------------


def test_pyramid_hand_computed_case():
    # L=4, B=128, w=32, β=20: min=4.8, max=187.2, step=60.8 → 219.2, 158.4, 97.6, 36.8;
    # Hamilton: floors 219+158+97+36=510, the 2 missing tokens to fractions .8 and .6.
    plan = allocate_from_sensitivity(np.zeros(4), 512, "pyramid", window=32, beta=20)
    np.testing.assert_array_equal(plan, [219, 158, 98, 37])
    # No window: min=6.4, max=249.6, step=81.07 → 249.6, 168.53, 87.47, 6.4 → 250, 169, 87, 6
    np.testing.assert_array_equal(allocate_from_sensitivity(np.zeros(4), 512, "pyramid"), [250, 169, 87, 6])


def test_pyramid_single_layer_and_ignores_sensitivity():
    np.testing.assert_array_equal(allocate_from_sensitivity([3.0], 77, "pyramid", window=10), [77])
    a = allocate_from_sensitivity([0.0, 1.0, 2.0], 300, "pyramid")
    b = allocate_from_sensitivity([9.0, -1.0, 2.0], 300, "pyramid")
    np.testing.assert_array_equal(a, b)


def test_pyramid_bounds_flatten_the_slope_keeping_the_mean():
    # Unbounded: 190, 100, 10. Floor 40 raises the bottom to 40 and the top to 160.
    np.testing.assert_array_equal(
        allocate_from_sensitivity(np.zeros(3), 300, "pyramid", beta=10), [190, 100, 10]
    )
    np.testing.assert_array_equal(
        allocate_from_sensitivity(np.zeros(3), 300, "pyramid", beta=10, floor=40), [160, 100, 40]
    )
    np.testing.assert_array_equal(
        allocate_from_sensitivity(np.zeros(3), 300, "pyramid", beta=10, max_tokens=150), [150, 100, 50]
    )


@SETTINGS
@given(data=st.data())
def test_pyramid_decreases_with_depth_and_keeps_the_mean(data):
    n, total, floor, max_tokens = data.draw(budgets())
    window = data.draw(st.integers(0, total // n))
    beta = data.draw(st.floats(1, 50))
    plan = allocate_from_sensitivity(
        np.zeros(n), total, "pyramid", floor=floor, max_tokens=max_tokens, window=window, beta=beta
    )
    check_plan(plan, total, floor, max_tokens, n)
    assert np.all(np.diff(plan) <= 0)
    assert plan.min() >= min(window, total // n)


# ----------------------------------------------------------------------------------------------
# Greedy
# ----------------------------------------------------------------------------------------------


@SETTINGS
@given(data=st.data())
def test_greedy_beats_every_other_strategy_on_convex_curves(data):
    n = data.draw(st.integers(1, 12))
    floor = data.draw(st.integers(0, 20))
    total = n * floor + data.draw(st.integers(0, 600))
    max_tokens = None
    if data.draw(st.booleans()):
        max_tokens = max(floor, -(-total // n)) + data.draw(st.integers(0, 60))
    points, deg = data.draw(convex_curves(n, start=data.draw(st.sampled_from([0.0, float(floor)]))))
    s = deg[0] - deg[-1]
    kw = dict(floor=floor, max_tokens=max_tokens)
    greedy = allocate_from_sensitivity(s, total, "greedy", curves=(points, deg), **kw)
    check_plan(greedy, total, floor, max_tokens, n)
    best = curve_loss(greedy, points, deg)
    for strategy in STRATEGIES[:-1]:
        other = allocate_from_sensitivity(s, total, strategy, **kw)
        assert best <= curve_loss(other, points, deg) + 1e-9 * (1 + abs(best))


def brute_force_best(total, floor, max_tokens, points, deg):
    top = total if max_tokens is None else max_tokens
    best = np.inf
    for a, b in itertools.product(range(floor, top + 1), repeat=2):
        c = total - a - b
        if floor <= c <= top:
            best = min(best, curve_loss((a, b, c), points, deg))
    return best


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_greedy_matches_brute_force_on_tiny_cases(data):
    floor = data.draw(st.integers(0, 3))
    total = 3 * floor + data.draw(st.integers(0, 30))
    max_tokens = None
    if data.draw(st.booleans()):
        max_tokens = max(floor, -(-total // 3)) + data.draw(st.integers(0, 6))
    k = data.draw(st.integers(2, 4))
    gaps = np.asarray(
        data.draw(st.lists(st.sampled_from([1.0, 1.5, 2.0, 3.7, 5.0, 8.0]), min_size=k - 1, max_size=k - 1))
    )
    points = np.r_[0.0, np.cumsum(gaps)]
    deg = np.empty((k, 3))
    for layer in range(3):
        slopes = sorted(data.draw(st.lists(st.integers(0, 9), min_size=k - 1, max_size=k - 1)), reverse=True)
        deg[-1, layer] = data.draw(st.integers(0, 3))
        for j in range(k - 2, -1, -1):
            deg[j, layer] = deg[j + 1, layer] + slopes[j] * gaps[j]
    plan = allocate_from_sensitivity(
        np.zeros(3), total, "greedy", floor=floor, max_tokens=max_tokens, curves=(points, deg)
    )
    check_plan(plan, total, floor, max_tokens, 3)
    assert curve_loss(plan, points, deg) == pytest.approx(
        brute_force_best(total, floor, max_tokens, points, deg)
    )


def test_greedy_hand_computed_case():
    # Layer 0 loses 1.0/token up to 10 then nothing; layer 1 loses 0.5/token up to 20.
    points = np.array([0.0, 10.0, 20.0])
    deg = np.array([[10.0, 10.0], [0.0, 5.0], [0.0, 0.0]])
    plan = allocate_from_sensitivity([0.0, 0.0], 15, "greedy", curves=(points, deg))
    np.testing.assert_array_equal(plan, [10, 5])
    # Past every useful point (10 + 20 tokens), the 20 left over are added in equal shares.
    plan = allocate_from_sensitivity([0.0, 0.0], 50, "greedy", curves=(points, deg))
    np.testing.assert_array_equal(plan, [20, 30])


def test_greedy_crosses_the_flat_clamp_below_the_first_point():
    # Curves measured from 10 tokens on: below that the model is flat (clamped); the hull still
    # sees that tokens up to 10 pay off for the layer that drops steeply there.
    points = np.array([10.0, 20.0])
    deg = np.array([[8.0, 1.0], [0.0, 0.5]])
    plan = allocate_from_sensitivity([0.0, 0.0], 22, "greedy", curves=(points, deg))
    np.testing.assert_array_equal(plan, [20, 2])


def test_greedy_with_float_points_is_exact():
    points = np.array([19.2, 38.4, 96.0])
    deg = np.array([[3.0, 1.0, 2.0], [1.0, 0.5, 0.2], [0.0, 0.0, 0.0]])
    plan = allocate_from_sensitivity(np.zeros(3), 101, "greedy", floor=4, max_tokens=96, curves=(points, deg))
    check_plan(plan, 101, 4, 96, 3)


# ----------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------

GOOD_CURVES = (np.array([10.0, 20.0]), np.ones((2, 3)))


@pytest.mark.parametrize(
    ("args", "kwargs", "needle"),
    [
        (([1.0, 2.0], 10, "magic"), {}, "'magic'"),
        (([1.0, 2.0], 10, "magic"), {}, "greedy"),
        (([[1.0, 2.0]], 10), {}, "(1, 2)"),
        (([], 10), {}, "empty"),
        (([1.0, float("nan")], 10), {}, "nan"),
        (([1.0, float("inf")], 10), {}, "[1]"),
        (
            ([1.0, 2.0], 10),
            {"floor": 6},
            "total budget 10 tokens is below the floor: 2 layers × floor 6 = 12",
        ),
        (([1.0, 2.0], 30), {"max_tokens": 12}, "2 layers × max_tokens 12 = 24"),
        (([1.0, 2.0], 10), {"floor": 5, "max_tokens": 4}, "floor 5 is above max_tokens 4"),
        (([1.0, 2.0], -1), {}, "-1"),
        (([1.0, 2.0], 10.5), {}, "10.5"),
        (([1.0, 2.0], 10), {"floor": -2}, "-2"),
        (([1.0, 2.0], 10), {"max_tokens": -3}, "-3"),
        (([1.0, 2.0], 10, "softmax"), {"temperature": 0.0}, "0.0"),
        (([1.0, 2.0], 10, "softmax"), {"temperature": -1.5}, "-1.5"),
        (([1.0, 2.0], 10, "pyramid"), {"window": 6}, "window 6"),
        (([1.0, 2.0], 10, "pyramid"), {"window": -1}, "-1"),
        (([1.0, 2.0], 10, "pyramid"), {"beta": 0.5}, "0.5"),
        (([1.0, 2.0, 3.0], 10, "greedy"), {}, "ablation budgets"),
        (
            ([1.0, 2.0, 3.0], 10, "greedy"),
            {"curves": (np.array([20.0, 10.0]), np.ones((2, 3)))},
            "[20.0, 10.0]",
        ),
        (([1.0, 2.0, 3.0], 10, "greedy"), {"curves": (np.array([10.0, 10.0]), np.ones((2, 3)))}, "ascending"),
        (([1.0, 2.0, 3.0], 10, "greedy"), {"curves": (np.array([10.0, 20.0]), np.ones((2, 4)))}, "(2, 4)"),
        (
            ([1.0, 2.0, 3.0], 10, "greedy"),
            {"curves": (np.array([10.0, 20.0]), np.ones((3, 3)))},
            "expected (2, 3)",
        ),
        (([1.0, 2.0, 3.0], 10, "greedy"), {"curves": (np.array([-5.0, 20.0]), np.ones((2, 3)))}, "-5.0"),
        (([1.0, 2.0, 3.0], 10, "greedy"), {"curves": np.ones(3)}, "pair"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_value(args, kwargs, needle):
    with pytest.raises(ValueError) as info:
        allocate_from_sensitivity(*args, **kwargs)
    assert needle in str(info.value)


def test_good_curves_fixture_is_valid():
    check_plan(allocate_from_sensitivity([1.0, 2.0, 3.0], 30, "greedy", curves=GOOD_CURVES), 30, 0, None, 3)


@pytest.mark.parametrize(
    ("weights", "needle"),
    [([1.0, -2.0], "-2.0"), ([[1.0]], "(1, 1)"), ([1.0, float("nan")], "nan"), ([], "empty")],
)
def test_apportion_rejects_bad_weights(weights, needle):
    with pytest.raises(ValueError) as info:
        apportion(weights, 10)
    assert needle in str(info.value)


def test_integral_float_total_is_accepted():
    np.testing.assert_array_equal(allocate_from_sensitivity([1.0, 1.0], 10.0, "uniform"), [5, 5])
