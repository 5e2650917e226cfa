"""The `depthkv` command: demo --quick end to end on the embedded default, calibrate/allocate subcommands."""

from __future__ import annotations

import json

import pytest
import torch

from depthkv.cli import main
from depthkv.workload import ByteTokenizer


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(
        vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
    )
    path = tmp_path_factory.mktemp("ckpt")
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    ByteTokenizer().save_pretrained(path)
    return path


def test_demo_quick_writes_every_report_file(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--no-progress"]) == 0
    for name in ("profile.json", "results.json", "report.md", "sensitivity.png", "budgets.png",
                 "accuracy_vs_budget.png", "plan-uniform.json", "plan-pyramid.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "profile.partial.json").exists()
    results = json.loads((out / "results.json").read_text())
    assert {"full", "uniform@0.2", "pyramid@0.2", "depthkv-proportional@0.2"} <= set(results["methods"])
    assert set(results["plans"]) == set(results["methods"]) - {"full"}
    printed = capsys.readouterr().out
    assert "permutation test p =" in printed and "acc@0.2" in printed


@pytest.fixture(scope="module")
def small_profile(checkpoint, tmp_path_factory):
    """``depthkv calibrate`` on a 2-example JSONL workload (150 tokens): the profile's path."""
    from depthkv.workload import builtin_workload, save_jsonl

    tmp = tmp_path_factory.mktemp("calibrated")
    data = tmp / "wl.jsonl"
    save_jsonl(builtin_workload(["niah_single"], n_per_task=2, context_length=150).examples, data)
    profile = tmp / "profile.json"
    assert main(["calibrate", "--model", str(checkpoint), "--workload", str(data), "--out", str(profile)]) == 0
    return profile


def test_calibrate_and_allocate_commands(small_profile, tmp_path):
    profile = small_profile
    plan = tmp_path / "plan.json"
    assert main(["allocate", str(profile), "--budget", "0.3", "--strategy", "rank", "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["strategy"] == "rank"
    # The allocation options of the Python API, on the command line: a floor lifts every layer.
    args = ["allocate", str(profile), "--budget", "0.3", "--out", str(plan)]
    assert main([*args, "--floor", "12", "--max-tokens", "60", "--context-length", "150"]) == 0
    written = json.loads(plan.read_text())
    assert min(written["budgets"]) >= 12 and max(written["budgets"]) <= 60 and written["floor"] == 12
    assert sum(written["budgets"]) == round(0.3 * 150 * len(written["budgets"]))
    assert main([*args, "--strategy", "softmax", "--temperature", "0.5", "--policy", "h2o"]) == 0
    assert json.loads(plan.read_text())["policy"]["name"] == "h2o"


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--floor", "2"], "below the snapkv policy's minimum"),
        (["--budget-index", "1"], "budget_index 1 is not one of the profile's ablation budgets: choose 0..0"),
        (["--policy", "lru"], "unknown eviction policy 'lru'"),
        (["--strategy", "softmax", "--temperature", "0"], "temperature must be a finite number > 0"),
    ],
)
def test_allocate_options_say_what_is_wrong(small_profile, tmp_path, capsys, extra, says):
    """A bad allocation option exits 2 with a message that names it and writes no plan."""
    profile, plan = small_profile, tmp_path / "plan.json"
    assert main(["allocate", str(profile), "--budget", "0.3", "--out", str(plan), *extra]) == 2
    assert says in capsys.readouterr().err and not plan.exists()


def test_a_budget_with_a_decimal_point_is_a_fraction(small_profile, tmp_path, capsys):
    """One rule on every command: ``1.0`` is the whole context (a fraction), ``64`` is tokens per layer."""
    plan = tmp_path / "plan.json"
    args = ["allocate", str(small_profile), "--out", str(plan), "--strategy", "uniform"]
    assert main([*args, "--budget", "1.0"]) == 0
    written = json.loads(plan.read_text())
    assert written["budgets"] == [written["context_length"]] * 3 and written["relative"]
    assert main([*args, "--budget", "64"]) == 0
    assert json.loads(plan.read_text())["budgets"] == [64] * 3
    plan.unlink()
    assert main([*args, "--budget", "1"]) == 2  # one token per layer: below the floor, said so
    assert "below the floor" in capsys.readouterr().err and not plan.exists()
    with pytest.raises(SystemExit):
        main([*args, "--budget", "64.0"])  # a fraction above 1
    assert "must be in (0, 1]" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["demo", "--budget", "64"])  # the demo's budgets are fractions
    assert "takes a fraction of the context" in capsys.readouterr().err


def test_plan_and_evaluate_commands(checkpoint, small_profile, tmp_path, capsys):
    """`depthkv plan` writes explicit budgets ('full' keeps a layer); `depthkv evaluate` scores plan
    files and the full cache on a workload, as depthkv.evaluate does."""
    import depthkv

    data = small_profile.parent / "wl.jsonl"
    explicit, allocated = tmp_path / "explicit.json", tmp_path / "alloc.json"
    assert main(["plan", "--model", str(checkpoint), "--budgets", "16", "full", "12", "--out", str(explicit)]) == 0
    assert json.loads(explicit.read_text())["budgets"] == [16, None, 12]
    assert main(["allocate", str(small_profile), "--budget", "0.2", "--out", str(allocated)]) == 0
    out = tmp_path / "results.json"
    args = ["evaluate", "--model", str(checkpoint), "--workload", str(data), "--no-progress"]
    assert main([*args, "--plans", str(explicit), f"mine={allocated}", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert list(results["methods"]) == ["full", "explicit", "mine"]
    assert results["plans"]["explicit"]["budgets"] == [16, None, 12]
    model, tokenizer = depthkv.load_model(str(checkpoint))
    direct = depthkv.evaluate(
        model, tokenizer, depthkv.from_jsonl(data),
        {"full": None, "mine": depthkv.Plan.load(allocated)}, progress=False,
    )
    assert results["methods"]["mine"]["mean"] == direct["mine"].summary()["mean"]
    assert results["methods"]["full"]["per_task"] == direct["full"].summary()["per_task"]
    assert "accuracy [95% CI]" in capsys.readouterr().out
    assert main(["plan", "--model", str(checkpoint), "--budgets", "16", "half", "12", "--out", str(explicit)]) == 2
    assert "'full'" in capsys.readouterr().err


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["allocate", str(tmp_path / "missing.json"), "--budget", "0.2", "--out", str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2"])
def test_demo_leaves_out_the_tasks_the_card_calls_not_learned(name):
    """Issue 3: a task the model has not learned is said so on its card and left out of the
    default workload. The demo's tasks are exactly the card's learned ones, each at or above the
    card's threshold at the trained length; a model without a card gets the built-in defaults."""
    from depthkv.cli.common import card as model_card
    from depthkv.cli.common import default_tasks
    from depthkv.workload import DEFAULT_TASKS

    card = model_card(name)
    tasks = default_tasks(name)
    assert tasks == card["learned_tasks"] and tasks
    length, threshold = card["trained_length"], card["learned_threshold"]
    for task in card["tasks"]:
        accuracy = card["cells"][f"{task}@{length}"]["accuracy"]
        assert (task in tasks) == (accuracy >= threshold), (task, accuracy)
    assert default_tasks("/no/such/model") == list(DEFAULT_TASKS)


def test_tune_floor_command(checkpoint, small_profile, tmp_path, capsys):
    """`depthkv tune-floor` measures the plan of each floor on the calibration workload and writes the
    best one, with every floor's result in its metadata."""
    from depthkv import Plan

    data = small_profile.parent / "wl.jsonl"  # the workload the profile was calibrated on
    plan = tmp_path / "plan.json"
    args = ["tune-floor", str(small_profile), "--model", str(checkpoint), "--budget", "0.3", "--out", str(plan)]
    assert main([*args, "--workload", str(data), "--metric", "nll"]) == 0
    written = Plan.load(plan)
    search = written.metadata["floor_search"]
    assert search["metric"] == "nll" and [r["floor"] for r in search["floors"]] == [8, 16, 32]
    assert written.floor == search["best_floor"] and min(written.budgets) >= written.floor
    means = [r["mean_degradation"] for r in search["floors"]]
    assert means[[8, 16, 32].index(written.floor)] == min(means)
    printed = capsys.readouterr().out
    assert printed.count("<- kept") == 1 and f"plan written to {plan}" in printed
    # The profile was calibrated on a JSONL file: without it, a clear error and no plan.
    plan.unlink()
    assert main(args) == 2
    assert "pass the same file with --workload" in capsys.readouterr().err and not plan.exists()


def test_tune_floor_rebuilds_a_built_in_calibration_workload(checkpoint, tmp_path, capsys):
    profile, plan = tmp_path / "profile.json", tmp_path / "plan.json"
    calibrate = ["calibrate", "--model", str(checkpoint), "--context-length", "120", "--n-per-task", "1"]
    assert main([*calibrate, "--out", str(profile)]) == 0
    args = ["tune-floor", str(profile), "--model", str(checkpoint), "--budget", "0.3", "--floors", "8", "16"]
    assert main([*args, "--out", str(plan)]) == 0
    assert json.loads(plan.read_text())["metadata"]["floor_search"]["metric"] == "score"
    # A profile whose recorded examples no longer match what the description rebuilds is refused.
    data = json.loads(profile.read_text())
    data["workload"]["examples_sha256"] = "0" * 64
    profile.write_text(json.dumps(data))
    assert main([*args, "--out", str(tmp_path / "other.json")]) == 2
    assert "differs from the one it was calibrated on" in capsys.readouterr().err
