"""The LucyDream backend (``type: lucydream``): chat text, ``/image`` and ``/history`` through
the LucyDream Telegram Chatbot API, one provider sub-user per Telegram user (or chat).

The Telegram → sub-user map lives in the backend's persistent key-value namespace, so a restart
never loses it (the provider's own example keeps it in memory and, after a restart, meets
"username exists" forever). Creation is single-flight per key; a taken username is recovered
from ``sub-users``; a 404 from the provider drops the mapping, recreates the sub-user once and
repeats the call once.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from string import Formatter
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationInfo, field_validator

from tgmux.backend import (
    CommandSpec,
    HttpBackend,
    HttpBackendSettings,
    Image,
    KeyValue,
    Notice,
    ReplyPart,
    Text,
    Turn,
)
from tgmux.context import with_context
from tgmux.errors import BadRequestError, NotFoundError, ProtocolError
from tgmux.singleflight import SingleFlight
from tgmux.text import join_blocks as split_text_parts

from .client import (
    DEFAULT_BASE_URL,
    DEFAULT_MODEL,
    HistoryEntry,
    ImageReply,
    LucyDreamClient,
)

log = logging.getLogger("tgmux.backends.lucydream")

T = TypeVar("T")

#: One /history message at most this long (UTF-16 code units), so that each message reads on
#: its own in any frontend (Telegram's limit is 4096).
HISTORY_PART_LIMIT = 4000
#: a message with its context (tgmux.context) is cut to this many characters (the context is
#: cut, never the user's text)
CONTEXT_CHARS = 4000

NO_HISTORY = "No history yet."
PROFILE_FAILED = "I couldn't set up your profile with the AI provider. Please try again later."
MODEL_MISSING = (
    "This chat's AI model does not exist at the provider. "
    "The bot's operator has to check the `model` setting."
)

_PER_USER_DEFAULT = "tg_{user_id}"
_PER_CHAT_DEFAULT = "tg_chat_{chat_id}"
_PLACEHOLDERS = {"per_user": {"user_id", "backend"}, "per_chat": {"chat_id", "backend"}}
_USERNAME_OK = re.compile(r"^[A-Za-z0-9_.@ -]+$")  # what WordPress keeps in a username


class LucyDreamSettings(HttpBackendSettings):
    """``type: lucydream``."""

    type: Literal["lucydream"] = "lucydream"
    api_key: SecretStr = Field(
        ..., description="LucyDream API key (account dashboard); sent as X-API-Key"
    )
    model: str = Field(
        DEFAULT_MODEL,
        min_length=1,
        description='chatbot model id: "2195981" is Lucy Dream, or your own model id',
    )
    base_url: str = Field(
        DEFAULT_BASE_URL, description="API root; .../wp-json/ and .../wp-json/telegram/v1/ work"
    )
    timeout: float = Field(60.0, gt=0, description="seconds for one provider request")
    sub_user: Literal["per_user", "per_chat"] = Field(
        "per_user",
        description="one LucyDream sub-user (own history) per Telegram user, or per chat; "
        "and one per topic (a forum's, a private chat's)",
    )
    username_template: str | None = Field(
        None,
        description="sub-user username; per_user: {user_id} {backend} (default tg_{user_id}), "
        "per_chat: {chat_id} {backend} (default tg_chat_{chat_id}); in a topic tgmux adds "
        "_t{topic} (per_user in a group: _{chat_id}_t{topic}): each topic is its own "
        "conversation",
    )
    history_limit: int = Field(
        20, ge=1, le=1000, description="how many history entries /history shows (newest)"
    )

    @field_validator("model", mode="before")
    @classmethod
    def _model_as_text(cls, value: Any) -> Any:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @field_validator("api_key")
    @classmethod
    def _key_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if not re.match(r"^https?://", value):
            raise ValueError("expected an http(s) URL")
        if "luydream" in value:
            raise ValueError(
                "my.luydream.ai is a typo in the provider's document; "
                f"use {DEFAULT_BASE_URL}"
            )
        return value

    @field_validator("username_template")
    @classmethod
    def _check_template(cls, value: str | None, info: ValidationInfo) -> str | None:
        mode = info.data.get("sub_user")
        if value is None or mode not in _PLACEHOLDERS:
            return value
        allowed = _PLACEHOLDERS[mode]
        needed = "user_id" if mode == "per_user" else "chat_id"
        try:
            names = {f for _, f, _, _ in Formatter().parse(value) if f is not None}
        except ValueError as exc:
            raise ValueError(f"not a valid template: {exc}") from None
        unknown = names - allowed
        if unknown:
            raise ValueError(
                f"unknown placeholder {{{sorted(unknown)[0]}}} (with sub_user: {mode} use "
                f"{' '.join('{' + n + '}' for n in sorted(allowed))})"
            )
        if needed not in names:
            raise ValueError(
                f"must contain {{{needed}}} (with sub_user: {mode} each sub-user needs its "
                "own username)"
            )
        sample = value.format(user_id=123456789, chat_id=-1001234567890, backend="lucy")
        if not _USERNAME_OK.match(sample) or len(sample) > 60:
            raise ValueError(
                "usernames may only hold letters, digits, _ . - @ and spaces, "
                "at most 60 characters"
            )
        return value

    @property
    def template(self) -> str:
        if self.username_template is not None:
            return self.username_template
        return _PER_USER_DEFAULT if self.sub_user == "per_user" else _PER_CHAT_DEFAULT


class LucyDreamBackend(HttpBackend[LucyDreamClient]):
    type_name = "lucydream"
    Settings = LucyDreamSettings
    description = "LucyDream companion chatbot (text, /image, /history), one sub-user per user"
    route_options = frozenset({"model", "history_limit"})

    settings: LucyDreamSettings

    def __init__(self, name: str, settings: LucyDreamSettings, kv: KeyValue) -> None:
        super().__init__(name, settings, kv)
        #: Sub-user creations under way, by mapping key.
        self._creating: SingleFlight[str] = SingleFlight()

    # -- lifecycle ---------------------------------------------------------------------------

    def make_client(self) -> LucyDreamClient:
        s = self.settings
        return LucyDreamClient(
            s.api_key.get_secret_value(),
            base_url=s.base_url,
            http_options=s.http_options(),
            name=f"lucydream:{self.name}",
        )

    def _options(self, turn: Turn) -> LucyDreamSettings:
        opts = turn.options
        return opts if isinstance(opts, LucyDreamSettings) else self.settings

    # -- chat --------------------------------------------------------------------------------

    def commands(self) -> list[CommandSpec]:
        return [
            CommandSpec("image", "get a picture from the chatbot"),
            CommandSpec("history", "show your recent conversation with the chatbot"),
        ]

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if not turn.text.strip():
            yield Notice("Send me a text message.")
            return
        # what the user replied to and what the group said, in short text before it
        text = with_context(turn.text, turn.reply_to, turn.group_context,
                            max_chars=max(CONTEXT_CHARS, len(turn.text) + 2))
        model = self._options(turn).model

        async def send(user_id: str) -> str:
            return await self.client.send_message(text, chatbot_model=model, user_id=user_id)

        answer = await self._with_sub_user(turn, send)
        if not answer.strip():
            raise ProtocolError("lucydream: send-message answered an empty reply", status=200)
        yield Text(answer)

    async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if turn.command == "image":
            async for part in self._image(turn):
                yield part
        elif turn.command == "history":
            async for part in self._history(turn):
                yield part
        else:
            raise NotImplementedError(f"lucydream has no command /{turn.command}")

    async def _image(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        model = self._options(turn).model

        async def request(user_id: str) -> ImageReply:
            return await self.client.request_image(chatbot_model=model, user_id=user_id)

        image = await self._with_sub_user(turn, request)
        # A caption longer than a frontend allows is the frontend's to split.
        yield Image(url=image.image_url, caption=(image.reply or "").strip() or None)

    async def _history(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        opts = self._options(turn)
        key, username = self.mapping(turn)
        user_id = await turn.kv.get(key)
        if user_id is None:
            # Never create a profile just to show that it is empty; but a profile made before
            # the mapping was lost is found again.
            found = await self.client.find_sub_user(username)
            if found is None:
                yield Text(NO_HISTORY)
                return
            user_id = found.user_id
            await turn.kv.set(key, user_id)
        try:
            history = await self.client.get_history(chatbot_model=opts.model, user_id=user_id)
        except NotFoundError as exc:
            if _model_missing(exc):
                raise _with_model_missing_message(exc) from exc
            await self._forget_mapping(turn.kv, key, user_id)
            yield Text(NO_HISTORY)
            return
        for part in format_history(history.entries, opts.history_limit):
            yield Text(part)

    # -- sub-users ---------------------------------------------------------------------------

    def mapping(self, turn: Turn) -> tuple[str, str]:
        """The store key and the sub-user username for this turn's user (or chat); in a topic
        (a forum's, a private chat's) the topic's own: each topic is its own conversation."""
        s = self.settings
        chat = turn.chat
        if s.sub_user == "per_user" and chat.user_id is not None:
            key, username = f"user:{chat.user_id}", s.template.format(user_id=chat.user_id,
                                                                      backend=self.name)
        elif s.sub_user == "per_user":
            # No sender (channel posts, anonymous admins): the chat stands in for the user.
            key, username = f"chat:{chat.chat_id}", s.template.format(
                user_id=f"chat{chat.chat_id}", backend=self.name)
        else:
            key, username = f"chat:{chat.chat_id}", s.template.format(chat_id=chat.chat_id,
                                                                      backend=self.name)
        if chat.topic is None:  # as before topics: existing sub-users are found again
            return key, username
        if key.startswith("user:") and chat.chat_type != "private":
            # one user's sub-user per topic of each forum (topic ids are per chat)
            key, username = f"{key}/chat:{chat.chat_id}", f"{username}_{chat.chat_id}"
        return f"{key}/topic:{chat.topic}", f"{username}_t{chat.topic}"

    async def sub_user_id(self, turn: Turn) -> str:
        """The provider sub-user id for this turn, created on first contact (single-flight)."""
        key, username = self.mapping(turn)
        return await self._ensure(turn.kv, key, username)

    async def _ensure(self, kv: KeyValue, key: str, username: str) -> str:
        stored = await kv.get(key)
        if stored:
            return stored
        return await self._creating.run(key, lambda: self._create(kv, key, username))

    async def _create(self, kv: KeyValue, key: str, username: str) -> str:
        api = self.client
        try:
            user_id = (await api.create_sub_user(username)).user_id
            log.info("%s: created sub-user %s (%s) for %s", self.name, user_id, username, key)
        except BadRequestError as exc:
            # Most often "username exists": a mapping lost before tgmux, or another process.
            found = await api.find_sub_user(username)
            if found is None:
                raise BadRequestError(
                    f"lucydream: cannot create sub-user {username!r}",
                    status=exc.status,
                    provider_message=(
                        f"{exc.provider_message}; {username!r} is not among this API key's "
                        "sub-users (taken by another account? set username_template)"
                    ),
                    details=exc.details,
                    user_message=PROFILE_FAILED,
                ) from exc
            user_id = found.user_id
            log.info("%s: sub-user %s exists as %s; mapped to %s",
                     self.name, username, user_id, key)
        await kv.set(key, user_id)
        return user_id

    async def _forget_mapping(self, kv: KeyValue, key: str, user_id: str) -> None:
        if await kv.get(key) == user_id:  # another turn may have replaced it already
            await kv.delete(key)

    async def _with_sub_user(self, turn: Turn, call: Callable[[str], Awaitable[T]]) -> T:
        """``call(sub_user_id)``; on 404 (user not found) recreate the sub-user once and
        call once more. That is the only repeat: the first call was refused, not processed."""
        key, username = self.mapping(turn)
        user_id = await self._ensure(turn.kv, key, username)
        try:
            return await call(user_id)
        except NotFoundError as exc:
            if _model_missing(exc):
                raise _with_model_missing_message(exc) from exc
            log.warning("%s: sub-user %s not found (%s); recreating it once",
                        self.name, user_id, exc.provider_message)
            await self._forget_mapping(turn.kv, key, user_id)
        user_id = await self._ensure(turn.kv, key, username)
        return await call(user_id)


# -- helpers -----------------------------------------------------------------------------------


def _model_missing(exc: NotFoundError) -> bool:
    """A 404 about the model (not the user): recreating the sub-user would not help."""
    code = str(exc.details.get("code") or "").lower()
    message = (exc.provider_message or "").lower()
    if "user" in code or "user" in message:
        return False
    return "model" in code or "model" in message or "chatbot" in message


def _with_model_missing_message(exc: NotFoundError) -> NotFoundError:
    """``exc`` again, telling the user that the configured model does not exist."""
    return NotFoundError(
        str(exc), status=exc.status, provider_message=exc.provider_message,
        details=exc.details, user_message=MODEL_MISSING,
    )


def _timestamp(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value)
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def chronological(entries: list[HistoryEntry]) -> list[HistoryEntry]:
    """Oldest first. The provider's order is kept unless every timestamp can be read, then a
    stable sort by time (so a newest-first answer still shows newest last)."""
    stamps = [_timestamp(e.timestamp) for e in entries]
    if not entries or any(s is None for s in stamps):
        return list(entries)
    order = sorted(range(len(entries)), key=lambda i: stamps[i])  # type: ignore[arg-type,return-value]
    return [entries[i] for i in order]


def format_history(entries: list[HistoryEntry], limit: int,
                   part_limit: int = HISTORY_PART_LIMIT) -> list[str]:
    """``role: clean_message`` lines, newest last, the last ``limit`` entries, split into
    messages of at most ``part_limit`` UTF-16 code units; ``["No history yet."]`` when empty."""
    lines = []
    for entry in chronological(entries)[-limit:]:
        text = (entry.clean_message or entry.message).strip()
        lines.append(f"{entry.role}: {text}")
    if not lines:
        return [NO_HISTORY]
    return split_text_parts(lines, part_limit)
