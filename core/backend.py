"""The backend interface: what a provider adapter gets (a :class:`Turn`) and gives back (an
async stream of :data:`ReplyPart`).

A backend never sees Telegram: it gets the chat identity as plain fields and answers with
parts that any frontend (Telegram, the console, the test kit) knows how to deliver.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, SecretStr, field_validator

from tgmux.proxy import BACKEND_SCHEMES, ProxyRoute, backend_route, check_proxy

# Re-exported: backends have always imported these from here.
from tgmux.types import (
    Audio,
    ChatIdentity,
    ChatLine,
    ChatType,
    CommandSpec,
    Exchange,
    Image,
    Media,
    MediaRef,
    MediaUnavailable,
    Metadata,
    Notice,
    ProviderEvent,
    RepliedTo,
    ReplyPart,
    Text,
    TextDelta,
    Usage,
)

__all__ = [
    "AsyncClosable",
    "Audio",
    "Backend",
    "BackendSettings",
    "ChatIdentity",
    "ChatLine",
    "ChatType",
    "CommandSpec",
    "Exchange",
    "History",
    "HistorySettings",
    "HttpBackend",
    "HttpBackendSettings",
    "Image",
    "Int",
    "KeyValue",
    "Media",
    "MediaRef",
    "MediaUnavailable",
    "Metadata",
    "Notice",
    "ProviderEvent",
    "ProxySettings",
    "RepliedTo",
    "ReplyPart",
    "ShareMedia",
    "Strict",
    "Text",
    "TextDelta",
    "Turn",
    "Usage",
]

log = logging.getLogger("tgmux.backend")

# -- what a backend gets -----------------------------------------------------------------------


class KeyValue(Protocol):
    """A backend instance's own small persistent namespace (e.g. provider sub-user ids)."""

    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str) -> None: ...
    async def delete(self, key: str) -> None: ...
    async def items(self, prefix: str = "") -> list[tuple[str, str]]: ...


class History(Protocol):
    """This turn's conversation as tgmux remembers it (``turn.history``; see
    :meth:`Backend.memory`). The engine appends each exchange once its reply was delivered."""

    max_turns: int
    max_chars: int

    async def read(self) -> list[Exchange]:
        """The remembered exchanges within the limits, oldest first."""
        ...

    async def append(self, user: str, reply: str) -> None:
        """Remember one exchange (the engine does, after delivery; backends need not)."""
        ...

    async def keep_newest(self, count: int) -> int:
        """Forget all but the newest ``count`` exchanges (e.g. what no longer fits the
        model's context); how many were forgotten."""
        ...

    async def clear(self) -> int:
        """Forget the conversation; how many exchanges it had."""
        ...


#: Publishes bytes (and their media type) at a short-lived public URL and gives it back
#: (``Turn.share``); None when they cannot be published (too large).
ShareMedia = Callable[[bytes, str], Awaitable[str | None]]


async def _no_notice(text: str) -> None:
    return None


@dataclass(frozen=True)
class Turn:
    """One user message on its way to a backend.

    ``options`` is the backend's settings model with the route's overrides applied.
    ``command``/``args`` are set when the message is one of the backend's commands.
    ``notify`` sends a short notice to the chat right away (e.g. "your reply is delayed").
    ``media`` is a non-text message's media, of a kind in the backend's ``accepts_media``; its
    bytes come with ``await turn.media.read()`` (fetched then, not before).
    ``share`` publishes bytes for a provider that takes media only by URL: ``await
    turn.share(data, "image/jpeg")`` is an unguessable URL served by this process for a few
    minutes (None: too large). It is None when ``server.public_url`` is not configured.
    ``reply_to`` is the message the user replied to (its text, author, the quoted part);
    ``group_context`` the chat's recent messages not addressed to the bot (route key
    ``group_context``), oldest first; ``album`` every media of an album (``media`` is the
    first). :mod:`tgmux.context` says them in short text for providers that take text only.
    """

    text: str
    chat: ChatIdentity
    options: Any
    kv: KeyValue
    backend_name: str = ""
    command: str | None = None
    args: str = ""
    media: Media | None = None
    notify: Callable[[str], Awaitable[None]] = field(default=_no_notice, repr=False, compare=False)
    #: Set when this backend answers in place of another one that failed (its name): the
    #: conversation so far lives at that provider, not at this one.
    fallback_from: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, compare=False)
    #: The conversation tgmux remembers for this chat, when the backend asks for one
    #: (:meth:`Backend.memory`); None otherwise.
    history: History | None = field(default=None, repr=False, compare=False)
    share: ShareMedia | None = field(default=None, repr=False, compare=False)
    reply_to: RepliedTo | None = None
    group_context: tuple[ChatLine, ...] = ()
    album: tuple[Media, ...] = ()


# -- settings ----------------------------------------------------------------------------------


def _not_a_bool(value: Any) -> Any:
    # YAML reads `yes`/`no`/`on`/`off` as booleans, and pydantic would take True as 1.
    if isinstance(value, bool):
        raise ValueError("expected a number, not yes/no/true/false")
    return value


#: An integer that refuses booleans (ids, counts).
Int = Annotated[int, BeforeValidator(_not_a_bool)]


class Strict(BaseModel):
    """A settings model in which unknown keys are errors (nested sections too)."""

    model_config = ConfigDict(extra="forbid")


class BackendSettings(Strict):
    """Base of every backend's settings model; unknown keys are errors."""

    type: str
    #: Each backend type chooses its default (Markdown for LLM APIs; plain for companions,
    #: whose "*smiles*" and "5 * 3" are not formatting).
    format: Literal["markdown", "plain"] = Field(
        "plain", description="markdown: the provider's replies are Markdown, shown as "
        "formatting (and the user's formatting is given to it as Markdown); plain: shown as "
        "they are")


class ProxySettings(Strict):
    """``proxy`` and ``trust_env``: how a provider is reached (see :mod:`tgmux.proxy`)."""

    proxy: str | None = Field(
        None, description="http(s)://[USER:PASSWORD@]HOST:PORT: every request (and websocket) "
        "to the provider goes through this proxy")
    trust_env: bool = Field(
        True, description="without proxy: use HTTPS_PROXY / HTTP_PROXY unless NO_PROXY names "
        "the base_url's host")

    _proxy = field_validator("proxy")(check_proxy(BACKEND_SCHEMES))

    def proxy_route(self, base_url: str) -> ProxyRoute | None:
        """The proxy the provider at ``base_url`` is reached through (None: direct)."""
        return backend_route(self.proxy, self.trust_env, base_url)


class HttpBackendSettings(BackendSettings, ProxySettings):
    """Settings every HTTP backend accepts."""

    base_url: str
    timeout: float = Field(30.0, gt=0, description="seconds for one provider request, "
                           "connect to last byte (for a stream: to its headers)")
    stream_idle_timeout: float | None = Field(
        None, gt=0, description="seconds of silence allowed between the chunks of a streamed "
        "reply (default: timeout)")
    max_response_bytes: int = Field(
        4 * 1024 * 1024, gt=0, description="bytes read of one provider answer at most")
    #: None until the config is validated, which sets it to ``engine.concurrency``.
    max_connections: Int | None = Field(
        None, ge=1, description="connections to the provider open at most, requests in flight "
        "included (default: engine.concurrency)")

    def http_options(self) -> dict[str, Any]:
        """What :class:`tgmux.http.HttpClient` takes from these settings (besides the URL)."""
        options: dict[str, Any] = {
            "timeout": self.timeout, "stream_idle_timeout": self.stream_idle_timeout,
            "max_response_bytes": self.max_response_bytes,
            "proxy": self.proxy_route(self.base_url)}
        if self.max_connections is not None:
            options["max_connections"] = self.max_connections
        return options


FORGOTTEN = "Done: I have forgotten our conversation."


class HistorySettings(Strict):
    """``history:`` of a backend whose conversation tgmux remembers."""

    max_turns: int = Field(20, ge=0, le=1000, description="exchanges (a message and its "
                           "reply) remembered at most; 0: none")
    max_chars: int = Field(24000, ge=1, le=10_000_000, description="characters of the "
                           "remembered exchanges at most (not the system prompt, not the new "
                           "message); the oldest go first")
    scope: Literal["chat", "user"] = Field("chat", description="one conversation per chat "
                                           "(per topic, in one), or per user inside groups")


def api_root(value: str, endpoints: tuple[str, ...]) -> str:
    """An OpenAI-style ``base_url`` (``…/v1``) checked: http(s), no trailing slash, not one of
    the ``endpoints`` tgmux adds itself (a validator's body for settings that take one)."""
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("expected an http(s) URL such as https://api.openai.com/v1")
    value = value.rstrip("/")
    for endpoint in endpoints:
        if value.endswith(endpoint):
            raise ValueError(f"give the API root (…/v1): tgmux adds {endpoint}")
    return value


def optional_secret(value: SecretStr | None) -> SecretStr | None:
    """An API key that may be left empty (``"${KEY:-}"`` for a local server): None then."""
    if value is not None and not value.get_secret_value().strip():
        return None
    return value


# -- the backend -------------------------------------------------------------------------------


class Backend(ABC):
    """Subclass, set ``type_name`` and ``Settings``, implement :meth:`reply`.

    One instance exists per named backend in the config. ``start``/``close`` bracket its life
    (open and close HTTP clients there).
    """

    type_name: ClassVar[str]
    Settings: ClassVar[type[BackendSettings]] = BackendSettings
    description: ClassVar[str] = ""
    #: Non-text kinds the backend takes (``{"photo", "voice"}``); others get a polite refusal.
    accepts_media: ClassVar[frozenset[str]] = frozenset()
    #: Options a route may override (None: any settings key but ``type``).
    route_options: ClassVar[frozenset[str] | None] = None
    #: Whether its replies carry :class:`Usage` (tokens) for its ``model``: ``tgmux check``
    #: then warns about a model without a price, and a streamed reply cut at
    #: ``engine.max_reply_chars`` is read on in the background for the usage after its text.
    reports_usage: ClassVar[bool] = False

    def __init__(self, name: str, settings: BackendSettings, kv: KeyValue) -> None:
        self.name = name
        self.settings = settings
        self.kv = kv
        self._event_sink: Callable[[ProviderEvent], Awaitable[None]] | None = None

    async def emit_event(
        self, type: str, data: dict[str, Any], *, chat_id: int | None = None,
        text: str | None = None,
    ) -> None:
        """Publish a provider event to the ``tgmux_provider_event`` hook (set up by the engine;
        events emitted before the engine started are logged and dropped)."""
        event = ProviderEvent(self.name, type, data, chat_id, text)
        if self._event_sink is None:
            log.warning("%s: event before start: %s", self.name,
                                                        type)
            return
        await self._event_sink(event)

    async def start(self) -> None:
        """Called once before the first turn."""

    async def close(self) -> None:
        """Called once at shutdown."""

    def commands(self) -> list[CommandSpec]:
        """The backend's own chat commands (shown in /help)."""
        return []

    @classmethod
    def shared_between_users(cls, settings: BackendSettings) -> str | None:
        """What one Telegram user can reach of other users' conversations through a backend
        with these ``settings`` (one provider user or account for everyone, a command that
        shows its history...), as a sentence ``tgmux check`` warns with; None (the default):
        each user's conversation stays theirs."""
        return None

    @abstractmethod
    def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        """Answer a chat message (an async generator of parts)."""

    def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        """Answer one of :meth:`commands` (``turn.command``, ``turn.args``)."""
        raise NotImplementedError(f"{self.type_name} has no command {turn.command}")

    def memory(self, options: Any) -> HistorySettings | None:
        """Whether tgmux should remember this backend's conversations (for providers that keep
        none), with what limits, for a turn with these ``options``: None (the default) keeps
        nothing. When given, each turn carries :attr:`Turn.history`, every delivered reply is
        remembered with its message, and ``/reset`` forgets (see :meth:`reset`)."""
        return None

    def remembered_text(self, turn: Turn) -> str:
        """What the conversation memory keeps of the user's side of ``turn`` (default: its
        text; a backend that sent more, e.g. a photo, may say so)."""
        return turn.text

    async def reset(self, turn: Turn) -> str | None:
        """Forget this chat's conversation (``/reset``; in a topic, the topic's: each topic is
        a conversation of its own, see :attr:`ChatIdentity.topic`); return what to tell the
        user, or None when the backend keeps no state it can reset. The default forgets the
        conversation tgmux remembers, if any (:attr:`Turn.history`)."""
        if turn.history is None:
            return None
        await turn.history.clear()
        return FORGOTTEN

    async def observe(self, turn: Turn) -> None:
        """See a group message the bot is not asked to answer (e.g. to give the provider the
        chat's context). The engine calls it, in the chat's order, before the next message of
        that chat is handled, only for backends that override it, only for a group or
        supergroup message whose route picks this backend and whose sender ``access`` lets
        through; limits never count it. Nothing it does reaches the chat: a failure is
        logged."""

    @classmethod
    def observes(cls) -> bool:
        """Whether this backend overrides :meth:`observe`."""
        return cls.observe is not Backend.observe


# -- a backend in front of one API client ------------------------------------------------------


class AsyncClosable(Protocol):
    """What :class:`HttpBackend` needs of its client: ``await client.aclose()``."""

    async def aclose(self) -> None: ...


ClientT = TypeVar("ClientT", bound=AsyncClosable)


class HttpBackend(Backend, Generic[ClientT]):
    """A backend in front of one pure API client (``client.py``): the one lifecycle for it.

    Implement :meth:`make_client` (build the client from ``self.settings``); use
    :attr:`client` wherever the client is needed. The client is made lazily, on the first use
    of :attr:`client`, and :meth:`start` makes it, so that a misconfigured client fails at
    start-up rather than on the first message. :meth:`close` closes it once: closing twice, or
    closing a backend that never made its client, does nothing. (After :meth:`close`, using
    :attr:`client` again makes a fresh one.)

    A backend with more to run (a websocket, a webhook receiver) overrides :meth:`start` and
    :meth:`close` and calls ``super()``: ``await super().start()`` first (the rest may use the
    client), ``await super().close()`` last (the rest may still use it while stopping)::

        class ParrotBackend(HttpBackend[ParrotClient]):
            type_name = "parrot"
            Settings = ParrotSettings

            def make_client(self) -> ParrotClient:
                return ParrotClient(self.settings.base_url, timeout=self.settings.timeout)

            async def reply(self, turn):
                yield Text(await self.client.say(turn.text))

    The client never imports the adapter: it is usable on its own, without the engine.
    """

    def __init__(self, name: str, settings: BackendSettings, kv: KeyValue) -> None:
        super().__init__(name, settings, kv)
        self._client: ClientT | None = None

    @abstractmethod
    def make_client(self) -> ClientT:
        """A new client for this backend's settings (called once per client made)."""

    @property
    def client(self) -> ClientT:
        """The backend's client, made on first use."""
        if self._client is None:
            self._client = self.make_client()
        return self._client

    async def start(self) -> None:
        """Make the client."""
        _ = self.client

    async def close(self) -> None:
        """Close the client if one was made (once; a second call does nothing)."""
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()
