"""The ``bambisleep`` backend: BambiSleep.Chat behind tgmux.

A chat message goes to ``POST /ai/generate`` (or, with ``transport: websocket``, over the
chat's websocket); the reply is the text (with the triggers in the configured format), then the
audio as a voice message when the provider gives an ``audioUrl``. Commands manage the account's
profile, triggers and session history. Webhook events (when configured) go to a chat through the
``tgmux_provider_event`` hook. See ``docs/backends/bambisleep.md``.

This module is the reply and the wiring: the settings are in :mod:`.settings`, the commands in
:mod:`.commands`, the webhook's registration in :mod:`.registration` and its receiver in
:mod:`.webhooks`, the websocket in :mod:`.ws`; the API client (:mod:`.client`) knows none of
them.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

from tgmux.backend import (
    Audio,
    ChatIdentity,
    CommandSpec,
    HttpBackend,
    Notice,
    ReplyPart,
    Text,
    Turn,
)
from tgmux.context import with_context
from tgmux.errors import BackendError
from tgmux.ratelimit import Limiter, SlidingWindowLimiter, shared_limiter, shared_store_limiter
from tgmux.store.base import Namespace

from .client import BambiSleepClient, default_ws_url
from .commands import COMMANDS, AccountCommands
from .registration import WebhookRegistration
from .settings import BambiSleepSettings, RateLimitSettings, WebhookSettings
from .webhooks import WebhookReceiver, event_text
from .ws import WsTransport

__all__ = [
    "BambiSleepBackend",
    "BambiSleepSettings",
    "RateLimitSettings",
    "WebhookSettings",
    "format_triggers",
    "provider_limiters",
]

log = logging.getLogger("tgmux.backends.bambisleep")

EMPTY_REPLY = "The AI answered with an empty message."
#: the provider's longest prompt (characters): a message with its context is cut to it
PROMPT_CHARS = 4000


def format_triggers(template: str, triggers: list[str]) -> str:
    """The triggers as the ``triggers_format`` template says ('' when there are none)."""
    if not triggers or not template:
        return ""
    return template.format(
        triggers=", ".join(triggers),
        hashtags=" ".join("#" + re.sub(r"\W+", "_", t).strip("_") for t in triggers),
        lines="\n".join(f"• {t}" for t in triggers),
        count=len(triggers),
    )


def ws_key(chat: ChatIdentity) -> tuple[str, int, int | None]:
    """The websocket connection (a provider chat session) of a chat: one per tgmux account,
    chat and topic (a forum's, a private chat's), as tgmux's own conversation memory."""
    return chat.account, chat.chat_id, chat.topic


def _padded(period: float) -> float:
    """The period tgmux keeps: a little wider than the provider's, so that network jitter
    never makes the provider count one request too many in its window."""
    return period + max(0.05, period * 0.01)


def limit_key(settings: BambiSleepSettings) -> str:
    """The store's name for the credentials' budget: stable, without the secret in it."""
    digest = hashlib.sha256(settings.identity.encode()).hexdigest()[:12]
    return f"bambisleep:{settings.base_url}:{digest}"


def provider_limiters(settings: BambiSleepSettings, kv: Any = None) -> tuple[
        Limiter, SlidingWindowLimiter]:
    """(the credentials' limiter, the unauthenticated limiter), shared process-wide. With
    ``kv`` a store's :class:`~tgmux.store.Namespace`, the credentials' limiter is counted in
    that store: it holds across every process sharing it."""
    identity = settings.identity
    rl = settings.rate_limit
    period = _padded(rl.period)
    limiter: Limiter
    if isinstance(kv, Namespace):
        limiter = shared_store_limiter(kv.store, limit_key(settings), rl.requests, period)
    else:
        limiter = shared_limiter(("bambisleep", settings.base_url, identity), rl.requests,
                                 period)
    return (
        limiter,
        shared_limiter(("bambisleep-unauthenticated", settings.base_url), rl.unauthenticated,
                       period),
    )


class BambiSleepBackend(HttpBackend[BambiSleepClient]):
    type_name = "bambisleep"
    Settings = BambiSleepSettings
    description = "BambiSleep.Chat: AI replies with audio and triggers; profile and sessions."
    route_options = frozenset({"model", "include_audio", "audio_as", "include_triggers",
                               "triggers_format", "triggers_message"})

    settings: BambiSleepSettings

    @classmethod
    def shared_between_users(cls, settings: Any) -> str | None:
        return ("every Telegram user talks through one BambiSleep account, whose session "
                "history holds everyone's conversations: /sessions and /session show it to "
                "the bot's admins")

    def __init__(self, name: str, settings: Any, kv: Any) -> None:
        super().__init__(name, settings, kv)
        self.ws: WsTransport | None = None
        self.receiver: WebhookReceiver | None = None
        self.registration: WebhookRegistration | None = None

    @property
    def webhook_id(self) -> str | None:
        """The provider's id of the webhook (None: unknown, or no webhook configured)."""
        return self.registration.webhook_id if self.registration is not None else None

    @property
    def webhook_registered(self) -> bool:
        """Whether the webhook is known to be registered."""
        return self.registration is not None and self.registration.registered

    # -- lifecycle ---------------------------------------------------------------------------

    def make_client(self) -> BambiSleepClient:
        s = self.settings
        limiter, login_limiter = provider_limiters(s, self.kv)
        return BambiSleepClient(
            api_key=s.api_key.get_secret_value() if s.api_key else None,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            base_url=s.base_url,
            http_options=s.http_options(),
            limiter=limiter,
            login_limiter=login_limiter,
            notify_after=s.rate_limit.notify_after,
            name=self.name,
        )

    async def start(self) -> None:
        await super().start()
        s = self.settings
        if s.transport == "websocket":
            limiter, _ = provider_limiters(s, self.kv)  # shared: the client's own limiter
            self.ws = WsTransport(
                s.ws_url or default_ws_url(s.base_url),
                self.client,
                limiter=limiter,
                timeout=s.timeout,
                idle_timeout=s.ws_idle_timeout,
                reconnect_delay=s.ws_reconnect_delay,
                reconnect_max_delay=s.ws_reconnect_max_delay,
                max_attempts=s.ws_max_attempts,
                notify_after=s.rate_limit.notify_after,
                reply_from=s.ws_reply_from,
                name=self.name,
            )
        if s.webhook is not None:
            hook = s.webhook
            self.registration = WebhookRegistration(self.client, s, self.kv, name=self.name)
            self.receiver = WebhookReceiver(
                listen=hook.listen,
                path=hook.receive_path,
                secret=hook.secret.get_secret_value(),
                on_event=self._on_webhook,
                events=set(hook.events),
                signature_header=hook.signature_header,
                algorithm=hook.signature_algorithm,
                prefix=hook.signature_prefix,
                name=self.name,
                kv=self.kv,
                max_age=hook.max_age,
                require_timestamp=hook.require_timestamp,
            )
            await self.receiver.start()
            await self.registration.ensure()

    async def close(self) -> None:
        if self.registration is not None:
            await self.registration.aclose()
        if self.receiver is not None:
            await self.receiver.stop()
        if self.ws is not None:
            await self.ws.aclose()
        await super().close()

    async def _on_webhook(self, event: str, data: dict[str, Any],
                          payload: dict[str, Any]) -> None:
        if self.registration is not None:
            await self.registration.confirm()
        chat_id = self.settings.webhook.chat_id if self.settings.webhook else None
        await self.emit_event(event, data, chat_id=chat_id, text=event_text(event, data))

    # -- replies -----------------------------------------------------------------------------

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        opts: BambiSleepSettings = turn.options or self.settings
        # what the user replied to and what the group said, in short text before it, within
        # the provider's prompt limit (the context is cut, never the user's text)
        prompt = with_context(turn.text, turn.reply_to, turn.group_context,
                              max_chars=PROMPT_CHARS)
        if self.ws is not None:
            answer = await self.ws.ask(ws_key(turn.chat), prompt)
            text = answer.content.strip()
            yield Text(text) if text else Notice(EMPTY_REPLY)
            return
        result = await self.client.generate(
            prompt,
            model=opts.model,
            include_audio=opts.include_audio,
            include_triggers=opts.include_triggers,
        )
        shown = format_triggers(opts.triggers_format, result.triggers) \
            if opts.include_triggers else ""
        text = result.response.strip()
        if shown and opts.triggers_message == "append":
            text = f"{text}\n\n{shown}" if text else shown
            shown = ""
        if text:
            yield Text(text)
        if shown:
            yield Text(shown)
        if result.audio_url:
            yield await self._audio(result.audio_url, opts)
        if not text and not shown and not result.audio_url:
            yield Notice(EMPTY_REPLY)

    async def _audio(self, url: str, opts: BambiSleepSettings) -> Audio:
        """The reply's audio: as a voice note, its bytes (the Telegram frontend transcodes the
        MP3 to OGG/Opus, as it does for every backend's voice); as an audio file, or when the
        bytes cannot be fetched, its URL (Telegram fetches it and shows an audio player)."""
        filename = urlsplit(url).path.rsplit("/", 1)[-1] or None
        if opts.audio_as == "voice":
            try:
                data = await self.client.fetch_audio(url)
            except BackendError as exc:
                log.warning("%s: could not fetch the reply's audio (%s); sent by URL as an "
                            "audio file", self.name, exc)
            else:
                return Audio(data=data, voice=True, mime_type="audio/mpeg", filename=filename)
        return Audio(url=url, mime_type="audio/mpeg", filename=filename)

    async def reset(self, turn: Turn) -> str | None:
        if self.ws is not None:
            await self.ws.reset(ws_key(turn.chat))
            return "Started a fresh connection for this chat."
        return None
    # -- commands ----------------------------------------------------------------------------

    def commands(self) -> list[CommandSpec]:
        return list(COMMANDS)

    async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        commands = AccountCommands(self.client, self.settings.username)
        yield await commands.run(turn.command, turn.args.strip())
