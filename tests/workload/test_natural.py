"""The natural-text tasks: lengths in tokens of three tokenizers, determinism, disjoint splits, an
oracle that answers every example from its text, spread depths, descriptions and rebuilding."""

import json
import platform
import re

import pytest

from depthkv.workload import (
    NATURAL_MULTI_ITEM_TASKS,
    NATURAL_TASKS,
    Example,
    builtin_workload,
    count_tokens,
    generate_natural,
    length_tolerance,
    load_jsonl,
    natural_workload,
    oracle_answer,
    prose_corpus,
    rebuild_workload,
    save_jsonl,
    score,
)
from tests.workload.tokenizers import WordTokenizer, tokenizer

TOKENIZERS = ("byte", "word", "bpe")
# Lengths per tokenizer: about the same span of text (bytes are ~4x more tokens than BPE pieces).
LENGTHS = {"byte": (600, 1500, 4096), "word": (300, 777, 2048), "bpe": (256, 700, 4096)}


def _generated(name):
    tok = tokenizer(name)
    for length in LENGTHS[name]:
        for task in NATURAL_TASKS:
            for ex in generate_natural(task, tok, 3, length, seed=length):
                yield tok, length, ex


@pytest.mark.parametrize("name", TOKENIZERS)
def test_lengths_oracle_and_format(name):
    """Every example's context has its target count of tokens (within the tolerance), records that
    count, is answered right by the oracle from its text alone, and scores 1.0 when the model says
    the answer the way real models do."""
    off = []
    for tok, length, ex in _generated(name):
        tokens = count_tokens(tok, ex.context)
        assert ex.metadata["context_tokens"] == tokens
        assert abs(tokens - length) <= length_tolerance(length), (ex.task, length, tokens)
        off.append(tokens - length)
        stripped = Example(ex.context, ex.question, ex.answer)  # no task, no metadata
        assert oracle_answer(stripped) == ex.answer
        assert ex.question.startswith("\n\nQuestion: ") and "\nAnswer: " in ex.question
        assert not ex.question.endswith(" ") and not ex.context.endswith((" ", "\n"))
        assert ex.answer == ex.answer.strip() and "\n" not in ex.answer
        assert ex.metadata["scorer"] == "contains" and ex.metadata["tokenizer"] == tok.name_or_path
        assert ex.metadata["context_length"] == length
        assert score(ex, " " + ex.answer + ".") == 1.0
        assert score(ex, " " + ex.answer.lower() + ", I think.\nQuestion: ...") == 1.0
        assert score(ex, " unknown.") == 0.0
    assert off.count(0) >= 0.9 * len(off)  # in practice the count is exact


def test_answers_and_questions_per_family():
    tok = tokenizer("byte")
    needle, multikey, hop, variables = (generate_natural(t, tok, 1, 2048, 0)[0] for t in NATURAL_TASKS)
    assert re.fullmatch(r"\d{7}", needle.answer) and needle.question.endswith(
        f"The special magic number for {needle.metadata['key']} is"
    )
    assert (
        len(re.findall(r"One of the special magic numbers for [a-z]+-[a-z]+ is: \d{7}\.", needle.context))
        == 1
    )
    assert len(re.findall(r"special magic numbers for [a-z-]+ is", multikey.context)) == 4
    assert multikey.metadata["num_distractors"] == 3 and multikey.metadata["key"] in multikey.metadata["keys"]
    assert hop.answer.isalpha() and hop.question.endswith(f"{hop.metadata['person']} works in the city of")
    assert f"{hop.metadata['person']} works at {hop.metadata['company']}." in hop.context
    assert f"{hop.metadata['company']} is located in {hop.answer}." in hop.context
    assert len(variables.answer.split()) == 4 and variables.metadata["multi_item"] is True
    assert variables.task in NATURAL_MULTI_ITEM_TASKS
    assert variables.question.endswith(
        "4 variables are assigned the value " + _value(variables) + ", they are:"
    )
    # The prose has no digits: every number in a context belongs to a fact.
    for ex in (needle, multikey, hop, variables):
        facts = re.findall(
            r"One of the special magic numbers for [a-z-]+ is: \d+\.|VAR [A-Z]+ = \d+\.", ex.context
        )
        assert len(re.findall(r"\d+", ex.context)) == len(facts)
        assert not ex.context.startswith(" ") and "\n\n\n" not in ex.context


def _value(example):
    return re.search(r"assigned the value (\d+) in", example.question).group(1)


def test_options_and_errors():
    tok = tokenizer("word")
    ex = generate_natural("prose_multikey", tok, 1, 600, 0, num_distractors=6)[0]
    assert len(ex.metadata["keys"]) == 7 and ex.metadata["num_distractors"] == 6
    assert oracle_answer(ex) == ex.answer
    ex = generate_natural("prose_vartrack", tok, 1, 900, 0, num_chains=3, num_hops=5)[0]
    assert len(ex.answer.split()) == 6 and len(re.findall(r"\bVAR [A-Z]+ = ", ex.context)) == 18
    assert oracle_answer(ex) == ex.answer and ex.metadata["num_chains"] == 3
    ex = generate_natural("prose_multihop", tok, 1, 600, 0, num_distractors=0)[0]
    assert len(re.findall(r" works at ", ex.context)) == 1 and oracle_answer(ex) == ex.answer
    with pytest.raises(ValueError, match="unknown natural task"):
        generate_natural("niah_single", tok, 1, 600, 0)
    with pytest.raises(ValueError, match="too short for prose_multikey"):
        generate_natural("prose_multikey", tok, 1, 40, 0)
    with pytest.raises(ValueError, match="num_distractors"):
        generate_natural("prose_multikey", tok, 1, 600, 0, num_distractors=0)
    with pytest.raises(ValueError, match="context_length"):
        generate_natural("prose_needle", tok, 1, 0, 0)
    with pytest.raises(ValueError, match="unknown natural task"):
        natural_workload(tok, ["prose_needle", "kv_retrieval"])
    with pytest.raises(ValueError, match="split"):
        natural_workload(tok, split="custom")


def test_depths_are_spread():
    """The asked needle moves through the context from example to example; the two facts of a hop
    question are about half the context apart; variable chains span the context."""
    tok = tokenizer("word")
    needles = generate_natural("prose_needle", tok, 8, 1000, 1)
    depths = sorted(ex.metadata["depths"][0] for ex in needles)
    assert depths[0] < 0.2 and depths[-1] > 0.8
    assert all(b - a < 0.3 for a, b in zip(depths, depths[1:]))
    for ex in generate_natural("prose_multihop", tok, 8, 1000, 1):
        first, second = ex.metadata["depths"]
        assert abs(first - second) > 0.3
    for ex in generate_natural("prose_vartrack", tok, 8, 1000, 1):
        spots = ex.metadata["depths"]
        assert spots == sorted(spots) and spots[-1] - spots[0] > 0.5


def test_generation_is_deterministic_and_prefix_stable():
    tok = tokenizer("word")
    for task in NATURAL_TASKS:
        first = generate_natural(task, tok, 3, 500, seed=7)
        assert first == generate_natural(task, WordTokenizer(), 3, 500, seed=7)
        assert first[:2] == generate_natural(task, tok, 2, 500, seed=7)
        other = generate_natural(task, tok, 3, 500, seed=8)
        assert all(a.context != b.context for a, b in zip(first, other))
        assert len({ex.context for ex in first}) == 3


def test_splits_are_disjoint():
    tok = tokenizer("word")
    calibration = natural_workload(tok, n_per_task=6, context_length=400, split="calibration")
    evaluation = natural_workload(tok, n_per_task=6, context_length=400, split="evaluation")
    assert len(calibration) == len(evaluation) == 6 * len(NATURAL_TASKS)
    assert calibration.tasks == list(NATURAL_TASKS)
    assert not {ex.prompt for ex in calibration} & {ex.prompt for ex in evaluation}
    assert not {ex.question for ex in calibration} & {ex.question for ex in evaluation}
    assert calibration.fingerprint() != evaluation.fingerprint()
    again = natural_workload(WordTokenizer(), n_per_task=6, context_length=400, split="calibration")
    assert again.examples == calibration.examples


def test_describe_records_the_provenance():
    tok = tokenizer("byte")
    workload = natural_workload(
        tok, ["prose_needle", "prose_vartrack"], n_per_task=2, context_length=700, seed=3
    )
    info = json.loads(json.dumps(workload.describe()))
    assert info["source"] == "natural" and info["name"] == "natural-calibration"
    assert info["split"] == "calibration" and info["seed"] == 3 and info["n"] == 4
    assert info["tasks"] == {"prose_needle": 2, "prose_vartrack": 2}
    assert info["tokenizer"] == "depthkv-byte" and info["length_unit"] == "tokens"
    assert info["target_context_length"] == 700 and info["generator_version"] == 1
    text = info["text_source"]
    assert text == prose_corpus().source
    assert text["name"] == "pydoc_data.topics" and text["python"] == platform.python_version()
    assert re.fullmatch(r"[0-9a-f]{64}", text["sha256"])
    assert info["examples_sha256"] == workload.fingerprint()
    assert abs(info["context_tokens"]["mean"] - 700) <= length_tolerance(700)


def test_rebuild_round_trip(tmp_path):
    tok = tokenizer("byte")
    natural = natural_workload(
        tok, ["prose_multihop", "prose_needle"], n_per_task=2, context_length=800, seed=5
    )
    described = json.loads(json.dumps(natural.describe()))  # as a profile stores it
    rebuilt = rebuild_workload(described, tok)
    assert rebuilt.examples == natural.examples and rebuilt.describe() == natural.describe()
    builtin = builtin_workload(
        ["niah_single", "variable_tracking"], n_per_task=2, context_length=256, split="evaluation"
    )
    assert rebuild_workload(json.loads(json.dumps(builtin.describe()))).examples == builtin.examples
    # A natural workload saved as JSONL keeps its scorer and answers.
    save_jsonl(natural, tmp_path / "natural.jsonl")
    assert load_jsonl(tmp_path / "natural.jsonl") == natural.examples


def test_rebuild_says_what_differs(tmp_path):
    tok = tokenizer("byte")
    described = natural_workload(tok, ["prose_needle"], n_per_task=2, context_length=600).describe()
    with pytest.raises(ValueError, match="needs the tokenizer .*'depthkv-byte'"):
        rebuild_workload(described)
    with pytest.raises(
        ValueError, match="examples differ .*tokenizer differs: recorded 'depthkv-byte', given 'test-words'"
    ):
        rebuild_workload(described, WordTokenizer())
    tampered = {**described, "examples_sha256": "0" * 64}
    with pytest.raises(ValueError, match="examples differ .*vocabulary must differ"):
        rebuild_workload(tampered, tok)
    other_python = {
        **described,
        "text_source": {**described["text_source"], "python": "3.99.0", "sha256": "f" * 64},
    }
    with pytest.raises(
        ValueError,
        match=r"prose differs: .*Python 3\.99\.0 .*this environment has .*Python "
        + re.escape(platform.python_version()),
    ):
        rebuild_workload(other_python, tok)
    with pytest.raises(ValueError, match="generators version 0"):
        rebuild_workload({**described, "generator_version": 0}, tok)
    with pytest.raises(ValueError, match="lacks 'seed'"):
        rebuild_workload({k: v for k, v in described.items() if k != "seed"}, tok)
    builtin = builtin_workload(["niah_single"], n_per_task=1, context_length=256).describe()
    with pytest.raises(ValueError, match="examples differ"):
        rebuild_workload({**builtin, "examples_sha256": "0" * 64})
    path = tmp_path / "mine.jsonl"
    path.write_text('{"context": "c", "question": "q", "answer": "a"}\n', encoding="utf-8")
    from depthkv.workload import from_jsonl

    with pytest.raises(ValueError, match=r"cannot be rebuilt .*from_jsonl\(.*mine\.jsonl"):
        rebuild_workload(from_jsonl(path).describe())
