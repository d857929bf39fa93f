"""The examples in personaspace's docstrings run and print what they say (those not marked +SKIP)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import personaspace

MODULES = sorted(m.name for m in pkgutil.walk_packages(personaspace.__path__, "personaspace.") if not m.name.endswith(".__main__"))


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} of {result.attempted} docstring examples failed in {name}"
