"""Checking a parsed config against the schema and the backend types it is handed.

Every problem is collected and reported at once, each as ``file:line: key.path: what``::

    config.yaml:7: backends.lucy.api_key: environment variable LUCYDREAM_API_KEY is not set

Secret values (keys that look like tokens, keys, hashes, passwords) are never echoed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from tgmux.backend import Backend, BackendSettings, HttpBackendSettings
from tgmux.config.options import overridden
from tgmux.config.parse import KeyPath, ParsedConfig, where
from tgmux.config.personas import (
    PersonaSettings,
    check_personas,
    offered_by_default,
    offered_on_routes,
)
from tgmux.config.problems import pydantic_problems
from tgmux.config.schema import (
    CORE_BACKEND_KEYS,
    AccessConfig,
    BackendCore,
    LimitsConfig,
    PersonaSwitch,
    RouteConfig,
    TelegramConfig,
    TgmuxConfig,
)
from tgmux.errors import ConfigError
from tgmux.redact import SECRET_KEY, remember_config_secrets  # noqa: F401 (tgmux.config has it)

SettingsT = TypeVar("SettingsT", bound=BaseModel)

#: What to do when a ``telegram:`` section does not say whether it is a bot or a user account.
SAY_WHICH = ("set bot_token for a bot; for a user account run `tgmux login` and set "
             "session_string (or set user_account: true and log in at the terminal)")

#: The account of the single ``telegram:`` form.
MAIN = "main"


@dataclass(frozen=True)
class Account:
    """One Telegram account with its own routing (its own routes, default and admins, or the
    top level's). ``path`` is where its ``telegram:`` section is in the file."""

    name: str
    path: KeyPath
    telegram: TelegramConfig
    routes: list[RouteConfig]
    route_options: list[BackendSettings]  # per route: the backend's settings with overrides
    default: str | None
    admins: list[int]
    access: AccessConfig = field(default_factory=AccessConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    #: the personas its chats may choose, per route index (None: chats that fall to default)
    personas: PersonaSettings = field(default_factory=dict)
    #: in groups: who may switch a chat's persona (a route's ``persona_switch`` wins)
    persona_switch: PersonaSwitch = "admins"
    #: the top level's ``currency``: what ``limits``' costs are in
    currency: str = "USD"

    @property
    def telegram_path(self) -> KeyPath:
        return self.path if self.path == ("telegram",) else (*self.path, "telegram")


@dataclass
class Config:
    """A validated config: the raw schema plus each backend's validated settings, and the
    accounts (one, ``main``, for the single ``telegram:`` form)."""

    data: TgmuxConfig
    backend_settings: dict[str, BackendSettings]
    backend_classes: dict[str, type[Backend]]
    route_options: list[BackendSettings]  # per top-level route
    source: str = "<config>"
    lines: dict[KeyPath, int] = field(default_factory=dict)
    missing_env: dict[KeyPath, str] = field(default_factory=dict)
    accounts: dict[str, Account] = field(default_factory=dict)
    #: per backend: its fallback chain and circuit settings
    backend_core: dict[str, BackendCore] = field(default_factory=dict)
    #: per plugin settings section (hook ``tgmux_plugin_settings``): its validated model
    plugin_settings: dict[str, BaseModel] = field(default_factory=dict)

    def plugin_section(self, name: str, model: type[SettingsT]) -> SettingsT:
        """The validated section ``name``, typed as its ``model`` (a KeyError when no plugin
        registered it, a TypeError when another model did)."""
        section = self.plugin_settings[name]
        if not isinstance(section, model):
            raise TypeError(f"settings section {name!r} is a {type(section).__name__}, not a "
                            f"{model.__name__}")
        return section

    def where(self, path: KeyPath) -> str:
        return where(self.source, self.lines, path)

    def account(self, name: str | None = None) -> Account:
        """The account called ``name`` (None: the first, in file order)."""
        if name is None:
            return next(iter(self.accounts.values()))
        return self.accounts[name]

    def require_telegram(self, account: str | None = None) -> TelegramConfig:
        """An account's Telegram section, or a ConfigError naming each missing piece."""
        acc = self.account(account)
        section = acc.telegram_path
        problems = [
            f"{self.where(path)}: environment variable {name} is not set"
            for path, name in self.missing_env.items()
            if path[:len(section)] == section
        ]
        tg = acc.telegram
        if not problems:
            dotted = ".".join(map(str, section))
            if tg.api_id is None:
                problems.append(f"{self.where(section)}: {dotted}.api_id: is required")
            if not tg.api_hash:
                problems.append(f"{self.where(section)}: {dotted}.api_hash: is required")
            if not (tg.bot_token or tg.session_string or tg.user_account):
                # never guessed from a session file left in data_dir
                problems.append(
                    f"{self.where((*section, 'bot_token'))}: is empty, and no session_string "
                    "or user_account: true says this is a user account: " + SAY_WHICH
                    if tg.bot_token == "" else
                    f"{self.where(section)}: no bot_token, session_string or user_account: "
                    "true: " + SAY_WHICH)
        if problems:
            raise ConfigError(problems)
        return tg


def validate_config(parsed: ParsedConfig, backend_types: dict[str, type[Backend]],
                    plugin_sections: Mapping[str, type[BaseModel]] | None = None) -> Config:
    """The :class:`Config`, or a ConfigError listing every problem found. ``plugin_sections``:
    the plugins' top-level sections and their settings models (any other unknown top-level key
    is an error)."""
    sections = dict(plugin_sections or {})
    schema, problems = check_schema(parsed, sections)
    plugin_settings, section_problems = _check_plugin_sections(parsed, sections)
    problems += section_problems
    cores: dict[str, BackendCore] = {}
    settings, classes, backend_problems = _check_backends(parsed, backend_types, cores)
    problems += backend_problems
    if schema is not None:
        _pools_follow_concurrency(settings, schema.engine.concurrency)
    for name, core in cores.items():
        problems += _check_chain(parsed, ("backends", name, "fallback"), name, core.fallback)
    for account_prefix, routes in _all_routes(parsed, schema):
        for i, route in enumerate(routes):
            if route.fallback:
                problems += _check_chain(parsed, (*account_prefix, i, "fallback"),
                                         route.backend, route.fallback)
    route_options, route_problems = _check_routes(
        parsed, ("routes",), schema.routes if schema else None, settings, classes)
    problems += route_problems + _check_default(parsed) + _check_server(parsed, schema)
    personas = schema.personas if schema is not None else {}
    resolved, persona_problems = check_personas(parsed, personas, settings, classes)
    route_personas, more_problems = offered_on_routes(
        parsed, ("routes",), schema.routes if schema else [], route_options, personas,
        resolved, classes)
    problems += persona_problems + more_problems
    problems += _check_accounts_apart(parsed, schema)
    accounts: dict[str, Account] = {}
    raw_accounts = parsed.data.get("accounts")
    for name in raw_accounts if isinstance(raw_accounts, dict) else {}:
        prefix: KeyPath = ("accounts", name)
        problems += _check_default(parsed, prefix)
        account = schema.accounts.get(name) if schema and schema.accounts else None
        own_routes = account.routes if account else None
        options, offered = route_options, route_personas
        if own_routes is not None or account is None:
            options, more = _check_routes(parsed, (*prefix, "routes"), own_routes, settings,
                                          classes)
            problems += more
            offered, more = offered_on_routes(parsed, (*prefix, "routes"), own_routes or [],
                                              options, personas, resolved, classes)
            problems += more
        if account is not None and schema is not None:
            own_default = account.default_personas is not None
            by_default, more = offered_by_default(
                parsed, (*prefix, "default_personas") if own_default else ("default_personas",),
                account.default_personas if own_default else schema.default_personas,
                account.default if account.default is not None else schema.default,
                personas, resolved)
            problems += more
            accounts[name] = Account(
                name=name, path=prefix, telegram=account.telegram,
                routes=schema.routes if own_routes is None else own_routes,
                route_options=options,
                default=account.default if account.default is not None else schema.default,
                admins=schema.admins if account.admins is None else account.admins,
                access=schema.access if account.access is None else account.access,
                limits=schema.limits if account.limits is None else account.limits,
                personas={**offered, None: by_default} if by_default else offered,
                persona_switch=account.persona_switch or schema.persona_switch,
                currency=schema.currency)
    by_default: dict[str, BackendSettings] = {}
    if schema is not None and not schema.accounts:
        by_default, more = offered_by_default(parsed, ("default_personas",),
                                              schema.default_personas, schema.default,
                                              personas, resolved)
        problems += more
    if problems or schema is None:
        raise ConfigError(problems)
    if not accounts:  # the single `telegram:` form: one account, `main`
        accounts[MAIN] = Account(name=MAIN, path=("telegram",), telegram=schema.telegram,
                                 routes=schema.routes, route_options=route_options,
                                 default=schema.default, admins=schema.admins,
                                 access=schema.access, limits=schema.limits,
                                 personas={**route_personas, None: by_default} if by_default
                                 else route_personas, persona_switch=schema.persona_switch,
                                 currency=schema.currency)
    remember_config_secrets(parsed.data)  # masked in every log line and message from now on
    return Config(data=schema, backend_settings=settings, backend_classes=classes,
                  route_options=route_options, source=parsed.source, lines=parsed.lines,
                  missing_env=parsed.missing_env, accounts=accounts, backend_core=cores,
                  plugin_settings=plugin_settings)


def _check_plugin_sections(parsed: ParsedConfig, sections: Mapping[str, type[BaseModel]]
                           ) -> tuple[dict[str, BaseModel], list[str]]:
    """Each plugin section by its model; a section the config leaves out is ``{}``."""
    found: dict[str, BaseModel] = {}
    problems: list[str] = []
    for name, model in sections.items():
        body = parsed.data.get(name)
        if any(p[:1] == (name,) for p in parsed.missing_env):
            continue  # already reported: validating would only add "required" noise
        if body is None:
            body = {}
        if not isinstance(body, dict):
            problems.append(f"{parsed.where((name,))}: expected a mapping of settings")
            continue
        try:
            found[name] = model.model_validate(body)
        except ValidationError as exc:
            problems += pydantic_problems(exc, parsed, (name,))
    return found, problems


def _pools_follow_concurrency(settings: dict[str, BackendSettings], concurrency: int) -> None:
    """An HTTP backend without ``max_connections`` gets ``engine.concurrency``: as many
    connections as chats answered at once, so the pool never queues a turn the engine let in."""
    for name, backend in settings.items():
        if isinstance(backend, HttpBackendSettings) and backend.max_connections is None:
            settings[name] = backend.model_copy(update={"max_connections": concurrency})


def _check_server(parsed: ParsedConfig, schema: TgmuxConfig | None) -> list[str]:
    """``server.public_url`` names the ops server's public address: without ``listen`` there
    is no server, and every published link would be dead."""
    if schema is None or schema.server.public_url is None or schema.server.listen is not None:
        return []
    return [f"{parsed.where(('server', 'public_url'))}: needs server.listen "
            "(the HTTP server that serves /media)"]


def _check_accounts_apart(parsed: ParsedConfig, schema: TgmuxConfig | None) -> list[str]:
    """Two accounts are two logins: Telegram lets one bot token or session string (one auth
    key) run once, and two accounts on one session file overwrite each other's."""
    problems: list[str] = []
    seen: dict[tuple[str, object], tuple[str, KeyPath]] = {}
    for name, account in ((schema.accounts if schema else None) or {}).items():
        tg = account.telegram
        section: KeyPath = ("accounts", name, "telegram")
        file = (Path(tg.data_dir).expanduser() / f"{tg.session_name}.session").resolve()
        for key, value in (("bot_token", tg.bot_token), ("session_string", tg.session_string),
                           ("", file)):
            path = (*section, key) if key else section
            if not value:
                continue
            if (key, value) not in seen:
                seen[key, value] = name, path
                continue
            first, first_path = seen[key, value]
            line = parsed.lines.get(first_path, parsed.lines.get(section))
            if key:
                what = key.replace("_", " ")
                one = "one bot" if key == "bot_token" else "one login"
                problems.append(f"{parsed.where(path)}: the same {what} as accounts.{first} "
                                f"(line {line}): {one} can be one account only")
            else:
                problems.append(f"{parsed.where(path)}: the same session file as accounts."
                                f"{first} (line {line}), {file}: give each account its own "
                                "session_name (or data_dir)")
    return problems


def _all_routes(parsed: ParsedConfig,
                schema: TgmuxConfig | None) -> list[tuple[KeyPath, list[RouteConfig]]]:
    if schema is None:
        return []
    found: list[tuple[KeyPath, list[RouteConfig]]] = [(("routes",), schema.routes)]
    for name, account in (schema.accounts or {}).items():
        if account.routes is not None:
            found.append((("accounts", name, "routes"), account.routes))
    return found


def check_schema(parsed: ParsedConfig, plugin_sections: Mapping[str, Any] | None = None
                 ) -> tuple[TgmuxConfig | None, list[str]]:
    """The top-level schema (backends' own sections and ``plugin_sections`` aside) and unset
    variables."""
    problems = [
        f"{parsed.where(path)}: environment variable {name} is not set"
        for path, name in parsed.missing_env.items()
        # only `tgmux run` needs Telegram credentials
        if path[0] != "telegram" and not (path[0] == "accounts" and path[2:3] == ("telegram",))
    ] + parsed.problems
    sections = plugin_sections or {}
    core = {k: v for k, v in parsed.data.items() if k not in sections}
    try:
        return TgmuxConfig.model_validate(core), problems
    except ValidationError as exc:
        # Keep going on the raw data: report every problem at once, not one per run.
        return None, problems + pydantic_problems(exc, parsed, ())


def _raw_backends(parsed: ParsedConfig) -> dict[str, Any]:
    backends = parsed.data.get("backends")
    return backends if isinstance(backends, dict) else {}


def _check_backends(
    parsed: ParsedConfig, types: dict[str, type[Backend]], cores: dict[str, BackendCore]
) -> tuple[dict[str, BackendSettings], dict[str, type[Backend]], list[str]]:
    """Each backend's own settings (by its type's model) and its core keys (into ``cores``)."""
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
        own = {k: v for k, v in body.items() if k not in CORE_BACKEND_KEYS}
        try:
            cores[name] = BackendCore.model_validate(
                {k: v for k, v in body.items() if k in CORE_BACKEND_KEYS})
        except ValidationError as exc:
            problems += pydantic_problems(exc, parsed, path)
        try:
            settings[name] = cls.Settings.model_validate(own)
            classes[name] = cls
        except ValidationError as exc:
            problems += pydantic_problems(exc, parsed, path)
    return settings, classes, problems


def _check_chain(parsed: ParsedConfig, path: KeyPath, owner: str | None,
                 chain: list[str]) -> list[str]:
    """A fallback chain names defined backends, and not its own backend."""
    defined = _raw_backends(parsed)
    problems = []
    for i, name in enumerate(chain):
        where = parsed.where((*path, i))
        if name not in defined:
            problems.append(f"{where}: unknown backend {name!r} (defined: "
                            f"{', '.join(sorted(defined))})")
        elif name == owner:
            problems.append(f"{where}: {name!r} cannot be its own fallback")
    return problems


def _check_routes(
    parsed: ParsedConfig, prefix: KeyPath, routes: list[RouteConfig] | None,
    settings: dict[str, BackendSettings], classes: dict[str, type[Backend]],
) -> tuple[list[BackendSettings], list[str]]:
    """Each route's backend exists, and its options are ones that backend lets a route set.
    ``routes`` None: the schema did not validate; unknown backends are named from the raw
    data at ``prefix`` all the same."""
    defined = _raw_backends(parsed)
    names = ", ".join(sorted(defined))
    problems: list[str] = []

    def unknown(i: int, wanted: object) -> bool:
        if isinstance(wanted, str) and wanted not in defined:
            problems.append(f"{parsed.where((*prefix, i, 'backend'))}: unknown backend "
                            f"{wanted!r} (defined: {names})")
            return True
        return False

    if routes is None:
        raw_routes = _raw_at(parsed, prefix)
        for i, route in enumerate(raw_routes if isinstance(raw_routes, list) else []):
            unknown(i, route.get("backend") if isinstance(route, dict) else None)
        return [], problems
    route_options: list[BackendSettings] = []
    for i, route in enumerate(routes):
        if unknown(i, route.backend) or route.backend not in settings:
            continue
        resolved, more = overridden(parsed, (*prefix, i, "options"), settings[route.backend],
                                    classes[route.backend], route.options)
        problems += more
        if resolved is not None:
            route_options.append(resolved)
    return route_options, problems


def _raw_at(parsed: ParsedConfig, path: KeyPath) -> Any:
    value: Any = parsed.data
    for key in path:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _check_default(parsed: ParsedConfig, prefix: KeyPath = ()) -> list[str]:
    """The ``default:`` at ``prefix`` (top level, or an account's) names a backend, and a
    section with no routes has one (an account may take either from the top level)."""
    defined = _raw_backends(parsed)
    names = ", ".join(sorted(defined))
    default = _raw_at(parsed, (*prefix, "default"))
    if default is not None and default not in defined:
        return [f"{parsed.where((*prefix, 'default'))}: unknown backend {default!r} "
                f"(defined: {names})"]
    top = parsed.data
    if prefix and (default is not None or _raw_at(parsed, (*prefix, "routes"))
                   or top.get("default") is not None or top.get("routes")):
        return []
    if not prefix and isinstance(top.get("accounts"), dict) and top["accounts"]:
        return []  # each account is checked on its own
    if default is None and not _raw_at(parsed, (*prefix, "routes")) and defined:
        where = parsed.where(prefix) if prefix else parsed.source
        return [f"{where}: default: required when there are no routes "
                f"(name one of: {names})"]
    return []
