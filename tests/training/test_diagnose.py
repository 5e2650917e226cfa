"""The multi-item diagnostic: recall and per-position accuracy by item count."""

from __future__ import annotations

import pytest

from depthkv.workload import Example, oracle_answer
from training.diagnose import item_positions, table


def _oracle(prompt: str, max_new_tokens: int) -> str:
    context, _, question = prompt.rpartition("\n?")
    answer = oracle_answer(Example(context, "\n?" + question, "", "niah_multiquery", {}))
    assert max_new_tokens == len(answer) + 2  # room for the whole answer, as on the card
    return answer + "\nmore text"


def _lost_place(prompt: str, max_new_tokens: int) -> str:
    """Right values, wrong places: skips the first item and repeats the last (tiny-qwen2 v4)."""
    items = _oracle(prompt, max_new_tokens).split("\n")[0].split()
    return " ".join(items[1:] + items[-1:])


@pytest.mark.parametrize("task", ["niah_multiquery", "niah_multivalue"])
def test_an_oracle_is_right_everywhere_and_a_lost_place_shows_by_position(task):
    right = item_positions(_oracle, task, [2, 4], 256, n=5)
    assert right == {c: {"n": 5, "recall": 1.0, "position_exact": [1.0] * c} for c in (2, 4)}
    lost = item_positions(_lost_place, task, [2, 4], 256, n=5)
    for count, row in lost.items():
        # The values are all distinct: every position but the last is wrong, and recall misses one.
        assert row["position_exact"] == [0.0] * (count - 1) + [1.0]
        assert row["recall"] == pytest.approx((count - 1) / count)
    assert "| 4 | 5 | 0.750 | 0.00 / 0.00 / 0.00 / 1.00 |" in table(task, lost)


def test_examples_are_the_same_for_a_seed_and_bad_input_is_named():
    prompts = []

    def record(prompt: str, max_new_tokens: int) -> str:
        prompts.append(prompt)
        return ""

    item_positions(record, "niah_multiquery", [3], 200, n=2, seed=1)
    item_positions(record, "niah_multiquery", [3], 200, n=2, seed=1)
    assert prompts[:2] == prompts[2:] and prompts[0] != prompts[1]
    with pytest.raises(ValueError, match="unknown task 'kv_retrieval' for item positions; known: niah_multiquery"):
        item_positions(record, "kv_retrieval", [2], 200, n=1)
    with pytest.raises(ValueError, match="need n >= 1 and item counts >= 1, got n=0"):
        item_positions(record, "niah_multiquery", [2], 200, n=0)


def test_the_command_line_runs_on_a_checkpoint_folder(tmp_path, capsys, monkeypatch):
    """``python -m training.diagnose --model DIR``: loads the checkpoint, prints one table per task
    with a row per item count."""
    from depthkv.workload import ByteTokenizer
    from tests.training.test_train import SMALL
    from training import diagnose
    from training import train as T

    monkeypatch.setitem(T.PRESETS, "tiny-llama", SMALL)
    T.save_model(T.model_at(T.TrainConfig(name="tiny-llama"), 1), ByteTokenizer(), tmp_path / "model")
    diagnose.main(["--model", str(tmp_path / "model"), "--length", "128", "--n", "2", "--counts", "2", "3"])
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path / 'model'} at 128 characters, greedy, full cache")
    for task in ("niah_multiquery", "niah_multivalue"):
        assert f"\n{task}:\n" in out
    assert len([line for line in out.splitlines() if line.startswith(("| 2 | 2 |", "| 3 | 2 |"))]) == 4
