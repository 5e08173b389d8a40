"""The ``sensay`` backend: a Sensay replica answers each chat, streamed or as JSON.

Two ways to say who is talking:

* no ``user_id`` (the default, as Sensay's own Telegram bot does it): ``X-USER-ID`` is the
  Telegram user id with ``X-USER-ID-TYPE: telegram``; before a user's first message tgmux asks
  ``GET /v1/users/me`` and, on 401, creates the user (``POST /v1/users`` with the linked
  Telegram account; a 409 means another process did). Known users are kept in the backend's
  key-value store, so this happens once per user, across restarts and processes; creation is
  single-flight per user. ``X-API-Version`` defaults to the version Sensay's bot pins.
* ``user_id`` (a fixed Sensay user id or a template): exactly the seed contract, no user
  calls, no ``X-API-Version`` unless ``api_version`` is set.

With an API version in effect, group requests carry ``telegram_data.chat_name``, a captioned
photo goes as ``imageURL`` (its own URL, or its bytes published at ``server.public_url`` via
``Turn.share``) and ``/history`` reads ``GET …/chat/history/telegram``.

Group context goes through Sensay's own chat history (``POST …/chat/history/telegram``, each
message as its sender's), never as a transcript in the content: with the route key
``group_context: N`` the last N group messages not addressed to the bot (``Turn.group_context``,
kept by tgmux) are recorded when the bot is next asked, just before the completion;
``record_group_context: true`` (the older spelling) records every such message as it comes
(:meth:`SensayBackend.observe`), and then ``Turn.group_context`` is not recorded again. A reply
to a message (``Turn.reply_to``) is said before the user's text in tgmux's short form
(:func:`tgmux.context.with_context`), when it fits Sensay's 10,000 characters.
"""

from __future__ import annotations

import dataclasses
import datetime
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
    KeyValue,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Turn,
    Usage,
)
from tgmux.context import with_context
from tgmux.errors import BackendError, ProtocolError
from tgmux.singleflight import SingleFlight
from tgmux.text import split_text, valid_unicode

from .client import (
    DEFAULT_BASE_URL,
    MAX_CONTENT,
    HistoryItem,
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
#: What Sensay's own bot answers to a photo without a caption.
EMPTY_CAPTION = "Caption is empty, please provide a message."
NO_IMAGE_URL = ("This AI cannot see pictures sent here yet; it got only your caption.")
NO_HISTORY = "No history yet."
#: The X-API-Version Sensay's own Telegram bot pins (the default without ``user_id``).
DEFAULT_API_VERSION = "2025-04-01"
#: X-USER-ID-TYPE (and the linked account's type) of a Telegram user id.
TELEGRAM = "telegram"
#: /history shows this many of the newest messages, in Telegram messages of at most this many
#: UTF-16 code units.
HISTORY_SHOWN = 20
HISTORY_PART_LIMIT = 4000


class SensaySettings(HttpBackendSettings):
    type: Literal["sensay"] = "sensay"
    format: Literal["markdown", "plain"] = Field(
        "markdown", description="markdown (default: models answer in Markdown): replies shown "
        "as formatting; plain: as they are")
    base_url: str = Field(DEFAULT_BASE_URL, description="API root")
    organization_secret: SecretStr = Field(
        description="the organization's API key, sent as X-ORGANIZATION-SECRET"
    )
    user_id: str | None = Field(
        None,
        description=(
            "unset (default): one Sensay user per Telegram user, created on first contact "
            "(X-USER-ID-TYPE: telegram). Set: the X-USER-ID sent with each request, a fixed "
            "existing Sensay user id or a template with {user_id}, {chat_id}, {username}, "
            "{chat_type} of the Telegram message (those users must exist)"
        ),
        min_length=1,
    )
    api_version: str | None = Field(
        None,
        description=f"X-API-Version sent with every request (default: {DEFAULT_API_VERSION} "
        "without user_id, none with it); also enables chat_name and /history",
        min_length=1,
    )
    record_group_context: bool = Field(
        False,
        description="the older spelling of the route key group_context: record every group "
        "message the bot is not asked to answer in the replica's chat history as it comes "
        "(no bound), so that it knows the conversation when mentioned (overridable per route)",
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

    @property
    def effective_api_version(self) -> str | None:
        """The X-API-Version in effect (None: the header is not sent)."""
        if self.api_version is not None:
            return self.api_version
        return DEFAULT_API_VERSION if self.user_id is None else None

    @field_validator("api_version", mode="before")
    @classmethod
    def _version_as_text(cls, value: Any) -> Any:
        # YAML reads an unquoted 2025-04-01 as a date: the header wants that text.
        return value.isoformat() if isinstance(value, datetime.date) else value

    @field_validator("user_id")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        if value is None:
            return None
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


def telegram_data_for(chat: ChatIdentity, *, chat_name: bool = False) -> dict[str, Any]:
    """``telegram_data`` for the message being answered; with ``chat_name`` (an API version
    that knows the key) a group's title too."""
    if chat.message_id is None:  # required by the API; frontends always have one
        log.debug("chat %s: message without id; sending message_id 0", chat.chat_id)
    return telegram_data(
        chat_type=chat.chat_type,
        chat_id=chat.chat_id,
        message_id=chat.message_id if chat.message_id is not None else 0,
        user_id=chat.user_id,
        username=chat.username,
        message_thread_id=chat.message_thread_id,
        chat_name=chat.chat_title if chat_name and chat.chat_type != "private" else None,
    )


def _with_reply(content: str, turn: Turn) -> str:
    """``content`` with the message the user replied to said before it (tgmux's short form),
    when both fit in Sensay's content limit (UTF-16 units); else ``content`` as it is (whole
    or not at all: a cut preamble would be a fragment)."""
    if turn.reply_to is None:
        return content
    told = with_context(content, turn.reply_to)
    return told if content_length(told) <= MAX_CONTENT else content


def format_history(items: list[HistoryItem], shown: int = HISTORY_SHOWN,
                   part_limit: int = HISTORY_PART_LIMIT) -> list[str]:
    """``role: content`` lines, the newest ``shown`` (newest last), in messages of at most
    ``part_limit`` UTF-16 code units; ``["No history yet."]`` when empty."""
    lines = [f"{item.role}: {item.content.strip()}" for item in items[-shown:]
             if item.content.strip()]
    return split_text("\n".join(lines), part_limit) or [NO_HISTORY]


class SensayBackend(HttpBackend[SensayClient]):
    type_name = "sensay"
    Settings = SensaySettings
    description = "A Sensay replica (Telegram completions, streamed or JSON)."
    route_options = frozenset({"replica_uuid", "skip_chat_history", "record_group_context"})
    accepts_media = frozenset({"photo"})

    settings: SensaySettings

    @classmethod
    def shared_between_users(cls, settings: Any) -> str | None:
        template = settings.user_id
        if template is None:
            return None  # one Sensay user per Telegram user
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
        if names & {"user_id", "username", "chat_id"}:
            return None  # one per user (or per chat, whose members see it anyway)
        shown = ", which /history shows to anyone" if settings.effective_api_version else ""
        return (f"user_id {template!r} is one Sensay user for every Telegram user: the "
                f"replica keeps everyone's messages in one conversation{shown}")

    def __init__(self, name: str, settings: SensaySettings, kv: KeyValue) -> None:
        super().__init__(name, settings, kv)
        #: Sensay users being looked up or created, by store key.
        self._creating: SingleFlight[str] = SingleFlight()

    def make_client(self) -> SensayClient:
        return SensayClient(
            self.settings.organization_secret.get_secret_value(),
            api_version=self.settings.effective_api_version,
            base_url=self.settings.base_url,
            http_options=self.settings.http_options(),
            name=f"sensay:{self.name}",
        )

    def commands(self) -> list[CommandSpec]:
        specs = [CommandSpec("fresh", "Ask without the chat history (not remembered)",
                             usage="<text>")]
        if self.settings.effective_api_version is not None:  # the seed contract has no GET
            specs.append(CommandSpec("history", "Show your recent conversation with the AI"))
        return specs

    # -- who is talking --------------------------------------------------------------------------

    def _options(self, turn: Turn) -> SensaySettings:
        options = turn.options
        return options if isinstance(options, SensaySettings) else self.settings

    def _telegram_data(self, chat: ChatIdentity) -> dict[str, Any]:
        return telegram_data_for(chat, chat_name=self.settings.effective_api_version is not None)

    def _telegram_user(self, chat: ChatIdentity) -> str:
        # A channel post (or an anonymous admin) has no sender: the chat stands in.
        return str(chat.user_id if chat.user_id is not None else chat.chat_id)

    async def _user(self, turn: Turn) -> tuple[str, str | None]:
        """(X-USER-ID, X-USER-ID-TYPE) for this turn; in the per-Telegram-user mode the Sensay
        user exists when this returns."""
        options = self._options(turn)
        if options.user_id is not None:
            return sensay_user_id(options.user_id, turn.chat), None
        user = self._telegram_user(turn.chat)
        key = f"user:{user}"
        if await turn.kv.get(key) is None:
            await self._creating.run(key, lambda: self._ensure_user(turn, key, user))
        return user, TELEGRAM

    async def _ensure_user(self, turn: Turn, key: str, user: str) -> None:
        if await self.client.current_user(user, TELEGRAM) is not None:
            log.info("%s: Sensay user for Telegram user %s exists", self.name, user)
        elif await self.client.create_user([{"accountID": user, "accountType": TELEGRAM}]):
            log.info("%s: created the Sensay user of Telegram user %s", self.name, user)
        else:
            log.info("%s: the Sensay user of Telegram user %s was created meanwhile (409)",
                     self.name, user)
        await turn.kv.set(key, "1")

    # -- turns -----------------------------------------------------------------------------------

    async def reset(self, turn: Turn) -> str | None:
        # The contract has no call that clears a history: say what can be done instead.
        return NO_RESET

    def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        options = self._options(turn)
        if turn.media is not None:
            return self._photo(turn, skip_chat_history=options.skip_chat_history)
        return self._ask(turn, turn.text, skip_chat_history=options.skip_chat_history)

    def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if turn.command == "fresh":
            return self._fresh(turn)
        if turn.command == "history" and self.settings.effective_api_version is not None:
            return self._history(turn)
        return super().run_command(turn)

    async def observe(self, turn: Turn) -> None:
        """Record a group message the bot was not asked to answer (``record_group_context``),
        so that the replica knows it when it is mentioned next."""
        options = self._options(turn)
        if not options.record_group_context or options.skip_chat_history:
            return
        user, kind = await self._user(turn)
        await self.client.record_history(options.replica_uuid, turn.text,
                                         self._telegram_data(turn.chat), user_id=user,
                                         user_id_type=kind)

    async def _record_context(self, turn: Turn) -> None:
        """Record the group's messages the turn carries (route key ``group_context``) in the
        replica's chat history, oldest first, each as its sender's — as :meth:`observe` does
        for ``record_group_context``, which recorded them already when it is on. A failure
        ends it: the answer matters more than its context."""
        options = self._options(turn)
        if not turn.group_context or options.record_group_context:
            return
        for line in turn.group_context:
            if not line.text.strip():
                continue
            chat = dataclasses.replace(turn.chat, user_id=line.user_id, username=line.username,
                                       message_id=line.message_id, first_name=None)
            try:
                user, kind = await self._user(dataclasses.replace(turn, chat=chat))
                await self.client.record_history(options.replica_uuid, line.text,
                                                 self._telegram_data(chat), user_id=user,
                                                 user_id_type=kind)
            except BackendError as exc:  # the HTTP layer logged the failure (a WARNING)
                log.info("chat %s: %s: the group's messages were not all recorded: %s",
                         turn.chat.chat_id, self.name, exc.log_text())
                return

    async def _photo(self, turn: Turn, *, skip_chat_history: bool) -> AsyncIterator[ReplyPart]:
        if not turn.text.strip():
            yield Notice(EMPTY_CAPTION)
            return
        url = await self._image_url(turn)
        if url is None:
            yield Notice(NO_IMAGE_URL)
        async for part in self._ask(turn, turn.text, skip_chat_history=skip_chat_history,
                                    image_url=url):
            yield part

    async def _image_url(self, turn: Turn) -> str | None:
        """The photo's http(s) URL for ``imageURL``, or None: the frontend's own URL, else the
        bytes published at ``server.public_url`` (``turn.share``). Only with an API version
        in effect: the seed contract has no ``imageURL`` (400)."""
        media = turn.media
        if media is None or self.settings.effective_api_version is None:
            return None
        if media.url is not None and media.url.startswith(("https://", "http://")):
            return media.url
        if turn.share is None:  # Sensay takes an image by http(s) URL only; MTProto has none
            return None
        return await turn.share(await media.read(), media.mime_type or "image/jpeg")

    async def _history(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        options = self._options(turn)
        if options.user_id is None:
            user, kind = self._telegram_user(turn.chat), TELEGRAM
            # Never create a Sensay user just to show that it has no history.
            if await turn.kv.get(f"user:{user}") is None and \
                    await self.client.current_user(user, kind) is None:
                yield Text(NO_HISTORY)
                return
        else:
            user, kind = sensay_user_id(options.user_id, turn.chat), None
        items = await self.client.telegram_history(options.replica_uuid, user_id=user,
                                                   user_id_type=kind)
        for part in format_history(items):
            yield Text(part)

    async def _fresh(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if not turn.args.strip():
            yield Notice("Write your question after the command: /fresh <text>")
            return
        async for part in self._ask(turn, turn.args, skip_chat_history=True):
            yield part

    async def _ask(self, turn: Turn, text: str, *, skip_chat_history: bool,
                   image_url: str | None = None) -> AsyncIterator[ReplyPart]:
        options = self._options(turn)
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

        pieces[0] = _with_reply(pieces[0], turn)
        if not skip_chat_history:  # asked without history, the replica would not see them
            await self._record_context(turn)
        user, kind = await self._user(turn)
        data = self._telegram_data(turn.chat)
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            image = image_url if i == 0 else None  # the picture goes with the first part
            if options.stream and last:
                async for part in self._streamed(options.replica_uuid, piece, data, user,
                                                 kind, skip_chat_history, image):
                    yield part
                continue
            reply = await self.client.complete(options.replica_uuid, piece, data,
                                               skip_chat_history, user_id=user,
                                               user_id_type=kind, image_url=image)
            if not reply.strip():
                if last:
                    raise ProtocolError("sensay: empty completion", user_message=EMPTY_REPLY)
                continue
            yield Text(reply)

    async def _streamed(self, replica: str, content: str, data: dict[str, Any], user: str,
                        kind: str | None, skip: bool,
                        image_url: str | None) -> AsyncIterator[ReplyPart]:
        parts: list[str] = []
        reported: list[dict[str, int]] = []
        try:
            async for delta in self.client.stream(replica, content, data, skip, user_id=user,
                                                  user_id_type=kind, image_url=image_url,
                                                  usage=reported):
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
        # after the final text (a part between the deltas and it would end the streamed
        # message on Telegram): recorded by the engine (Sensay names no model), not shown
        for tokens in reported:
            yield Usage(input_tokens=tokens.get("promptTokens", 0),
                        output_tokens=tokens.get("completionTokens", 0))
