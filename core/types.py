"""tgmux's public message types: what frontends, the engine, backends and plugins pass around.

Plain data only; this module imports nothing else from tgmux at run time, so every other
module may import it. The names are re-exported where users imported them before
(``tgmux.backend`` for chats, media and reply parts; ``tgmux.engine`` for messages, commands
and :data:`DROP`).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from tgmux.engine import Engine

__all__ = [
    "DROP",
    "TOPIC_CHATS",
    "Audio",
    "ChatIdentity",
    "ChatLine",
    "ChatType",
    "CommandContext",
    "CommandHandler",
    "CommandSpec",
    "DelayNotifier",
    "DemoBackend",
    "Entity",
    "Exchange",
    "Frontend",
    "Image",
    "IncomingMessage",
    "Media",
    "MediaFetcher",
    "MediaRef",
    "MediaUnavailable",
    "Metadata",
    "Notice",
    "PluginCommand",
    "ProviderEvent",
    "RepliedTo",
    "ReplyPart",
    "StopFn",
    "StreamPosition",
    "Text",
    "TextDelta",
    "TextFormat",
    "Usage",
    "UsageRow",
    "delay_notifier",
]

ChatType = Literal["private", "group", "supergroup", "channel"]
#: How a reply's text is meant: Markdown (rendered as formatting by the frontend) or plain text.
#: None on a part: as its backend's ``format`` setting says (plain for tgmux's own texts).
#: Parts compare by what they say, not by how it is shown (``format`` is not compared).
TextFormat = Literal["plain", "markdown"]
#: Chats whose messages can be in a topic: forums (supergroups) and private chats in threaded
#: mode. Each topic is a conversation of its own (memory, /reset, a provider's session).
TOPIC_CHATS = frozenset({"supergroup", "private"})


# -- who wrote, and what -----------------------------------------------------------------------


@dataclass(frozen=True)
class ChatIdentity:
    """Who wrote, where. Plain fields, as Telegram gives them."""

    chat_type: ChatType
    chat_id: int
    user_id: int | None = None
    username: str | None = None
    message_id: int | None = None
    message_thread_id: int | None = None
    first_name: str | None = None
    #: The tgmux account (the Telegram bot or user) the chat is with: ``main`` for the single
    #: ``telegram:`` form. The same user talking to two accounts is two chats.
    account: str = "main"
    #: The chat's title (groups, supergroups, channels); None in private chats.
    chat_title: str | None = None

    @property
    def topic(self) -> int | None:
        """The topic the message is in: a forum's (supergroup) or, since Bot API 9.3, a
        private chat's in threaded mode; None elsewhere (a basic group has none)."""
        return self.message_thread_id if self.chat_type in TOPIC_CHATS else None


@dataclass(frozen=True)
class MediaRef:
    """Where a frontend fetches a media's bytes again, later or after a restart: kept in the
    inbox with its message (the bytes are not). For Telegram: the file id Pyrogram downloads
    and the message that carries it (to renew a file reference Telegram let expire)."""

    file_id: str
    #: The tgmux account whose client can fetch it.
    account: str = "main"
    chat_id: int | None = None
    message_id: int | None = None
    #: Bytes, as the frontend was told (None: unknown); checked against its cap before fetching.
    size: int | None = None


#: A frontend's way to fetch a media by its :class:`MediaRef`: the bytes, or MediaUnavailable.
MediaFetcher = Callable[[MediaRef], Awaitable[bytes]]

#: What the chat reads when a media's bytes cannot be had.
MEDIA_UNAVAILABLE = "I could not get your file from Telegram. Please send it again."


class MediaUnavailable(Exception):
    """A media's bytes cannot be had (expired at Telegram, too large, no way to fetch them).
    Raised by :meth:`Media.read`; the engine shows ``user_message`` to the chat, and it says
    nothing of the backend (its circuit does not count it)."""

    def __init__(self, message: str, *, user_message: str = MEDIA_UNAVAILABLE) -> None:
        super().__init__(message)
        self.user_message = user_message


@dataclass(frozen=True)
class Media:
    """A non-text message: ``kind`` is photo, voice, audio, sticker, document or video.

    Backends get its bytes with ``await media.read()``: ``data`` when they are in hand (a
    test, the console), else fetched through ``fetch`` by ``ref`` — once, when a backend
    first asks, bounded by the frontend's size cap and timeout.
    """

    kind: str
    url: str | None = None
    data: bytes | None = None
    mime_type: str | None = None
    emoji: str | None = None  # stickers
    ref: MediaRef | None = None
    #: Set by the frontend (and by the engine for a message replayed from the inbox).
    fetch: MediaFetcher | None = field(default=None, repr=False, compare=False)
    # the fetched bytes or the failure, and the lock that fetches them once (per copy)
    _fetched: dict[str, Any] = field(default_factory=dict, init=False, repr=False,
                                     compare=False)

    @property
    def readable(self) -> bool:
        """Whether :meth:`read` can give bytes (in hand, or by a fetch that may still fail)."""
        return self.data is not None or (self.ref is not None and self.fetch is not None)

    async def read(self) -> bytes:
        """The media's bytes; :class:`MediaUnavailable` (with a line for the chat) when they
        cannot be had. Fetched at most once; later calls return the same bytes (or error)."""
        if self.data is not None:
            return self.data
        fetched = self._fetched
        if "data" not in fetched:
            lock = fetched.setdefault("lock", asyncio.Lock())
            async with lock:
                if "data" not in fetched:
                    fetched["data"] = await self._fetch()
        data = fetched["data"]
        if isinstance(data, MediaUnavailable):
            raise data
        return data

    async def _fetch(self) -> bytes | MediaUnavailable:
        if self.ref is None or self.fetch is None:
            return MediaUnavailable(f"the {self.kind} has no bytes and no way to fetch them")
        try:
            return await self.fetch(self.ref)
        except MediaUnavailable as exc:
            return exc

    def with_fetch(self, fetch: MediaFetcher | None) -> Media:
        """This media, fetched through ``fetch`` (itself when it needs none or has one)."""
        if fetch is None or self.ref is None or self.fetch is not None or self.data is not None:
            return self
        return replace(self, fetch=fetch)

    def to_payload(self) -> dict[str, Any]:
        """What the inbox keeps: everything but the bytes (the ref fetches them again)."""
        ref = self.ref
        return {"kind": self.kind, "url": self.url, "mime_type": self.mime_type,
                "emoji": self.emoji, "ref": None if ref is None else dict(vars(ref))}

    @classmethod
    def from_payload(cls, payload: dict[str, Any], fetch: MediaFetcher | None = None) -> Media:
        """A stored media (an old payload has no ``ref``: it has no bytes either)."""
        ref = payload.get("ref")
        return cls(kind=payload["kind"], url=payload.get("url"),
                   mime_type=payload.get("mime_type"), emoji=payload.get("emoji"),
                   ref=MediaRef(**ref) if ref else None, fetch=fetch if ref else None)


@dataclass(frozen=True)
class StreamPosition:
    """Where an account is in its update stream: ``value`` is the frontend's own text (JSON),
    ``order`` orders one account's positions. A store keeps the highest ``order``: a write with
    an order not above the stored one changes nothing, so accepts committing out of order never
    move the position back."""

    order: int
    value: str


@dataclass(frozen=True)
class Entity:
    """One piece of a text's formatting, in Telegram Bot API terms: ``type`` is ``bold``,
    ``italic``, ``underline``, ``strikethrough``, ``spoiler``, ``code``, ``pre``, ``text_link``,
    ``blockquote``, ``expandable_blockquote``, ``url``, ``mention``, ``text_mention``,
    ``hashtag``, ``custom_emoji``...; ``offset`` and ``length`` count UTF-16 code units;
    ``url`` is set for ``text_link``, ``language`` (when known) for ``pre``."""

    type: str
    offset: int
    length: int
    url: str | None = None
    language: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The Bot API form (``tgmux simulate``'s ``entities``): unset fields left out."""
        data: dict[str, Any] = {"type": self.type, "offset": self.offset, "length": self.length}
        if self.url is not None:
            data["url"] = self.url
        if self.language is not None:
            data["language"] = self.language
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entity:
        return cls(type=data["type"], offset=data["offset"], length=data["length"],
                   url=data.get("url"), language=data.get("language"))


@dataclass(frozen=True)
class RepliedTo:
    """The message a user's message replies to, as the backend should see it."""

    text: str
    #: who wrote it, as the chat shows them (a first name, an @username)
    author: str
    #: a message this bot (the tgmux account) sent
    from_bot: bool = False
    #: the part of it the user quoted, when they quoted one
    quote: str | None = None
    message_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepliedTo:
        return cls(text=data.get("text", ""), author=data.get("author", ""),
                   from_bot=bool(data.get("from_bot")), quote=data.get("quote"),
                   message_id=data.get("message_id"))


@dataclass(frozen=True)
class ChatLine:
    """A group message the bot was not asked to answer, kept as the chat's context (route
    key ``group_context``) and given to the backend with the next message it answers."""

    author: str
    text: str
    #: when it was written (unix time)
    at: float = 0.0
    user_id: int | None = None
    #: its Telegram message id, and its sender's @username (without @), when known: a
    #: provider that records the chat's messages itself (Sensay) says which message it was
    message_id: int | None = None
    username: str | None = None

    def to_json(self) -> dict[str, Any]:
        """What the store keeps (unset fields left out)."""
        return {k: v for k, v in vars(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChatLine:
        return cls(author=str(data.get("author", "")), text=str(data.get("text", "")),
                   at=float(data.get("at", 0.0)), user_id=data.get("user_id"),
                   message_id=data.get("message_id"), username=data.get("username"))


COMMAND_PATTERN = re.compile(r"/([A-Za-z0-9_]+)(?:\s+(.*))?\Z", re.DOTALL)


@dataclass(frozen=True)
class IncomingMessage:
    """A message as a frontend hands it to the engine.

    ``addressed`` says the bot was mentioned or replied to (always true in private chats); the
    frontend strips its own ``@username`` from the text and from ``/command@username``.
    ``entities`` is the user's formatting of ``text``; ``reply_to`` the message it replies to;
    ``media_group_id`` the album it belongs to; ``album`` the further media of an album (or of
    messages merged into this one; ``media`` is the first) and ``merged`` the message ids of
    the messages merged into this one (each is done when this one is).
    """

    chat: ChatIdentity
    text: str = ""
    media: Media | None = None
    addressed: bool = True
    received_at: float = field(default_factory=time.time)
    #: where the frontend's update stream stands past this message: written with its inbox
    #: accept (not part of the message: not in the payload)
    position: StreamPosition | None = field(default=None, compare=False, repr=False)
    entities: tuple[Entity, ...] = ()
    reply_to: RepliedTo | None = None
    media_group_id: str | None = None
    album: tuple[Media, ...] = ()
    merged: tuple[int, ...] = ()
    #: when the user sent it, by the frontend's clock (unix time; Telegram's is in whole
    #: seconds); None when unknown. ``received_at`` is when tgmux got it.
    sent_at: float | None = None

    @property
    def command(self) -> str | None:
        """``"image"`` for ``/image ...``; None when the text is not a command."""
        m = COMMAND_PATTERN.match(self.text)
        return m.group(1).lower() if m else None

    @property
    def args(self) -> str:
        m = COMMAND_PATTERN.match(self.text)
        return (m.group(2) or "").strip() if m else ""

    @property
    def start_payload(self) -> str | None:
        """The payload of a deep link (``t.me/bot?start=PAYLOAD`` sends ``/start PAYLOAD``)."""
        return (self.args or None) if self.command == "start" else None

    def to_payload(self) -> dict[str, Any]:
        media = self.media
        # Flat dataclasses of plain values: a dict copy, not asdict()'s deep copy (per message).
        return {
            "chat": dict(vars(self.chat)),
            "text": self.text,
            "media": None if media is None else media.to_payload(),
            "addressed": self.addressed,
            "received_at": self.received_at,
            # added later: left out when empty (older payloads have none)
            **({"entities": [e.to_json() for e in self.entities]} if self.entities else {}),
            **({"reply_to": self.reply_to.to_json()} if self.reply_to else {}),
            **({"media_group_id": self.media_group_id} if self.media_group_id else {}),
            **({"album": [m.to_payload() for m in self.album]} if self.album else {}),
            **({"merged": list(self.merged)} if self.merged else {}),
            **({"sent_at": self.sent_at} if self.sent_at is not None else {}),
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any],
                     fetch_media: MediaFetcher | None = None) -> IncomingMessage:
        """A message from the inbox; its media fetched through ``fetch_media`` (a frontend's)."""
        media = payload.get("media")
        return cls(
            chat=ChatIdentity(**payload["chat"]),
            text=payload.get("text", ""),
            media=Media.from_payload(media, fetch_media) if media else None,
            addressed=payload.get("addressed", True),
            received_at=payload.get("received_at", time.time()),
            entities=tuple(Entity.from_json(e) for e in payload.get("entities", ())),
            reply_to=(RepliedTo.from_json(payload["reply_to"]) if payload.get("reply_to")
                      else None),
            media_group_id=payload.get("media_group_id"),
            album=tuple(Media.from_payload(m, fetch_media) for m in payload.get("album", ())),
            merged=tuple(payload.get("merged", ())),
            sent_at=payload.get("sent_at"),
        )


DROP = object()
"""Returned by ``tgmux_pre_route`` to ignore a message."""


# -- what comes back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """A piece of a streamed reply; frontends show the growing text, then the final Text."""

    text: str
    format: TextFormat | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Text:
    """A complete text reply (after deltas: the exact final text). ``format``: Markdown the
    frontend renders, or plain text; None: as the backend's ``format`` setting says."""

    text: str
    format: TextFormat | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Image:
    url: str | None = None
    data: bytes | None = None
    caption: str | None = None
    filename: str | None = None
    #: how the caption is meant (see :class:`Text`)
    format: TextFormat | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Audio:
    """Audio by URL or bytes; ``voice=True`` asks to show it as a voice message (the Telegram
    frontend makes bytes in any format a voice note: OGG/Opus, see :mod:`tgmux.audio`).
    ``text``: the words the audio says, sent as a message instead when the audio cannot be
    sent (a spoken reply still reaches the user)."""

    url: str | None = None
    data: bytes | None = None
    caption: str | None = None
    voice: bool = False
    filename: str | None = None
    mime_type: str | None = None
    text: str | None = None
    #: how the caption and text are meant (see :class:`Text`)
    format: TextFormat | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Notice:
    """A short message to the user that is not the reply itself (errors, delays)."""

    text: str


@dataclass(frozen=True)
class Metadata:
    """Data for plugins and logs; frontends do not show it."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Usage:
    """What a reply used at the provider, as the provider reported it (tokens; a backend
    whose API reports none yields none). Frontends do not show it; the engine records it
    with its cost. ``model`` is the model as the provider names it (prices are looked up by
    it); ``input_tokens`` counts every prompt token, ``cached_input_tokens`` those of them
    the provider served from its cache, ``reasoning_tokens`` those of ``output_tokens``
    spent on reasoning."""

    model: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0


ReplyPart = TextDelta | Text | Image | Audio | Notice | Metadata | Usage


@dataclass(frozen=True)
class ProviderEvent:
    """Something a provider pushed on its own (webhook, websocket): see the
    ``tgmux_provider_event`` hook. ``chat_id`` is where it should be shown, if anywhere."""

    source: str  # the backend's name in the config
    type: str
    data: dict[str, Any]
    chat_id: int | None = None
    text: str | None = None


@dataclass(frozen=True)
class Exchange:
    """One remembered exchange of a conversation (tgmux's conversation memory): the user's
    message as the backend got it, and the reply as the chat received it."""

    user: str
    reply: str

    @property
    def chars(self) -> int:
        """What it counts against a ``max_chars`` budget."""
        return len(self.user) + len(self.reply)


@dataclass(frozen=True)
class UsageRow:
    """What one user used with one backend and model in one chat on one UTC day (``day``:
    ``YYYY-MM-DD``): the store adds rows of the same key together. ``cost`` is in the
    config's ``currency``, computed when it was recorded (None: the price was not known)."""

    day: str
    account: str
    user_id: int | None
    chat_id: int
    backend: str
    model: str
    messages: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    reasoning_tokens: int = 0
    cost: float | None = None

    @property
    def key(self) -> tuple[str, str, int | None, int, str, str]:
        return (self.day, self.account, self.user_id, self.chat_id, self.backend, self.model)


# -- commands ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    """A chat command: ``/name args``. ``usage`` shows in /help after the name. A backend's
    command with ``calls_provider=False`` (it reads what tgmux keeps) is answered whatever the
    backend's circuit says, and says nothing to the circuit."""

    name: str
    description: str
    usage: str = ""
    admin_only: bool = False
    calls_provider: bool = True


@dataclass(frozen=True)
class CommandContext:
    """What a plugin command's handler gets."""

    message: IncomingMessage
    engine: Engine
    args: str


CommandHandler = Callable[[CommandContext], Any]


@dataclass(frozen=True)
class PluginCommand:
    """A chat command from a plugin: the handler gets a :class:`CommandContext` and returns a
    string, a list of parts, an async iterator of parts, or None (an awaitable of those too)."""

    spec: CommandSpec
    handler: CommandHandler


# -- frontends ---------------------------------------------------------------------------------


class Frontend(Protocol):
    """What the engine needs from a frontend (Telegram, the console, a test kit).

    A frontend whose media can be fetched again later also has ``async fetch_media(ref)`` (a
    :data:`MediaFetcher`): the engine gives it to the media of messages it replays from the
    inbox after a restart (its messages' media it attaches itself, as ``Media.fetch``)."""

    async def deliver(
        self,
        chat: ChatIdentity,
        parts: AsyncIterator[ReplyPart],
        *,
        reply_to_message_id: int | None,
    ) -> list[ReplyPart]:
        """Send a reply as its parts come: show :class:`TextDelta` parts as a growing text,
        replace it by the final :class:`Text` (exactly), send media and notices. A stream that
        ends after deltas without a final Text is finalized as shown. Return the parts that were
        delivered. Must not raise for delivery errors (log them)."""
        ...


# -- the delay notice --------------------------------------------------------------------------

DelayNotifier = Callable[[float], Awaitable[None]]

#: Set by the engine around a backend call; the transport layer (``tgmux.http``, or any other
#: provider transport) calls it once when a wait (rate limit, Retry-After) is long enough that
#: the user should hear their reply is delayed. It lives here so that neither the engine nor
#: the transport imports the other.
delay_notifier: ContextVar[DelayNotifier | None] = ContextVar("tgmux_delay_notifier", default=None)


# -- the demo ----------------------------------------------------------------------------------

StopFn = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class DemoBackend:
    """A backend ``tgmux demo`` can offer (hook ``tgmux_demo_backends``): ``start()`` starts its
    simulator and returns the backend config (as under ``backends:``, with ``base_url``
    pointing at the simulator) and a stop function."""

    name: str
    description: str
    start: Callable[[], Awaitable[tuple[dict[str, Any], StopFn]]]
