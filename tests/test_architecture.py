"""The shape docs/architecture.md promises: imports point one way, with no cycle (not even one
hidden by an import inside a function), and the fast commands import nothing heavy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREES = {"core": "tgmux", "backends": "tgmux.backends", "plugins": "tgmux.plugins"}


def module_files() -> dict[str, Path]:
    found = {}
    for folder, prefix in TREES.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            parts = list(path.relative_to(ROOT / folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join([prefix, *parts])] = path
    return found


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every tgmux module ``module`` may import while running: module level or inside a
    function, but not under ``if TYPE_CHECKING:``."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        # Importing a submodule runs its packages' __init__ first, except the package the
        # importer is itself inside (already running).
        while name and name != "tgmux":
            if name != module and not module.startswith(name + "."):
                found.add(name)
            name = name.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking_only(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = module if is_package else module.rpartition(".")[0]
                    for _ in range(child.level - 1):
                        anchor = anchor.rpartition(".")[0]
                    base = f"{anchor}.{base}" if base else anchor
                for alias in child.names:
                    add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def import_graph() -> dict[str, set[str]]:
    files = module_files()
    names = set(files)
    return {name: runtime_imports(path, name, names) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt):], nxt]
            if nxt not in state and (cycle := walk(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def test_the_graph_reader_sees_imports_inside_functions_and_skips_type_checking(
        tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                      "    from tgmux.engine import Engine\n"
                      "def f():\n    from tgmux.telegram.app import TelegramApp\n")
    found = runtime_imports(source, "tgmux.x", {"tgmux.engine", "tgmux.telegram",
                                                "tgmux.telegram.app", "tgmux.x"})
    assert found == {"tgmux.telegram", "tgmux.telegram.app"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_anywhere() -> None:
    assert find_cycle(import_graph()) is None


def test_imports_point_inward() -> None:
    graph = import_graph()
    for module, imports in graph.items():
        if module.startswith("tgmux.backends"):
            assert not any(i.startswith(("tgmux.telegram", "tgmux.engine", "tgmux.cli"))
                           for i in imports), f"{module} imports {sorted(imports)}"
        if module.startswith("tgmux.telegram") and not module.startswith("tgmux.telegram.fake"):
            assert not any(i.startswith("tgmux.backends") for i in imports), module
    # The spec file and the public types import nothing of tgmux at run time.
    assert graph["tgmux.hookspecs"] == set()
    assert graph["tgmux.types"] == set()
    assert "tgmux.http" not in graph["tgmux.engine"]
    assert not any(i.startswith("tgmux.hooks") for i in graph["tgmux.config.validate"])
    # The fake Telegram is a test kit: in production code only `tgmux simulate` uses it.
    users = sorted(m for m, imports in graph.items() if not m.startswith("tgmux.telegram.fake")
                   and any(i.startswith("tgmux.telegram.fake") for i in imports))
    assert users == ["tgmux.telegram.simulate", "tgmux.testing"]


def loaded_modules(*args: str) -> set[str]:
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "tgmux", *args],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:")}


def test_version_and_help_import_no_backend_nor_network_stack() -> None:
    for args in (("--version",), ("--help",)):
        loaded = loaded_modules(*args)
        heavy = sorted(m for m in loaded if m.split(".")[0] in {"pyrogram", "aiohttp", "httpx",
                                                               "pydantic", "yaml", "aiosqlite",
                                                               "av"}
                       or m.startswith("tgmux.backends"))
        assert heavy == [], f"tgmux {' '.join(args)} imported {heavy[:10]}"
