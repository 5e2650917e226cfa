import json
import os
import re

import pytest

from depthkv.workload import (
    DEFAULT_TASKS,
    MULTI_ITEM_TASKS,
    TASKS,
    Example,
    Workload,
    builtin_workload,
    from_jsonl,
    generate,
    load_jsonl,
    oracle_answer,
    save_jsonl,
    score,
)

LENGTHS = (256, 512, 1024, 2048, 4096)
EXPECTED_TASKS = {
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "variable_tracking",
    "common_words",
    "frequent_words",
    "kv_retrieval",
}


def test_task_names():
    assert set(TASKS) == EXPECTED_TASKS
    assert set(DEFAULT_TASKS) <= EXPECTED_TASKS
    assert MULTI_ITEM_TASKS <= EXPECTED_TASKS


# -- generation ------------------------------------------------------------------------------


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_generation_is_deterministic_per_seed(task):
    first = generate(task, 4, 512, seed=7)
    assert first == generate(task, 4, 512, seed=7)
    other = generate(task, 4, 512, seed=8)
    assert all(a.context != b.context for a, b in zip(first, other))
    # Examples within one call differ too.
    assert len({ex.context for ex in first}) == len(first)


def test_generation_is_prefix_stable():
    assert generate("niah_multikey", 3, 256, 1) == generate("niah_multikey", 5, 256, 1)[:3]


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_context_length_and_oracle(task):
    """Every example is answerable from its text alone and fills its context to the target."""
    for length in LENGTHS:
        for seed in range(3):
            for ex in generate(task, 3, length, seed):
                assert 0 <= length - len(ex.context) <= 4, (length, len(ex.context))
                stripped = Example(ex.context, ex.question, ex.answer)  # no task, no metadata
                assert oracle_answer(stripped) == ex.answer
                assert ex.task == task


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_prompt_format(task):
    for ex in generate(task, 5, 256, 3):
        assert ex.prompt == ex.context + ex.question
        assert re.fullmatch(r"\n\?[^\n]+:", ex.question)
        assert ex.answer == ex.answer.strip() and ex.answer
        assert "\n" not in ex.answer
        assert not ex.context.endswith("\n") and not ex.context.startswith("\n")
        assert "?" not in ex.context
        assert ex.context.isascii() and ex.context == ex.context.lower()
        assert ex.metadata["seed"] == 3 and ex.metadata["context_length"] == 256
        if task in MULTI_ITEM_TASKS:
            assert len(ex.answer.split()) > 1


def test_needle_records_and_options():
    ex = generate("niah_multikey", 1, 512, 0, num_distractors=5)[0]
    assert len(re.findall(r"^[a-z]{4}:\d{4}$", ex.context, re.M)) == 6
    assert ex.metadata["num_distractors"] == 5
    ex = generate("niah_multivalue", 1, 512, 0, num_values=3)[0]
    assert len(ex.answer.split()) == 3
    ex = generate("variable_tracking", 1, 512, 0, num_chains=3, num_hops=3)[0]
    assert len(ex.answer.split()) == 4
    assert len(re.findall(r"^[a-z]{4}=\w+$", ex.context, re.M)) == 12
    assert oracle_answer(ex) == ex.answer
    ex = generate("common_words", 1, 1024, 0, num_common=5)[0]
    assert ex.question == "\n?top5:" and oracle_answer(ex) == ex.answer


def test_kv_retrieval_is_dense_and_exact():
    for length in (100, 257, 1000, 4099):
        ex = generate("kv_retrieval", 1, length, 2)[0]
        assert len(ex.context) == length
        assert all(re.fullmatch(r"[a-z]{4}:\d{4,5}", line) for line in ex.context.split("\n"))


def test_frequent_words_top_counts_are_strict():
    for length in LENGTHS:
        for ex in generate("frequent_words", 3, length, 5):
            counts = ex.metadata["top_counts"]
            assert counts == sorted(counts, reverse=True) and len(set(counts)) == len(counts)


def test_generate_rejects_bad_arguments():
    with pytest.raises(ValueError, match="unknown task"):
        generate("nope", 1, 256, 0)
    with pytest.raises(ValueError, match="too short"):
        generate("niah_multiquery", 1, 20, 0)
    with pytest.raises(ValueError, match="too short"):
        generate("common_words", 1, 10, 0)
    with pytest.raises(ValueError, match="context_length"):
        generate("niah_single", 1, 0, 0)


# -- workloads -------------------------------------------------------------------------------


def test_builtin_splits_are_disjoint():
    calib = builtin_workload(sorted(EXPECTED_TASKS), n_per_task=6, context_length=256, split="calibration")
    evaluation = builtin_workload(
        sorted(EXPECTED_TASKS), n_per_task=6, context_length=256, split="evaluation"
    )
    assert len(calib) == len(evaluation) == 6 * len(EXPECTED_TASKS)
    assert not {ex.prompt for ex in calib} & {ex.prompt for ex in evaluation}
    assert calib.fingerprint() != evaluation.fingerprint()
    assert (
        builtin_workload(n_per_task=2, context_length=256).examples
        == builtin_workload(n_per_task=2, context_length=256).examples
    )
    assert (
        builtin_workload(n_per_task=2, context_length=256, seed=1).examples
        != builtin_workload(n_per_task=2, context_length=256, seed=0).examples
    )


def test_builtin_describe():
    wl = builtin_workload(["niah_single", "kv_retrieval"], n_per_task=3, context_length=512, seed=4)
    info = json.loads(json.dumps(wl.describe()))
    assert info["split"] == "calibration" and info["seed"] == 4 and info["n"] == 6
    assert info["tasks"] == {"niah_single": 3, "kv_retrieval": 3}
    assert 508 <= info["context_length"]["min"] <= info["context_length"]["max"] <= 512
    assert info["source"] == "builtin"
    assert wl.tasks == ["niah_single", "kv_retrieval"]
    assert builtin_workload(context_length=256, n_per_task=1).tasks == list(DEFAULT_TASKS)


def test_builtin_workload_validates():
    with pytest.raises(ValueError, match="split"):
        builtin_workload(split="custom")
    with pytest.raises(ValueError, match="unknown task"):
        builtin_workload(["niah_single", "bogus"])
    with pytest.raises(ValueError, match="n_per_task"):
        builtin_workload(n_per_task=0)


# -- scoring ---------------------------------------------------------------------------------


def _ex(answer, task="custom", **metadata):
    return Example("ctx", "\n?q:", answer, task, metadata)


def test_score_single_answers():
    ex = _ex("4821", "niah_single")
    assert score(ex, "4821") == 1.0
    assert score(ex, "  4821 \n") == 1.0
    assert score(ex, "4821\nthe sun is warm.\n?abcd:") == 1.0  # only the first line counts
    assert score(ex, "\n4821") == 1.0  # surrounding whitespace is stripped
    assert score(ex, "4822") == 0.0
    assert score(ex, "48211") == 0.0
    assert score(ex, "4821 4821") == 0.0
    assert score(ex, "") == 0.0
    exact = {"scorer": "exact"}
    assert score(_ex("New York", **exact), "New York") == 1.0
    assert score(_ex("New York", **exact), "New  York") == 0.0
    assert score(_ex("line one\nline two", **exact), "line one\nline two\n") == 1.0
    assert score(_ex("line one\nline two", **exact), "line one") == 0.0


def test_score_multi_item_recall():
    ex = _ex("1111 2222 3333 4444", "niah_multivalue")
    assert score(ex, "1111 2222 3333 4444") == 1.0
    assert score(ex, "4444,3333, 2222 1111") == 1.0  # order and commas do not matter
    assert score(ex, "1111 2222") == 0.5
    assert score(ex, "1111 9999 9999") == 0.25
    assert score(ex, "111 22223") == 0.0  # items match whole, not as substrings
    assert score(ex, "1111 2222\n3333 4444") == 0.5  # later lines ignored
    assert score(ex, "") == 0.0
    exact = {"scorer": "exact"}
    assert score(_ex("aa aa bb", multi_item=True, **exact), "aa bb") == pytest.approx(2 / 3)
    assert score(_ex("aa, bb", multi_item=True, **exact), "bb") == 0.5
    assert score(_ex("aa bb", **exact), "aa") == 0.0  # one answer unless multi_item


@pytest.mark.parametrize("task", sorted(EXPECTED_TASKS))
def test_generated_answers_score_perfectly(task):
    for ex in generate(task, 2, 256, 0):
        assert score(ex, ex.answer) == 1.0
        assert score(ex, ex.answer + "\n?zzzz:") == 1.0
        assert score(ex, "zzzz") == 0.0


# -- JSONL -----------------------------------------------------------------------------------


def test_jsonl_round_trip(tmp_path):
    examples = [ex for task in sorted(EXPECTED_TASKS) for ex in generate(task, 2, 256, 1)]
    examples.append(Example("ünïcode ✓ 🙂\nline", "\nq?", " a", metadata={"k": [1, 2]}))
    path = tmp_path / "w.jsonl"
    save_jsonl(examples, path)
    assert load_jsonl(path) == examples
    assert os.listdir(tmp_path) == ["w.jsonl"]  # no temporary file left behind
    save_jsonl(examples[:1], path)  # replaces
    assert load_jsonl(path) == examples[:1]


def test_jsonl_user_format(tmp_path):
    path = tmp_path / "mine.jsonl"
    lines = [
        {"context": "c1", "question": "q1", "answer": "a1"},
        {
            "context": "c2",
            "question": "q2",
            "answer": "a2",
            "task": "qa",
            "source": "wiki",
            "metadata": {"x": 1},
        },
    ]
    path.write_text(json.dumps(lines[0]) + "\n\n" + json.dumps(lines[1]) + "\n", encoding="utf-8")
    first, second = load_jsonl(path)
    assert first == Example("c1", "q1", "a1")
    assert second.task == "qa" and second.metadata == {"x": 1, "source": "wiki"}
    wl = from_jsonl(path)
    assert isinstance(wl, Workload) and wl.split == "custom" and wl.seed is None and wl.name == "mine"
    info = json.loads(json.dumps(wl.describe()))
    assert info["path"] == str(path.resolve())
    assert re.fullmatch(r"[0-9a-f]{64}", info["sha256"])
    assert info["tasks"] == {"custom": 1, "qa": 1}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"context": "c", "question": "q"}', r"line 2: missing required field\(s\) 'answer'"),
        ('{"question": "q"}', r"line 2: missing required field\(s\) 'context', 'answer'"),
        ('{"context": "c", "question": "q", "answer": ', r"line 2: invalid JSON"),
        ('["c", "q", "a"]', r"line 2: expected a JSON object"),
        ('{"context": "c", "question": "q", "answer": 5}', r"line 2: field 'answer' must be a string"),
        ('{"context": "c", "question": "q", "answer": "a", "metadata": 1}', r"line 2: field 'metadata'"),
    ],
)
def test_jsonl_errors_name_line_and_field(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "c", "question": "q", "answer": "a"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=message) as info:
        load_jsonl(path)
    assert str(path) in str(info.value)
    with pytest.raises(ValueError, match=message):
        from_jsonl(path)


def test_from_jsonl_rejects_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no examples"):
        from_jsonl(path)


def test_example_dict_round_trip_and_types():
    ex = Example("c", "\nq:", "a", "niah_single", {"depth": 0.5})
    assert Example.from_dict(ex.to_dict()) == ex
    assert Example.from_dict(json.loads(json.dumps(ex.to_dict()))) == ex
    with pytest.raises(TypeError):
        Example("c", "q", 5)
