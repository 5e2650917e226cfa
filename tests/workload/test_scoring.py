"""The two scorers on what real models say, and which examples use which."""

import json

import pytest

from depthkv.workload import (
    SCORERS,
    TASKS,
    Example,
    contains,
    generate,
    load_jsonl,
    natural_workload,
    parse_jsonl,
    score,
    scorer_of,
)
from tests.workload.tokenizers import WordTokenizer


def _ex(answer, task="custom", **metadata):
    return Example("ctx", "\nQ:", answer, task, metadata)


def test_which_scorer():
    assert SCORERS == ("exact", "contains")
    for task in TASKS:  # the shipped models' published numbers keep their scorer
        assert scorer_of(generate(task, 1, 256, 0)[0]) == "exact"
    assert scorer_of(_ex("1")) == "contains"  # custom data
    assert scorer_of(_ex("1", "my_task")) == "contains"
    assert scorer_of(_ex("1", "niah_single", scorer="contains")) == "contains"
    assert scorer_of(_ex("1", scorer="exact")) == "exact"
    for ex in natural_workload(WordTokenizer(), n_per_task=1, context_length=400):
        assert scorer_of(ex) == "contains" and ex.metadata["scorer"] == "contains"
    with pytest.raises(ValueError, match="unknown scorer 'fuzzy'.*exact, contains"):
        score(_ex("1", scorer="fuzzy"), "1")


@pytest.mark.parametrize(
    ("prediction", "expected"),
    [
        ("1948774", 1.0),
        (" 1948774.", 1.0),  # what SmolLM2 answered
        ("1948774!", 1.0),
        ("(1948774)", 1.0),
        ('"1948774"', 1.0),
        ("The special magic number is 1948774, as stated.", 1.0),
        ("\n 1948774.\n\nQuestion: What is ...", 1.0),  # later paragraphs ignored
        ("1948774 or 5550123", 1.0),  # extra values are not penalised (RULER)
        ("", 0.0),
        ("   \n", 0.0),
        ("194877", 0.0),
        ("19487745", 0.0),  # the reference inside a longer number
        ("21948774", 0.0),
        ("1948774.5", 1.0),  # "." ends the number
        ("1,948,774", 0.0),  # digits grouped differently are another string
        ("I don't know.\n\n1948774", 0.0),  # only the first paragraph counts
        ("The number is\n1948774.", 1.0),  # a paragraph may take several lines
        (" 5550123.\n \nQuestion: and 1948774?", 0.0),  # a blank line may hold spaces
    ],
)
def test_contains_on_a_number(prediction, expected):
    assert score(_ex("1948774"), prediction) == expected


def test_contains_rules():
    assert not contains("48774", "1948774")  # a number is matched whole
    assert contains("48774", "the number 48774")
    assert contains("Oslo", " oslo.") and contains("oslo", "OSLO") and contains("straße", "STRASSE")
    assert not contains("Oslo", "Oslovia") and not contains("Oslo", "NewOslo")
    assert contains("New York", "in new   york city") and contains("New York", "New\tYork")
    assert contains("3.14", "pi is 3.14.") and not contains("3.14", "13.14")
    assert contains("-5", "it is x-5")  # a reference starting with a sign needs no boundary there
    assert contains("C++", "C++ and Rust") and contains("C++", "C++++")  # nor ending with one
    assert contains("", "") and not contains("", "anything")
    assert score(_ex(""), "") == 1.0 and score(_ex(""), "x") == 0.0
    assert score(_ex("Lisbon"), " Lisbon, which is in Portugal.") == 1.0
    assert score(_ex("Lisbon"), " Lisboa.") == 0.0
    # A reference of several lines is looked for in the whole prediction.
    assert score(_ex("line one\nline two"), "well:\nLine one\nline two\n") == 1.0


def test_contains_multi_item_recall():
    ex = _ex("QPEXR SGTAB LMNOP", multi_item=True)
    assert score(ex, " QPEXR, SGTAB, LMNOP.") == 1.0
    assert score(ex, " LMNOP and qpexr and SGTAB") == 1.0  # order and case do not matter
    assert score(ex, " QPEXR, SGTAB.") == pytest.approx(2 / 3)
    assert score(ex, " QPEXR, ABCDE, FGHIJ, SGTAB, LMNOP, KLMNO") == 1.0  # extra items are free
    assert score(ex, " QPEXRS, XSGTAB") == 0.0  # items match whole
    assert score(ex, "\n\n1. QPEXR\n2. SGTAB\n3. LMNOP\n") == 1.0  # a list, one item a line
    assert score(ex, " QPEXR\n\nQuestion: what about SGTAB LMNOP?") == pytest.approx(1 / 3)  # one paragraph
    assert score(ex, "") == 0.0
    assert score(_ex("aa aa bb", multi_item=True), "aa bb") == 1.0  # RULER: each item on its own
    assert score(_ex("1111, 2222", multi_item=True), "11112222") == 0.0
    natural = natural_workload(WordTokenizer(), ["prose_vartrack"], n_per_task=1, context_length=500)[0]
    first, *rest = natural.answer.split()
    assert score(natural, f" {first}, {rest[0].lower()}.") == pytest.approx(2 / len(natural.answer.split()))


def test_exact_is_unchanged():
    ex = generate("niah_single", 1, 256, 0)[0]
    assert score(ex, ex.answer) == 1.0 and score(ex, f"{ex.answer}\n?abcd:") == 1.0
    assert score(ex, f" {ex.answer}.") == 0.0  # exact: the punctuation counts
    assert score(ex, ex.answer.upper() + "0") == 0.0
    assert score(_ex("Lisbon", scorer="exact"), " lisbon") == 0.0
    multi = generate("niah_multivalue", 1, 256, 0)[0]
    items = multi.answer.split()
    assert score(multi, " ".join(items[:2])) == 0.5 and score(multi, f"{items[0]}.") == 0.0


def test_jsonl_scorer_field():
    lines = [
        {"context": "c", "question": "q", "answer": "7"},
        {"context": "c", "question": "q", "answer": "7", "scorer": "exact"},
        {"context": "c", "question": "q", "answer": "7", "metadata": {"scorer": "contains"}},
        {"context": "c", "question": "q", "answer": "a b", "scorer": "contains", "multi_item": True},
    ]
    plain, exact, inner, multi = parse_jsonl("\n".join(json.dumps(line) for line in lines))
    assert exact.metadata == {"scorer": "exact"} and inner.metadata == {"scorer": "contains"}
    assert [score(ex, " 7.") for ex in (plain, exact, inner)] == [1.0, 0.0, 1.0]
    assert score(multi, "b.") == 0.5
    assert score(lines[1], "7") == 1.0 and score(lines[1], "7.") == 0.0  # dict lines too


def test_scorer_survives_jsonl(tmp_path):
    from depthkv.workload import save_jsonl

    workload = natural_workload(WordTokenizer(), ["prose_needle"], n_per_task=1, context_length=300)
    save_jsonl(workload, tmp_path / "w.jsonl")
    (loaded,) = load_jsonl(tmp_path / "w.jsonl")
    assert scorer_of(loaded) == "contains" and score(loaded, f" {loaded.answer}.") == 1.0
