"""A griffe extension for the API reference: the Sphinx roles of depthkv's docstrings as links.

depthkv's docstrings are Google style but name other objects the Sphinx way
(``:func:`~depthkv.allocate```, ``:class:`Plan```, ``:mod:`depthkv.files```). Markdown does not
know these roles; this extension rewrites each into a code span that links to the object's entry
when the reference has one (an optional mkdocs-autorefs cross-reference: never a broken link), and
an RST ``::`` that introduces an indented block into ``:``. Names are resolved like Python would,
in the scope of the object whose docstring names them (its imports included). The docstrings in
the source are not changed. Loaded by ``mkdocs.yml`` (mkdocstrings' ``extensions`` option).
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:mod|class|func|meth|data|attr|exc|obj):`(~?)\.?([\w.]+)`")
_LITERAL_BLOCK = re.compile(r"::(?=\n\n[ \t])")


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring of a package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            if obj.docstring is not None:
                obj.docstring.value = rewrite(obj.docstring.value, obj)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _resolve(name: str, scope: griffe.Object) -> str | None:
    """The full path of ``name`` seen from ``scope`` (its first part resolved, the rest appended)."""
    head, _, rest = name.partition(".")
    if head == scope.package.name:
        return name
    for where in (scope, *_parents(scope)):
        try:
            path = where.resolve(head)
        except (griffe.NameResolutionError, AttributeError):
            continue
        return f"{path}.{rest}" if rest else path
    return None


def _parents(obj: griffe.Object) -> list[griffe.Object]:
    out = []
    while obj.parent is not None:
        obj = obj.parent
        out.append(obj)
    return out


def rewrite(text: str, scope: griffe.Object) -> str:
    """``text`` with its Sphinx roles as (optional) cross-references and ``::`` as ``:``."""

    def link(match: re.Match) -> str:
        short, name = match.group(1), match.group(2)
        title = f"<code>{html.escape(name.rsplit('.', 1)[-1] if short else name)}</code>"
        path = _resolve(name, scope)
        if path is None:
            return title
        return f'<autoref identifier="{html.escape(path)}" optional>{title}</autoref>'

    return _LITERAL_BLOCK.sub(":", _ROLE.sub(link, text))
