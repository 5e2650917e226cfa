"""Cost of the FX pass against model depth: it should grow linearly with the graph's nodes.

Run: ``make bench`` (or ``pytest benchmarks/test_pass_cost.py --benchmark-only``). Each round
rewrites a freshly built Dynamo-like graph of ``layers`` attention layers (the graph builder of the
pass's unit tests); compare the means across depths as ratios: 16x the layers should cost about 16x,
far below the 256x a quadratic pass would.
"""

from __future__ import annotations

import pytest

from depthkv.passes import specialize_budgets
from depthkv.policies import PolicyConfig
from tests.helpers import build_graph


@pytest.mark.parametrize("layers", [4, 16, 64])
def test_pass_cost(benchmark, layers):
    budgets = [16] * layers
    report = benchmark.pedantic(
        lambda gm: specialize_budgets(gm, budgets, PolicyConfig()),
        setup=lambda: ((build_graph(budgets),), {}),
        rounds=20,
    )
    assert len(report.rewritten) == layers
