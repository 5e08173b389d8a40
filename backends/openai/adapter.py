"""The ``openai`` backend: any OpenAI-compatible Chat Completions server answers, with the
conversation remembered by tgmux (the API keeps none: every request carries it).

Each request is the system prompt, then the remembered exchanges (``turn.history``, oldest
first), then the new message. When the server says the context is too long, the oldest
remembered exchanges are dropped (half, then all) and the request is sent again, at most twice;
what no longer fitted is forgotten. The engine remembers the exchange once the reply was
delivered (see :meth:`tgmux.backend.Backend.memory`).
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import re
from collections.abc import AsyncIterator
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator

from tgmux.backend import (
    CommandSpec,
    Exchange,
    HistorySettings,
    HttpBackend,
    HttpBackendSettings,
    Media,
    Metadata,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Turn,
    Usage,
    api_root,
    optional_secret,
)
from tgmux.context import reply_preamble
from tgmux.errors import BackendError, BadRequestError, NotFoundError, ProtocolError
from tgmux.text import join_blocks, shorten, valid_unicode

from .client import DEFAULT_BASE_URL, SAMPLING_KEYS, ChatChunk, OpenAIClient, chat_body

log = logging.getLogger("tgmux.backends.openai")

#: One /history message at most this long (UTF-16 code units; Telegram's limit is 4096).
HISTORY_PART_LIMIT = 4000
#: Retries after "context length exceeded", each with fewer remembered exchanges.
CONTEXT_RETRIES = 2
#: characters of the replied-to message, and of each of the group's recent messages, sent
REPLY_CHARS = 2000
GROUP_LINE_CHARS = 1000

NO_HISTORY = "Nothing remembered yet."
MEMORY_OFF = "This AI remembers nothing between messages here (history: max_turns is 0)."
TOO_LONG = "Your message is too long for this AI model. Please send a shorter one."
CUT_OFF = "The AI's reply was cut off by an error; what it said so far is above. Please try again."
EMPTY_REPLY = "The AI sent an empty reply."
LENGTH_BEFORE_ANSWER = ("The AI used up its length limit for one reply before it wrote an "
                        "answer. The bot's operator can raise max_tokens.")
LENGTH_NOTE = "(The answer stopped at the length limit for one reply; ask me to continue.)"
FILTERED_NOTE = "(The provider's content filter stopped this answer here.)"
PHOTO_NOT_SEEN = "I can't see photos here, so I only read your caption."
PHOTO_ONLY = ("I can't see photos here. Please tell me in words what you would like to know "
              "about it.")
PHOTO_UNREADABLE = "I could not get your photo, so I only read your caption (if any)."
EMPTY_MESSAGE = "Send me a message and I will answer."


def model_missing_message(model: str) -> str:
    return (f"The AI model “{shorten(model, 80)}” does not exist at the provider (or this bot "
            "may not use it). The bot's operator has to check the `model` setting.")


_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_RESERVED_HEADERS = {"content-type", "content-length", "host", "accept", "transfer-encoding"}


class OpenAISettings(HttpBackendSettings):
    """``type: openai``."""

    type: Literal["openai"] = "openai"
    format: Literal["markdown", "plain"] = Field(
        "markdown", description="markdown (default: models answer in Markdown): replies shown "
        "as formatting; plain: as they are")
    base_url: str = Field(DEFAULT_BASE_URL, description="the API root: "
                          "{base_url}/chat/completions is called")
    api_key: SecretStr | None = Field(None, description="sent as Authorization: Bearer KEY "
                                      "(optional: local servers need none)")
    model: str = Field(min_length=1, description="the model id the server knows")
    system_prompt: str | None = Field(None, max_length=100_000, description="the first "
                                      "message of every request (per route too)")
    stream: bool = Field(True, description="stream replies (server-sent events) instead of "
                         "waiting for the whole answer")
    stream_usage: bool = Field(True, description="ask a stream for its usage (stream_options: "
                               "{include_usage: true}); false for a server that refuses it")
    temperature: float | None = Field(None, ge=0, le=2, description="sampling temperature "
                                      "(passed through when set)")
    top_p: float | None = Field(None, ge=0, le=1, description="nucleus sampling (passed "
                                "through when set)")
    max_tokens: int | None = Field(None, ge=1, description="tokens one reply may have")
    max_completion_tokens: int | None = Field(None, ge=1, description="the same, for "
                                              "models that want this name (OpenAI o-series)")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, description="passed through "
                                            "when set")
    presence_penalty: float | None = Field(None, ge=-2, le=2, description="passed through "
                                           "when set")
    seed: int | None = Field(None, description="for repeatable sampling, where supported")
    stop: str | list[str] | None = Field(None, description="up to 4 stop sequences")
    history: HistorySettings = Field(default_factory=HistorySettings, description="what tgmux "
                                     "remembers of each conversation")
    vision: bool = Field(False, description="send photos as image parts (data URLs); false: "
                         "only their caption")
    extra_headers: dict[str, str] = Field(default_factory=dict, description="sent with every "
                                          "request (OpenRouter's HTTP-Referer, X-Title, …)")
    timeout: float = Field(120.0, gt=0, description="seconds for one request (for a stream: "
                           "to its first byte)")

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        return api_root(value, ("/chat/completions",))

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= 4:
            raise ValueError("1 to 4 stop sequences")
        return value

    @field_validator("extra_headers")
    @classmethod
    def _headers(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _HEADER_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid header name")
            if name.lower() in _RESERVED_HEADERS:
                raise ValueError(f"{name} is set by tgmux")
            if "\r" in text or "\n" in text:
                raise ValueError(f"{name}: a header value is one line")
        return value

    @field_validator("api_key")
    @classmethod
    def _key(cls, value: SecretStr | None) -> SecretStr | None:
        return optional_secret(value)

    def sampling(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in SAMPLING_KEYS}


class OpenAIBackend(HttpBackend[OpenAIClient]):
    type_name = "openai"
    Settings = OpenAISettings
    description = "Any OpenAI-compatible Chat Completions server, conversation kept by tgmux"
    # Photos are taken whatever `vision` says: without it the caption is answered.
    accepts_media = frozenset({"photo"})
    reports_usage = True
    route_options = frozenset({"model", "system_prompt", "stream", "history", "vision",
                               *SAMPLING_KEYS})

    settings: OpenAISettings
    #: the server refused ``stream_options`` once: streams are asked without it from then on
    stream_options_refused = False

    def make_client(self) -> OpenAIClient:
        s = self.settings
        if s.api_key is None and "api.openai.com" in s.base_url:
            log.warning("%s: no api_key for %s: every request will be refused", self.name,
                        s.base_url)
        return OpenAIClient(s.base_url,
                            api_key=s.api_key.get_secret_value() if s.api_key else None,
                            extra_headers=s.extra_headers, http_options=s.http_options(),
                            name=f"openai:{self.name}")

    def _options(self, turn: Turn) -> OpenAISettings:
        opts = turn.options
        return opts if isinstance(opts, OpenAISettings) else self.settings

    # -- memory ------------------------------------------------------------------------------

    def memory(self, options: Any) -> HistorySettings:
        opts = options if isinstance(options, OpenAISettings) else self.settings
        return opts.history

    def remembered_text(self, turn: Turn) -> str:
        if _is_photo(turn.media) and self._options(turn).vision:
            count = 1 + sum(1 for m in turn.album[1:] if _is_photo(m))
            return f"[{'photo' if count == 1 else f'{count} photos'}] {turn.text}".rstrip()
        return turn.text

    def commands(self) -> list[CommandSpec]:
        return [CommandSpec("history", "Show what I remember of our conversation",
                            calls_provider=False)]

    def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if turn.command == "history":
            return self._history(turn)
        return super().run_command(turn)

    async def _history(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        if turn.history is None or turn.history.max_turns == 0:
            yield Text(MEMORY_OFF)
            return
        exchanges = await turn.history.read()
        if not exchanges:
            yield Text(NO_HISTORY)
            return
        lines = []
        for exchange in exchanges:
            lines += [f"you: {exchange.user}", f"AI: {exchange.reply}"]
        for part in join_blocks(lines, HISTORY_PART_LIMIT):
            yield Text(part)

    # -- chat --------------------------------------------------------------------------------

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        opts = self._options(turn)
        photo = turn.media if turn.media is not None and turn.media.kind == "photo" else None
        if photo is not None and not (opts.vision and _is_photo(photo)):
            if not turn.text.strip():
                yield Notice(PHOTO_ONLY if not opts.vision else PHOTO_UNREADABLE)
                return
            yield Notice(PHOTO_NOT_SEEN if not opts.vision else PHOTO_UNREADABLE)
            photo = None
        if not turn.text.strip() and photo is None:
            yield Notice(EMPTY_MESSAGE)
            return
        # an album: every photo of it, in one message (turn.album[0] is turn.media)
        photos = [photo, *(m for m in turn.album[1:] if _is_photo(m))] if photo else []
        for i, each in enumerate(photos):
            if each.data is None and each.readable:
                # fetched now, not when the message came (MediaUnavailable tells the user)
                photos[i] = dataclasses.replace(each, data=await each.read())
        user = new_message(with_reply(turn.text, turn), *photos)
        remembered = await turn.history.read() if turn.history is not None else []
        kept = len(remembered)
        for attempt in range(CONTEXT_RETRIES + 1):
            messages = build_messages(opts.system_prompt, remembered[len(remembered) - kept:],
                                      user, group_messages(turn))
            body = chat_body(opts.model, messages, stream=opts.stream,
                             stream_usage=opts.stream_usage, **opts.sampling())
            try:
                async for part in self._ask(body, opts):
                    yield part
            except BackendError as exc:
                if exc.details.get("model_missing"):
                    raise NotFoundError(str(exc), status=exc.status,
                                        provider_message=exc.provider_message,
                                        request_id=exc.request_id, details=exc.details,
                                        user_message=model_missing_message(opts.model)) from exc
                if not exc.details.get("context_exceeded") or exc.details.get("cut_off"):
                    raise
                if kept == 0 or attempt == CONTEXT_RETRIES:
                    raise BadRequestError(str(exc), status=exc.status,
                                          provider_message=exc.provider_message,
                                          request_id=exc.request_id, details=exc.details,
                                          user_message=TOO_LONG) from exc
                dropped = kept - kept // 2 if attempt == 0 else kept
                log.info("%s: chat %s: context too long with %d remembered exchanges; "
                         "dropping the %d oldest", self.name, turn.chat.chat_id, kept, dropped)
                kept -= dropped
                continue
            if kept < len(remembered) and turn.history is not None:
                await turn.history.keep_newest(kept)  # what did not fit is not sent again
            return

    async def _stream(self, body: dict[str, Any]) -> AsyncIterator[Any]:
        """The chunks of a streamed request. A compatible server that refuses
        ``stream_options`` (``stream_usage``, on by default; an older tgmux never sent it)
        answers 400 naming it before any chunk: the request goes again without it, and so do
        the next ones (logged once): an upgrade must not break a working backend."""
        if self.stream_options_refused:
            body = {k: v for k, v in body.items() if k != "stream_options"}
        try:
            async for chunk in self.client.stream(body):
                yield chunk
            return
        except BadRequestError as exc:
            said = f"{exc.provider_message or ''} {exc}"
            if "stream_options" not in body or "stream_options" not in said:
                raise
        self.stream_options_refused = True
        log.warning("%s: the server refuses stream_options: streaming without usage from now "
                    "on (set stream_usage: false to say so)", self.name)
        async for chunk in self.client.stream({k: v for k, v in body.items()
                                               if k != "stream_options"}):
            yield chunk

    async def _ask(self, body: dict[str, Any], opts: OpenAISettings) -> AsyncIterator[ReplyPart]:
        """One request: its text (deltas, then the whole), its notes, its usage."""
        finish: str | None = None
        usage: dict[str, Any] | None = None
        model: str | None = None  # as the response names it
        if opts.stream:
            pieces: list[str] = []
            try:
                async for chunk in self._stream(body):
                    if chunk.content:
                        pieces.append(chunk.content)
                        yield TextDelta(chunk.content)
                    finish = chunk.finish_reason or finish
                    usage, model = chunk.usage or usage, chunk.model or model
            except BackendError as exc:
                partial = valid_unicode("".join(pieces))
                if not partial.strip():
                    raise
                log.warning("%s: stream cut off after %d characters: %s", self.name,
                            len(partial), exc.log_text(), extra=_request_id(exc))
                yield Text(partial)  # kept on screen; the turn is not remembered
                raise type(exc)(str(exc), status=exc.status,
                                provider_message=exc.provider_message,
                                request_id=exc.request_id,
                                details={**exc.details, "cut_off": True},
                                user_message=CUT_OFF) from exc
            text = valid_unicode("".join(pieces))
        else:
            whole = await self.client.complete(body)
            text, finish, usage = valid_unicode(whole.text), whole.finish_reason, whole.usage
            model = whole.model
        if usage is not None and not opts.stream:
            # before the text: a reply cut at max_reply_chars is not read on (after a stream's
            # deltas only after its final text: a part between them would end the streamed
            # message on Telegram). Recorded by the engine, not shown.
            yield usage_part(usage, model or opts.model)
        if not text.strip():
            raise ProtocolError(f"openai: empty reply (finish_reason {finish})",
                                details={"finish_reason": finish},
                                user_message=LENGTH_BEFORE_ANSWER if finish == "length"
                                else EMPTY_REPLY)
        yield Text(text)
        if finish == "length":
            yield Notice(LENGTH_NOTE)
        elif finish == "content_filter":
            yield Notice(FILTERED_NOTE)
        log.debug("%s: finish_reason=%s usage=%s", self.name, finish, usage)
        if usage is not None and opts.stream:
            yield usage_part(usage, model or opts.model)
        if usage is not None:  # for plugins (billing); frontends do not show it
            yield Metadata({"usage": usage, "model": opts.model, "finish_reason": finish})


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


def usage_part(usage: dict[str, Any], model: str | None) -> Usage:
    """A response's ``usage`` as a :class:`Usage`: ``prompt_tokens``, ``completion_tokens``,
    ``prompt_tokens_details.cached_tokens``, ``completion_tokens_details.reasoning_tokens``
    (what a server leaves out, or sends as something else than a count, is 0)."""
    prompt = usage.get("prompt_tokens_details")
    completion = usage.get("completion_tokens_details")
    return Usage(model=model, input_tokens=_count(usage.get("prompt_tokens")),
                 output_tokens=_count(usage.get("completion_tokens")),
                 cached_input_tokens=_count(prompt.get("cached_tokens"))
                 if isinstance(prompt, dict) else 0,
                 reasoning_tokens=_count(completion.get("reasoning_tokens"))
                 if isinstance(completion, dict) else 0)


# -- messages ----------------------------------------------------------------------------------


def _is_photo(media: Media | None) -> bool:
    return media is not None and media.kind == "photo" and (media.readable or bool(media.url))


def _request_id(exc: BackendError) -> dict[str, Any]:
    return {"request_id": exc.request_id} if exc.request_id else {}


_IMAGE_TYPES = ((b"\x89PNG", "image/png"), (b"GIF8", "image/gif"), (b"\xff\xd8", "image/jpeg"))


def image_url(media: Media) -> str:
    """A photo as the API takes it: a ``data:`` URL of its bytes (or its URL)."""
    if media.data is None:
        assert media.url is not None
        return media.url
    mime = media.mime_type
    if not mime or not mime.startswith("image/"):
        mime = next((m for magic, m in _IMAGE_TYPES if media.data.startswith(magic)), None)
        if mime is None:
            riff = media.data[:4] == b"RIFF" and media.data[8:12] == b"WEBP"
            mime = "image/webp" if riff else "image/jpeg"
    return f"data:{mime};base64,{base64.b64encode(media.data).decode('ascii')}"


def new_message(text: str, *photos: Media | None) -> dict[str, Any]:
    """The new message: its text, or (photos: one, or an album's) text and image parts."""
    shown = [photo for photo in photos if photo is not None]
    if not shown:
        return {"role": "user", "content": text}
    content: list[dict[str, Any]] = []
    if text.strip():
        content.append({"type": "text", "text": text})
    content += [{"type": "image_url", "image_url": {"url": image_url(photo)}} for photo in shown]
    return {"role": "user", "content": content}


def with_reply(text: str, turn: Turn) -> str:
    """The user's text after the message it replies to (``turn.reply_to``): ``[In reply to
    Anna: "…" — quoting: "…"]``, a blank line, the text (a reply to the bot's own message
    says ``your message``)."""
    preamble = reply_preamble(turn.reply_to, limit=REPLY_CHARS, whole=True)
    if not preamble:
        return text
    return f"{preamble}\n\n{text}" if text.strip() else preamble


def group_messages(turn: Turn) -> list[dict[str, Any]]:
    """The group's recent messages not addressed to the bot (``turn.group_context``, route
    key ``group_context``), oldest first: earlier user messages, ``Anna: text`` (the sender's
    name in the text: the API's ``name`` field is optional, restricted to ``[A-Za-z0-9_-]``
    and ignored by many compatible servers)."""
    return [{"role": "user", "content": f"{line.author}: {shorten(line.text, GROUP_LINE_CHARS)}"}
            for line in turn.group_context if line.text.strip()]


def build_messages(system_prompt: str | None, remembered: list[Exchange],
                   user: dict[str, Any], context: list[dict[str, Any]] | None = None
                   ) -> list[dict[str, Any]]:
    """The system prompt, the remembered exchanges (oldest first), the group's recent
    messages (``context``), the new message."""
    messages: list[dict[str, Any]] = []
    if system_prompt and system_prompt.strip():
        messages.append({"role": "system", "content": system_prompt})
    for exchange in remembered:
        messages.append({"role": "user", "content": exchange.user})
        messages.append({"role": "assistant", "content": exchange.reply})
    messages.extend(context or ())
    messages.append(user)
    return messages


__all__ = ["ChatChunk", "OpenAIBackend", "OpenAISettings", "build_messages", "new_message"]
