"""One prompt with a reference answer: the unit every workload is made of."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

REQUIRED_FIELDS = ("context", "question", "answer")


@dataclass(frozen=True)
class Example:
    """A long context, a question about it and the reference answer.

    ``prompt`` is ``context + question``; the model's answer is the continuation right after the
    prompt. Built-in questions start with ``"\\n"`` and end with ``":"``, and answers carry no
    leading space, so the first answer token directly follows the prompt.

    ``task`` names the generator (``"custom"`` for user data); ``metadata`` holds anything else
    (generator parameters, needle depths, extra JSONL keys). Of it, scoring reads only
    ``"scorer"`` (``"exact"`` or ``"contains"``) and ``"multi_item"``
    (:mod:`~depthkv.workload.scoring`); the oracle reads none of it.
    """

    context: str
    question: str
    answer: str
    task: str = "custom"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("context", "question", "answer", "task"):
            value = getattr(self, name)
            if not isinstance(value, str):
                raise TypeError(f"Example.{name} must be a str, got {type(value).__name__}")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"Example.metadata must be a dict, got {type(self.metadata).__name__}")

    @property
    def prompt(self) -> str:
        """The text fed to the model: context followed by the question."""
        return self.context + self.question

    def to_dict(self) -> dict[str, Any]:
        """A JSON-serialisable dict (the JSONL line format)."""
        return {
            "context": self.context,
            "question": self.question,
            "answer": self.answer,
            "task": self.task,
            "metadata": dict(self.metadata),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Example:
        """Build from a dict with at least ``context``, ``question`` and ``answer``.

        ``task`` is optional (default ``"custom"``). A ``metadata`` dict is kept; every other key
        is merged into metadata. Raises ``ValueError`` naming missing, mistyped or empty fields.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        missing = [name for name in REQUIRED_FIELDS if name not in data]
        if missing:
            raise ValueError(
                "missing required field(s) "
                + ", ".join(repr(m) for m in missing)
                + f"; an example needs {', '.join(repr(f) for f in REQUIRED_FIELDS)}"
            )
        for name in (*REQUIRED_FIELDS, "task"):
            if name in data and not isinstance(data[name], str):
                raise ValueError(f"field {name!r} must be a string, got {type(data[name]).__name__}")
        empty = [name for name in REQUIRED_FIELDS if not data[name].strip()]
        if empty:
            raise ValueError(
                f"field {empty[0]!r} is empty; an example needs a non-empty context (what the cache compresses), "
                "question and answer"
            )
        metadata = data.get("metadata", {})
        if not isinstance(metadata, dict):
            raise ValueError(f"field 'metadata' must be an object, got {type(metadata).__name__}")
        extra = {k: v for k, v in data.items() if k not in (*REQUIRED_FIELDS, "task", "metadata")}
        return cls(
            context=data["context"],
            question=data["question"],
            answer=data["answer"],
            task=data.get("task", "custom"),
            metadata={**metadata, **extra},
        )
