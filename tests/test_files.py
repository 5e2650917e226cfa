"""depthkv.files: the one atomic writer behind every file depthkv writes (JSON, JSONL, Markdown, PNG)."""

from __future__ import annotations

import os

import pytest

from depthkv.files import atomic_file, atomic_write_jsonl, atomic_write_text
from depthkv.workload import Example, load_jsonl, save_jsonl


def test_atomic_write_gives_the_mode_a_plain_write_would(tmp_path):
    import os

    from depthkv.files import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.json", "{}\n")
        (tmp_path / "plain.json").write_text("{}\n")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.json").stat().st_mode & 0o777 == 0o644


def test_jsonl_is_atomic_readable_by_others_and_makes_its_folder(tmp_path):
    """Workload files go through the same writer: parent folders made, the mode of a plain write,
    and a failed write (a NaN is not JSON) keeps the previous file and leaves no temporary file."""
    path = tmp_path / "new" / "folder" / "wl.jsonl"
    examples = [Example(context="a:1", question="?a:", answer="1"), Example(context="é", question="?", answer="x")]
    old = os.umask(0o022)
    try:
        save_jsonl(examples, path)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644
    assert load_jsonl(path) == examples
    before = path.read_bytes()
    with pytest.raises(ValueError, match="NaN"):
        atomic_write_jsonl(path, [{"ok": 1}, {"bad": float("nan")}])
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["wl.jsonl"]


def test_binary_files_replace_the_old_one_only_when_complete(tmp_path):
    path = atomic_write_text(tmp_path / "plot.png", "old")
    with pytest.raises(RuntimeError), atomic_file(path, binary=True) as fh:
        fh.write(b"half a png")
        raise RuntimeError("the plot failed")
    assert path.read_text() == "old"
    with atomic_file(path, binary=True) as fh:
        fh.write(b"\x89PNG")
    assert path.read_bytes() == b"\x89PNG" and [p.name for p in tmp_path.iterdir()] == ["plot.png"]
