"""The package's layers, read from the source with `ast` (nothing is imported).

    nn  <-  run  <-  batch          analysis  <-  nn, run (the read side: config, rundir)
    errors: everyone's; cli and integrations on top

A module may import bnwd modules of its own layer and of the layers it sits on, at module level.
Function-local imports are for optional extras (ray, lightning, tensorboard, matplotlib, scipy)
and for `cli` (a fast `--help`); a function-local import of a bnwd module anywhere else hides a
cycle. No module reaches into another's private names (`from bnwd.x import _y`, `module._y`).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "bnwd"

# layer -> the layers it may import (itself included)
ALLOWED = {
    "errors": {"errors"},
    "nn": {"errors", "nn"},
    "run": {"errors", "nn", "run"},
    "analysis": {"errors", "nn", "run", "analysis"},
    "batch": {"errors", "nn", "run", "analysis", "batch"},
    "integrations": {"errors", "nn", "run", "integrations"},
    "cli": {"errors", "nn", "run", "analysis", "batch", "cli"},
    "init": set(),
}
# analysis reads finished folders: of the run layer it sees the config and the folder's files only
READ_SIDE = {"analysis": {"bnwd.run.config", "bnwd.run.rundir"}}
LAZY_OK = {"cli", "init"}  # may import bnwd modules inside functions


def layer(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    if rel.parts[0] in ("__init__", "__main__"):
        return "init" if rel.parts[0] == "__init__" else "cli"
    if len(rel.parts) == 1:
        return rel.parts[0]  # errors, cli
    return rel.parts[0]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join(["bnwd", *parts])


def imports(path: Path):
    """(target module, names, lineno, local) for every bnwd import in `path`."""
    tree = ast.parse(path.read_text())
    mod = module_name(path)
    pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    local_nodes = {
        id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef)) for n in ast.walk(f)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "bnwd" or target.startswith("bnwd."):
                for a in node.names:
                    full = (
                        f"{target}.{a.name}" if (SRC / Path(*f"{target}.{a.name}".split(".")[1:])).exists() else target
                    )
                    yield full, a.name, node.lineno, id(node) in local_nodes
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bnwd"):
                    yield a.name, None, node.lineno, id(node) in local_nodes


def target_layer(target: str) -> str:
    parts = target.split(".")
    return parts[1] if len(parts) > 1 else "init"


FILES = sorted(p for p in SRC.rglob("*.py"))


def test_the_layers_are_the_tree():
    """Every module sits in a known layer (a new top-level module must be placed on purpose)."""
    assert {layer(p) for p in FILES} <= set(ALLOWED), sorted({layer(p) for p in FILES} - set(ALLOWED))


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_follow_the_layers(path):
    me = layer(path)
    bad = []
    for target, name, line, local in imports(path):
        tl = target_layer(target)
        if me == "init":
            continue  # the lazy public API
        if tl not in ALLOWED[me]:
            bad.append(f"line {line}: {me} imports {target} ({tl})")
        elif me in READ_SIDE and tl == "run" and not any(target.startswith(t) for t in READ_SIDE[me]):
            bad.append(f"line {line}: {me} imports {target}, not the run folder's read side")
        if local and me not in LAZY_OK:
            bad.append(f"line {line}: function-local import of {target}")
        if name and name.startswith("_") and not name.startswith("__"):
            bad.append(f"line {line}: private name {name} from {target}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_private_attribute_of_another_bnwd_module(path):
    """`C._types` through a module alias is a private name too."""
    tree = ast.parse(path.read_text())
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("bnwd"):
            for a in node.names:
                aliases[a.asname or a.name] = a.name
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("bnwd."):
                    aliases[a.asname or a.name.split(".")[0]] = a.name
    mods = {k for k, v in aliases.items() if v[:1].islower()}
    bad = [
        f"line {n.lineno}: {n.value.id}.{n.attr}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Attribute)
        and isinstance(n.value, ast.Name)
        and n.value.id in mods
        and n.attr.startswith("_")
        and not n.attr.startswith("__")
    ]
    assert not bad, "\n".join(bad)


def test_no_import_cycle_between_modules():
    """Module-level imports form a DAG."""
    graph = {}
    for p in FILES:
        graph[module_name(p)] = {t for t, _, _, local in imports(p) if not local and t != module_name(p)}
    seen, stack = {}, []

    def visit(m):
        if seen.get(m) == 1:
            cyc = stack[stack.index(m) :] + [m]
            raise AssertionError(" -> ".join(cyc))
        if seen.get(m) == 2:
            return
        seen[m] = 1
        stack.append(m)
        for t in graph.get(m, ()):
            visit(t)
        stack.pop()
        seen[m] = 2

    for m in graph:
        visit(m)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_class_over_300_lines(path):
    tree = ast.parse(path.read_text())
    big = [
        f"{n.name}: {n.end_lineno - n.lineno + 1} lines"
        for n in ast.walk(tree)
        if isinstance(n, ast.ClassDef) and n.end_lineno - n.lineno + 1 > 300
    ]
    assert not big, big
