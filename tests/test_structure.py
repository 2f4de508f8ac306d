"""The package's shape: one direction of flow, small modules, no private names across modules.

An AST walk of every module of ``spark_unlearn`` (imports inside functions
count: a deferred import is still an arrow between two modules).  No Spark
session is needed.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "spark_unlearn"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> list[tuple[str, list[str], int]]:
    """``(module, imported names, line)`` for every import of a package module in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in known:
                    out.append((alias.name, [], node.lineno))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [a.name for a in node.names]
            # ``from pkg import module`` imports the submodule.
            subs = [f"{base}.{n}" for n in names if f"{base}.{n}" in known]
            if subs:
                out.extend((s, [], node.lineno) for s in subs)
                names = [n for n in names if f"{base}.{n}" not in known]
            if base in known and names:
                out.append((base, names, node.lineno))
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for target, _, _ in imports_of(name, path, known):
            if target != name and not name.startswith(target + ".") and target != "spark_unlearn":
                edges[name].add(target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges[v]):
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

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_cycle():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_import_walk_sees_deferred_and_relative_imports(tmp_path):
    pkg = tmp_path / "spark_unlearn"
    pkg.mkdir()
    src = "import os\ndef f():\n    from spark_unlearn.b import g\n    from .c import h\n"
    (pkg / "a.py").write_text(src)
    found = imports_of("spark_unlearn.a", pkg / "a.py", {"spark_unlearn.b", "spark_unlearn.c"})
    assert [(m, n) for m, n, _ in found] == [("spark_unlearn.b", ["g"]), ("spark_unlearn.c", ["h"])]


def test_no_import_cycle_inside_the_package():
    found = cycles(graph())
    assert not found, "import cycles: " + "; ".join(" <-> ".join(c) for c in found)


def test_no_private_name_is_imported_from_another_module():
    mods = modules()
    known = set(mods)
    bad = []
    for name, path in mods.items():
        for target, names, line in imports_of(name, path, known):
            bad += [f"{path.relative_to(PACKAGE.parent)}:{line} imports {n} from {target}"
                    for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


def test_no_module_is_over_600_lines():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
