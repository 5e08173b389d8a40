"""The config file's schema: what each key means, its type and its default.

The backends' own sections (``backends.NAME``) are validated by each backend type's
``Settings`` model (see :mod:`tgmux.config.validate`).
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator

from tgmux.backend import Int, Strict
from tgmux.proxy import TELEGRAM_SCHEMES, check_proxy
from tgmux.route_patterns import compile_route_pattern
from tgmux.types import ChatType

GroupTrigger = Literal["mention", "always", "command"]
#: Who may switch a group's persona with ``/persona NAME`` (in a private chat: its user).
PersonaSwitch = Literal["admins", "everyone"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]


#: What Pyrogram's session strings unpack to (current, and the two older layouts it reads).
_SESSION_LAYOUTS = {struct.calcsize(f) for f in (">BI?256sQ?", ">B?256sI?", ">B?256sQ?")}


def _check_session_string(value: str) -> str:
    try:
        decoded = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) not in _SESSION_LAYOUTS:
        raise ValueError("not a Pyrogram session string; run `tgmux login` and paste the "
                         "whole string it prints")
    return value


_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*\Z")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _duration(value: Any) -> Any:
    if isinstance(value, bool):
        raise ValueError("expected a duration (seconds, or 10s, 1m, 2h, 1d)")
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m is None:
            raise ValueError(f"expected a duration such as 30, 10s, 1m, 2h or 1d, not {value!r}")
        return float(m[1]) * _UNIT_SECONDS[m[2] or "s"]
    return value


#: Seconds: a number, or a string with a unit (``10s``, ``1m``, ``2h``, ``1d``).
Duration = Annotated[float, BeforeValidator(_duration)]

#: Error kinds a turn falls back on by default (``bad_request``, ``not_found`` only when
#: listed in ``fallback_on``: another provider would refuse them too, or it is our mistake).
FALLBACK_KINDS = ("unavailable", "timeout", "rate_limited", "protocol", "auth", "quota",
                  "circuit_open")
ErrorKindName = Literal["unavailable", "timeout", "rate_limited", "protocol", "auth", "quota",
                        "circuit_open", "bad_request", "not_found"]


class CircuitConfig(Strict):
    """After ``failures`` failed turns in a row the backend is skipped for ``cooldown``."""

    failures: Int = Field(5, ge=1, description="failed turns in a row that open the circuit")
    cooldown: Duration = Field(30.0, gt=0, description="how long an open circuit stays open")


class BackendCore(Strict):
    """The keys every backend instance accepts besides its own settings."""

    fallback: list[str] = Field(default_factory=list,
                                description="backends to try, in order, when this one fails")
    fallback_on: list[ErrorKindName] = Field(
        default_factory=lambda: list(FALLBACK_KINDS),
        description="error kinds that move a turn down the chain")
    circuit: CircuitConfig = Field(default_factory=CircuitConfig)

    @field_validator("fallback", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("fallback_on")
    @classmethod
    def _always_the_defaults(cls, value: list[str]) -> list[str]:
        # fallback_on adds to the kinds that always move on (a circuit open, unavailable...)
        return list(dict.fromkeys([*FALLBACK_KINDS, *value]))


CORE_BACKEND_KEYS = frozenset(BackendCore.model_fields)


class FloodLimits(Strict):
    """Telegram's sending limits, shared by every send and edit."""

    global_per_second: Int = Field(30, ge=1, description="messages per second, all chats")
    private_per_second: Int = Field(1, ge=1, description="messages per second in one private chat")
    group_per_minute: Int = Field(20, ge=1, description="messages per minute in one group")


#: Telegram's api_id is a signed 32-bit number; api_hash 32 hex digits; a bot token the bot's
#: id, ':' and 35 URL-safe characters.
MAX_API_ID = 2**31 - 1
API_HASH = re.compile(r"[0-9a-fA-F]{32}")
BOT_TOKEN = re.compile(r"[0-9]{1,20}:[A-Za-z0-9_-]{35}")


class TelegramConfig(Strict):
    api_id: Int | None = Field(None, description="from my.telegram.org")
    api_hash: str | None = Field(None, description="from my.telegram.org")
    bot_token: str | None = Field(None, description="from @BotFather; run as a bot")
    session_string: str | None = Field(None, description="run as a user account")
    user_account: bool = Field(
        False, description="a user account logged in at the terminal (tgmux run), its login "
        "kept in the session file; without bot_token or session_string, the config must say so")
    session_name: str = Field("tgmux", description="session file name under data_dir")
    data_dir: str = Field("tgmux-data", description="where the session file lives (mode 0600)")
    stream_edit_interval: float = Field(
        1.0, ge=1.0, description="seconds between edits of a streamed reply in one chat"
    )
    drafts: bool = Field(True, description="stream private-chat replies as message drafts")
    link_previews: bool = Field(
        False, description="let Telegram show a preview of the first link in a reply (built "
        "again on every streamed edit); false: replies ask for none")
    flood: FloodLimits = Field(default_factory=FloodLimits)
    typing_interval: float = Field(4.0, gt=0, description="seconds between typing actions")
    shutdown_timeout: float = Field(20.0, ge=0, description="seconds to finish replies on stop")
    skip_updates: bool = Field(False, description="drop messages that arrived while down")
    catch_up_max_age: Duration = Field(
        86400.0, gt=0, description="a message older than this when it arrives (caught up after "
        "an outage) is not answered; its user is told once to send it again")
    proxy: str | None = Field(
        None, description="socks5|socks4|http://[USER:PASSWORD@]HOST:PORT: Telegram is reached "
        "through this proxy")

    _proxy = field_validator("proxy")(check_proxy(TELEGRAM_SCHEMES))

    @field_validator("session_string")
    @classmethod
    def _session_string(cls, value: str | None) -> str | None:
        return _check_session_string(value) if value else None

    @field_validator("api_id")
    @classmethod
    def _api_id(cls, value: int | None) -> int | None:
        if value is not None and not 0 < value <= MAX_API_ID:
            raise ValueError("expected the api_id my.telegram.org shows (a whole number from "
                             f"1 to {MAX_API_ID})")
        return value

    @field_validator("api_hash")
    @classmethod
    def _api_hash(cls, value: str | None) -> str | None:
        if value is not None and not API_HASH.fullmatch(value):
            raise ValueError("expected the 32 hexadecimal digits my.telegram.org shows")
        return value

    @field_validator("bot_token")
    @classmethod
    def _bot_token(cls, value: str | None) -> str | None:
        # empty (an optional ``${TG_BOT_TOKEN:-}``) is no token: not a bot
        if value and not BOT_TOKEN.fullmatch(value):
            raise ValueError("expected the token @BotFather gave: the bot's number, ':' and 35 "
                             "letters, digits, - or _")
        return value

    @model_validator(mode="after")
    def _one_identity(self) -> TelegramConfig:
        if self.bot_token and self.session_string:
            raise ValueError("give bot_token (a bot) or session_string (a user account), "
                             "not both")
        if self.bot_token and self.user_account:
            raise ValueError("give bot_token (a bot) or user_account: true (a user account), "
                             "not both")
        return self


class EngineConfig(Strict):
    concurrency: Int = Field(256, ge=1, description="chats answered at the same time")
    turn_timeout: float = Field(300.0, gt=0, description="seconds one reply may take")
    max_reply_chars: Int = Field(
        16384, ge=100, description="characters of one reply shown; the rest is cut, with a note"
    )
    merge_window: float = Field(
        0.0, ge=0, le=30, description="seconds: messages of one user in one chat that come "
        "within this of each other are one turn, answered once (0: off)")


class RouteMatch(Strict):
    chat_type: list[ChatType] | None = None
    chat_id: list[Int] | None = None
    user_id: list[Int] | None = None
    username: list[str] | None = None
    text: str | None = Field(None, description="RE2 regular expression searched in the text")
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
            compile_route_pattern(value)  # ValueError: why not
        return value


#: The most group messages a route keeps as context (``group_context``).
MAX_GROUP_CONTEXT = 50


class RouteConfig(Strict):
    match: RouteMatch = Field(default_factory=RouteMatch)
    backend: str
    options: dict[str, Any] = Field(default_factory=dict)
    group_trigger: GroupTrigger = "mention"
    fallback: list[str] | None = Field(
        None, description="this route's chain, instead of the backend's own")
    group_context: Int = Field(
        0, ge=0, le=MAX_GROUP_CONTEXT,
        description="in groups: the last N messages not addressed to the bot (of the topic, "
        "in a forum) are kept and given to the backend with the next message it answers, "
        f"each once; 0 (default): off; at most {MAX_GROUP_CONTEXT}")
    personas: list[str] = Field(
        default_factory=list, description="the personas (of personas:) this route's chats may "
        "choose with /persona NAME; none listed: none offered")
    persona_switch: PersonaSwitch | None = Field(
        None, description="in groups: who may switch the chat's persona (default: the top "
        "level's persona_switch)")

    @field_validator("fallback", mode="before")
    @classmethod
    def _one_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("personas", mode="before")
    @classmethod
    def _one_persona_or_many(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


#: A persona's name: one word a user types after /persona.
PERSONA_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")
#: What /persona takes to go back to the route's backend (no persona can be called so).
PERSONA_OFF = "default"


class PersonaConfig(Strict):
    """One of ``personas:``: a backend with options a user may choose (``/persona NAME``)."""

    backend: str
    options: dict[str, Any] = Field(
        default_factory=dict, description="the backend's settings a route may override "
        "(model, system_prompt, replica_uuid...), over the route's")
    description: str = Field("", max_length=200, description="shown by /persona")


def parse_listen(value: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9090`` for IPv6) → (host, port); ValueError says what is wrong."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9090")
    return host.strip("[]"), int(port)


class ConsoleConfig(Strict):
    """``server.console``: the operator's console in the browser and its JSON admin API
    (``/api/v1/``), on the process's own server (see docs/console.md)."""

    token: SecretStr = Field(description="what signs an operator in (the console's sign-in "
                             "form, or Authorization: Bearer TOKEN); keep it long and secret")
    show_messages: bool = Field(False, description="a chat's page shows its last exchanges "
                                "from the conversation memory (off: operators see no messages)")

    @field_validator("token")
    @classmethod
    def _token(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().strip()) < 16:
            raise ValueError("a console token of at least 16 characters (e.g. the output of "
                             "`openssl rand -hex 24`)")
        return value


class ServerConfig(Strict):
    """The operator's endpoints: /healthz, /readyz, /metrics (and /media with public_url)."""

    listen: str | None = Field(None, description="HOST:PORT to serve on; off unless set")
    public_url: str | None = Field(
        None,
        description="the http(s) address at which providers reach this server (e.g. behind "
        "a TLS reverse proxy); set, backends may publish media at {public_url}/media/{token} "
        "for a few minutes (Sensay's imageURL). Needs listen",
    )
    console: ConsoleConfig | None = Field(
        None, description="the operator's console and admin API; none without a token")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str | None) -> str | None:
        if value is not None:
            parse_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        scheme, sep, rest = value.partition("://")
        host = rest.split("/", 1)[0]
        if scheme not in ("http", "https") or not sep or not host or any(
                c in value for c in "?# "):
            raise ValueError("expected an http(s) URL without query, e.g. "
                             "https://bot.example.com or https://example.com/tgmux")
        return value.rstrip("/")


ACCOUNT_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")


class AccessConfig(Strict):
    """Who is answered. Admins always are."""

    allow_users: list[Int] | None = Field(None, description="if set, only these users")
    allow_chats: list[Int] | None = Field(None, description="if set, only these chats")
    deny_users: list[Int] = Field(default_factory=list)
    denied_reply: str | None = Field("This bot is private.",
                                     description="what a refused user reads; null: nothing")


class WindowLimit(Strict):
    messages: Int = Field(ge=1)
    per: Duration = Field(gt=0)


class LimitsConfig(Strict):
    """How much one user (or chat) may ask. Admins are never limited; built-in commands are
    never counted."""

    per_user: WindowLimit | None = None
    per_chat: WindowLimit | None = None
    daily_per_user: Int | None = Field(None, ge=1, description="messages per UTC day")
    daily_cost_per_user: float | None = Field(
        None, gt=0, description="what one user's replies may cost per UTC day, in currency")
    monthly_cost_per_user: float | None = Field(
        None, gt=0, description="what one user's replies may cost per UTC month, in currency")
    reply: str = "You are sending messages too fast; try again in {retry_after}."
    quota_reply: str = ("You have used your {limit} messages for today; more in {reset_in}.")
    cost_reply: str = ("You have used your {period} budget of {limit}; you can write again in "
                       "{reset_in}.")

    @field_validator("cost_reply")
    @classmethod
    def _cost_placeholders(cls, value: str) -> str:
        try:
            value.format(limit="", reset_in="", period="")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"{exc}: the placeholders are {{limit}}, {{reset_in}} and "
                             "{period}") from None
        return value


class AccountConfig(Strict):
    """One Telegram account of ``accounts:``; what it leaves out comes from the top level."""

    telegram: TelegramConfig
    routes: list[RouteConfig] | None = None
    default: str | None = None
    admins: list[Int] | None = None
    access: AccessConfig | None = None
    limits: LimitsConfig | None = None
    default_personas: list[str] | None = None
    persona_switch: PersonaSwitch | None = None


def check_store_url(value: str) -> str:
    """``value`` when it is a store URL tgmux can use (ValueError: why not)."""
    if value.startswith("sqlite:///") or value == "memory://":
        return value
    expected = ("expected sqlite:///PATH, postgresql://USER:PASSWORD@HOST:PORT/DATABASE "
                "or memory://")
    parts = urlsplit(value)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(expected)
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError(f"{expected}: the port is not a number from 1 to 65535") from None
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    for name, least in (("pool_max", 1), ("pool_min", 0)):
        if name in query and not (query[name].isdigit()
                                  and least <= int(query[name]) <= 1000):
            raise ValueError(f"{name} must be a whole number from {least} to 1000")
    if "connect_timeout" in query:
        try:
            ok = 0 < float(query["connect_timeout"]) <= 600
        except ValueError:
            ok = False
        if not ok:
            raise ValueError("connect_timeout must be a number of seconds up to 600")
    return value


class StoreConfig(Strict):
    """``store:``: a URL alone, or a mapping with the URL and the deadlines."""

    url: str = "sqlite:///tgmux.db"
    timeout: float = Field(
        5.0, gt=0, le=600, description="seconds a store call on a message's path may take; "
        "past it (or on an error) the message is answered all the same and /readyz says degraded")
    lease_timeout: float = Field(
        10.0, gt=0, le=600, description="seconds within which a process notices it lost an "
        "account's lease (PostgreSQL: a silent network partition); a standby waits longer")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return check_store_url(value)


class ModelPrice(Strict):
    """``prices.MODEL``: what a model costs, in ``currency`` per million tokens."""

    input: float = Field(ge=0, description="per million prompt tokens")
    output: float = Field(ge=0, description="per million reply tokens (reasoning included)")
    cached_input: float | None = Field(
        None, ge=0, description="per million prompt tokens served from the provider's cache "
        "(default: the input price)")


class TgmuxConfig(Strict):
    telegram: TelegramConfig = Field(default_factory=TelegramConfig)
    accounts: dict[str, AccountConfig] | None = Field(
        None, description="several Telegram accounts, by name, instead of telegram:")
    store: StoreConfig = Field(default_factory=StoreConfig)
    admins: list[Int] = Field(default_factory=list)
    access: AccessConfig = Field(default_factory=AccessConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    backends: dict[str, dict[str, Any]]
    routes: list[RouteConfig] = Field(default_factory=list)
    default: str | None = None
    plugins: list[str] = Field(default_factory=list)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    log_level: LogLevel = "INFO"
    log_format: Literal["text", "json"] = Field("text", description="json: one object a line")
    server: ServerConfig = Field(default_factory=ServerConfig)
    personas: dict[str, PersonaConfig] = Field(
        default_factory=dict, description="named presets (a backend and options) users may "
        "choose with /persona where a route lists them")
    default_personas: list[str] = Field(
        default_factory=list, description="the personas chats that fall to default may choose")
    persona_switch: PersonaSwitch = Field(
        "admins", description="in groups: who may switch a chat's persona (admins: the "
        "config's admins; everyone); a route's persona_switch wins")
    # usage and its cost (issue 23)
    prices: dict[str, ModelPrice] = Field(
        default_factory=dict, description="per model name as the provider reports it: "
        "its price per million tokens in currency (overrides the built-in USD prices)")
    currency: str = Field("USD", min_length=1, max_length=10,
                          description="of prices (and budgets); built-in prices are USD only")
    usage_retention: Int = Field(400, ge=1, description="days usage rows are kept")

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, value: Any) -> Any:
        if isinstance(value, dict) and "telegram" in value and "accounts" in value:
            raise ValueError("give telegram: (one account) or accounts: (several), not both")
        return value

    @field_validator("accounts")
    @classmethod
    def _account_names(cls, value: dict[str, AccountConfig] | None) -> Any:
        if value is not None:
            if not value:
                raise ValueError("name at least one account (or use telegram:)")
            for name in value:
                if not ACCOUNT_NAME.match(str(name)):
                    raise ValueError(f"account name {name!r}: letters, digits, _ . - only")
        return value

    @field_validator("personas")
    @classmethod
    def _persona_names(cls, value: dict[str, PersonaConfig]) -> dict[str, PersonaConfig]:
        seen: dict[str, str] = {}
        for name in value:
            if not PERSONA_NAME.match(str(name)):
                raise ValueError(f"persona name {name!r}: one word of letters, digits, _ . - "
                                 "(at most 32)")
            if str(name).lower() == PERSONA_OFF:
                raise ValueError(f"persona name {name!r}: /persona {PERSONA_OFF} goes back to "
                                 "the route's backend; choose another name")
            if (other := seen.setdefault(str(name).lower(), name)) != name:
                raise ValueError(f"persona names {other!r} and {name!r} differ only in case "
                                 "(/persona NAME ignores case)")
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _level(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("backends")
    @classmethod
    def _types(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        if not value:
            raise ValueError("at least one backend is needed")
        return value

    @field_validator("store", mode="before")
    @classmethod
    def _store(cls, value: Any) -> Any:
        # a URL alone (as before store.timeout existed) stands for {url: URL}
        return {"url": check_store_url(value)} if isinstance(value, str) else value
