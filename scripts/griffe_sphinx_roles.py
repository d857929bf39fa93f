"""Griffe extension for the API reference (mkdocs.yml): Sphinx roles in docstrings become links.

The package's docstrings cross-reference with Sphinx roles (``:func:`~personaspace.engine.layers.resolve_layers```,
``:class:`PersonaVector```, ``:mod:`.chat```). mkdocstrings does not read them, so before the docstrings are
rendered each role becomes an *optional* mkdocs-autorefs reference: a link when the name is documented on
some page of the site, plain code otherwise -- never a warning, so ``mkdocs build --strict`` stays clean.
Names are resolved the way Python would from where the docstring is (imports, class members, relative
``.module``); ``~`` shows only the last component, as in Sphinx.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):`(~?)([^`<>]+)`")


def _resolve(obj: griffe.Object, name: str) -> str:
    """The full path ``name`` refers to from ``obj``'s docstring (the name itself when it cannot be resolved)."""
    if name.startswith("."):  # relative to the package the docstring is in
        module = obj.module
        base = module.path if module.is_init_module else module.parent.path  # type: ignore[union-attr]
        return f"{base}.{name.lstrip('.')}"
    head, _, rest = name.partition(".")
    try:  # members of the object and its parents, then the module's imports
        path = obj.resolve(head)
    except (griffe.NameResolutionError, AttributeError, KeyError, ValueError):
        return name
    return f"{path}.{rest}" if rest else path


def _link(match: re.Match[str], obj: griffe.Object) -> str:
    short, name = match.group(1), match.group(2).strip()
    title = name.rsplit(".", 1)[-1] if short else name.lstrip(".")
    target = _resolve(obj, name)
    return f'<autoref identifier="{html.escape(target)}" optional><code>{html.escape(title)}</code></autoref>'


def _walk(obj: griffe.Object, seen: set[str]) -> None:
    if obj.path in seen:
        return
    seen.add(obj.path)
    if obj.docstring is not None and ":" in obj.docstring.value:
        obj.docstring.value = _ROLE.sub(lambda m: _link(m, obj), obj.docstring.value)
    for member in obj.members.values():
        if not member.is_alias:  # an alias's target is rewritten where it is defined
            _walk(member, seen)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrite every docstring of a loaded package once it is complete (so every name can be resolved)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        _walk(pkg, set())
