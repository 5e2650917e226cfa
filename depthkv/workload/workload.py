"""Workloads: the examples a profile is calibrated (or a plan evaluated) on, with provenance."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from depthkv.workload.example import Example
from depthkv.workload.generators import TASKS, generate
from depthkv.workload.jsonl import parse_jsonl

# The retrieval tasks: the ones whose answers live in a few context positions, so KV pruning
# hurts them most directly.
DEFAULT_TASKS: tuple[str, ...] = (
    "niah_single",
    "niah_multikey",
    "niah_multivalue",
    "niah_multiquery",
    "kv_retrieval",
)
BUILTIN_SPLITS = ("calibration", "evaluation")
GENERATOR_VERSION = 1


@dataclass
class Workload:
    """A named list of examples and where they came from.

    ``split`` is ``"calibration"``, ``"evaluation"`` or ``"custom"``; ``seed`` is the base seed of
    a built-in workload (``None`` for user data); ``description`` holds the provenance that
    ``describe`` reports (source, generator parameters, or file path and sha256).
    """

    examples: list[Example]
    name: str
    seed: int | None = None
    split: str = "custom"
    description: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.examples)

    def __iter__(self):
        return iter(self.examples)

    def __getitem__(self, index):
        return self.examples[index]

    @property
    def tasks(self) -> list[str]:
        """Task names in order of first appearance."""
        return list(dict.fromkeys(ex.task for ex in self.examples))

    def fingerprint(self) -> str:
        """sha256 of the examples' canonical JSON: equal fingerprints mean identical examples."""
        digest = hashlib.sha256()
        for ex in self.examples:
            digest.update(json.dumps(ex.to_dict(), sort_keys=True, ensure_ascii=False).encode("utf-8"))
            digest.update(b"\n")
        return digest.hexdigest()

    def describe(self) -> dict:
        """A JSON-serialisable summary, stored in profiles to say what they were calibrated on."""
        lengths = [len(ex.context) for ex in self.examples]
        return {
            "name": self.name,
            "split": self.split,
            "seed": self.seed,
            "tasks": dict(Counter(ex.task for ex in self.examples)),
            "n": len(self.examples),
            "context_length": {
                "min": min(lengths, default=0),
                "max": max(lengths, default=0),
                "mean": sum(lengths) / len(lengths) if lengths else 0.0,
            },
            "examples_sha256": self.fingerprint(),
            **self.description,
        }


def split_seed(split: str, task: str, seed: int) -> int:
    """The generator seed of ``task`` in ``split``: a stable 63-bit hash of all three.

    Different splits (or tasks) get unrelated seed streams, so a calibration workload never
    shares an example with the evaluation workload built from the same base seed.
    """
    digest = hashlib.sha256(f"depthkv-workload/{split}/{task}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def check_task_request(
    tasks: list[str], known: tuple[str, ...], split: str, n_per_task: int, *, kind: str, unknown_label: str, known_label: str
) -> None:
    """The checks every generated workload makes of what it is asked for (a ``ValueError`` naming
    what is wrong): ``split`` one of :data:`BUILTIN_SPLITS`, ``tasks`` non-empty, known (in
    ``known``) and distinct, ``n_per_task`` at least 1. ``kind`` names the workload in the split's
    message ("built-in", "natural"); ``unknown_label``/``known_label`` word the unknown-task one."""
    if split not in BUILTIN_SPLITS:
        raise ValueError(f"split must be one of {BUILTIN_SPLITS} for a {kind} workload, got {split!r}")
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise ValueError(f"unknown {unknown_label} {unknown}; {known_label}: {', '.join(known)}")
    if not tasks:
        raise ValueError("tasks is empty")
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"tasks has duplicates: {tasks}")
    if n_per_task < 1:
        raise ValueError(f"n_per_task must be >= 1, got {n_per_task}")


def builtin_workload(
    tasks: list[str] | None = None,
    n_per_task: int = 8,
    context_length: int = 512,
    split: str = "calibration",
    seed: int = 0,
) -> Workload:
    """``n_per_task`` generated examples of each task (``DEFAULT_TASKS`` if ``None``), task by task."""
    tasks = list(DEFAULT_TASKS if tasks is None else tasks)
    check_task_request(tasks, TASKS, split, n_per_task, kind="built-in", unknown_label="task(s)", known_label="known tasks")
    examples = [
        ex
        for task in tasks
        for ex in generate(task, n_per_task, context_length, split_seed(split, task, seed))
    ]
    description = {
        "source": "builtin",
        "generator_version": GENERATOR_VERSION,
        "n_per_task": n_per_task,
        "target_context_length": context_length,
    }
    return Workload(examples, name=f"builtin-{split}", seed=seed, split=split, description=description)


def from_jsonl(path: str | os.PathLike, name: str | None = None) -> Workload:
    """A ``custom`` workload from a user's JSONL file (format: ``depthkv.workload.jsonl.load_jsonl``)."""
    path = Path(path)
    content = path.read_bytes()
    examples = parse_jsonl(content.decode("utf-8-sig"), source=str(path))
    if not examples:
        raise ValueError(f"{path}: no examples")
    description = {
        "source": "jsonl",
        "path": str(path.resolve()),
        "sha256": hashlib.sha256(content).hexdigest(),
    }
    return Workload(examples, name=name or path.stem, seed=None, split="custom", description=description)
