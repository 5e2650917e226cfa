"""docs/serving.md cannot drift: its worked example is what ``python -m benchmarks.serving_capacity``
prints now (and the committed JSON file holds the same numbers), and its example engine plan is
what the ``depthkv export`` command above it writes now."""

from __future__ import annotations

import json
import re
import shlex

import pytest

from benchmarks.serving_capacity import RESULT, compute, markdown
from depthkv.cli import build_parser, main
from tests.serving.plans import ROOT

PAGE = ROOT / "docs" / "serving.md"


@pytest.fixture(scope="module")
def result():
    return compute()


def test_the_worked_example_on_the_page_is_what_the_benchmark_computes(result):
    table = markdown(result)
    assert table in PAGE.read_text(encoding="utf-8"), (
        "docs/serving.md's worked example differs from `python -m benchmarks.serving_capacity`; run it and paste "
        f"its output:\n{table}"
    )


def test_the_committed_results_file_holds_the_same_numbers(result):
    assert json.loads(RESULT.read_text(encoding="utf-8")) == json.loads(json.dumps(result)), (
        "benchmarks/results/serving-capacity.json is stale: run python -m benchmarks.serving_capacity"
    )


def test_the_worked_example_s_numbers(result):
    """The headline numbers, worked out by hand: 4 GiB per 32K sequence with the full cache, and the
    10% plan's total of tokens, each layer rounded up to whole blocks of 16."""
    rows = {(r["context"], r["cache"]): r for r in result["rows"]}
    assert result["assumptions"]["kv_bytes_per_token_layer"] == 2 * 8 * 128 * 2
    assert result["assumptions"]["kv_pool_bytes"] == 141 * 10**9 * 9 // 10 - 8_030_000_000 * 2 - 4 * 10**9
    full = rows[(32_768, "full")]
    assert full["bytes_per_sequence"] == 32 * 32_768 * 4096 and full["max_batch"] == 24
    ten = rows[(32_768, "depthkv 10%")]
    assert ten["tokens_held"] == round(0.1 * 32_768 * 32)
    assert ten["slots"] == 32 * 3280  # 3276 or 3277 tokens per layer, 205 blocks of 16
    assert ten["max_batch"] == 106_840_000_000 // (32 * 3280 * 4096)
    assert rows[(131_072, "full")]["max_batch"] == 6


def _example():
    text = PAGE.read_text(encoding="utf-8")
    block = re.search(r"<!-- engine plan example[^>]*-->\n```text\n(.*?)```", text, re.S)
    assert block, "docs/serving.md has no '<!-- engine plan example -->' text block"
    command = next(
        line for line in text.splitlines() if line.startswith("depthkv export") and "--context-length" in line
    )
    return shlex.split(command)[1:], block.group(1)


def test_the_example_engine_plan_is_what_the_command_writes(tmp_path, capsys):
    argv, shown = _example()
    args = build_parser().parse_args(argv)
    out = tmp_path / "engine.json"
    assert argv[0] == "export"
    assert main(["export", "--plan", str(ROOT / args.plan), "--out", str(out), *_without(argv, "--plan", "--out")]) == 0
    assert out.read_text(encoding="utf-8") == shown


def _without(argv: list[str], *options: str) -> list[str]:
    """``argv`` after the subcommand, without ``options`` and their values."""
    out, skip = [], False
    for word in argv[1:]:
        if skip:
            skip = False
        elif word in options:
            skip = True
        else:
            out.append(word)
    return out
