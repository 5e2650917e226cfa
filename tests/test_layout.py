"""The package reads as the pipeline: each stage imports only its own stage and the ones before it
(the order written once, in ``docs/architecture.md``), and no module imports itself through a cycle.

Every import counts, also those inside functions: a lazy import is still a dependency, and hiding a
cycle in a function is what this test exists to stop.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "depthkv"
ARCHITECTURE = ROOT / "docs" / "architecture.md"


def layer_order() -> list[str]:
    """The stages in order, from the ``layer order`` block of docs/architecture.md."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    match = re.search(r"<!-- layer order[^>]*-->\s*```text\n(.*?)```", text, re.S)
    assert match, "docs/architecture.md has no '<!-- layer order -->' code block"
    return [line.split()[0] for line in match.group(1).splitlines() if line.strip()]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def stage(module: str) -> str:
    """``depthkv.kernels.registry`` -> ``kernels``; ``depthkv`` (the package's __init__) -> ``api``."""
    parts = module.split(".")
    return "api" if len(parts) == 1 else parts[1]


def imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """depthkv modules ``module`` imports (resolved to the module files that run), any nesting."""
    is_package = path.name == "__init__.py"
    package = module if is_package else module.rsplit(".", 1)[0]
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in known:
            name = name.rsplit(".", 1)[0] if "." in name else ""
        if name:
            found.add(name)

    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "depthkv":
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "depthkv":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                add(sub if sub in known else target)
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imported(name, path, known) for name, path in known.items()}


def test_every_stage_is_in_the_documented_order():
    order = layer_order()
    assert len(order) == len(set(order)), f"a stage is listed twice: {order}"
    stages = {stage(m) for m in modules()}
    assert stages == set(order), (
        f"docs/architecture.md's layer order {order} and the package's stages {sorted(stages)} differ: "
        "add the new stage to the layer order block (where it belongs in the pipeline)"
    )


def test_no_stage_imports_a_later_one():
    rank = {name: i for i, name in enumerate(layer_order())}
    upward = [
        f"{src} ({stage(src)}) imports {dst} ({stage(dst)})"
        for src, targets in graph().items()
        for dst in sorted(targets)
        if rank[stage(dst)] > rank[stage(src)]
    ]
    assert not upward, "imports against the layer order of docs/architecture.md:\n" + "\n".join(upward)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle of ``edges`` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "edges, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert find_cycle(edges) == cycle


def test_lazy_and_relative_imports_are_seen(tmp_path):
    """A function-level import and a relative one are both edges (the old cycle hid in such imports)."""
    known = {"depthkv.a": tmp_path / "a.py", "depthkv.b": tmp_path / "b.py", "depthkv": tmp_path / "__init__.py"}
    (tmp_path / "a.py").write_text("def f():\n    from .b import g\n    import depthkv.b\n")
    assert imported("depthkv.a", known["depthkv.a"], known) == {"depthkv.b"}


def test_nothing_imports_the_command_line():
    """Only ``python -m depthkv`` (``depthkv.__main__``) runs the command line."""
    users = [src for src, targets in graph().items() if "depthkv.cli" in targets and src != "depthkv.__main__"]
    assert not users, f"{users} import depthkv.cli"


def test_no_module_is_hidden_by_a_name_its_package_exports():
    """``depthkv.calibration.calibrate`` must not be both a module and the function: a package that
    exports a function with the name of one of its modules makes the module unreachable by attribute
    (``monkeypatch``, ``mkdocstrings``, a reader's ``import``)."""
    import importlib
    import sys

    hidden = []
    for name in modules():
        if "." not in name:
            continue
        importlib.import_module(name)
        parent, child = name.rsplit(".", 1)
        if getattr(sys.modules[parent], child, None) is not sys.modules[name]:
            hidden.append(f"{parent}.{child} is {getattr(sys.modules[parent], child)!r}, not the module")
    assert not hidden, "\n".join(hidden)


def test_the_public_namespace_has_the_verbs_artefacts_and_errors_not_internals():
    import depthkv

    for name in depthkv.__all__:
        assert hasattr(depthkv, name), name
    errors = {
        "CorruptFileError",
        "FingerprintMismatch",
        "UnsupportedModelError",
        "DepthKVUsageError",
        "DepthKVGraphError",
        "UnsupportedAttentionError",
    }
    assert errors <= set(depthkv.__all__)
    assert all(issubclass(getattr(depthkv, e), Exception) for e in errors)
    internals = {"BudgetLayer", "allocate_from_sensitivity", "permutation_test", "attend_evict", "LayerBuffers"}
    assert not internals & set(dir(depthkv)), "internals belong to their stage's module, not the top level"
