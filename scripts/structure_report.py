"""Structure numbers of the package: files, largest file, long functions, cycles, root names.

    python scripts/structure_report.py [PACKAGE_DIR]

Counts what the closing notes' before/after tables report: Python files, the largest file (lines),
functions over 80 lines, import cycles between modules (strongly connected components of the
module-level *and* function-level import graph, each counted once), imports inside functions, and the
number of names in the root ``__all__``. Reads the code as text (ast); imports nothing from it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path) -> tuple[dict[str, set[str]], int, dict[str, ast.Module]]:
    trees = {}
    for path in sorted(root.rglob("*.py")):
        trees[module_name(path, root)] = (path, ast.parse(path.read_text(), str(path)))
    known = set(trees)

    def owner(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in known}
    hidden = 0

    for mod, (path, tree) in trees.items():
        is_package = path.name == "__init__.py"
        function_level = set()
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                function_level.update(id(n) for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom)))
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                # "from pkg import sub" imports pkg.sub; "from pkg import name" imports pkg (as grimp counts)
                base = resolve(node, mod, is_package)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
            hits = {owner(t) for t in targets if t.startswith(root.name)} - {None, mod}
            if hits and id(node) in function_level:
                hidden += 1
            # "from pkg import sub" is an import of pkg.sub; "from pkg import name" of pkg.
            graph[mod].update(h for h in hits)
    return graph, hidden, {m: t for m, (_, t) in trees.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan). Parent-package edges
    (``pkg.sub`` importing ``pkg`` while ``pkg/__init__`` re-exports ``pkg.sub``) count too."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def main(argv: list[str]) -> int:
    root = Path(argv[1] if len(argv) > 1 else "personaspace").resolve()
    files = sorted(root.rglob("*.py"))
    lengths = {p: len(p.read_text().splitlines()) for p in files}
    largest = max(lengths, key=lengths.get)
    graph, hidden, trees = import_graph(root)
    long_functions = []
    for mod, tree in trees.items():
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (fn.end_lineno or fn.lineno) - fn.lineno + 1
                if n > 80:
                    long_functions.append(f"{mod}.{fn.name} ({n})")
    sys.path.insert(0, str(root.parent))
    root_all = len(__import__(root.name).__all__)  # the one import: __all__ may be computed
    flat = [p for p in files if p.parent == root and p.name != "__init__.py"]
    subpackages = [p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").exists()]
    cyc = cycles(graph)
    print(f"python files            {len(files)}")
    print(f"lines                   {sum(lengths.values())}")
    print(f"flat root modules       {len(flat)}")
    print(f"subpackages             {len(subpackages)}")
    print(f"largest file            {largest.relative_to(root.parent)} ({lengths[largest]} lines)")
    print(f"functions over 80 lines {len(long_functions)}")
    for f in long_functions:
        print(f"  {f}")
    print(f"imports in functions    {hidden}")
    print(f"import cycles           {len(cyc)}")
    for c in cyc:
        print(f"  {' <-> '.join(c)}")
    print(f"root __all__ names      {root_all}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
