"""Checking a parsed config against the schema and the backend types it is handed.

Every problem is collected and reported at once, each as ``file:line: key.path: what``::

    config.yaml:7: backends.lucy.api_key: environment variable LUCYDREAM_API_KEY is not set

Secret values (keys that look like tokens, keys, hashes, passwords) are never echoed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tgmux.backend import Backend, BackendSettings
from tgmux.config.parse import KeyPath, ParsedConfig, where
from tgmux.config.schema import TelegramConfig, TgmuxConfig
from tgmux.errors import ConfigError
from tgmux.redact import redact_urls

#: Keys whose values must never be echoed in an error message.
SECRET_KEY = re.compile(r"secret|token|key|hash|password|session", re.IGNORECASE)


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
        return where(self.source, self.lines, path)

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
        if problems:
            raise ConfigError(problems)
        return tg


def validate_config(parsed: ParsedConfig, backend_types: dict[str, type[Backend]]) -> Config:
    """The :class:`Config`, or a ConfigError listing every problem found."""
    schema, problems = check_schema(parsed)
    settings, classes, backend_problems = _check_backends(parsed, backend_types)
    problems += backend_problems
    route_options, route_problems = _check_routes(parsed, schema, settings, classes)
    problems += route_problems + _check_default(parsed)
    if problems or schema is None:
        raise ConfigError(problems)
    return Config(data=schema, backend_settings=settings, backend_classes=classes,
                  route_options=route_options, source=parsed.source, lines=parsed.lines,
                  missing_env=parsed.missing_env)


def check_schema(parsed: ParsedConfig) -> tuple[TgmuxConfig | None, list[str]]:
    """The top-level schema (backends' own sections aside) and unset variables."""
    problems = [
        f"{parsed.where(path)}: environment variable {name} is not set"
        for path, name in parsed.missing_env.items()
        if path[0] != "telegram"  # only `tgmux run` needs Telegram credentials
    ] + parsed.problems
    try:
        return TgmuxConfig.model_validate(parsed.data), problems
    except ValidationError as exc:
        # Keep going on the raw data: report every problem at once, not one per run.
        return None, problems + pydantic_problems(exc, parsed, ())


def _raw_backends(parsed: ParsedConfig) -> dict[str, Any]:
    backends = parsed.data.get("backends")
    return backends if isinstance(backends, dict) else {}


def _check_backends(
    parsed: ParsedConfig, types: dict[str, type[Backend]]
) -> tuple[dict[str, BackendSettings], dict[str, type[Backend]], list[str]]:
    settings: dict[str, BackendSettings] = {}
    classes: dict[str, type[Backend]] = {}
    problems: list[str] = []
    installed = ", ".join(sorted(types))
    for name, body in _raw_backends(parsed).items():
        path: KeyPath = ("backends", name)
        if any(p[:2] == path for p in parsed.missing_env):
            continue  # already reported: validating would only add "required" noise
        if not isinstance(body, dict) or "type" not in body:
            problems.append(f"{parsed.where(path)}: needs a `type:` (one of: {installed})")
            continue
        cls = types.get(body["type"])
        if cls is None:
            problems.append(f"{parsed.where((*path, 'type'))}: unknown backend type "
                            f"{body['type']!r} (installed: {installed})")
            continue
        try:
            settings[name] = cls.Settings.model_validate(body)
            classes[name] = cls
        except ValidationError as exc:
            problems += pydantic_problems(exc, parsed, path)
    return settings, classes, problems


def _check_routes(
    parsed: ParsedConfig, schema: TgmuxConfig | None, settings: dict[str, BackendSettings],
    classes: dict[str, type[Backend]],
) -> tuple[list[BackendSettings], list[str]]:
    """Each route's backend exists, and its options are ones that backend lets a route set."""
    defined = _raw_backends(parsed)
    names = ", ".join(sorted(defined))
    problems: list[str] = []

    def unknown(i: int, wanted: object) -> bool:
        if isinstance(wanted, str) and wanted not in defined:
            problems.append(f"{parsed.where(('routes', i, 'backend'))}: unknown backend "
                            f"{wanted!r} (defined: {names})")
            return True
        return False

    if schema is None:  # still name unknown backends, from the raw data
        raw_routes = parsed.data.get("routes")
        for i, route in enumerate(raw_routes if isinstance(raw_routes, list) else []):
            unknown(i, route.get("backend") if isinstance(route, dict) else None)
        return [], problems
    route_options: list[BackendSettings] = []
    for i, route in enumerate(schema.routes):
        if unknown(i, route.backend) or route.backend not in settings:
            continue
        base = settings[route.backend]
        allowed = classes[route.backend].route_options
        for key in route.options:
            if key == "type" or (allowed is not None and key not in allowed):
                hint = ", ".join(sorted(allowed)) if allowed is not None else "none"
                problems.append(f"{parsed.where(('routes', i, 'options', key))}: {key!r} cannot "
                                f"be set per route for {base.type} (can: {hint})")
        overrides = {k: v for k, v in route.options.items()
                     if k != "type" and (allowed is None or k in allowed)}
        try:
            route_options.append(type(base).model_validate({**base.model_dump(), **overrides}))
        except ValidationError as exc:
            problems += pydantic_problems(exc, parsed, ("routes", i, "options"))
    return route_options, problems


def _check_default(parsed: ParsedConfig) -> list[str]:
    defined = _raw_backends(parsed)
    names = ", ".join(sorted(defined))
    default = parsed.data.get("default")
    if default is not None and default not in defined:
        return [f"{parsed.where(('default',))}: unknown backend {default!r} (defined: {names})"]
    if default is None and not parsed.data.get("routes") and defined:
        return [f"{parsed.source}: default: required when there are no routes "
                f"(name one of: {names})"]
    return []


def pydantic_problems(exc: ValidationError, parsed: ParsedConfig, prefix: KeyPath) -> list[str]:
    """pydantic's errors as ``file:line: key.path: what`` lines, secrets not shown."""
    problems = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and "[" in p))
        path = (*prefix, *loc)
        kind = err["type"]
        if kind == "extra_forbidden":
            problems.append(f"{parsed.where(path)}: unknown key {path[-1]!r}")
        elif kind == "missing":
            problems.append(f"{parsed.where(path)}: required key is missing")
        else:
            got = err.get("input")
            if isinstance(got, dict | list):
                shown = ""
            elif SECRET_KEY.search(str(path[-1] if path else "")):
                shown = f" (got a {type(got).__name__}; value not shown)"
            else:
                shown = f" (got {redact_urls(repr(got))})"
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{parsed.where(path)}: {msg}{shown}")
    return problems
