"""The documentation runs: every Python block of ``docs/*.md`` and ``README.md``, the command lines
of its shell blocks, and an API reference that names every module.

Each page's ```` ```python ```` blocks run in order in one fresh namespace, in a temporary working
directory (a page that needs a file writes it first), on the shipped tiny models. A failing block
is reported at its line in the page. Shell blocks (```` ```bash ````) are not run, but every
``depthkv ...`` command line in them must parse with the command's own parser. Code blocks in any
other language than python, bash or text are refused, so nothing escapes these checks by its label.
"""

from __future__ import annotations

import pkgutil
import re
import shlex
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

import depthkv
from depthkv.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.glob("*.md")), ROOT / "README.md"]
FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
LANGUAGES = {"python", "bash", "text", ""}

class Block(NamedTuple):
    language: str
    line: int  # 1-based line of the block's first code line in the page
    source: str


def blocks(page: Path) -> list[Block]:
    text = page.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(text):
        language = match.group(1).strip().split()[0] if match.group(1).strip() else ""
        out.append(Block(language.lower(), text.count("\n", 0, match.start(2)) + 1, match.group(2)))
    return out


def python_blocks(page: Path) -> list[Block]:
    return [b for b in blocks(page) if b.language == "python"]


def _name(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


RUNNABLE = [page for page in PAGES if python_blocks(page)]


def run_page(page: Path) -> None:
    """Run ``page``'s Python blocks in order in one namespace; errors point at the page's lines."""
    namespace: dict = {"__name__": f"docs.{page.stem}"}
    try:
        for block in python_blocks(page):
            # Pad with newlines so that line numbers in a traceback are the page's own.
            code = compile("\n" * (block.line - 1) + block.source, str(page), "exec")
            exec(code, namespace)
    finally:
        torch._dynamo.reset()  # compiled pages leave nothing behind for the next test


@pytest.fixture
def one_thread():
    """One torch thread while a page runs (on a small shared CPU, OpenMP spin-waits between the tiny
    models' small kernels otherwise dominate), restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("page", RUNNABLE, ids=_name)
def test_python_blocks_run(page, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tmp_path)
    run_page(page)


def test_the_pages_with_python_are_found():
    names = {page.name for page in RUNNABLE}
    assert {"index.md", "tutorial.md", "compile.md", "workloads.md", "README.md"} <= names, names


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_code_blocks_are_python_bash_or_text(page):
    other = [(b.line, b.language) for b in blocks(page) if b.language not in LANGUAGES]
    assert not other, f"{_name(page)}: code blocks labelled other than {sorted(LANGUAGES)} at (line, label) {other}"


@pytest.mark.parametrize("page", PAGES, ids=_name)
def test_depthkv_command_lines_parse(page):
    """Each ``depthkv`` command of a shell block (also the one a ``torchrun ... -m depthkv`` line
    runs) names a real command with real options and valid budgets (parsed, not run). Synopsis
    lines with ``[optional]`` parts are left out."""
    parser = build_parser()
    for block in blocks(page):
        if block.language != "bash":
            continue
        for offset, line in enumerate(block.source.replace("\\\n", " ").splitlines()):
            command = line.split("#", 1)[0].strip()
            if command.startswith("torchrun ") and " -m depthkv " in command:  # the part torchrun runs
                command = "depthkv " + command.split(" -m depthkv ", 1)[1]
            if not command.startswith("depthkv ") or "[" in command:
                continue
            try:
                parser.parse_args(shlex.split(command)[1:])
            except SystemExit:
                pytest.fail(f"{_name(page)}:{block.line + offset}: `{command}` does not parse (message above)")


def test_api_reference_names_every_module():
    """Every module of the package is on a page of the API reference, and every page is in the nav."""
    pages = [DOCS / "reference.md", *sorted((DOCS / "reference").glob("*.md"))]
    named = {m for page in pages for m in re.findall(r"^::: ([\w.]+)", page.read_text(encoding="utf-8"), re.M)}
    modules = {"depthkv"} | {m.name for m in pkgutil.walk_packages(depthkv.__path__, "depthkv.")}
    assert not modules - named, f"modules missing from the API reference: {sorted(modules - named)}"
    assert not named - modules, f"the API reference names modules that do not exist: {sorted(named - modules)}"
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    missing = [p.relative_to(DOCS).as_posix() for p in pages if p.relative_to(DOCS).as_posix() not in nav]
    assert not missing, f"reference pages not in mkdocs.yml's nav: {missing}"
