"""Statistics on a per-example, per-layer degradation matrix.

Every function here takes the calibration result ``degradation`` of shape ``[examples, layers]``:
``degradation[i, l]`` is how much worse example ``i`` got when only layer ``l`` was pruned (answer
NLL increase, KL, or score drop). From it we ask two questions:

* do the layers really differ? (:func:`permutation_test`, with :func:`friedman_test` as a
  rank-based cross-check), and
* how well is each layer's mean degradation known? (:func:`bootstrap_ci`).

The permutation test follows DepthKV ("DepthKV: layer-dependent KV cache pruning",
https://arxiv.org/abs/2604.24647): the null hypothesis is that all layers are equally important.

This module depends only on numpy and scipy.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.stats

__all__ = [
    "BootstrapCI",
    "FriedmanResult",
    "LayerStats",
    "PermutationResult",
    "bootstrap_ci",
    "bootstrap_mean_ci",
    "friedman_test",
    "layer_stats",
    "permutation_test",
]

# Upper bound on float64 elements materialised at once by the resampling loops (32 MiB); keeps
# e.g. 500 examples x 80 layers x 10,000 permutations bounded instead of 3 GB.
_CHUNK_ELEMENTS = 1 << 22

# Permutations that only relabel whole columns give the observed statistic up to summation order;
# they must count as ">= observed", so the comparison allows this much relative rounding slack.
_TIE_RTOL = 1e-10


# --------------------------------------------------------------------------- validation


def _as_matrix(degradation: Any, *, min_examples: int = 2, min_layers: int = 2) -> np.ndarray:
    """Return ``degradation`` as a finite float64 ``[examples, layers]`` array or raise ValueError."""
    try:
        x = np.asarray(degradation, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            "degradation must be a 2-D array of numbers [examples, layers] "
            f"(e.g. a numpy array or a list of equal-length lists); could not convert it: {exc}"
        ) from exc
    if x.ndim != 2:
        raise ValueError(f"degradation must be a 2-D array [examples, layers]; got shape {x.shape}")
    n, num_layers = x.shape
    if n < min_examples:
        raise ValueError(
            f"degradation needs at least {min_examples} examples (rows) of shape [examples, layers]; "
            f"got shape {x.shape}"
        )
    if num_layers < min_layers:
        raise ValueError(
            f"degradation needs at least {min_layers} layers (columns) of shape [examples, layers]; "
            f"got shape {x.shape}"
        )
    _check_finite(x, "degradation")
    return x


def _as_vector(values: Any, *, min_len: int = 2) -> np.ndarray:
    """Return ``values`` as a finite float64 ``[n]`` array or raise ValueError."""
    try:
        v = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"values must be a 1-D array of numbers [n]; could not convert it: {exc}") from exc
    if v.ndim != 1:
        raise ValueError(f"values must be a 1-D array [n]; got shape {v.shape}")
    if v.shape[0] < min_len:
        raise ValueError(f"values needs at least {min_len} entries; got shape {v.shape}")
    _check_finite(v, "values")
    return v


def _check_finite(x: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(x)
    if bad.any():
        where = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must be finite; found {int(bad.sum())} NaN/inf value(s), the first at index {where} "
            f"(value {x[where]!r}). Drop or impute those examples first."
        )


def _check_count(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


def _check_confidence(confidence: Any) -> float:
    try:
        c = float(confidence)
    except (TypeError, ValueError):
        raise ValueError(
            f"confidence must be a number strictly between 0 and 1; got {confidence!r}"
        ) from None
    if not 0.0 < c < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1 (e.g. 0.95); got {confidence!r}")
    return c


# --------------------------------------------------------------------------- permutation test


@dataclass(frozen=True)
class PermutationResult:
    """Outcome of :func:`permutation_test`.

    Attributes:
        statistic: observed variance across layers of the per-layer mean degradation.
        pvalue: Monte-Carlo p-value ``(1 + #{null >= statistic}) / (1 + n_permutations)``, in (0, 1].
        n_permutations: number of random permutations drawn.
        null_mean: mean of the permutation null distribution of the statistic.
        null_std: standard deviation (ddof=0) of the permutation null distribution.
    """

    statistic: float
    pvalue: float
    n_permutations: int
    null_mean: float
    null_std: float

    def to_dict(self) -> dict[str, float | int]:
        """Plain-python (JSON-serialisable) form; :meth:`from_dict` inverts it."""
        return {
            "statistic": float(self.statistic),
            "pvalue": float(self.pvalue),
            "n_permutations": int(self.n_permutations),
            "null_mean": float(self.null_mean),
            "null_std": float(self.null_std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PermutationResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            statistic=float(d["statistic"]),
            pvalue=float(d["pvalue"]),
            n_permutations=int(d["n_permutations"]),
            null_mean=float(d["null_mean"]),
            null_std=float(d["null_std"]),
        )


def _layer_mean_variance(x: np.ndarray) -> np.ndarray:
    """Statistic for a stack of matrices: ``[P, examples, layers] -> [P]``.

    ``T = Var_l( mean_i x[p, i, l] )`` with ddof=0.
    """
    return x.mean(axis=1).var(axis=1)


def permutation_test(
    degradation: Any,
    n_permutations: int = 10_000,
    seed: int | None = 0,
) -> PermutationResult:
    """Permutation test of "all layers are equally important" (DepthKV, arXiv 2604.24647).

    Args:
        degradation: ``[examples, layers]`` float array; ``degradation[i, l]`` is the degradation of
            example ``i`` when only layer ``l`` is pruned. Needs >= 2 examples, >= 2 layers, all
            finite.
        n_permutations: number of random permutations ``P`` (>= 1). The smallest attainable p-value
            is ``1 / (P + 1)``.
        seed: seed for ``numpy.random.default_rng``; ``None`` draws fresh entropy. The same seed and
            input give the same result bit for bit.

    Math: with ``X`` of shape ``[n, L]`` and per-layer means ``m_l = (1/n) sum_i X[i, l]``, the
    statistic is the spread of the layer means

        T(X) = (1/L) sum_l (m_l - mean_l m_l)^2        (variance across layers, ddof=0).

    Under the null, within each example the layer labels are exchangeable (example difficulty may
    differ arbitrarily: a per-row offset does not change ``T`` nor the null). Each null draw
    applies an independent random permutation ``pi_i`` to every row, ``X*[i, l] = X[i, pi_i(l)]``,
    and recomputes ``T(X*)``. The p-value counts the observed arrangement as one of the draws:

        p = (1 + #{b : T(X*_b) >= T(X)}) / (1 + P),

    which is never 0 and gives a test of exact size at levels that are multiples of ``1/(P+1)``.

    Cost is ``O(P * n * L)``; permutations are generated in chunks of at most ~4M elements so memory
    stays bounded (500 x 80 x 10,000 takes a few seconds on one core).

    Returns:
        :class:`PermutationResult` with the observed statistic, p-value and null mean/std.

    Raises:
        ValueError: if ``degradation`` is not a finite 2-D array with >= 2 rows and columns, or
            ``n_permutations < 1``.
    """
    x = _as_matrix(degradation)
    n_permutations = _check_count(n_permutations, "n_permutations")
    rng = np.random.default_rng(seed)

    observed = float(_layer_mean_variance(x[None])[0])
    null = _permutation_null(x, n_permutations, rng)

    n_extreme = int(np.count_nonzero(null >= observed - _TIE_RTOL * abs(observed)))
    return PermutationResult(
        statistic=observed,
        pvalue=(1 + n_extreme) / (1 + n_permutations),
        n_permutations=n_permutations,
        null_mean=float(null.mean()),
        null_std=float(null.std()),
    )


def _permutation_null(x: np.ndarray, n_permutations: int, rng: np.random.Generator) -> np.ndarray:
    """``[P]`` null statistics from independent row-wise permutations of ``x`` ``[n, L]``.

    ``rng.permuted`` consumes the random stream slice by slice in C order, so the result does not
    depend on the chunk size.
    """
    chunk = max(1, _CHUNK_ELEMENTS // x.size)
    null = np.empty(n_permutations, dtype=np.float64)
    for start in range(0, n_permutations, chunk):
        size = min(chunk, n_permutations - start)
        shuffled = rng.permuted(np.broadcast_to(x, (size, *x.shape)), axis=2)
        null[start : start + size] = _layer_mean_variance(shuffled)
    return null


# --------------------------------------------------------------------------- Friedman


@dataclass(frozen=True)
class FriedmanResult:
    """Outcome of :func:`friedman_test`.

    Attributes:
        statistic: Friedman chi-square statistic (or the Wilcoxon signed-rank ``W`` for 2 layers).
        pvalue: p-value of the test, in [0, 1].
        method: ``"friedman"`` or ``"wilcoxon"`` (the 2-layer fallback).
    """

    statistic: float
    pvalue: float
    method: str = "friedman"

    def to_dict(self) -> dict[str, float | str]:
        """Plain-python (JSON-serialisable) form; :meth:`from_dict` inverts it."""
        return {"statistic": float(self.statistic), "pvalue": float(self.pvalue), "method": self.method}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FriedmanResult:
        """Inverse of :meth:`to_dict`."""
        return cls(
            statistic=float(d["statistic"]),
            pvalue=float(d["pvalue"]),
            method=str(d.get("method", "friedman")),
        )


def friedman_test(degradation: Any) -> FriedmanResult:
    """Friedman rank test of "all layers are equally important", a cross-check of the permutation test.

    Args:
        degradation: ``[examples, layers]`` float array (>= 2 examples, >= 2 layers, finite).

    Math: rank the ``L`` layers within each example (ties get mid-ranks), ``R_l`` = sum of layer
    ``l``'s ranks over the ``n`` examples. Then

        Q = [12 / (n L (L+1)) * sum_l R_l^2 - 3 n (L+1)] / C,

    with ``C`` the tie correction, is approximately chi-square with ``L - 1`` degrees of freedom
    under the null (``scipy.stats.friedmanchisquare``). Working on within-example ranks makes it
    insensitive to per-example difficulty and to outliers, unlike the permutation test on means.

    Special cases:
        * 2 layers: Friedman needs >= 3 groups, so the two-sided Wilcoxon signed-rank test of
          ``degradation[:, 0] - degradation[:, 1]`` is used instead (``scipy.stats.wilcoxon``,
          zero differences dropped); ``method == "wilcoxon"`` and ``statistic`` is its ``W``.
        * every example has the same value at all layers (so no ranking information at all):
          scipy would return NaN (Friedman) or warn (Wilcoxon); we return statistic 0.0 and
          p-value 1.0.

    Returns:
        :class:`FriedmanResult`.

    Raises:
        ValueError: if ``degradation`` is not a finite 2-D array with >= 2 rows and columns.
    """
    x = _as_matrix(degradation)
    method = "friedman" if x.shape[1] >= 3 else "wilcoxon"
    if np.all(x == x[:, :1]):
        return FriedmanResult(statistic=0.0, pvalue=1.0, method=method)
    if method == "friedman":
        res = scipy.stats.friedmanchisquare(*x.T)
    else:
        res = scipy.stats.wilcoxon(x[:, 0], x[:, 1])
    return FriedmanResult(statistic=float(res.statistic), pvalue=float(res.pvalue), method=method)


# --------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True, eq=False)
class BootstrapCI:
    """Per-layer percentile-bootstrap confidence intervals of the mean degradation.

    Attributes:
        mean: ``[layers]`` sample mean over examples.
        low: ``[layers]`` lower end of the interval.
        high: ``[layers]`` upper end of the interval.
        confidence: nominal coverage, e.g. 0.95.
        n_resamples: number of bootstrap resamples.

    The arrays are stored as read-only float64. ``low <= mean <= high`` holds elementwise.
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    confidence: float
    n_resamples: int

    def __post_init__(self) -> None:
        arrays = {}
        for name in ("mean", "low", "high"):
            a = np.array(getattr(self, name), dtype=np.float64)  # copy: we freeze it below
            if a.ndim != 1:
                raise ValueError(f"BootstrapCI.{name} must be 1-D [layers]; got shape {a.shape}")
            a.flags.writeable = False
            arrays[name] = a
        if not arrays["mean"].shape == arrays["low"].shape == arrays["high"].shape:
            raise ValueError(
                "BootstrapCI.mean, low and high must have the same shape [layers]; got "
                f"{arrays['mean'].shape}, {arrays['low'].shape}, {arrays['high'].shape}"
            )
        for name, a in arrays.items():
            object.__setattr__(self, name, a)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, BootstrapCI):
            return NotImplemented
        return (
            np.array_equal(self.mean, other.mean)
            and np.array_equal(self.low, other.low)
            and np.array_equal(self.high, other.high)
            and self.confidence == other.confidence
            and self.n_resamples == other.n_resamples
        )

    __hash__ = None  # type: ignore[assignment]  # holds arrays

    def to_dict(self) -> dict[str, Any]:
        """Plain-python (JSON-serialisable) form; :meth:`from_dict` inverts it."""
        return {
            "mean": self.mean.tolist(),
            "low": self.low.tolist(),
            "high": self.high.tolist(),
            "confidence": float(self.confidence),
            "n_resamples": int(self.n_resamples),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BootstrapCI:
        """Inverse of :meth:`to_dict`."""
        return cls(
            mean=np.asarray(d["mean"], dtype=np.float64),
            low=np.asarray(d["low"], dtype=np.float64),
            high=np.asarray(d["high"], dtype=np.float64),
            confidence=float(d["confidence"]),
            n_resamples=int(d["n_resamples"]),
        )


def _bootstrap_means(x: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Means of row-resampled copies of ``x`` ``[n, L]`` -> ``[n_resamples, L]``.

    Resampling ``n`` rows with replacement is the same as drawing row counts
    ``w ~ Multinomial(n, 1/n)``; the resample mean is then ``w @ x / n`` (one BLAS call per chunk,
    no ``[B, n, L]`` copy).
    """
    n = x.shape[0]
    pvals = np.full(n, 1.0 / n)
    chunk = max(1, _CHUNK_ELEMENTS // n)
    means = np.empty((n_resamples, x.shape[1]), dtype=np.float64)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        counts = rng.multinomial(n, pvals, size=size).astype(np.float64)
        means[start : start + size] = counts @ x / n
    return means


def _percentile_interval(
    boot_means: np.ndarray, mean: np.ndarray, confidence: float
) -> tuple[np.ndarray, np.ndarray]:
    alpha = 1.0 - confidence
    low, high = np.quantile(boot_means, [alpha / 2, 1 - alpha / 2], axis=0)
    # The percentile interval of a mean almost always covers the sample mean; rounding (constant
    # data) or a tiny confidence level can put it just outside, which would give negative error-bar
    # lengths downstream, so widen to include it.
    return np.minimum(low, mean), np.maximum(high, mean)


def bootstrap_ci(
    degradation: Any,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> BootstrapCI:
    """Per-layer percentile-bootstrap CI of the mean degradation over examples.

    Args:
        degradation: ``[examples, layers]`` float array (>= 2 examples, >= 1 layer, finite).
        confidence: nominal coverage in (0, 1), e.g. 0.95.
        n_resamples: number of bootstrap resamples ``B`` (>= 1).
        seed: seed for ``numpy.random.default_rng``; ``None`` draws fresh entropy.

    Math: draw ``B`` resamples of the ``n`` examples with replacement; whole rows are resampled,
    jointly for all layers, so the correlation between layers within an example is kept. For each
    resample ``b`` and layer ``l`` compute ``m*_{b,l} = mean_i X[i*_b, l]``. With
    ``alpha = 1 - confidence``,

        low_l  = quantile_{alpha/2}(m*_{., l}),    high_l = quantile_{1 - alpha/2}(m*_{., l}),

    widened if needed so that ``low_l <= mean_l <= high_l``.

    Returns:
        :class:`BootstrapCI` with ``[layers]`` arrays ``mean``, ``low``, ``high``.

    Raises:
        ValueError: on a non-2-D or non-finite input, fewer than 2 examples, ``confidence`` outside
            (0, 1) or ``n_resamples < 1``.
    """
    x = _as_matrix(degradation, min_layers=1)
    confidence = _check_confidence(confidence)
    n_resamples = _check_count(n_resamples, "n_resamples")
    rng = np.random.default_rng(seed)

    mean = x.mean(axis=0)
    low, high = _percentile_interval(_bootstrap_means(x, n_resamples, rng), mean, confidence)
    return BootstrapCI(mean=mean, low=low, high=high, confidence=confidence, n_resamples=n_resamples)


def bootstrap_mean_ci(
    values: Any,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> tuple[float, float, float]:
    """Percentile-bootstrap CI of the mean of a 1-D sample (e.g. per-example accuracy).

    Args:
        values: ``[n]`` float array (>= 2 entries, finite).
        confidence: nominal coverage in (0, 1).
        n_resamples: number of bootstrap resamples (>= 1).
        seed: seed for ``numpy.random.default_rng``; ``None`` draws fresh entropy.

    Math: the one-column case of :func:`bootstrap_ci`: ``low`` and ``high`` are the ``alpha/2`` and
    ``1 - alpha/2`` quantiles of the resampled means, ``alpha = 1 - confidence``, widened if needed
    to contain the sample mean.

    Returns:
        ``(mean, low, high)`` as python floats, with ``low <= mean <= high``.

    Raises:
        ValueError: on a non-1-D or non-finite input, fewer than 2 values, ``confidence`` outside
            (0, 1) or ``n_resamples < 1``.
    """
    v = _as_vector(values)
    ci = bootstrap_ci(v[:, None], confidence=confidence, n_resamples=n_resamples, seed=seed)
    return float(ci.mean[0]), float(ci.low[0]), float(ci.high[0])


# --------------------------------------------------------------------------- all together


@dataclass(frozen=True)
class LayerStats:
    """The three analyses of one degradation matrix, as stored in a Profile.

    Attributes:
        permutation: :class:`PermutationResult` (are the layers different?).
        friedman: :class:`FriedmanResult` (rank-based cross-check).
        ci: :class:`BootstrapCI` (how well each layer's mean is known).
    """

    permutation: PermutationResult
    friedman: FriedmanResult
    ci: BootstrapCI

    __hash__ = None  # type: ignore[assignment]  # BootstrapCI holds arrays

    def to_dict(self) -> dict[str, Any]:
        """Nested dict of plain python types (floats, ints, strs, lists), ready for ``json.dumps``."""
        return {
            "permutation": self.permutation.to_dict(),
            "friedman": self.friedman.to_dict(),
            "ci": self.ci.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerStats:
        """Exact inverse of :meth:`to_dict` (also after a JSON round trip)."""
        missing = {"permutation", "friedman", "ci"} - set(d)
        if missing:
            raise ValueError(f"LayerStats dict is missing key(s) {sorted(missing)}; got keys {sorted(d)}")
        return cls(
            permutation=PermutationResult.from_dict(d["permutation"]),
            friedman=FriedmanResult.from_dict(d["friedman"]),
            ci=BootstrapCI.from_dict(d["ci"]),
        )


def layer_stats(
    degradation: Any,
    n_permutations: int = 10_000,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int | None = 0,
) -> LayerStats:
    """Run :func:`permutation_test`, :func:`friedman_test` and :func:`bootstrap_ci` on one matrix.

    Args:
        degradation: ``[examples, layers]`` float array (>= 2 examples, >= 2 layers, finite).
        n_permutations: permutations for the permutation test (DepthKV, arXiv 2604.24647).
        confidence: coverage of the per-layer bootstrap intervals.
        n_resamples: bootstrap resamples.
        seed: passed unchanged to both randomised analyses, so the parts equal the individual
            function calls with the same seed.

    Returns:
        :class:`LayerStats`.

    Raises:
        ValueError: on invalid input (see the individual functions).
    """
    x = _as_matrix(degradation)
    return LayerStats(
        permutation=permutation_test(x, n_permutations=n_permutations, seed=seed),
        friedman=friedman_test(x),
        ci=bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed),
    )
