"""Fuzzing workload JSONL files: every failure names the file and the line, never a bare error.

Property (hypothesis): a JSONL file built from valid lines with some lines damaged (a field removed,
retyped or emptied; bytes that are not UTF-8; a line that is not JSON; an extremely long line)
either loads, or raises ``ValueError`` whose message names the file and the damaged line.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from depthkv.workload import load_jsonl

GOOD = {"context": "k1=42. k2=7.", "question": " What is k1?", "answer": "42", "task": "custom"}
FIELDS = ("context", "question", "answer", "task", "metadata")

damage = st.one_of(
    st.tuples(st.just("drop"), st.sampled_from(FIELDS)),
    st.tuples(st.just("retype"), st.sampled_from(FIELDS), st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.integers(), max_size=2), st.booleans())),
    st.tuples(st.just("empty"), st.sampled_from(("context", "question", "answer")), st.sampled_from(["", "   ", "\n"])),
    st.tuples(st.just("bytes"), st.binary(min_size=1, max_size=4).filter(lambda b: _not_utf8(b))),
    st.tuples(st.just("text"), st.text(min_size=1, max_size=20).filter(lambda t: "\n" not in t)),
    st.tuples(st.just("long"), st.integers(10**5, 10**6)),
)


def _not_utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def _line(kind) -> bytes:
    doc = dict(GOOD)
    if kind[0] == "drop":
        doc.pop(kind[1], None)
    elif kind[0] in ("retype", "empty"):
        doc[kind[1]] = kind[2]
    elif kind[0] == "bytes":
        return json.dumps(doc).encode()[:10] + kind[1] + json.dumps(doc).encode()[10:]
    elif kind[0] == "text":
        return kind[1].encode()
    elif kind[0] == "long":
        doc["context"] = "x" * kind[1]
    return json.dumps(doc).encode()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(damages=st.lists(st.tuples(st.integers(0, 5), damage), min_size=1, max_size=3))
def test_damaged_jsonl_loads_or_names_file_and_line(tmp_path, damages):
    lines = [json.dumps(GOOD).encode() for _ in range(6)]
    for index, kind in damages:
        lines[index] = _line(kind)
    path = tmp_path / "w.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        examples = load_jsonl(path)
    except ValueError as exc:
        message = str(exc)
        assert str(path) in message and "line " in message, message
        line = int(message.split("line ", 1)[1].split(":", 1)[0])
        assert 1 <= line <= 6
        return
    assert len(examples) == sum(1 for line in lines if line.strip())
    assert all(e.context.strip() and e.question.strip() and e.answer.strip() for e in examples)


@pytest.mark.parametrize(
    ("line", "match"),
    [
        (b'{"context": "", "question": "q", "answer": "a"}', "line 2: field 'context' is empty"),
        (b'{"context": "c", "question": " ", "answer": "a"}', "line 2: field 'question' is empty"),
        (b'{"context": "c", "question": "q", "answer": 4}', "line 2: field 'answer' must be a string"),
        (b'{"context": "c\xff", "question": "q", "answer": "a"}', "line 2: not valid UTF-8"),
        (b'{"context": "c", "question": "q"}', "line 2: missing required field"),
        (b'[1, 2]', "line 2: expected a JSON object"),
        (b'{"context": NaN}', "line 2"),
    ],
)
def test_each_bad_line_is_named(tmp_path, line, match):
    path = tmp_path / "w.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + line + b"\n")
    with pytest.raises(ValueError, match=match):
        load_jsonl(path)
