"""The YAML config: loading with line numbers, ``${VAR}`` expansion, validation.

Every error names the file, the line, the key path and what was expected::

    config.yaml:7: backends.lucy.api_key: environment variable LUCYDREAM_API_KEY is not set
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from tgmux.backend import Backend, BackendSettings, ChatType, Strict
from tgmux.errors import ConfigError

ENV_PATTERN = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

#: Keys whose values must never be echoed in an error message.
SECRET_KEY = re.compile(r"secret|token|key|hash|password|session", re.IGNORECASE)

GroupTrigger = Literal["mention", "always", "command"]

KeyPath = tuple[str | int, ...]


# -- schema ------------------------------------------------------------------------------------


class FloodLimits(Strict):
    """Telegram's sending limits, shared by every send and edit."""

    global_per_second: int = Field(30, ge=1, description="messages per second, all chats")
    private_per_second: int = Field(1, ge=1, description="messages per second in one private chat")
    group_per_minute: int = Field(20, ge=1, description="messages per minute in one group")


class TelegramConfig(Strict):
    api_id: int | None = Field(None, description="from my.telegram.org")
    api_hash: str | None = Field(None, description="from my.telegram.org")
    bot_token: str | None = Field(None, description="from @BotFather; run as a bot")
    session_string: str | None = Field(None, description="run as a user account")
    session_name: str = Field("tgmux", description="session file name under data_dir")
    data_dir: str = Field("tgmux-data", description="where the session file lives (mode 0600)")
    stream_edit_interval: float = Field(
        1.0, ge=1.0, description="seconds between edits of a streamed reply in one chat"
    )
    drafts: bool = Field(True, description="stream private-chat replies as message drafts")
    flood: FloodLimits = Field(default_factory=FloodLimits)
    typing_interval: float = Field(4.0, gt=0, description="seconds between typing actions")
    shutdown_timeout: float = Field(20.0, ge=0, description="seconds to finish replies on stop")
    skip_updates: bool = Field(False, description="drop messages that arrived while down")


class EngineConfig(Strict):
    concurrency: int = Field(256, ge=1, description="chats answered at the same time")
    turn_timeout: float = Field(300.0, gt=0, description="seconds one reply may take")


class RouteMatch(Strict):
    chat_type: list[ChatType] | None = None
    chat_id: list[int] | None = None
    user_id: list[int] | None = None
    username: list[str] | None = None
    text: str | None = Field(None, description="regular expression searched in the text")
    command: list[str] | None = None

    @field_validator("chat_type", "chat_id", "user_id", "username", "command", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return value if value is None or isinstance(value, list) else [value]

    @field_validator("username", "command")
    @classmethod
    def _strip_prefix(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        return [v.lstrip("@/").lower() for v in value]

    @field_validator("text")
    @classmethod
    def _regex(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class RouteConfig(Strict):
    match: RouteMatch = Field(default_factory=RouteMatch)
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    group_trigger: GroupTrigger = "mention"


class TgmuxConfig(Strict):
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    store: str = "sqlite:///tgmux.db"
    admins: list[int] = Field(default_factory=list)
    backends: dict[str, dict[str, Any]]
    routes: list[RouteConfig] = Field(default_factory=list)
    default: str | None = None
    plugins: list[str] = Field(default_factory=list)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    log_level: str = "INFO"

    @field_validator("backends")
    @classmethod
    def _types(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("at least one backend is needed")
        return value

    @field_validator("store")
    @classmethod
    def _store(cls, value: str) -> str:
        if not (value.startswith("sqlite:///") or value == "memory://"):
            raise ValueError("expected sqlite:///PATH or memory://")
        return value


# -- loaded config ------------------------------------------------------------------------------


@dataclass
class Config:
    """A validated config: the raw schema plus each backend's validated settings."""

    data: TgmuxConfig
    backend_settings: dict[str, BackendSettings]
    backend_classes: dict[str, type[Backend]]
    route_options: list[BackendSettings]  # per route: the backend's settings with overrides
    source: str = "<config>"
    lines: dict[KeyPath, int] = field(default_factory=dict)
    missing_env: dict[KeyPath, str] = field(default_factory=dict)

    def where(self, path: KeyPath) -> str:
        return _where(self.source, self.lines, path)

    def require_telegram(self) -> TelegramConfig:
        """The Telegram section, or a ConfigError naming each missing piece."""
        problems = [
            f"{self.where(path)}: environment variable {name} is not set"
            for path, name in self.missing_env.items()
            if path[0] == "telegram"
        ]
        tg = self.data.telegram
        if not problems:
            if tg.api_id is None:
                problems.append(f"{self.where(('telegram',))}: telegram.api_id: is required")
            if not tg.api_hash:
                problems.append(f"{self.where(('telegram',))}: telegram.api_hash: is required")
            if tg.bot_token and tg.session_string:
                problems.append(
                    f"{self.where(('telegram',))}: telegram: give bot_token or session_string, "
                    "not both"
                )
        if problems:
            raise ConfigError(problems)
        return tg


def _where(source: str, lines: dict[KeyPath, int], path: KeyPath) -> str:
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


def _pydantic_problems(
    exc: ValidationError, source: str, lines: dict[KeyPath, int], prefix: KeyPath
) -> list[str]:
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            key = path[-1]
            where = _where(source, lines, path)
            problems.append(f"{where}: unknown key {key!r}")
        elif kind == "missing":
            problems.append(f"{_where(source, lines, path)}: required key is missing")
        else:
            got = err.get("input")
            if isinstance(got, dict | list):
                shown = ""
            elif SECRET_KEY.search(str(path[-1] if path else "")):
                shown = f" (got a {type(got).__name__}; value not shown)"
            else:
                shown = f" (got {got!r})"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{_where(source, lines, path)}: {msg}{shown}")
    return problems


# -- loading -------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike[str], *, env: dict[str, str] | None = None,
                plugin_manager: Any = None) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from exc
    return load_config_text(text, source=str(path), env=env, plugin_manager=plugin_manager)


def load_config_text(text: str, *, source: str = "<config>", env: dict[str, str] | None = None,
                     plugin_manager: Any = None) -> Config:
    """Parse and validate. ``plugin_manager`` defaults to one built from entry points, the
    bundled plugins and the config's ``plugins:``."""
    from tgmux.hooks import build_plugin_manager

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

    problems = [
        f"{_where(source, lines, p)}: environment variable {name} is not set"
        for p, name in missing.items()
        if p[0] != "telegram"  # only `tgmux run` needs Telegram credentials
    ]
    schema: TgmuxConfig | None = None
    try:
        schema = TgmuxConfig.model_validate(data)
    except ValidationError as exc:
        # Keep going on the raw data: report every problem at once, not one per run.
        problems += _pydantic_problems(exc, source, lines, ())
    raw_backends = data.get("backends") if isinstance(data.get("backends"), dict) else {}
    plugins = schema.plugins if schema else [
        p for p in data.get("plugins") or [] if isinstance(p, str)
    ]

    if plugin_manager is None:
        plugin_manager = build_plugin_manager()
    broken_plugins = []
    for i, dotted in enumerate(plugins):
        try:
            plugin_manager.load_modules([dotted], "config")
        except ConfigError as exc:
            broken_plugins.append(f"{_where(source, lines, ('plugins', i))}: {exc.problems[0]}")
    if broken_plugins:  # a missing plugin would make its backend types look unknown: stop here
        raise ConfigError(problems + broken_plugins)
    classes = backend_types(plugin_manager)

    settings: dict[str, BackendSettings] = {}
    backend_classes: dict[str, type[Backend]] = {}
    for name, body in raw_backends.items():
        path: KeyPath = ("backends", name)
        if any(p[:2] == path for p in missing):
            continue  # already reported: validating would only add "required" noise
        if not isinstance(body, dict) or "type" not in body:
            problems.append(f"{_where(source, lines, path)}: needs a `type:` "
                            f"(one of: {', '.join(sorted(classes))})")
            continue
        cls = classes.get(body["type"])
        if cls is None:
            problems.append(
                f"{_where(source, lines, (*path, 'type'))}: unknown backend type "
                f"{body['type']!r} (installed: {', '.join(sorted(classes))})"
            )
            continue
        try:
            settings[name] = cls.Settings.model_validate(body)
            backend_classes[name] = cls
        except ValidationError as exc:
            problems += _pydantic_problems(exc, source, lines, path)

    names = sorted(raw_backends)
    route_options: list[BackendSettings] = []
    if schema is None:
        raw_routes = data.get("routes") if isinstance(data.get("routes"), list) else []
        for i, route in enumerate(raw_routes):
            wanted = route.get("backend") if isinstance(route, dict) else None
            if isinstance(wanted, str) and wanted not in raw_backends:
                problems.append(f"{_where(source, lines, ('routes', i, 'backend'))}: unknown "
                                f"backend {wanted!r} (defined: {', '.join(names)})")
    for i, route in enumerate(schema.routes if schema else []):
        path = ("routes", i, "backend")
        if route.backend not in raw_backends:
            problems.append(f"{_where(source, lines, path)}: unknown backend {route.backend!r} "
                            f"(defined: {', '.join(names)})")
            continue
        if route.backend not in settings:
            continue
        base = settings[route.backend]
        allowed = backend_classes[route.backend].route_options
        for key in route.options:
            if key == "type" or (allowed is not None and key not in allowed):
                hint = ", ".join(sorted(allowed)) if allowed is not None else "none"
                problems.append(
                    f"{_where(source, lines, ('routes', i, 'options', key))}: "
                    f"{key!r} cannot be set per route for {base.type} (can: {hint})"
                )
        overrides = {k: v for k, v in route.options.items()
                     if k != "type" and (allowed is None or k in allowed)}
        try:
            merged = type(base).model_validate({**base.model_dump(), **overrides})
        except ValidationError as exc:
            problems += _pydantic_problems(exc, source, lines, ("routes", i, "options"))
            continue
        route_options.append(merged)

    default = data.get("default")
    if default is not None and default not in raw_backends:
        problems.append(f"{_where(source, lines, ('default',))}: unknown backend "
                        f"{default!r} (defined: {', '.join(names)})")
    if default is None and not data.get("routes") and raw_backends:
        problems.append(f"{source}: default: required when there are no routes "
                        f"(name one of: {', '.join(names)})")
    if problems or schema is None:
        raise ConfigError(problems)
    return Config(
        data=schema,
        backend_settings=settings,
        backend_classes=backend_classes,
        route_options=route_options,
        source=source,
        lines=lines,
        missing_env=missing,
    )


def backend_types(plugin_manager: Any) -> dict[str, type[Backend]]:
    """``type_name`` → class, from every plugin's ``tgmux_backend_types``."""
    found: dict[str, type[Backend]] = {}
    for result in plugin_manager.hook.tgmux_backend_types():
        for cls in result if isinstance(result, list | tuple) else [result]:
            found.setdefault(cls.type_name, cls)
    return found
