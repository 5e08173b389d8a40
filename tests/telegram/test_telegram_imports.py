"""``tgmux run`` does not load the fake Telegram (a test kit); the Telegram modules import one
another one way only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import tgmux.telegram


def python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_tgmux_run_does_not_load_the_fake() -> None:
    result = python(
        "import sys, tgmux.telegram, tgmux.telegram.run, tgmux.cli\n"
        # (not just 'fake' in the name: pyrogram itself has faketls modules)
        "loaded = sorted(m for m in sys.modules if m.startswith('tgmux') and 'fake' in m)\n"
        "assert not loaded, loaded\n"
        "assert 'tgmux.telegram.simulate' not in sys.modules\n")
    assert result.returncode == 0, result.stderr


def test_simulate_is_still_reachable_from_the_package() -> None:
    # tgmux.cli does `from tgmux.telegram import simulate` (the function), inside a function
    result = python(
        "import inspect, sys\n"
        "from tgmux.telegram import parse_input_line, simulate\n"
        "assert inspect.iscoroutinefunction(simulate), simulate\n"
        "assert callable(parse_input_line)\n"
        "assert 'tgmux.telegram.fake' in sys.modules\n")
    assert result.returncode == 0, result.stderr


def _imports(path: Path, package: str) -> set[str]:
    """Every tgmux module a file imports, at any level (in functions too, not under
    TYPE_CHECKING: that is no import at run time)."""
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    skip: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for n in ast.walk(node))
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith(package)}


def test_no_import_cycles_in_the_telegram_package() -> None:
    root = Path(tgmux.telegram.__file__).parent
    modules: dict[str, Path] = {}
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(("tgmux.telegram", *parts))] = path
    graph = {name: {m for m in _imports(path, "tgmux.telegram") if m in modules and m != name}
             for name, path in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), list(graph[start])
        while todo:
            current = todo.pop()
            if current == goal:
                return True
            if current not in seen:
                seen.add(current)
                todo.extend(graph[current])
        return False

    cycles = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps if reaches(b, a))
    assert not cycles
    fake = {name for name in modules if name.startswith("tgmux.telegram.fake")}
    users = sorted(name for name, deps in graph.items() if deps & fake and name not in fake)
    assert users == ["tgmux.telegram.simulate"]
