"""The ``sensay`` backend: a Sensay replica answers each chat, streamed or as JSON."""

from __future__ import annotations

import logging
import string
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from tgmux.backend import (
    ChatIdentity,
    CommandSpec,
    HttpBackend,
    HttpBackendSettings,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Turn,
)
from tgmux.errors import BackendError, ProtocolError
from tgmux.text import valid_unicode

from .client import (
    DEFAULT_BASE_URL,
    MAX_CONTENT,
    SensayClient,
    content_length,
    split_content,
    telegram_data,
    truncate_content,
)

log = logging.getLogger("tgmux.backends.sensay")

#: Placeholders ``user_id`` may use.
USER_ID_FIELDS = ("user_id", "chat_id", "username", "chat_type")

CUT_OFF = "The AI's reply was cut off by an error; what it said so far is above. Please try again."
EMPTY_REPLY = "The AI sent an empty reply."
NO_RESET = (
    "This AI keeps the conversation on its side and cannot forget it from here. "
    "To ask something without it, use /fresh <text>."
)


class SensaySettings(HttpBackendSettings):
    type: Literal["sensay"] = "sensay"
    base_url: str = Field(DEFAULT_BASE_URL, description="API root")
    organization_secret: SecretStr = Field(
        description="the organization's API key, sent as X-ORGANIZATION-SECRET"
    )
    user_id: str = Field(
        description=(
            "the X-USER-ID sent with each request: a fixed Sensay user id, or a template with "
            "{user_id}, {chat_id}, {username}, {chat_type} of the Telegram message "
            "(e.g. 'tg_{user_id}': one Sensay user per Telegram user)"
        ),
        min_length=1,
    )
    replica_uuid: str = Field(description="the replica that answers (overridable per route)",
                              min_length=1)
    stream: bool = Field(True, description="stream replies (text/event-stream) instead of JSON")
    skip_chat_history: bool = Field(
        False,
        description="ask without chat history and keep the turn out of it (overridable per "
        "route; /fresh does it for one message)",
    )
    long_message: Literal["split", "truncate", "reject"] = Field(
        "reject",
        description=f"a message over {MAX_CONTENT} characters: split it into several "
        "completions, truncate it, or reject it with a reply saying so",
    )

    @field_validator("user_id")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            names = [name for _, name, _, _ in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        for name in names:
            if name not in USER_ID_FIELDS:
                raise ValueError(
                    f"unknown placeholder {{{name}}} (can use: "
                    + ", ".join(f"{{{f}}}" for f in USER_ID_FIELDS) + ")"
                )
        return value


def sensay_user_id(template: str, chat: ChatIdentity) -> str:
    """The X-USER-ID for a message. A channel post has no sender: ``{user_id}`` is then the
    chat id; ``{username}`` falls back to the user id, then the chat id."""
    user = chat.user_id if chat.user_id is not None else chat.chat_id
    return template.format(
        user_id=user,
        chat_id=chat.chat_id,
        username=chat.username or user,
        chat_type=chat.chat_type,
    )


def telegram_data_for(chat: ChatIdentity) -> dict[str, Any]:
    """``telegram_data`` for the message being answered."""
    if chat.message_id is None:  # required by the API; frontends always have one
        log.debug("chat %s: message without id; sending message_id 0", chat.chat_id)
    return telegram_data(
        chat_type=chat.chat_type,
        chat_id=chat.chat_id,
        message_id=chat.message_id if chat.message_id is not None else 0,
        user_id=chat.user_id,
        username=chat.username,
        message_thread_id=chat.message_thread_id,
    )


class SensayBackend(HttpBackend[SensayClient]):
    type_name = "sensay"
    Settings = SensaySettings
    description = "A Sensay replica (Telegram completions, streamed or JSON)."
    route_options = frozenset({"replica_uuid", "skip_chat_history"})

    settings: SensaySettings

    def make_client(self) -> SensayClient:
        return SensayClient(
            self.settings.organization_secret.get_secret_value(),
            base_url=self.settings.base_url,
            http_options=self.settings.http_options(),
            name=f"sensay:{self.name}",
        )

    def commands(self) -> list[CommandSpec]:
        return [CommandSpec("fresh", "Ask without the chat history (not remembered)",
                            usage="<text>")]

    async def reset(self, turn: Turn) -> str | None:
        # The contract has no call that clears a history: say what can be done instead.
        return NO_RESET

    def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        options = turn.options or self.settings
        return self._ask(turn, turn.text, skip_chat_history=options.skip_chat_history)

    def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if turn.command == "fresh":
            return self._fresh(turn)
        return super().run_command(turn)

    async def _fresh(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if not turn.args.strip():
            yield Notice("Write your question after the command: /fresh <text>")
            return
        async for part in self._ask(turn, turn.args, skip_chat_history=True):
            yield part

    async def _ask(self, turn: Turn, text: str, *,
                   skip_chat_history: bool) -> AsyncIterator[ReplyPart]:
        options: SensaySettings = turn.options or self.settings
        if not text.strip():  # never sent: the API wants 1..10000 characters
            yield Notice("Send me a message and I will answer.")
            return
        pieces = [text]
        length = content_length(text)
        if length > MAX_CONTENT:
            if options.long_message == "reject":
                yield Notice(
                    f"Your message is {length:,} characters long; this AI accepts at most "
                    f"{MAX_CONTENT:,}. Please send a shorter message."
                )
                return
            if options.long_message == "truncate":
                pieces = [truncate_content(text)]
                yield Notice(
                    f"Your message is {length:,} characters long; only its first "
                    f"{MAX_CONTENT:,} were sent."
                )
            else:
                pieces = split_content(text)
                log.info("chat %s: a message of %d characters goes in %d parts",
                         turn.chat.chat_id, length, len(pieces))

        user = sensay_user_id(options.user_id, turn.chat)
        data = telegram_data_for(turn.chat)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            if options.stream and last:
                async for part in self._streamed(options.replica_uuid, piece, data, user,
                                                 skip_chat_history):
                    yield part
                continue
            reply = await self.client.complete(options.replica_uuid, piece, data,
                                               skip_chat_history, user_id=user)
            if not reply.strip():
                if last:
                    raise ProtocolError("sensay: empty completion", user_message=EMPTY_REPLY)
                continue
            yield Text(reply)

    async def _streamed(self, replica: str, content: str, data: dict[str, Any], user: str,
                        skip: bool) -> AsyncIterator[ReplyPart]:
        parts: list[str] = []
        try:
            async for delta in self.client.stream(replica, content, data, skip, user_id=user):
                parts.append(delta)
                yield TextDelta(delta)
        except BackendError as exc:
            # Keep what streamed as the reply, then tell the user it was cut off.
            partial = valid_unicode("".join(parts))
            if not partial.strip():
                raise
            log.warning("sensay %s: stream cut off after %d characters: %s", self.name,
                        len(partial), exc.log_text())
            yield Text(partial)
            raise type(exc)(
                str(exc), status=exc.status, provider_message=exc.provider_message,
                request_id=exc.request_id, details={**exc.details, "cut_off": True},
                user_message=CUT_OFF,
            ) from exc
        # Valid Unicode: an emoji whose UTF-16 halves came in two deltas is one character.
        full = valid_unicode("".join(parts))
        if not full.strip():
            raise ProtocolError("sensay: empty streamed completion", user_message=EMPTY_REPLY)
        yield Text(full)
