"""Fuzzing the command line: any value of any option gives a result or a clear error, no traceback.

Property (hypothesis) over ``depthkv allocate`` and ``depthkv plan`` with values drawn for every
option (numbers of every sign and size, NaN and infinity, empty and odd strings): ``main`` either
returns 0 and writes a loadable plan, or returns 2 with ``depthkv: error: ...`` on stderr, or
argparse exits with status 2 and its usage message — never any other exception, and a failed run
leaves no output file.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depthkv import Plan
from depthkv.cli import main
from tests.helpers import make_profile, tiny_model

number = st.one_of(
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["0", "-1", "1", "0.0", "1.0", "1.5", "nan", "inf", "-inf", "1e309", "", " ", "abc", "0x10", "٣"]),
)
word = st.one_of(st.text(max_size=6), st.sampled_from(["snapkv", "h2o", "uniform", "softmax", "greedy", "full", "Full"]))


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "profile.json"
    make_profile(tiny_model("llama")).save(path)
    return path


def _run(argv, out, capsys) -> None:
    try:
        rc = main(argv)
    except SystemExit as exc:  # argparse: bad syntax or a value its type function refused
        assert exc.code == 2, argv
        assert "usage:" in capsys.readouterr().err
        rc = 2
    else:
        err = capsys.readouterr().err
        if rc != 0:  # (model loading may print progress bars before the message)
            assert rc == 2 and err.splitlines()[-1].startswith("depthkv: error: "), (argv, err)
    if rc == 0:
        Plan.load(out)
        out.unlink()
    else:
        assert not out.exists(), f"{argv} failed but left {out}"


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    budget=number, strategy=word, floor=st.none() | number, max_tokens=st.none() | number,
    temperature=st.none() | number, policy=st.none() | word, context=st.none() | number, index=st.none() | number,
)
def test_allocate_options(profile_path, tmp_path, capsys, budget, strategy, floor, max_tokens, temperature, policy, context, index):
    out = tmp_path / "plan.json"
    argv = ["allocate", str(profile_path), f"--budget={budget}", f"--strategy={strategy}", "--out", str(out)]
    for flag, value in [("--floor", floor), ("--max-tokens", max_tokens), ("--temperature", temperature),
                        ("--policy", policy), ("--context-length", context), ("--budget-index", index)]:
        if value is not None:
            argv.append(f"{flag}={value}")
    _run(argv, out, capsys)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(budgets=st.lists(st.one_of(number, st.just("full")), min_size=0, max_size=5), policy=word)
def test_plan_options(tmp_path, capsys, budgets, policy):
    out = tmp_path / "plan.json"
    argv = ["plan", "--model", "tiny-llama", "--policy", policy, "--out", str(out)]
    if budgets:
        argv += ["--budgets", *budgets]
    _run(argv, out, capsys)
