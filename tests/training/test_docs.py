"""docs/models.md says what the shipped models' records say: its accuracy tables are their
``evaluation.json``, and its commands are the recorded ones, as they run today."""

from __future__ import annotations

import json
import re

import pytest

from depthkv.workload import DEFAULT_TASKS
from training import train as T

DOC = T.MODELS_DIR.parent.parent / "docs" / "models.md"
NAMES = ["tiny-llama", "tiny-qwen2"]


def _record(name: str, file: str) -> dict:
    return json.loads((T.MODELS_DIR / name / file).read_text(encoding="utf-8"))


def _commands(text: str) -> list[str]:
    """The shell commands of the doc's code blocks, continuation lines joined."""
    blocks = re.findall(r"```bash\n(.*?)```", text, re.DOTALL)
    joined = "\n".join(blocks).replace("\\\n", " ")
    return [" ".join(line.split()) for line in joined.splitlines() if line.startswith("python ")]


@pytest.mark.parametrize("name", NAMES)
def test_the_accuracy_table_is_the_model_s_evaluation_record(name):
    evaluation = _record(name, "evaluation.json")
    cells, lengths = evaluation["cells"], evaluation["lengths"]
    rows = [
        f"| `{task}` | " + " | ".join(f"{cells[f'{task}@{n}']['accuracy']:.3f}" for n in lengths) + " |"
        for task in DEFAULT_TASKS
    ]
    means = [sum(cells[f"{task}@{n}"]["accuracy"] for task in DEFAULT_TASKS) / len(DEFAULT_TASKS) for n in lengths]
    rows.append("| mean | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    header = "| task | " + " | ".join(f"L={n}" for n in lengths) + " |\n|---|" + "---:|" * len(lengths)
    table = f"{name}:\n\n{header}\n" + "\n".join(rows) + "\n"
    assert table in DOC.read_text(encoding="utf-8")
    assert f"{evaluation['n']} examples per task and length" in DOC.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", NAMES)
def test_the_commands_are_the_recorded_ones_as_they_run_today(name):
    """The retraining commands are the record's (``reproduce``, then each extension) with ``--out``
    added before any ``--resume``; the evaluation command is the one the card prints."""
    training = _record(name, "training.json")
    commands = _commands(DOC.read_text(encoding="utf-8"))
    out = f" --out /tmp/{name}"
    retrain = [c.replace(out, "") for c in commands if c.startswith(f"python -m training.train --name {name} ")]
    recorded = [training["reproduce"], *training["reproduce_extensions"]]
    assert [c for c in retrain if "--eval-only" not in c] == [T.runnable_command(r) for r in recorded]
    assert T.eval_command(_record(name, "evaluation.json")) in commands


@pytest.mark.parametrize("name", NAMES)
def test_the_model_table_is_the_training_record(name):
    training, text = _record(name, "training.json"), DOC.read_text(encoding="utf-8")
    assert f"{training['parameters']:,} (fp32" in text
    assert f"`{training['config']['recipe']}`, seed {training['seed']}, {training['steps']:,} steps" in text
    assert f"{training['machine']['cpu_threads']} CPU thread" in text
    assert f"{training['wall_time_s'] / 60:.1f} minutes" in text
