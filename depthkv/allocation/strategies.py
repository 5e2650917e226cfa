"""Exact integer per-layer KV token budgets from per-layer sensitivities (pure numpy).

A fixed global budget of ``total`` KV tokens (average per-layer budget × number of layers) is spread
across the ``L`` layers of a model. Every strategy returns an ``int64`` array ``[L]`` whose sum is
exactly ``total`` and whose entries all lie in ``[floor, max_tokens]``.

Strategies (the math of each is in the docstring of its helper):

- ``uniform``       equal shares, :func:`_uniform_weights`.
- ``proportional``  share ∝ clipped sensitivity, :func:`_proportional_weights`.
- ``softmax``       share ∝ softmax of standardised sensitivity, :func:`_softmax_weights`.
- ``rank``          share ∝ rank of the sensitivity, :func:`_rank_weights`.
- ``pyramid``       PyramidKV's linear schedule (ignores sensitivity), :func:`_pyramid_targets`.
- ``greedy``        marginal gain over measured sensitivity curves, :func:`_greedy`.

Weighted strategies go through :func:`depthkv.profile.apportion.apportion` (floor, CAKE-style
cap-and-redistribute, then largest-remainder rounding). Pure numpy: no torch, no model.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from depthkv.profile.apportion import (
    apportion_bounded,
    as_count,
    as_finite_vector,
    check_total,
    largest_remainder,
    upper_bounds,
)

__all__ = ["DEFAULT_STRATEGY", "STRATEGIES", "allocate_from_sensitivity"]

STRATEGIES = ("uniform", "proportional", "softmax", "rank", "pyramid", "greedy")

# The strategy used when none is named. ``softmax`` (temperature 1) is the one that kept well above
# both baselines at 10% and 20% on all four measured models (the tiny models, SmolLM2-135M and
# Gemma-3-270M); ``greedy`` and ``proportional`` lost to uniform SnapKV on SmolLM2, where they
# leave half the layers at the floor (docs/results.md, "Which strategy, window and compression").
DEFAULT_STRATEGY = "softmax"

# Relative weight given to layers with zero (or negative, clipped) sensitivity by ``proportional``:
# small enough not to matter when any layer is sensitive, and it makes an all-zero profile uniform.
_PROPORTIONAL_EPS = 1e-9


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------


def allocate_from_sensitivity(
    sensitivity,
    total: int,
    strategy: str = DEFAULT_STRATEGY,
    *,
    floor: int = 0,
    max_tokens=None,
    temperature: float = 1.0,
    window: int = 0,
    beta: float = 20.0,
    curves: tuple[np.ndarray, np.ndarray] | None = None,
) -> np.ndarray:
    """Spread ``total`` KV tokens over layers according to their sensitivity.

    Args:
        sensitivity (array_like): float array ``[L]``, mean degradation when that layer alone is pruned (larger =
            more sensitive). May hold zeros and negatives (measurement noise); must be finite.
            ``uniform`` and ``pyramid`` only use its length.
        total: total tokens over all layers (average per-layer budget × ``L``), an integer.
        strategy: one of :data:`STRATEGIES`.
        floor: minimum tokens of every layer (e.g. sink + observation window).
        max_tokens (int or sequence): maximum tokens of every layer (e.g. the context length), or one
            per layer (e.g. a sliding-window layer's window; ``None`` entries uncapped); ``None`` = no cap.
        temperature: ``softmax`` only; > 0. Large → uniform, small → all on the most sensitive layer.
        window: ``pyramid`` only; PyramidKV's observation window ``w`` (tokens kept on top of the
            pyramid in every layer); ``0 <= window <= total / L``.
        beta: ``pyramid`` only; PyramidKV's β >= 1 (default 20): the smallest layer gets
            ``(B - w) / β`` tokens besides the window.
        curves: ``greedy`` only; ``(budget_points [K], degradation [K, L])``: per-layer expected
            degradation measured at ``K`` ascending ablation budgets (tokens).

    Returns:
        int64 array ``[L]``, sum exactly ``total``, every entry in ``[floor, max_tokens]``. Real
        shares are rounded by largest remainder; ties in the remainder go to the more sensitive
        layer, then to the lower layer index. Options of other strategies are ignored.

    Raises:
        ValueError: on an unknown strategy or an invalid or infeasible input; the message names the
            offending value and what would be valid.
    """
    if strategy not in STRATEGIES:
        raise ValueError(
            f"unknown allocation strategy {strategy!r}; valid strategies: {', '.join(STRATEGIES)}"
        )
    s = _check_sensitivity(sensitivity)
    n = s.shape[0]
    total, floor, caps = check_total(total, n, floor, max_tokens)
    lo = np.full(n, floor, dtype=np.int64)
    hi = upper_bounds(n, total, floor, caps)

    if strategy == "pyramid":
        window, beta = _check_pyramid_args(window, beta, total, n)
        if caps is not None and np.any(caps != caps[0]):
            # Per-layer caps (sliding-window layers): the schedule as if uncapped, then the capped
            # layers' excess spread over the others in proportion to their targets.
            targets = _pyramid_targets(n, total, window=window, beta=beta, floor=floor, max_tokens=None)
            return apportion_bounded(targets, total, lo, hi, priority=targets)
        cap = None if caps is None else int(caps[0])
        targets = _pyramid_targets(n, total, window=window, beta=beta, floor=floor, max_tokens=cap)
        return largest_remainder(targets, total, lo, hi, priority=targets)
    if strategy == "greedy":
        points, degradation = _check_curves(curves, n)
        return _greedy(points, degradation, total, lo, hi)
    if strategy == "uniform":
        weights = _uniform_weights(s)
    elif strategy == "proportional":
        weights = _proportional_weights(s)
    elif strategy == "softmax":
        weights = _softmax_weights(s, _check_temperature(temperature))
    else:
        weights = _rank_weights(s)
    # Rounding ties go to the more sensitive layer: weights can tie where sensitivities do not
    # (clipping, float underflow), and this keeps every strategy monotone in the sensitivity.
    return apportion_bounded(weights, total, lo, hi, priority=s)


# --------------------------------------------------------------------------------------------------
# Strategy weights
# --------------------------------------------------------------------------------------------------


def _uniform_weights(s: np.ndarray) -> np.ndarray:
    """``w_l = 1``: every layer gets ``⌊total / L⌋``; the ``total mod L`` tokens left go one each to
    the most sensitive layers (ties: lower layer index)."""
    return np.ones_like(s)


def _proportional_weights(s: np.ndarray) -> np.ndarray:
    """``w_l = max(s_l, 0) + ε``, ``ε = 1e-9 · max_k max(s_k, 0)`` (or 1 when no ``s`` is positive).

    Negative sensitivities (pruning the layer *helped*, i.e. measurement noise) are clipped to 0: a
    budget cannot be negative. ``ε`` is relative, so scaling all sensitivities does not change the
    plan, and an all-zero (or all-negative) profile gives the uniform plan.
    """
    clipped = np.clip(s, 0.0, None)
    top = float(clipped.max())
    eps = _PROPORTIONAL_EPS * top if top > 0 else 1.0
    return clipped + eps


def _softmax_weights(s: np.ndarray, temperature: float) -> np.ndarray:
    """``w_l = softmax(z / T)_l`` with ``z = (s - mean(s)) / std(s)`` (population std).

    Standardising makes ``T`` independent of the metric's scale: ``T → ∞`` gives uniform, ``T → 0``
    gives everything above the floor to the most sensitive layer(s). Constant ``s`` (std 0) gives
    uniform. Computed as ``exp((z - max z) / T)`` so it cannot overflow.
    """
    if np.ptp(s) == 0:
        return np.ones_like(s)
    s = s / np.abs(s).max()  # z is scale-free; this only keeps mean/std from overflowing
    z = (s - s.mean()) / s.std()
    return np.exp((z - z.max()) / temperature)


def _rank_weights(s: np.ndarray) -> np.ndarray:
    """``w_l = rank(s_l)``: 1 for the least sensitive layer … ``L`` for the most; ties get the mean
    of the ranks they span (as ``scipy.stats.rankdata(method="average")``)."""
    order = np.argsort(s, kind="stable")
    sorted_s = s[order]
    # Start of each run of equal values in sorted order; a run spanning ranks a..b gets (a+b)/2.
    starts = np.flatnonzero(np.r_[True, sorted_s[1:] != sorted_s[:-1]])
    ends = np.r_[starts[1:], s.shape[0]]
    run_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty_like(s)
    ranks[order] = np.repeat(run_rank, ends - starts)
    return ranks


# --------------------------------------------------------------------------------------------------
# Pyramid (PyramidKV, https://arxiv.org/abs/2406.02069)
# --------------------------------------------------------------------------------------------------


def _pyramid_targets(
    n: int, total: int, *, window: int, beta: float, floor: int, max_tokens: int | None
) -> np.ndarray:
    """PyramidKV's per-layer schedule as real numbers, ``[L]``, summing to ``total``.

    With ``B = total / L`` and observation window ``w``::

        min = (B - w) / β
        max = 2 (B - w) - min
        target_l = w + max - l · (max - min) / (L - 1)        (L == 1: target = B)

    so the schedule falls linearly from layer 0 to layer ``L - 1`` and its mean is exactly ``B``.

    Bounds keep the mean and flatten the slope, as PyramidKV itself does when ``max`` exceeds the
    prompt (``max = q_len - w; min = 2 (B - w) - max``): the lowest budget ``w + min`` is raised to
    ``max(w + min, floor, 2B - max_tokens)`` and the highest set to ``2B - (lowest)``, which puts
    every target in ``[floor, max_tokens]`` (feasible because ``floor <= B <= max_tokens``).

    Rounding differs from the reference code on purpose. KVCache-Factory
    (``pyramidkv/pyramidkv_utils.py``) uses integer division (``min = (B - w) // β``,
    ``steps = (max - min) // (L - 1)``, budget ``max - l·steps`` plus ``w``), so its budgets do not
    sum to ``L·B`` (e.g. L=4, B=128, w=32: 220, 159, 98, 37 = 514); kvpress rounds each layer's
    real value on its own. Here the real targets are rounded together with largest-remainder
    rounding (ties to the larger target, then the lower layer), so the sum is exactly ``total`` and
    the budgets still never increase with depth (L=4, B=128, w=32: 219, 158, 98, 37 = 512).
    """
    mean = total / n
    if n == 1:
        return np.array([float(total)])
    low = window + (mean - window) / beta
    low = max(low, float(floor))
    if max_tokens is not None:
        low = max(low, 2.0 * mean - max_tokens)
    high = 2.0 * mean - low
    step = (high - low) / (n - 1)
    targets = high - np.arange(n) * step
    # Endpoints exact so float drift cannot step outside [floor, max_tokens].
    targets[-1] = low
    return targets


# --------------------------------------------------------------------------------------------------
# Greedy over sensitivity curves
# --------------------------------------------------------------------------------------------------


def _greedy(
    points: np.ndarray, degradation: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray
) -> np.ndarray:
    """Marginal-gain allocation over per-layer loss curves (separable resource allocation).

    Model: layer ``l``'s expected degradation at budget ``b`` is ``f_l(b)``, the piecewise-linear
    interpolation of ``degradation[:, l]`` at ``points`` (constant outside ``[points[0],
    points[-1]]``). Problem: minimise ``Σ_l f_l(b_l)`` over integers with ``Σ_l b_l = total`` and
    ``floor <= b_l <= max``.

    Algorithm: every layer starts at ``floor``; the next chunk of tokens always goes to the layer
    whose next chunk reduces its loss most per token. On integers ``f_l`` is linear between the
    knots ``floor``, ``⌊p_k⌋``, ``⌈p_k⌉`` and its upper bound, so each layer is a short list of
    chunks (integer length, gain per token), ``O(K)`` of them. Each layer's chunks are those of its
    lower convex hull (greatest convex minorant) from ``floor``, so their gains per token decrease
    along the layer; sorting all chunks by gain per token and filling in that order is the greedy
    rule, in ``O(L·K·log(L·K))`` instead of ``O(total·L)``; the last chunk is filled partially so
    the sum is exact. When no chunk with a positive gain is left (the budget exceeds every curve's
    useful range), the remaining tokens are added in equal shares to the layers with room (capped
    layers' shares redistributed, as in :func:`apportion`).

    Optimality: when every ``f_l`` is convex and non-increasing on ``[floor, max]`` (e.g. the first
    point is at or below ``floor``), the hull is ``f_l`` itself and this is the classic greedy for
    separable convex resource allocation, which is optimal over integer budgets (each unit token's
    marginal gain is non-increasing per layer, so taking the largest gains first is optimal by an
    exchange argument). For non-convex curves (noisy measurements, or the flat clamp below
    ``points[0]``) it is optimal for the convexified curves, a heuristic for the real ones.
    """
    n = lo.shape[0]
    budgets = lo.astype(np.int64).copy()
    remaining = total - int(budgets.sum())
    layers, lengths, gains = [], [], []
    for layer in range(n):
        knots = _integer_knots(points, int(lo[layer]), int(hi[layer]))
        values = np.interp(knots, points, degradation[:, layer])
        hull = _lower_hull(knots, values)
        dx = np.diff(knots[hull])
        gain = -np.diff(values[hull]) / dx
        keep = gain > 0
        layers.append(np.full(int(keep.sum()), layer))
        lengths.append(dx[keep])
        gains.append(gain[keep])
    layer_of = np.concatenate(layers).astype(np.int64)
    length = np.concatenate(lengths).astype(np.int64)
    gain = np.concatenate(gains)
    # Largest gain first; ties to the lower layer; a layer's chunks keep their order (stable sort).
    order = np.lexsort((layer_of, -gain))
    taken = np.minimum(length[order], np.maximum(remaining - (np.cumsum(length[order]) - length[order]), 0))
    np.add.at(budgets, layer_of[order], taken)
    remaining -= int(taken.sum())
    if remaining > 0:
        room = hi - budgets
        budgets += apportion_bounded(np.ones(n), remaining, np.zeros(n, dtype=np.int64), room)
    return budgets


def _integer_knots(points: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integer budgets in ``[lo, hi]`` between which the interpolated curve is linear, ``[M]``."""
    inside = points[(points > lo) & (points < hi)]
    knots = np.concatenate(([lo, hi], np.floor(inside), np.ceil(inside)))
    return np.unique(knots.astype(np.int64))


def _lower_hull(x: np.ndarray, y: np.ndarray) -> list[int]:
    """Indices of the lower convex hull of points sorted by strictly increasing ``x`` (Andrew's
    monotone chain); collinear points are dropped so hull slopes strictly increase."""
    hull: list[int] = []
    for i in range(x.shape[0]):
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            cross = (x[b] - x[a]) * (y[i] - y[a]) - (y[b] - y[a]) * (x[i] - x[a])
            if cross > 0:
                break
            hull.pop()
        hull.append(i)
    return hull


# --------------------------------------------------------------------------------------------------
# Apportionment and rounding
# --------------------------------------------------------------------------------------------------


def _check_sensitivity(sensitivity) -> np.ndarray:
    return as_finite_vector(sensitivity, "sensitivity")


def _check_temperature(temperature) -> float:
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real):
        raise ValueError(f"temperature must be a positive number; got {temperature!r}")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise ValueError(f"temperature must be a finite number > 0; got {temperature!r}")
    return t


def _check_pyramid_args(window, beta, total: int, n: int) -> tuple[int, float]:
    window = as_count(window, "window")
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real) or not math.isfinite(float(beta)):
        raise ValueError(f"beta must be a finite number >= 1; got {beta!r}")
    if beta < 1:
        raise ValueError(f"beta must be >= 1 (PyramidKV's default is 20); got {beta!r}")
    if window * n > total:
        raise ValueError(
            f"window {window} is above the average per-layer budget {total / n:g} "
            f"(total {total} / {n} layers); use window <= {total // n} or raise the budget"
        )
    return window, float(beta)


def _check_curves(curves, n: int) -> tuple[np.ndarray, np.ndarray]:
    if curves is None:
        raise ValueError(
            "strategy 'greedy' needs sensitivity curves measured at several ablation budgets "
            "(curves=(budget_points [K], degradation [K, layers])); calibrate with a list of "
            "ablation budgets, or pick another strategy"
        )
    try:
        points, degradation = curves
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"curves must be a pair (budget_points [K], degradation [K, layers]); got {type(curves).__name__}"
        ) from exc
    points = as_finite_vector(points, "curves budget_points")
    if np.any(points < 0):
        raise ValueError(f"curves budget_points must be >= 0 tokens; got {points.tolist()}")
    if np.any(np.diff(points) <= 0):
        raise ValueError(f"curves budget_points must be strictly ascending; got {points.tolist()}")
    try:
        degradation = np.asarray(degradation, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("curves degradation must be a float array [K, layers]") from exc
    k = points.shape[0]
    if degradation.shape != (k, n):
        raise ValueError(
            f"curves degradation has shape {degradation.shape}; expected ({k}, {n}) = "
            f"(number of budget points, number of layers)"
        )
    if not np.all(np.isfinite(degradation)):
        raise ValueError("curves degradation must be finite; it contains NaN or inf")
    return points, degradation
