"""Reading the config file: YAML with the line of every key, and ``${VAR}`` expansion.

The result is a :class:`ParsedConfig`: plain data plus where each key was written, not yet
checked against any schema (:mod:`tgmux.config.validate` does that).
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tgmux.errors import ConfigError

#: A variable's name, after ``${``.
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: What a ``${`` that cannot be read looks like in an error (unclosed, bad name).
BROKEN_ENV = re.compile(r"\$\{[^}]*\}?")
#: ``${A:-${B:-${C}}}``: defaults nest this deep at most.
MAX_ENV_NESTING = 8

#: A config is a page of YAML: anything larger is a mistake (a log, a binary), not a config.
MAX_CONFIG_BYTES = 1024 * 1024
#: Nesting deeper than this is no config either (and deep enough input crashes the parser).
MAX_DEPTH = 64
#: YAML aliases can make a small file expand to billions of nodes ("billion laughs").
MAX_NODES = 200_000

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ParsedConfig:
    """The config file as data: ``data`` with variables expanded, ``lines`` the line of every
    key path, ``missing_env`` the variables that were not set (key path → name)."""

    data: dict[str, Any]
    source: str = "<config>"
    lines: dict[KeyPath, int] = field(default_factory=dict)
    missing_env: dict[KeyPath, str] = field(default_factory=dict)
    #: Problems found while reading that do not stop validation (duplicate keys, ``${``...).
    problems: list[str] = field(default_factory=list)

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
        with path.open("rb") as file:
            raw = file.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is this the "
                          "config file?")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save "
                          "the config as UTF-8") from None
    return parse_config_text(text, source=str(path), env=env)


def parse_config_text(text: str, *, source: str = "<config>",
                      env: dict[str, str] | None = None) -> ParsedConfig:
    """YAML → :class:`ParsedConfig`; a ConfigError with file:line when it is not YAML, not a
    mapping, too large or too deeply nested. ``env`` defaults to the process environment."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{source}: larger than {MAX_CONFIG_BYTES // 1024} KiB; is this the "
                          "config file?")
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.reader.ReaderError as exc:  # a character YAML refuses (NUL, an ANSI escape)
        line = text[:exc.position].count("\n") + 1
        raise ConfigError(f"{source}:{line}: {_character(exc.character)} is not allowed in "
                          "YAML; remove it") from None
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: not valid YAML: "
                          f"{_one_line(exc.problem or str(exc))}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {_one_line(str(exc))}") from None
    except RecursionError:
        raise ConfigError(f"{source}: nested too deeply (at most {MAX_DEPTH} levels)") from None
    problems: list[str] = []
    lines: dict[KeyPath, int] = {}
    indexer = _Indexer(source, lines, problems)
    if node is not None:
        indexer.visit(node, ())
    # Constructed from the node already checked: no second parse, no alias bomb.
    try:
        raw = _Constructor("").construct_document(node) if node is not None else None
    except _ValueNotRead as exc:
        raise ConfigError(indexer.at(exc.node, exc.reason)) from None
    except yaml.MarkedYAMLError as exc:  # a collection's own shape: `!!map [1]`, a bad `<<`
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{source}{line}: cannot read this YAML: "
                          f"{_one_line(exc.problem or str(exc))}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping at the top (backends:, routes:, ...)")
    missing: dict[KeyPath, str] = {}
    data = _expand_env(raw, (), dict(os.environ) if env is None else env, missing, problems,
                       source, lines)
    return ParsedConfig(data=data, source=source, lines=lines, missing_env=missing,
                        problems=problems)


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


class _Indexer:
    """Records the line of every key path; finds duplicate keys, too deep or too large input."""

    def __init__(self, source: str, lines: dict[KeyPath, int], problems: list[str]) -> None:
        self.source, self.lines, self.problems = source, lines, problems
        self.nodes = 0
        self.paths: dict[int, KeyPath] = {}  # id(node) → its key path (the first, if aliased)

    def at(self, node: yaml.Node, problem: str) -> str:
        """``file:line: key.path: problem`` for a node visited (the line is the node's own)."""
        dotted = _dotted(self.paths.get(id(node), ()))
        return f"{self.source}:{node.start_mark.line + 1}: {dotted + ': ' if dotted else ''}" \
            + problem

    def visit(self, node: yaml.Node, path: KeyPath) -> None:
        self.nodes += 1
        line = node.start_mark.line + 1
        if self.nodes > MAX_NODES:
            raise ConfigError(f"{self.source}:{line}: more than {MAX_NODES} values (YAML "
                              "aliases expanding?); a config is much smaller")
        if len(path) > MAX_DEPTH:
            raise ConfigError(f"{self.source}:{line}: nested too deeply (at most {MAX_DEPTH} "
                              "levels)")
        self.lines.setdefault(path, line)
        self.paths.setdefault(id(node), path)
        if node.tag not in _TAGS:  # !!python/object, !secret...: not data we can read
            raise ConfigError(self.at(node, f"YAML tag {_short_tag(node.tag)!r} is not "
                                            "supported (plain strings, numbers, lists and "
                                            "mappings only)"))
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, yaml.ScalarNode):  # `? [1, 2]`: unhashable
                    raise ConfigError(self.at(key_node, "a key must be a name or a number, "
                                                        "not a list or a mapping"))
                if key_node.tag not in _TAGS:
                    raise ConfigError(self.at(key_node, f"YAML tag {_short_tag(key_node.tag)!r}"
                                                        " is not supported"))
                key = key_node.value
                key_line = key_node.start_mark.line + 1
                if isinstance(key, str) and key in seen:
                    self.problems.append(
                        f"{self.source}:{key_line}: {_dotted((*path, key))}: duplicate key "
                        f"(first at line {seen[key]}); YAML would silently keep the last")
                elif isinstance(key, str):
                    seen[key] = key_line
                self.lines[(*path, key)] = key_line
                self.visit(value_node, (*path, key))
                self.lines[(*path, key)] = key_line
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.visit(item, (*path, i))


_YAML_TAG = "tag:yaml.org,2002:"
#: The tags a safe loader constructs, and ``<<`` (merge) keys.
_TAGS = frozenset(t for t in yaml.SafeLoader.yaml_constructors if t) | {_YAML_TAG + "merge"}
#: What a value with a standard tag must look like, for the message when it does not.
_TAG_WANTS = {"int": "an integer", "float": "a number", "bool": "true or false",
              "timestamp": "a date", "binary": "base64", "null": "null"}


def _short_tag(tag: str) -> str:
    return "!!" + tag.removeprefix(_YAML_TAG) if tag.startswith(_YAML_TAG) else tag


def _character(code: int | str) -> str:
    code = ord(code) if isinstance(code, str) else code
    kind = "control character" if unicodedata.category(chr(code)) == "Cc" else "character"
    return f"{kind} U+{code:04X}"


def _one_line(text: str) -> str:
    return " ".join(text.split())


class _ValueNotRead(Exception):
    def __init__(self, node: yaml.Node, reason: str) -> None:
        super().__init__(reason)
        self.node, self.reason = node, reason


class _Constructor(yaml.SafeLoader):
    """The safe loader, saying which node it could not construct (``2024-02-30``,
    ``!!int 'abc'``) instead of raising the converter's bare ValueError."""

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except _ValueNotRead:
            raise
        except Exception as exc:  # whatever a converter raises on a value it cannot read
            raise _ValueNotRead(node, _not_read(node, exc)) from None

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        # A plain key that YAML 1.1 reads as a boolean or null (a backend named `off`, `yes`,
        # `on`, `null`) is the name the user wrote: no config key is a boolean.
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if (isinstance(key_node, yaml.ScalarNode) and key_node.style is None
                    and key_node.tag in (f"{_YAML_TAG}bool", f"{_YAML_TAG}null")):
                key_node.tag = f"{_YAML_TAG}str"
        return super().construct_mapping(node, deep=deep)


def _not_read(node: yaml.Node, exc: Exception) -> str:
    tag = node.tag.removeprefix(_YAML_TAG)
    if not isinstance(node, yaml.ScalarNode) or tag not in _TAG_WANTS:
        problem = exc.problem if isinstance(exc, yaml.MarkedYAMLError) else str(exc)
        return f"cannot read this as {_short_tag(node.tag)}: {_one_line(problem or '')}"
    if tag == "timestamp":  # an unquoted value that looks like a date
        detail = f" ({_one_line(str(exc))})" if isinstance(exc, ValueError) else ""
        return f"{node.value!r} is not a date{detail}; quote it to keep it as text"
    return f"{node.value!r} is not {_TAG_WANTS[tag]} (tag !!{tag}); remove the tag to keep it " \
        "as text"


def _expand_env(value: Any, path: KeyPath, env: dict[str, str], missing: dict[KeyPath, str],
                problems: list[str], source: str, lines: dict[KeyPath, int]) -> Any:
    if isinstance(value, dict):
        return {k: _expand_env(v, (*path, k), env, missing, problems, source, lines)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, (*path, i), env, missing, problems, source, lines)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    try:
        parts, _ = _parse_env(value, 0, 0)
    except _EnvUnreadable as exc:
        problems.append(f"{where(source, lines, path)}: {exc}")
        return value
    expanded = _expand(parts, env, missing, path)
    if path in missing and expanded == "":
        return None
    return expanded


class _EnvUnreadable(Exception):
    pass


#: A string as text and variables: ``(name, default)``, the default None or parsed the same.
_EnvParts = list["str | tuple[str, _EnvParts | None]"]


def _parse_env(value: str, start: int, depth: int) -> tuple[_EnvParts, int]:
    """``value`` from ``start`` up to its end (``depth`` 0) or to the ``}`` that ends the
    default being read (``depth`` > 0; the index returned is that ``}``'s). One pass: linear."""
    parts: _EnvParts = []
    text_from = i = start
    while i < len(value):
        char = value[i]
        if char == "}" and depth:
            break
        if char != "$" or i + 1 == len(value) or value[i + 1] not in "${":
            i += 1  # a lone $ is itself
            continue
        parts.append(value[text_from:i])
        if value[i + 1] == "$":
            parts.append("$")
            i += 2
        else:
            name = ENV_NAME.match(value, i + 2)
            after = name.end() if name else i + 2
            if name and value.startswith("}", after):
                parts.append((name.group(), None))
                i = after + 1
            elif name and value.startswith(":-", after):
                if depth == MAX_ENV_NESTING:
                    raise _EnvUnreadable(f"variables nested more than {MAX_ENV_NESTING} deep in "
                                         "defaults (${A:-${B:-...}})")
                default, end = _parse_env(value, after + 2, depth + 1)
                if end == len(value):  # no } closes it
                    raise _EnvUnreadable(_broken(value, i))
                parts.append((name.group(), default))
                i = end + 1
            else:  # what cannot be read is an error, not a literal: `${UNCLOSED` is a typo
                raise _EnvUnreadable(_broken(value, i))
        text_from = i
    parts.append(value[text_from:i])
    return parts, i


def _broken(value: str, start: int) -> str:
    shown = BROKEN_ENV.match(value, start)
    return (f"cannot read {shown.group(0) if shown else value[start:]!r}: write ${{NAME}} or "
            "${NAME:-default} (and $$ for a literal $)")


def _expand(parts: _EnvParts, env: dict[str, str], missing: dict[KeyPath, str],
            path: KeyPath) -> str:
    """The text, variables replaced; a default is expanded only when used (its unset variables
    are then missing, not otherwise)."""
    out = []
    for part in parts:
        if isinstance(part, str):
            out.append(part)
            continue
        name, default = part
        found = env.get(name)
        if found is None or (found == "" and default is not None):
            if default is not None:
                out.append(_expand(default, env, missing, path))
            else:
                missing.setdefault(path, name)
        else:
            out.append(found)
    return "".join(out)
