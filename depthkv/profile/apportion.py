"""Exact integer shares of a token total: how a total becomes per-layer budgets.

Every per-layer budget depthkv makes (each allocation strategy, and a relative plan rescaled to a
prompt's length by :meth:`depthkv.Plan.budgets_for`) is an integer split of a token total, with
every layer within ``[floor, max_tokens]`` and the sum exact. This module is that split; it is
pure numpy and imports nothing else of depthkv.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

__all__ = [
    "apportion",
    "apportion_bounded",
    "as_count",
    "as_finite_vector",
    "check_total",
    "largest_remainder",
    "layer_caps",
    "upper_bounds",
]


def apportion(weights, total: int, floor: int = 0, max_tokens=None) -> np.ndarray:
    """Split ``total`` integer tokens over layers in proportion to ``weights``, within bounds.

    Math (CAKE-style cap-and-redistribute, then Hamilton rounding), with ``R = total - L·floor`` and
    per-layer room ``c = max_tokens - floor``:

    1. every layer gets ``floor``;
    2. among the not-yet-capped layers ``A``, layer ``l`` is offered ``R_A · w_l / Σ_{k∈A} w_k``;
       layers offered at least ``c`` are fixed at ``c`` and leave ``A``, and the tokens left over
       (``R_A`` minus what the capped layers took) are offered again to the rest in proportion to
       their weights; repeat until no new layer caps. Once only zero-weight layers are left uncapped,
       they share what remains equally;
    3. integerise with largest-remainder (Hamilton) rounding: every layer gets the integer part of
       its real share, and the tokens still missing go one each to the layers with the largest
       fractional parts. Ties in the fractional part go to the larger weight, then to the lower
       layer index.

    The result is monotone in the weights: a layer with a larger weight never gets fewer tokens.

    Args:
        weights (array_like): non-negative finite float array ``[L]``. All zeros is treated as equal
            weights.
        total: total tokens to hand out, an integer with ``L·floor <= total <= Σ_l max_tokens_l``.
        floor: minimum tokens per layer.
        max_tokens (int or sequence): maximum tokens per layer: one int for every layer, one entry
            per layer (``None`` entries uncapped; e.g. a sliding-window layer's window), or ``None``
            for no cap.

    Returns:
        int64 array ``[L]`` with sum exactly ``total`` and entries in ``[floor, max_tokens_l]``.
    """
    w = as_finite_vector(weights, "weights")
    if np.any(w < 0):
        bad = np.flatnonzero(w < 0)
        raise ValueError(
            f"weights must be non-negative; layer(s) {bad.tolist()} have {w[bad].tolist()}; "
            "clip them to 0 or shift the weights"
        )
    n = w.shape[0]
    total, floor, max_tokens = check_total(total, n, floor, max_tokens)
    lo = np.full(n, floor, dtype=np.int64)
    return apportion_bounded(w, total, lo, upper_bounds(n, total, floor, max_tokens))


def apportion_bounded(
    weights: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray, priority: np.ndarray | None = None
) -> np.ndarray:
    """:func:`apportion` with per-layer bounds ``lo``/``hi`` (int64 ``[L]``); inputs already valid.
    Rounding ties go to the larger ``priority`` (default: the weights), then the lower layer."""
    shares = water_fill(weights, float(total - int(lo.sum())), (hi - lo).astype(np.float64))
    priority = weights if priority is None else priority
    return largest_remainder(lo + shares, total, lo, hi, priority=priority)


def water_fill(weights: np.ndarray, amount: float, room: np.ndarray) -> np.ndarray:
    """Real shares ``[L]`` of ``amount``, ∝ ``weights``, each ``<= room``; capped layers' excess goes to
    the others in proportion to their weights (zero-weight layers only once no weighted layer has
    room, then equally). Assumes ``amount <= room.sum()``."""
    shares = np.zeros_like(room)
    active = room > 0
    while amount > 0 and active.any():
        w = np.where(active, weights, 0.0)
        if w.max() > 0:
            w = w / w.max()  # huge weights would overflow the sum
        if w.sum() <= 0:
            w = active.astype(np.float64)
        offer = amount * w / w.sum()
        capped = active & (offer >= room)
        if not capped.any():
            return shares + offer
        shares[capped] = room[capped]
        amount -= float(room[capped].sum())
        active &= ~capped
    return shares


def largest_remainder(
    x: np.ndarray, total: int, lo: np.ndarray, hi: np.ndarray, priority: np.ndarray
) -> np.ndarray:
    """Round real ``x`` (``[L]``, ``lo <= x <= hi``, ``Σx ≈ total``) to integers summing to ``total``.

    Hamilton's method: take ``⌊x⌋``, then give one more token to the layers with the largest
    fractional parts until the sum is ``total``. Ties go to the larger ``priority``, then to the lower
    layer index. Float drift in ``x`` (a sum a hair off ``total``) is absorbed by the same rule in
    either direction, never crossing ``lo``/``hi``.
    """
    base = np.clip(np.floor(x), lo, hi).astype(np.int64)
    frac = x - base
    index = np.arange(x.shape[0])
    missing = total - int(base.sum())
    while missing != 0:
        if missing > 0:
            order = np.lexsort((index, -priority, -frac))
            order = order[base[order] < hi[order]][:missing]
            base[order] += 1
        else:
            order = np.lexsort((-index, priority, frac))
            order = order[base[order] > lo[order]][:-missing]
            base[order] -= 1
        if order.size == 0:  # cannot happen for feasible inputs; guard against an endless loop
            raise RuntimeError("internal error: bounds leave no room to reach the total")
        missing = total - int(base.sum())
    return base


def as_finite_vector(values, name: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be a 1-D array of numbers, one per layer; got {values!r}") from exc
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with one value per layer; got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty; it needs one value per layer (at least one layer)")
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr))
        raise ValueError(
            f"{name} must be finite; layer(s) {bad.tolist()} have {arr[bad].tolist()}; "
            "recalibrate or drop the failed measurements"
        )
    return arr


def as_count(value, name: str) -> int:
    """A non-negative whole number of tokens (ints, numpy ints, or integral floats like 512.0)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a whole number of tokens; got {value!r}")
    if isinstance(value, numbers.Integral):
        count = int(value)
    elif math.isfinite(float(value)) and float(value).is_integer():
        count = int(value)
    else:
        raise ValueError(f"{name} must be a whole number of tokens; got {value!r}")
    if count < 0:
        raise ValueError(f"{name} must be >= 0 tokens; got {count}")
    return count


def layer_caps(max_tokens, n: int) -> np.ndarray | None:
    """``max_tokens`` as per-layer int64 caps ``[L]`` (``None`` entries: the int64 maximum), or None."""
    if max_tokens is None:
        return None
    if np.ndim(max_tokens) == 0:
        return np.full(n, as_count(max_tokens, "max_tokens"), dtype=np.int64)
    values = list(max_tokens)
    if len(values) != n:
        raise ValueError(f"max_tokens has {len(values)} entries for {n} layers; give one per layer, or one int")
    top = np.iinfo(np.int64).max
    return np.array([top if v is None else as_count(v, f"max_tokens[{i}]") for i, v in enumerate(values)], dtype=np.int64)


def check_total(total, n: int, floor, max_tokens) -> tuple[int, int, np.ndarray | None]:
    """Validate ``total``, ``floor`` and ``max_tokens``; returns ``(total, floor, caps [L] or None)``."""
    total = as_count(total, "total")
    floor = as_count(floor, "floor")
    if total < n * floor:
        raise ValueError(
            f"total budget {total} tokens is below the floor: {n} layers × floor {floor} = {n * floor}; "
            "raise the budget or lower the floor"
        )
    caps = layer_caps(max_tokens, n)
    if caps is None:
        return total, floor, None
    low = np.flatnonzero(caps < floor)
    if low.size:
        where = "" if np.all(caps == caps[0]) else f" (layer {int(low[0])})"
        raise ValueError(
            f"floor {floor} is above max_tokens {int(caps[low[0]])}{where}; the per-layer bounds must satisfy "
            "floor <= max_tokens"
        )
    room = int(caps.sum()) if np.all(caps < np.iinfo(np.int64).max) else None
    if room is not None and total > room:
        cap_text = f"{n} layers × max_tokens {int(caps[0])}" if np.all(caps == caps[0]) else "the layers' caps"
        raise ValueError(
            f"total budget {total} tokens is above the cap: {cap_text} = {room}; lower the budget or raise max_tokens"
        )
    return total, floor, caps


def upper_bounds(n: int, total: int, floor: int, caps: np.ndarray | None) -> np.ndarray:
    """Per-layer upper bounds ``[L]``: the caps, and no layer above what is left once every other layer
    has its floor."""
    top = total - (n - 1) * floor
    bounds = np.full(n, top, dtype=np.int64)
    return bounds if caps is None else np.minimum(bounds, caps)
