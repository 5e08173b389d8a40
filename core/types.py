"""tgmux's public message types: what frontends, the engine, backends and plugins pass around.

Plain data only; this module imports nothing else from tgmux at run time, so every other
module may import it. The names are re-exported where users imported them before
(``tgmux.backend`` for chats, media and reply parts; ``tgmux.engine`` for messages, commands
and :data:`DROP`).
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from tgmux.engine import Engine

__all__ = [
    "DROP",
    "Audio",
    "ChatIdentity",
    "ChatType",
    "CommandContext",
    "CommandHandler",
    "CommandSpec",
    "DelayNotifier",
    "DemoBackend",
    "Exchange",
    "Frontend",
    "Image",
    "IncomingMessage",
    "Media",
    "Metadata",
    "Notice",
    "PluginCommand",
    "ProviderEvent",
    "ReplyPart",
    "StopFn",
    "Text",
    "TextDelta",
    "delay_notifier",
]

ChatType = Literal["private", "group", "supergroup", "channel"]


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


@dataclass(frozen=True)
class Media:
    """A non-text message: ``kind`` is photo, voice, audio, sticker, document or video."""

    kind: str
    url: str | None = None
    data: bytes | None = None
    mime_type: str | None = None
    emoji: str | None = None  # stickers


COMMAND_PATTERN = re.compile(r"/([A-Za-z0-9_]+)(?:\s+(.*))?\Z", re.DOTALL)


@dataclass(frozen=True)
class IncomingMessage:
    """A message as a frontend hands it to the engine.

    ``addressed`` says the bot was mentioned or replied to (always true in private chats); the
    frontend strips its own ``@username`` from the text and from ``/command@username``.
    """

    chat: ChatIdentity
    text: str = ""
    media: Media | None = None
    addressed: bool = True
    received_at: float = field(default_factory=time.time)

    @property
    def command(self) -> str | None:
        """``"image"`` for ``/image ...``; None when the text is not a command."""
        m = COMMAND_PATTERN.match(self.text)
        return m.group(1).lower() if m else None

    @property
    def args(self) -> str:
        m = COMMAND_PATTERN.match(self.text)
        return (m.group(2) or "").strip() if m else ""

    def to_payload(self) -> dict[str, Any]:
        media = self.media
        # Flat dataclasses of plain values: a dict copy, not asdict()'s deep copy (per message).
        return {
            "chat": dict(vars(self.chat)),
            "text": self.text,
            "media": None if media is None else {
                k: v for k, v in vars(media).items() if k != "data"
            },
            "addressed": self.addressed,
            "received_at": self.received_at,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> IncomingMessage:
        media = payload.get("media")
        return cls(
            chat=ChatIdentity(**payload["chat"]),
            text=payload.get("text", ""),
            media=Media(**media) if media else None,
            addressed=payload.get("addressed", True),
            received_at=payload.get("received_at", time.time()),
        )


DROP = object()
"""Returned by ``tgmux_pre_route`` to ignore a message."""


# -- what comes back ---------------------------------------------------------------------------


@dataclass(frozen=True)
class TextDelta:
    """A piece of a streamed reply; frontends show the growing text, then the final Text."""

    text: str


@dataclass(frozen=True)
class Text:
    """A complete text reply (after deltas: the exact final text)."""

    text: str


@dataclass(frozen=True)
class Image:
    url: str | None = None
    data: bytes | None = None
    caption: str | None = None
    filename: str | None = None


@dataclass(frozen=True)
class Audio:
    """Audio by URL or bytes; ``voice=True`` asks to show it as a voice message (the Telegram
    frontend makes bytes in any format a voice note: OGG/Opus, see :mod:`tgmux.audio`)."""

    url: str | None = None
    data: bytes | None = None
    caption: str | None = None
    voice: bool = False
    filename: str | None = None
    mime_type: str | None = None


@dataclass(frozen=True)
class Notice:
    """A short message to the user that is not the reply itself (errors, delays)."""

    text: str


@dataclass(frozen=True)
class Metadata:
    """Data for plugins and logs; frontends do not show it."""

    data: dict[str, Any]


ReplyPart = TextDelta | Text | Image | Audio | Notice | Metadata


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
    """What the engine needs from a frontend (Telegram, the console, a test kit)."""

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
