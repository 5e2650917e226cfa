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
    # The controls are extra rows: both for every DepthKV plan, the same budgets in another order.
    for strategy in ("proportional", "greedy"):
        for b in ("0.1", "0.2"):
            source = results["plans"][f"depthkv-{strategy}@{b}"]
            for kind in ("shuffled", "inverse"):
                name = f"depthkv-{strategy}-{kind}@{b}"
                assert sorted(results["plans"][name]) == sorted(source), name
                assert results["controls"][name]["control_of"] == f"depthkv-{strategy}@{b}"
    assert "## Controls" in (out / "report.md").read_text()
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
    files and the full cache on a workload, as depthkv.evaluate does, into a report folder (no
    profile: no sensitivity section, one accuracy bar per method)."""
    import depthkv

    data = small_profile.parent / "wl.jsonl"
    explicit, allocated = tmp_path / "explicit.json", tmp_path / "alloc.json"
    assert main(["plan", "--model", str(checkpoint), "--budgets", "16", "full", "12", "--out", str(explicit)]) == 0
    assert json.loads(explicit.read_text())["budgets"] == [16, None, 12]
    assert main(["allocate", str(small_profile), "--budget", "0.2", "--out", str(allocated)]) == 0
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(checkpoint), "--workload", str(data), "--no-progress"]
    assert main([*args, "--plans", str(explicit), f"mine={allocated}", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == ["full", "explicit", "mine"]
    assert results["plans"]["explicit"] == [16, None, 12]
    assert results["plan_files"]["mine"]["path"] == str(allocated)
    model, tokenizer = depthkv.load_model(str(checkpoint))
    direct = depthkv.evaluate(
        model, tokenizer, depthkv.from_jsonl(data),
        {"full": None, "mine": depthkv.Plan.load(allocated)}, progress=False,
    )
    assert results["methods"]["mine"]["mean"] == direct["mine"].summary()["mean"]
    assert results["methods"]["full"]["per_task"] == direct["full"].summary()["per_task"]
    assert "accuracy [95% CI]" in capsys.readouterr().out
    for name in ("results.json", "report.md", "accuracy.png", "budgets.png", "plan-explicit.json", "plan-mine.json"):
        assert (out / name).stat().st_size > 0, name
    assert not (out / "profile.json").exists() and not (out / "sensitivity.png").exists()
    report = (out / "report.md").read_text()
    assert "| mine | " in report and "| explicit | 16 full 12 | — |" in report and "Are the layers" not in report
    # An --out ending in .json: the one results file of earlier versions, same numbers.
    single = tmp_path / "results.json"
    assert main([*args, "--plans", str(explicit), f"mine={allocated}", "--out", str(single)]) == 0
    legacy = json.loads(single.read_text())
    assert legacy["methods"] == results["methods"] and legacy["plans"]["explicit"]["budgets"] == [16, None, 12]
    assert legacy["plans"]["mine"]["path"] == str(allocated) and "results written to" in capsys.readouterr().out
    assert main(["plan", "--model", str(checkpoint), "--budgets", "16", "half", "12", "--out", str(explicit)]) == 2
    assert "'full'" in capsys.readouterr().err


def test_evaluate_with_a_profile_writes_the_demo_report(checkpoint, small_profile, tmp_path, capsys):
    """With --profile, plans are allocated at each budget with each strategy, next to the baselines
    and each DepthKV plan's controls: the demo's report folder, for the user's own workload."""
    from depthkv import Plan, Profile

    data = small_profile.parent / "wl.jsonl"
    out = tmp_path / "report"
    args = ["evaluate", "--model", str(checkpoint), "--workload", str(data), "--no-progress",
            "--profile", str(small_profile), "--budgets", "0.2", "0.3", "--strategies", "proportional", "rank"]
    assert main([*args, "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    names = {"full"} | {f"{m}@{b}" for b in ("0.2", "0.3") for m in (
        "uniform", "pyramid", "depthkv-proportional", "depthkv-rank", "depthkv-proportional-shuffled",
        "depthkv-proportional-inverse", "depthkv-rank-shuffled", "depthkv-rank-inverse")}
    assert set(results["methods"]) == names and set(results["plans"]) == names - {"full"}
    for name in ("profile.json", "results.json", "report.md", "sensitivity.png", "budgets.png",
                 "accuracy_vs_budget.png", "plan-uniform.json", "plan-depthkv-rank.json", "plan-depthkv-rank-inverse.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "plan-uniform.json").read_text())["global_budget"] == 0.2  # the middle budget
    sensitivity = Profile.load(small_profile).sensitivity()
    for strategy in ("proportional", "rank"):
        for b in ("0.2", "0.3"):
            source = results["plans"][f"depthkv-{strategy}@{b}"]
            for kind in ("shuffled", "inverse"):
                control = results["plans"][f"depthkv-{strategy}-{kind}@{b}"]
                assert sorted(control) == sorted(source) and sum(control) == sum(source)
                record = results["controls"][f"depthkv-{strategy}-{kind}@{b}"]
                assert record["source_budgets"] == source and sorted(record["layer_order"]) == [0, 1, 2]
            inverse = results["plans"][f"depthkv-{strategy}-inverse@{b}"]
            assert inverse[int(sensitivity.argmin())] == max(source)
    assert results["controls"]["depthkv-rank-shuffled@0.2"]["seed"] == 0
    assert Plan.load(out / "plan-depthkv-rank-shuffled.json").metadata["control"] == "shuffled"
    report = (out / "report.md").read_text()
    assert "Are the layers different?" in report and "## Controls" in report and "| depthkv-rank@0.3 | " in report
    printed = capsys.readouterr().out
    assert "acc@0.3" in printed and "calibrated on" in printed  # the profile's own workload: a warning
    # --no-controls and --baselines choose the rows; the same seed gives the same controls.
    again = tmp_path / "again"
    assert main([*args, "--baselines", "uniform", "--no-controls", "--out", str(again)]) == 0
    fewer = json.loads((again / "results.json").read_text())["methods"]
    assert set(fewer) == {"full"} | {f"{m}@{b}" for b in ("0.2", "0.3")
                                     for m in ("uniform", "depthkv-proportional", "depthkv-rank")}


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--out", "taken"], "--out taken is a file"),
        (["--profile", "P", "--baselines", "uniform", "snapkv", "--out", "r"], "unknown baseline(s) 'snapkv'"),
        (["--budgets", "0.2", "--out", "r"], "--budgets choose(s) the plans allocated from a profile"),
        (["--no-full", "--out", "r"], "nothing to evaluate"),
    ],
)
def test_evaluate_says_what_is_wrong(small_profile, tmp_path, capsys, monkeypatch, extra, says):
    """Bad options are refused before the model is loaded, and nothing is written."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "taken").write_text("a file")
    extra = [str(small_profile) if e == "P" else e for e in extra]
    assert main(["evaluate", "--model", "/no/such/model", *extra]) == 2
    assert says in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["taken"]


def test_evaluate_refuses_a_profile_of_another_model(small_profile, tmp_path, capsys):
    assert main(["evaluate", "--model", "tiny-llama", "--profile", str(small_profile), "--out", str(tmp_path / "r")]) == 2
    assert "this profile was made for a different model" in capsys.readouterr().err and not (tmp_path / "r").exists()


def test_demo_on_your_own_jsonl_file(checkpoint, tmp_path, capsys):
    """`depthkv demo --workload my.jsonl`: the file split by a seeded hash of each example (the parts
    written beside the report, disjoint, covering the file), then the whole pipeline on them."""
    from depthkv.cli.common import split_examples
    from depthkv.workload import builtin_workload, load_jsonl, save_jsonl

    data = tmp_path / "mine.jsonl"
    examples = builtin_workload(["niah_single", "kv_retrieval"], n_per_task=4, context_length=150).examples
    save_jsonl(examples, data)
    out = tmp_path / "demo"
    args = ["demo", "--model", str(checkpoint), "--workload", str(data), "--quick", "--budgets", "0.3",
            "--strategies", "proportional", "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    calib, evaluation = load_jsonl(out / "calibration.jsonl"), load_jsonl(out / "evaluation.jsonl")
    assert (calib, evaluation) == split_examples(examples, 1 / 3, seed=0)
    assert sorted(map(repr, calib + evaluation)) == sorted(map(repr, examples)) and len(calib) >= 2
    results = json.loads((out / "results.json").read_text())
    assert results["info"]["n_calib"] == len(calib) and results["info"]["n_eval"] == len(evaluation)
    assert results["info"]["data"]["calib_fraction"] == pytest.approx(1 / 3)
    assert {"depthkv-proportional-shuffled@0.3", "depthkv-proportional-inverse@0.3", "uniform@0.3"} <= set(results["methods"])
    assert results["methods"]["full"]["n"] == len(evaluation)
    for name in ("profile.json", "report.md", "sensitivity.png", "accuracy_vs_budget.png"):
        assert (out / name).stat().st_size > 0, name
    assert "permutation test p =" in capsys.readouterr().out
    # Another seed splits differently; the split never depends on the file's order.
    assert split_examples(examples, 0.5, seed=1) != split_examples(examples, 0.5, seed=0)
    assert split_examples(examples[::-1], 1 / 3, seed=0) == tuple(part[::-1] for part in split_examples(examples, 1 / 3, 0))
    # With --eval-workload, the first file is all calibration.
    other = tmp_path / "other"
    assert main([*args, "--eval-workload", str(out / "evaluation.jsonl"), "--workload", str(out / "calibration.jsonl"),
                 "--out", str(other)]) == 0
    again = json.loads((other / "results.json").read_text())
    assert again["methods"]["full"] == results["methods"]["full"]
    assert not (other / "calibration.jsonl").exists()
    assert results["info"]["compress"] == "context" and results["info"]["controls_at"] == "all"


def test_demo_and_evaluate_compress_where_they_are_told(checkpoint, small_profile, tmp_path, monkeypatch):
    """`--compress prompt` (SnapKV's query-aware setting) reaches both calibration and evaluation in
    the demo; `depthkv evaluate --profile` compresses where the profile was calibrated unless told."""
    import depthkv.calibration
    import depthkv.evaluation

    seen = []
    real_evaluate, real_calibrate = depthkv.evaluation.evaluate, depthkv.calibration.calibrate
    monkeypatch.setattr(depthkv.evaluation, "evaluate", lambda *a, **k: seen.append(("evaluate", k["compress"])) or real_evaluate(*a, **k))
    monkeypatch.setattr(depthkv.calibration, "calibrate", lambda *a, **k: seen.append(("calibrate", k["compress"])) or real_calibrate(*a, **k))
    data = small_profile.parent / "wl.jsonl"
    demo = ["demo", "--model", str(checkpoint), "--workload", str(data), "--eval-workload", str(data), "--quick",
            "--budgets", "0.3", "--strategies", "proportional", "--no-controls", "--no-progress", "--compress", "prompt"]
    assert main([*demo, "--out", str(tmp_path / "demo")]) == 0
    assert seen == [("calibrate", "prompt"), ("evaluate", "prompt")]
    assert json.loads((tmp_path / "demo" / "profile.json").read_text())["settings"]["compress"] == "prompt"
    assert "compressed after the context + question" in (tmp_path / "demo" / "report.md").read_text()
    seen.clear()
    base = ["evaluate", "--model", str(checkpoint), "--workload", str(data), "--budgets", "0.3", "--strategies",
            "proportional", "--no-controls", "--no-progress"]
    prompt_profile = str(tmp_path / "demo" / "profile.json")
    assert main([*base, "--profile", prompt_profile, "--out", str(tmp_path / "a")]) == 0
    assert main([*base, "--profile", str(small_profile), "--out", str(tmp_path / "b")]) == 0
    assert main([*base, "--profile", prompt_profile, "--compress", "context", "--out", str(tmp_path / "c")]) == 0
    assert seen == [("evaluate", "prompt"), ("evaluate", "context"), ("evaluate", "context")]
    assert json.loads((tmp_path / "a" / "results.json").read_text())["info"]["compress"] == "prompt"


@pytest.mark.parametrize(
    "lines, extra, says",
    [
        ([], [], "no examples"),
        (["\n"], [], "no examples"),
        ("three", [], "at least 2 calibration examples and 1 evaluation example are needed"),
        ("three", ["--calib-fraction", "1.5"], "must be in (0, 1)"),
        ("three", ["--baselines", "snapkv"], "unknown baseline(s) 'snapkv'"),
        ("three", ["--n-eval", "4"], "--n-eval size(s) the built-in workload"),
        ("three", ["--eval-workload", "W", "--calib-fraction", "0.5"], "with --eval-workload the whole file calibrates"),
        (["{\"context\": \"x\"}\n"], [], "line 1: missing required field(s) 'question', 'answer'"),
    ],
)
def test_demo_on_bad_data_says_what_is_wrong(tmp_path, capsys, lines, extra, says):
    """An empty file, too few examples to split, a bad option: exit 2 before the model is loaded."""
    from depthkv.workload import builtin_workload, save_jsonl

    data = tmp_path / "mine.jsonl"
    if lines == "three":
        save_jsonl(builtin_workload(["niah_single"], n_per_task=3, context_length=100).examples, data)
    else:
        data.write_text("".join(lines))
    extra = [str(data) if e == "W" else e for e in extra]
    out = tmp_path / "demo"
    assert main(["demo", "--model", "/no/such/model", "--workload", str(data), *extra, "--out", str(out)]) == 2
    assert says in capsys.readouterr().err
    assert not out.exists()
    assert main(["demo", "--eval-workload", str(data), "--out", str(out)]) == 2
    assert "--eval-workload needs --workload" in capsys.readouterr().err


def test_bad_input_is_a_clear_error(tmp_path, capsys):
    assert main(["allocate", str(tmp_path / "missing.json"), "--budget", "0.2", "--out", str(tmp_path / "p")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen2", "smollm2-135m", "gemma3-270m"])
def test_demo_leaves_out_the_tasks_the_card_calls_not_learned(name):
    """Issue 3: a task the model has not learned is said so on its card and left out of the
    default workload. The demo's tasks are exactly the card's learned ones, each at or above the
    card's threshold at the trained length (a real model's card: its default length); a model
    without a card gets the built-in defaults. The real models' cards are committed files, read
    without loading the model."""
    from depthkv.cli.common import card as model_card
    from depthkv.cli.common import default_tasks
    from depthkv.workload import DEFAULT_TASKS

    card = model_card(name)
    tasks = default_tasks(name)
    assert tasks == card["learned_tasks"] and tasks
    length = card.get("trained_length", card.get("default_length"))
    threshold = card["learned_threshold"]
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
    assert "differ from the recorded ones" in capsys.readouterr().err


def test_card_command_measures_full_cache_accuracy_per_task_and_length(checkpoint, tmp_path, capsys):
    """`depthkv card` scores the full cache on the evaluation split of each task at each length and
    lists as learned the tasks at or above 0.8 at the default length (the demo's default tasks)."""
    out = tmp_path / "card.json"
    args = ["card", "--model", str(checkpoint), "--tasks", "prose_needle", "prose_multikey", "--lengths", "600", "700"]
    assert main([*args, "--n-per-task", "2", "--default-length", "700", "--no-progress", "--out", str(out)]) == 0
    card = json.loads(out.read_text())
    assert set(card["cells"]) == {f"{t}@{n}" for t in ("prose_needle", "prose_multikey") for n in (600, 700)}
    for cell in card["cells"].values():
        assert cell["n"] == 2 and cell["accuracy"] == sum(cell["scores"]) / 2
    learned = [t for t in card["tasks"] if card["cells"][f"{t}@700"]["accuracy"] >= 0.8]
    assert card["learned_tasks"] == learned and card["default_length"] == 700
    assert card["workloads"]["700"]["source"] == "natural" and card["workloads"]["700"]["split"] == "evaluation"
    assert "learned at 700 tokens" in capsys.readouterr().out
    assert main([*args, "--default-length", "300", "--out", str(out)]) == 2


def test_the_policy_s_window_and_kernel_from_the_command_line(checkpoint, small_profile, tmp_path):
    from depthkv import PolicyConfig, Profile

    data, out = small_profile.parent / "wl.jsonl", tmp_path / "p.json"
    args = ["calibrate", "--model", str(checkpoint), "--workload", str(data), "--n-permutations", "9"]
    assert main([*args, "--window", "4", "--kernel", "3", "--no-progress", "--out", str(out)]) == 0
    assert Profile.load(out).policy == PolicyConfig(name="snapkv", window=4, kernel=3)
    assert main([*args, "--kernel", "4", "--out", str(tmp_path / "q.json")]) == 2  # kernels are odd


def test_card_scores_the_unmodified_model_as_evaluate_scores_the_full_cache():
    """`depthkv card` runs the model itself (transformers' cache, no depthkv attention) for speed; it
    must prompt, generate, stop and score exactly as `depthkv.evaluate`'s full cache does. The
    scorer moves with every character of the prediction, so a different prompt (the question left
    out, special tokens), length or stop rule shows."""
    import zlib

    import depthkv
    from depthkv.cli.card import full_cache_scores

    model, tokenizer = depthkv.load_model("tiny-llama")
    workload = depthkv.builtin_workload(["niah_single", "kv_retrieval"], n_per_task=3, context_length=300, split="evaluation")

    def scorer(example, prediction):
        return float(zlib.crc32(prediction.encode()))

    for decoding in ({"extra_tokens": 2, "stop_at_newline": True}, {"extra_tokens": 5, "stop_at_newline": False}):
        full = depthkv.evaluate(model, tokenizer, workload, {"full": None}, scorer=scorer, progress=False, **decoding)["full"]
        scores, tasks = full_cache_scores(model, tokenizer, workload, scorer=scorer, progress=False, **decoding)
        assert scores == full.scores and tasks == full.tasks
