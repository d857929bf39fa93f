"""The package's architecture as tests (docs/architecture.md): layers, no cycles, the engine as the only
code that touches model internals, a small root API that loads nothing heavy, no name shadowing a
submodule, and no test code imported by the package. Reads the code (ast) or imports packages only;
needs no model."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import pkgutil
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "personaspace"
ENGINE = PACKAGE / "engine"


def _trees() -> dict[Path, ast.Module]:
    return {p: ast.parse(p.read_text(encoding="utf-8"), str(p)) for p in sorted(PACKAGE.rglob("*.py"))}


TREES = _trees()


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _packages() -> list[str]:
    """Every package (a directory with __init__.py) under personaspace, as a dotted name."""
    return sorted(
        ".".join(p.parent.relative_to(ROOT).parts) for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in p.parts
    )


# -- layers and cycles -----------------------------------------------------------------------------------


def test_import_layers_contract():
    """`lint-imports`: the layers of [tool.importlinter] in pyproject.toml, and no cycles between siblings."""
    exe = Path(sys.executable).with_name("lint-imports")
    exe = exe if exe.exists() else shutil.which("lint-imports")
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    proc = subprocess.run([str(exe), "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, f"lint-imports found broken contracts:\n{proc.stdout}{proc.stderr}"


def test_no_import_cycles_between_modules():
    """No strongly connected component in the module import graph, imports inside functions included
    (stricter than import-linter, which sees module-level imports only)."""
    spec = importlib.util.spec_from_file_location("structure_report", ROOT / "scripts" / "structure_report.py")
    report = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(report)
    graph, _, _ = report.import_graph(PACKAGE)
    assert report.cycles(graph) == []


# -- the engine owns model internals ---------------------------------------------------------------------

# Attribute names and calls that reach into a Hugging Face model; only personaspace/engine/ may use them.
INTERNAL_ATTRS = {
    "register_forward_hook",
    "register_forward_pre_hook",
    "register_full_backward_hook",
    "get_input_embeddings",
    "get_output_embeddings",
    "get_decoder",
    "find_decoder_layers",
    "final_logit_softcapping",
    "base_model_prefix",
    "lm_head",
    "embed_tokens",
    "cache_kwarg",
    "output_cache",
    "reorder_cache",
}


def _internal_uses(path: Path, tree: ast.Module) -> list[str]:
    hits = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Attribute) and node.attr in INTERNAL_ATTRS:
            name = node.attr
        elif isinstance(node, ast.Name) and node.id in INTERNAL_ATTRS:
            name = node.id
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            name = next((a.name for a in node.names if a.name.rpartition(".")[2] in INTERNAL_ATTRS), None)
        elif (  # model.backend.forward(...): a raw forward pass, bypassing the engine's capture/intervention API
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "forward"
            and isinstance(node.func.value, ast.Attribute)
            and node.func.value.attr == "backend"
        ):
            name = ".backend.forward("
        if name:
            hits.append(f"{_rel(path)}:{node.lineno}: {name}")
    return hits


def test_model_internals_only_in_the_engine():
    hits = [h for p, t in TREES.items() if ENGINE not in p.parents for h in _internal_uses(p, t)]
    assert not hits, "model internals used outside personaspace/engine/:\n" + "\n".join(hits)


def test_internal_scan_finds_what_it_looks_for():
    """The scan above is not vacuous: the engine itself uses these names."""
    assert any(_internal_uses(p, t) for p, t in TREES.items() if ENGINE in p.parents)


# -- the root API ----------------------------------------------------------------------------------------


def test_root_api_is_small_and_resolves():
    import personaspace

    names = personaspace.__all__
    assert len(names) <= 30, f"personaspace.__all__ has {len(names)} names (at most 30): {sorted(names)}"
    assert len(set(names)) == len(names)
    missing = [n for n in names if getattr(personaspace, n, None) is None]
    assert not missing, f"personaspace.__all__ names that do not resolve: {missing}"


def test_import_personaspace_loads_nothing_heavy():
    heavy = ("torch", "plotly", "typer", "transformers")
    code = f"import sys, personaspace; print(' '.join(m for m in {heavy!r} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert proc.stdout.strip() == "", f"`import personaspace` loads {proc.stdout.strip()}"


# -- no name shadows a submodule -------------------------------------------------------------------------


def test_no_export_shadows_a_submodule():
    """``pkg.name`` is the submodule ``pkg/name.py`` whenever that file exists: a function or class of
    the same name exported by the package makes ``pkg.name`` mean different things depending on what
    was imported first (and breaks ``mock.patch("pkg.name.x")``)."""
    bad = []
    for pkg_name in _packages():
        pkg = importlib.import_module(pkg_name)
        exported = set(getattr(pkg, "__all__", ())) | {n for n in vars(pkg) if not n.startswith("_")}
        for sub in pkgutil.iter_modules(pkg.__path__):
            if sub.name not in exported:
                continue
            module = importlib.import_module(f"{pkg_name}.{sub.name}")
            objs = [vars(pkg).get(sub.name, module)]
            lazy = getattr(pkg, "__getattr__", None)  # a package that loads names on first use
            if sub.name in getattr(pkg, "__all__", ()) and isinstance(lazy, types.FunctionType):
                objs.append(lazy(sub.name))
            for obj in objs:
                if obj is not module:
                    bad.append(f"{pkg_name}.{sub.name} is both a submodule and {type(obj).__name__} {obj!r}")
    assert not bad, "\n".join(bad)


# -- the package never imports test code -----------------------------------------------------------------

TEST_MODULES = {"tests", "conftest", "unit", "integration", "pytest", "_pytest"}


def test_package_never_imports_test_code():
    hits = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            hits += [f"{_rel(path)}:{node.lineno}: imports {r}" for r in roots if r in TEST_MODULES]
    assert not hits, "\n".join(hits)
