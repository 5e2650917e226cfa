"""``depthkv export``: a plan file in, an engine plan file out equal to engine_plan(plan); bad input
exits 2 with ``depthkv: error: ...`` and leaves no output file."""

from __future__ import annotations

import json
import shutil

import pytest

import depthkv
from depthkv.cli import main
from depthkv.serving import engine_plan, load_engine_plan
from tests.serving.plans import DEMO_PLANS, GEMMA3_PLAN


@pytest.mark.parametrize(
    "extra, kwargs",
    [
        ([], {}),
        (["--context-length", "4096"], {"context_length": 4096}),
        (["--context-length", "4096", "--mode", "append", "--max-new-tokens", "32"],
         {"context_length": 4096, "mode": "append", "max_new_tokens": 32}),
        (["--mode", "evict", "--max-new-tokens", "0"], {}),
    ],
)
def test_export_writes_the_engine_plan_of_the_plan(tmp_path, capsys, extra, kwargs):
    out = tmp_path / "engine.json"
    assert main(["export", "--plan", str(GEMMA3_PLAN), "--out", str(out), *extra]) == 0
    expected = engine_plan(depthkv.Plan.load(GEMMA3_PLAN), **kwargs)
    assert load_engine_plan(out) == expected
    summary = json.loads(capsys.readouterr().out)
    assert summary["out"] == str(out) and summary["layers"] == 18
    assert summary["budgets"] == [layer["budget"] for layer in expected["layers"]]
    assert summary["slots"] == expected["totals"]["slots"]


def test_export_of_a_tiny_model_s_plan(tmp_path):
    path = next(p for p in DEMO_PLANS if p.parent.name == "tiny-llama" and p.stem == "plan-uniform")
    out = tmp_path / "sub" / "engine.json"
    assert main(["export", "--plan", str(path), "--out", str(out), "--context-length", "512"]) == 0
    data = load_engine_plan(out)
    assert [layer["budget"] for layer in data["layers"]] == depthkv.Plan.load(path).budgets_for(512)


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--mode", "append"], "--max-new-tokens"),
        (["--mode", "append", "--max-new-tokens", "0"], "max_new_tokens >= 1"),
        (["--max-new-tokens", "5"], "evict mode"),
        (["--context-length", "0"], "context_length"),
        (["--context-length", "-4096"], "context_length"),
        (["--context-length", "99999999999"], "context_length"),
    ],
)
def test_bad_options_say_what_is_wrong_and_write_nothing(tmp_path, capsys, extra, says):
    out = tmp_path / "engine.json"
    assert main(["export", "--plan", str(GEMMA3_PLAN), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("depthkv: error: ") and says in err, err
    assert not out.exists()


def test_bad_plan_files_say_what_is_wrong_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "engine.json"
    cases = {
        "missing.json": None,
        "truncated.json": GEMMA3_PLAN.read_text()[:200],
        "profile.json": (GEMMA3_PLAN.parent / "profile.json").read_text(),
        "engine.json": None,  # an engine plan is not a plan
    }
    main(["export", "--plan", str(GEMMA3_PLAN), "--out", str(tmp_path / "engine-plan.json")])
    cases["engine.json"] = (tmp_path / "engine-plan.json").read_text()
    capsys.readouterr()
    says = {"missing.json": "does not exist", "truncated.json": "not valid JSON", "profile.json": "not a depthkv-plan",
            "engine.json": "not a depthkv-plan"}
    for name, text in cases.items():
        plan = tmp_path / "in" / name
        plan.parent.mkdir(exist_ok=True)
        if text is not None:
            plan.write_text(text)
        assert main(["export", "--plan", str(plan), "--out", str(out)]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("depthkv: error: ") and says[name] in err, (name, err)
        assert not out.exists(), name


def test_the_output_is_never_the_plan_itself_or_a_folder(tmp_path, capsys):
    plan = tmp_path / "plan.json"
    shutil.copy(GEMMA3_PLAN, plan)
    before = plan.read_text()
    assert main(["export", "--plan", str(plan), "--out", str(plan)]) == 2
    assert "is the plan itself" in capsys.readouterr().err
    assert plan.read_text() == before
    assert main(["export", "--plan", str(plan), "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plan.json"]


@pytest.mark.parametrize("extra", [["--mode", "stream"], ["--context-length", "4k"], ["--max-new-tokens", "1.5"], []])
def test_syntax_errors_are_argparse_s(tmp_path, capsys, extra):
    argv = ["export", "--plan", str(GEMMA3_PLAN), *extra]
    if extra:
        argv += ["--out", str(tmp_path / "engine.json")]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2 and "usage:" in capsys.readouterr().err
    assert not (tmp_path / "engine.json").exists()
