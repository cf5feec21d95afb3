"""The package's layers: imports point one way, never in a cycle, and every module imports on its own."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "vistune"

# Lowest first. A module may import modules of its own layer (without a cycle) or of lower layers.
LAYERS = [
    {"version", "errors", "paths", "utils", "checkpoint_format", "llm_client", "config", "conversation"},
    {"data"},
    {"model"},
    {"train", "inference"},
    {"serve", "eval", "datagen", "demo", "ablate"},
    {"cli", "__main__", ""},  # "" is the package itself: `vistune.load`
]


def module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(SRC).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every vistune module `path` imports, at top level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and \
                node.module.split(".")[0] == "vistune":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in modules else node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "vistune")
    return {m for m in found if m in modules}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module} belongs to no layer: add `{top}` to LAYERS in {__file__}")


def import_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_imports_point_down_the_layers():
    wrong = [f"{a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)})"
             for a, targets in import_graph().items() for b in sorted(targets) if layer_of(b) > layer_of(a)]
    assert not wrong, "\n".join(wrong)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle_even_through_imports_inside_functions():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_argument_parsing_lives_in_the_command_layer_only():
    parsers = [name for name, path in module_names().items()
               if not name.startswith("vistune.cli") and "argparse" in path.read_text(encoding="utf-8")]
    assert parsers == []


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter():
    """Each module imported first, in an interpreter of its own: an import that works only when another module
    happened to be imported before it fails here."""
    env = {"PYTHONPATH": str(SRC), "PATH": "/usr/bin:/bin"}

    def import_alone(name: str) -> str | None:
        done = subprocess.run([sys.executable, "-c", f"import {name}"], capture_output=True, text=True, timeout=600,
                              env=env)
        return None if done.returncode == 0 else name + ": " + (done.stderr.strip().splitlines() or ["?"])[-1]

    modules = [n for n in module_names() if n != "vistune.__main__"]  # that one runs the command line
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # one interpreter per core at a time
        failed = [f for f in pool.map(import_alone, modules) if f is not None]
    assert failed == []
