"""Reading the config file: YAML with the line of every key, and ``${VAR}`` expansion.

The result is a :class:`ParsedConfig`: plain data plus where each key was written, not yet
checked against any schema (:mod:`tgmux.config.validate` does that).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tgmux.errors import ConfigError

ENV_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ParsedConfig:
    """The config file as data: ``data`` with variables expanded, ``lines`` the line of every
    key path, ``missing_env`` the variables that were not set (key path → name)."""

    data: dict[str, Any]
    source: str = "<config>"
    lines: dict[KeyPath, int] = field(default_factory=dict)
    missing_env: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        return where(self.source, self.lines, path)

    def plugin_modules(self) -> list[tuple[int, str]]:
        """The ``plugins:`` list as (index, dotted name), skipping what is not a string."""
        plugins = self.data.get("plugins")
        if not isinstance(plugins, list):
            return []
        return [(i, p) for i, p in enumerate(plugins) if isinstance(p, str)]


def read_config_file(path: str | os.PathLike[str], *,
                     env: dict[str, str] | None = None) -> ParsedConfig:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return parse_config_text(text, source=str(path), env=env)


def parse_config_text(text: str, *, source: str = "<config>",
                      env: dict[str, str] | None = None) -> ParsedConfig:
    """YAML → :class:`ParsedConfig`; a ConfigError with file:line when it is not YAML or not
    a mapping. ``env`` defaults to the process environment."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        raw = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: not valid YAML: {exc.problem or exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top (backends:, routes:, ...)")
    lines: dict[KeyPath, int] = {}
    if node is not None:
        _index_lines(node, (), lines)
    missing: dict[KeyPath, str] = {}
    data = _expand_env(raw, (), dict(os.environ) if env is None else env, missing)
    return ParsedConfig(data=data, source=source, lines=lines, missing_env=missing)


def where(source: str, lines: dict[KeyPath, int], path: KeyPath) -> str:
    """``file:line: key.path`` for the deepest part of ``path`` that has a line."""
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return f"{source}:{lines[path[:cut]]}: " + _dotted(path)
    return f"{source}: " + _dotted(path)


def _dotted(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


# -- YAML with positions -------------------------------------------------------------------------


def _index_lines(node: yaml.Node, path: KeyPath, lines: dict[KeyPath, int]) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _index_lines(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _index_lines(item, (*path, i), lines)


def _expand_env(
    value: Any, path: KeyPath, env: dict[str, str], missing: dict[KeyPath, str]
) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), env, missing) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), env, missing) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def substitute(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, default = m.group(1), m.group(2)
        found = env.get(name)
        if found is None or (found == "" and default is not None):
            if default is not None:
                return default
            missing.setdefault(path, name)
            return ""
        return found

    expanded = ENV_PATTERN.sub(substitute, value)
    if path in missing and expanded == "":
        return None
    return expanded
