"""Making a generated workload again from its description (``Workload.describe()``, as stored in a
profile's ``workload``), checked against the examples' recorded sha256."""

from __future__ import annotations

from typing import Any

from depthkv.workload.generators import TASKS
from depthkv.workload.haystack import tokenizer_name
from depthkv.workload.natural import NATURAL_GENERATOR_VERSION, NATURAL_TASKS, natural_workload
from depthkv.workload.prose import prose_corpus
from depthkv.workload.workload import GENERATOR_VERSION, Workload, builtin_workload


def rebuild_workload(description: dict, tokenizer: Any = None) -> Workload:
    """The workload ``description`` describes, generated again.

    ``description`` is a ``Workload.describe()`` of a built-in (``source="builtin"``) or natural
    (``source="natural"``) workload; a natural one needs ``tokenizer``, the one its lengths were
    counted with. The rebuilt examples must have the recorded ``examples_sha256``.

    Raises ``ValueError`` saying what differs: another generator version, another text (the prose
    of another Python version), another tokenizer, or examples that differ although all of these
    match. A custom JSONL workload cannot be rebuilt: load its file with
    :func:`~depthkv.workload.workload.from_jsonl` (its path and sha256 are in the description).
    """
    source = description.get("source")
    if source == "jsonl":
        raise ValueError(
            "a custom JSONL workload cannot be rebuilt from its description: load the file with "
            f"depthkv.from_jsonl({description.get('path', '<path>')!r}) (recorded sha256 "
            f"{description.get('sha256', '?')})"
        )
    if source not in ("builtin", "natural"):
        raise ValueError(
            f"cannot rebuild a workload with source {source!r}; only 'builtin' and 'natural' workloads "
            "are generated (a custom one is a file: pass it to from_jsonl)"
        )
    fields = (
        "tasks",
        "n_per_task",
        "target_context_length",
        "split",
        "seed",
        "generator_version",
        "examples_sha256",
    )
    if source == "natural":
        fields += ("tokenizer", "text_source")
    missing = [name for name in fields if name not in description]
    if missing:
        raise ValueError(
            f"the description lacks {', '.join(map(repr, missing))} (is it a Workload.describe()?)"
        )
    tasks = list(description["tasks"])
    arguments = {
        "tasks": tasks,
        "n_per_task": description["n_per_task"],
        "context_length": description["target_context_length"],
        "split": description["split"],
        "seed": description["seed"],
    }
    if source == "builtin":
        _check_version(description["generator_version"], GENERATOR_VERSION, "built-in")
        _check_tasks(tasks, TASKS, "built-in")
        workload = builtin_workload(**arguments)
        _check_digest(workload, description, "")
        return workload

    recorded_tokenizer = description["tokenizer"]
    if tokenizer is None:
        raise ValueError(
            f"rebuilding a natural workload needs the tokenizer its lengths were counted with "
            f"({recorded_tokenizer!r}): rebuild_workload(description, tokenizer)"
        )
    _check_version(description["generator_version"], NATURAL_GENERATOR_VERSION, "natural")
    _check_tasks(tasks, NATURAL_TASKS, "natural")
    recorded_text, text = description["text_source"], prose_corpus().source
    if recorded_text.get("sha256") != text["sha256"]:
        raise ValueError(
            f"the prose differs: the workload was made from {_text(recorded_text)}, this environment "
            f"has {_text(text)}; rebuild it where that text is installed, or save the workload as "
            "JSONL (depthkv.workload.save_jsonl) where it was made"
        )
    workload = natural_workload(tokenizer, **arguments)
    given = tokenizer_name(tokenizer)
    hint = (
        f"; the tokenizer differs: recorded {recorded_tokenizer!r}, given {given!r}"
        if given != recorded_tokenizer
        else f"; tokenizer {given!r}, text and generator version match, so the tokenizer's vocabulary "
        "must differ"
    )
    _check_digest(workload, description, hint)
    return workload


def _check_version(recorded: Any, current: int, kind: str) -> None:
    if recorded != current:
        raise ValueError(
            f"the workload was made by the {kind} generators version {recorded}, this depthkv has "
            f"version {current}, which makes other examples"
        )


def _check_tasks(tasks: list[str], known: tuple[str, ...], kind: str) -> None:
    unknown = [task for task in tasks if task not in known]
    if unknown:
        raise ValueError(f"the description names tasks that are not {kind} tasks: {unknown}")


def _check_digest(workload: Workload, description: dict, hint: str) -> None:
    recorded, rebuilt = description["examples_sha256"], workload.fingerprint()
    if rebuilt != recorded:
        raise ValueError(
            f"the rebuilt examples differ from the recorded ones (examples_sha256 {rebuilt}, recorded "
            f"{recorded}){hint}"
        )


def _text(source: dict) -> str:
    return (
        f"{source.get('name', '?')} of Python {source.get('python', '?')} (extraction version "
        f"{source.get('extraction_version', '?')}, {source.get('sentences', '?')} sentences, sha256 "
        f"{source.get('sha256', '?')})"
    )
