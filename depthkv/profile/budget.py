"""The budget vocabulary: one way to say how many KV tokens a layer (or a whole model) keeps.

A *budget* is either

* an ``int`` >= 1: that many tokens (per layer, or per layer on average for a global budget), or
* a ``float`` in ``(0, 1]``: that fraction of the context; ``1.0`` is the whole context.

Everything that takes a budget (``calibrate``'s ablation budgets, ``allocate``, ``tune_floor``,
``backend(profile, budget=...)``, the ``--budget`` options of the command line) goes through
:func:`check_budget`, converts it to tokens with :func:`budget_tokens` and rounds with
:func:`round_tokens` (to the nearest token, ties to even, as Python's ``round``). On the command
line a number written with a decimal point or an exponent is a fraction (``0.2``, ``1.0``) and a
whole number is tokens (``512``): :func:`parse_budget`.
"""

from __future__ import annotations

import math
import numbers

__all__ = ["Budget", "budget_tokens", "check_budget", "is_fraction", "parse_budget", "round_tokens"]

Budget = int | float


def check_budget(budget: object, what: str = "budget") -> Budget:
    """``budget`` as a plain ``int`` (tokens) or ``float`` (fraction); numpy scalars are accepted.

    Raises:
        TypeError: not a number (``bool`` is not a budget).
        ValueError: a fraction outside ``(0, 1]``, or fewer than 1 token; the message says which
            form would be right.
    """
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real):
        raise TypeError(
            f"{what} must be an int (tokens) or a float fraction of the context in (0, 1]; got {budget!r}"
        )
    if isinstance(budget, numbers.Integral):
        tokens = int(budget)
        if tokens < 1:
            raise ValueError(f"{what} must be at least 1 token; got {tokens}")
        return tokens
    fraction = float(budget)
    if not (math.isfinite(fraction) and 0.0 < fraction <= 1.0):
        raise ValueError(
            f"a float {what} is a fraction of the context and must be in (0, 1] (1.0 = the whole context); "
            f"got {budget}. Give an int for a number of tokens."
        )
    return fraction


def is_fraction(budget: Budget) -> bool:
    """True for a fraction of the context (a ``float``), False for a token count."""
    return isinstance(budget, float)


def budget_tokens(budget: Budget, context_length: float) -> float:
    """Tokens a budget stands for at ``context_length`` tokens of context (not rounded)."""
    return float(budget) * float(context_length) if is_fraction(budget) else float(budget)


def round_tokens(tokens: float) -> int:
    """The one rounding rule for token counts: to the nearest integer, ties to even (``round``)."""
    return int(round(tokens))


def parse_budget(text: str) -> Budget:
    """A budget from the command line: ``"0.2"`` and ``"1.0"`` are fractions, ``"512"`` is tokens.

    Raises:
        ValueError: not a number, or out of range (see :func:`check_budget`).
    """
    text = text.strip()
    try:
        value: Budget = int(text)
    except ValueError:
        try:
            value = float(text)
        except ValueError:
            raise ValueError(
                f"budget {text!r} is not a number: give a fraction of the context in (0, 1] such as 0.2, "
                "or a whole number of tokens such as 512"
            ) from None
    return check_budget(value)
