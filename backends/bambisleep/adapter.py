"""The ``bambisleep`` backend: BambiSleep.Chat behind tgmux.

A chat message goes to ``POST /ai/generate`` (or, with ``transport: websocket``, over the
chat's websocket); the reply is the text (with the triggers in the configured format), then the
audio as a voice message when the provider gives an ``audioUrl``. Commands manage the account's
profile, triggers and session history. Webhook events (when configured) go to a chat through the
``tgmux_provider_event`` hook. See ``docs/backends/bambisleep.md``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from tgmux.backend import (
    Audio,
    CommandSpec,
    HttpBackend,
    HttpBackendSettings,
    Notice,
    ReplyPart,
    Text,
    Turn,
)
from tgmux.errors import (
    AuthError,
    BackendError,
    BadRequestError,
    NotFoundError,
)
from tgmux.ratelimit import SlidingWindowLimiter, shared_limiter

from .client import (
    DEFAULT_BASE_URL,
    WEBHOOK_EVENTS,
    BambiSleepClient,
    Webhook,
    credential_identity,
    default_ws_url,
    nothing_was_done,
)
from .webhooks import WebhookReceiver, event_text, parse_listen
from .ws import WsTransport

log = logging.getLogger("tgmux.backends.bambisleep")

EMPTY_REPLY = "The AI answered with an empty message."

EventName = Literal["message.new", "profile.update", "trigger.shared"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RateLimitSettings(_Strict):
    """The provider's published limits; tgmux keeps every chat using the same credentials
    under them together."""

    requests: int = Field(60, ge=1, description="authenticated requests allowed per period")
    unauthenticated: int = Field(
        10, ge=1, description="unauthenticated requests (logins) allowed per period"
    )
    period: float = Field(60.0, gt=0, description="the window, in seconds")
    notify_after: float = Field(
        5.0, ge=0, description="tell the user their reply is delayed when a rate-limit wait "
        "is at least this many seconds"
    )


class WebhookSettings(_Strict):
    """Receive the provider's webhook events and show them in a Telegram chat."""

    listen: str = Field("127.0.0.1:8080", description="HOST:PORT the receiver binds")
    public_url: str = Field(
        ..., description="the receiver's URL as the provider reaches it (registered at start)"
    )
    events: list[EventName] = Field(
        default_factory=lambda: list(WEBHOOK_EVENTS), min_length=1,
        description="events to subscribe to",
    )
    secret: SecretStr = Field(..., description="shared secret the provider signs requests with")
    chat_id: int | None = Field(
        None, description="Telegram chat the events are shown in (none: only the hook sees them)"
    )
    path: str | None = Field(
        None, description="path the receiver serves (default: the path of public_url)"
    )
    signature_header: str = Field("X-Signature", description="header carrying the signature")
    signature_algorithm: str = Field(
        "sha256", description="hash of the HMAC (any hashlib name: sha256, sha1, sha512, ...)"
    )
    signature_prefix: str = Field(
        "", description="text before the hex digest in the header, e.g. 'sha256='"
    )
    retry_delay: float = Field(
        5.0, gt=0, description="first wait before registering again after a refusal that "
        "proves nothing was registered (doubles, at most 300 s)"
    )

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        parse_listen(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http(s) URL")
        return value

    @field_validator("signature_algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        try:
            hashlib.new(value)
        except ValueError:
            raise ValueError(f"unknown hash algorithm {value!r}") from None
        return value

    @property
    def receive_path(self) -> str:
        return self.path or urlsplit(self.public_url).path or "/"


class BambiSleepSettings(HttpBackendSettings):
    type: Literal["bambisleep"] = "bambisleep"
    base_url: str = Field(DEFAULT_BASE_URL, description="the API root")
    api_key: SecretStr | None = Field(
        None, description="API key (sent as Authorization: Bearer); or username + password"
    )
    username: str | None = Field(
        None, description="account name: logs in with password; with api_key, names the "
        "account's profile for /profile and /profile_set"
    )
    password: SecretStr | None = Field(None, description="password for POST /auth/login")
    model: str | None = Field(None, description="settings.model for /ai/generate "
                              "(e.g. MODEL_1; unset: the provider's default)")
    include_audio: bool = Field(True, description="ask for an audio version of each reply")
    include_triggers: bool = Field(True, description="ask for the triggers of each reply")
    triggers_format: str = Field(
        "Triggers: {triggers}",
        description="how triggers are shown: placeholders {triggers} (comma-separated), "
        "{hashtags}, {lines} (one per line), {count}; empty: not shown",
    )
    triggers_message: Literal["append", "separate"] = Field(
        "append", description="append the triggers to the reply text, or send them separately"
    )
    transport: Literal["rest", "websocket"] = Field(
        "rest", description="chat messages over POST /ai/generate or over the websocket"
    )
    ws_url: str | None = Field(
        None, description="websocket URL (default: wss://HOST/ws/chat of base_url)"
    )
    ws_idle_timeout: float = Field(300.0, gt=0, description="close a chat's idle websocket "
                                   "after this many seconds")
    ws_reconnect_delay: float = Field(0.5, gt=0, description="first reconnect delay (doubles)")
    ws_reconnect_max_delay: float = Field(30.0, gt=0, description="longest reconnect delay")
    ws_max_attempts: int = Field(5, ge=1, description="connections tried for one message "
                                 "(only while it has not been sent; a sent one is never resent)")
    ws_reply_from: str | None = Field(
        None, description="username of the AI's websocket messages: only its message frames "
        "are replies, other room members' are ignored (unset: the first message not from our "
        "own account after sending)"
    )
    webhook: WebhookSettings | None = Field(None, description="webhook receiver (optional)")
    rate_limit: RateLimitSettings = Field(
        default_factory=RateLimitSettings, description="the provider's rate limits"
    )

    @model_validator(mode="after")
    def _one_auth_mode(self) -> BambiSleepSettings:
        if self.api_key is not None and self.password is not None:
            raise ValueError("give api_key, or username and password, not both")
        if self.api_key is None and self.password is None:
            raise ValueError("needs api_key, or username and password")
        if self.password is not None and not self.username:
            raise ValueError("password needs username")
        return self

    @field_validator("triggers_format")
    @classmethod
    def _format(cls, value: str) -> str:
        try:
            value.format(triggers="a, b", hashtags="#a #b", lines="• a\n• b", count=2)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"bad placeholder {exc}: use {{triggers}}, {{hashtags}}, {{lines}}, {{count}}"
            ) from None
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str) -> str:
        if urlsplit(value).scheme not in ("http", "https"):
            raise ValueError("expected an http(s) URL")
        return value.rstrip("/")


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


def _padded(period: float) -> float:
    """The period tgmux keeps: a little wider than the provider's, so that network jitter
    never makes the provider count one request too many in its window."""
    return period + max(0.05, period * 0.01)


def provider_limiters(settings: BambiSleepSettings) -> tuple[SlidingWindowLimiter,
                                                              SlidingWindowLimiter]:
    """(the credentials' limiter, the unauthenticated limiter), shared process-wide."""
    identity = _identity(settings)
    rl = settings.rate_limit
    period = _padded(rl.period)
    return (
        shared_limiter(("bambisleep", settings.base_url, identity), rl.requests, period),
        shared_limiter(("bambisleep-unauthenticated", settings.base_url), rl.unauthenticated,
                       period),
    )


def _identity(settings: BambiSleepSettings) -> str:
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    return credential_identity(key, settings.username)


class BambiSleepBackend(HttpBackend[BambiSleepClient]):
    type_name = "bambisleep"
    Settings = BambiSleepSettings
    description = "BambiSleep.Chat: AI replies with audio and triggers; profile and sessions."
    route_options = frozenset({"model", "include_audio", "include_triggers", "triggers_format",
                               "triggers_message"})

    settings: BambiSleepSettings

    def __init__(self, name: str, settings: Any, kv: Any) -> None:
        super().__init__(name, settings, kv)
        self.ws: WsTransport | None = None
        self.receiver: WebhookReceiver | None = None
        self.webhook_id: str | None = None
        self.webhook_registered = False
        self._register_task: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def make_client(self) -> BambiSleepClient:
        s = self.settings
        limiter, login_limiter = provider_limiters(s)
        return BambiSleepClient(
            api_key=s.api_key.get_secret_value() if s.api_key else None,
            username=s.username,
            password=s.password.get_secret_value() if s.password else None,
            base_url=s.base_url,
            timeout=s.timeout,
            limiter=limiter,
            login_limiter=login_limiter,
            notify_after=s.rate_limit.notify_after,
            name=self.name,
        )

    async def start(self) -> None:
        await super().start()
        s = self.settings
        if s.transport == "websocket":
            limiter, _ = provider_limiters(s)  # shared: the client's own limiter
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
            )
            await self.receiver.start()
            await self._ensure_webhook()

    async def close(self) -> None:
        if self._register_task is not None:
            self._register_task.cancel()
            await asyncio.gather(self._register_task, return_exceptions=True)
        if self.receiver is not None:
            await self.receiver.stop()
        if self.ws is not None:
            await self.ws.aclose()
        await super().close()

    # -- webhook registration ----------------------------------------------------------------
    #
    # The API can register a webhook but not list or delete one, and every registration
    # delivers every event once more. So tgmux registers once per (account, URL, events,
    # secret) and remembers it in the backend's persistent key-value store; a POST that may
    # have reached the provider is never repeated automatically.

    def _webhook_key(self) -> str:
        hook = self.settings.webhook
        assert hook is not None
        material = json.dumps({
            "base_url": self.settings.base_url,
            "account": _identity(self.settings),
            "url": hook.public_url,
            "events": sorted(hook.events),
            "secret": hashlib.sha256(hook.secret.get_secret_value().encode()).hexdigest(),
        }, sort_keys=True)
        return "webhook:" + hashlib.sha256(material.encode()).hexdigest()[:32]

    async def _ensure_webhook(self) -> None:
        stored = await self.kv.get(self._webhook_key())
        if stored is not None:
            record = json.loads(stored)
            self.webhook_id = record.get("id")
            self.webhook_registered = True
            log.info("%s: webhook %s already registered (%s); not registering again",
                     self.name, self.webhook_id or "(id unknown)", record.get("how"))
            return
        if await self._register_webhook() == "retry":
            self._register_task = asyncio.create_task(self._keep_registering())

    async def _remember_webhook(self, webhook_id: str | None, how: str) -> None:
        hook = self.settings.webhook
        assert hook is not None
        self.webhook_id = webhook_id
        self.webhook_registered = True
        await self.kv.set(self._webhook_key(), json.dumps({
            "id": webhook_id, "url": hook.public_url, "events": list(hook.events), "how": how,
            "at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }))

    async def _register_webhook(self) -> Literal["done", "retry", "refused", "uncertain"]:
        """One ``POST /webhooks``. "retry" only when the error proves nothing was
        registered and a later try may work."""
        assert self.settings.webhook is not None
        hook = self.settings.webhook
        try:
            registered: Webhook = await self.client.register_webhook(
                hook.public_url, list(hook.events), hook.secret.get_secret_value()
            )
        except BackendError as exc:
            if not nothing_was_done(exc):
                log.error(
                    "%s: webhook registration (POST /webhooks) failed after it may have reached "
                    "BambiSleep (%s). tgmux does not send it again: a second registration would "
                    "deliver every event twice. If events arrive, nothing is to be done (the "
                    "first one confirms the registration); if none do, restart tgmux to "
                    "register again.", self.name, exc.log_text())
                return "uncertain"
            if exc.status is not None and 400 <= exc.status < 500 and exc.status != 429:
                log.error("%s: webhook registration refused (fix the config): %s", self.name,
                          exc.log_text())
                return "refused"
            log.warning("%s: webhook registration not accepted, will try again: %s",
                        self.name, exc.log_text())
            return "retry"
        await self._remember_webhook(registered.id, "registered")
        log.info("%s: webhook %s registered for %s", self.name, registered.id or "",
                 ", ".join(registered.events))
        return "done"

    async def _keep_registering(self) -> None:
        assert self.settings.webhook is not None
        delay = self.settings.webhook.retry_delay
        while True:
            await asyncio.sleep(delay)
            if self.webhook_registered or await self._register_webhook() != "retry":
                return
            delay = min(delay * 2, 300.0)

    async def _on_webhook(self, event: str, data: dict[str, Any],
                          payload: dict[str, Any]) -> None:
        if not self.webhook_registered:
            # A correctly signed delivery proves the registration exists (e.g. after a
            # registration whose answer was lost): remember it, register no more.
            await self._remember_webhook(None, "confirmed by a delivery")
            log.info("%s: webhook registration confirmed by a delivery", self.name)
        chat_id = self.settings.webhook.chat_id if self.settings.webhook else None
        await self.emit_event(event, data, chat_id=chat_id, text=event_text(event, data))

    # -- replies -----------------------------------------------------------------------------

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        opts: BambiSleepSettings = turn.options or self.settings
        if self.ws is not None:
            answer = await self.ws.ask((turn.chat.chat_id, turn.chat.message_thread_id),
                                       turn.text)
            text = answer.content.strip()
            yield Text(text) if text else Notice(EMPTY_REPLY)
            return
        result = await self.client.generate(
            turn.text,
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
            yield Audio(url=result.audio_url, voice=True, mime_type="audio/mpeg",
                        filename=urlsplit(result.audio_url).path.rsplit("/", 1)[-1] or None)
        if not text and not shown and not result.audio_url:
            yield Notice(EMPTY_REPLY)

    async def reset(self, turn: Turn) -> str | None:
        if self.ws is not None:
            await self.ws.reset((turn.chat.chat_id, turn.chat.message_thread_id))
            return "Started a fresh connection for this chat."
        return None

    # -- commands ----------------------------------------------------------------------------

    def commands(self) -> list[CommandSpec]:
        # Every Telegram user shares the one BambiSleep account: its session history holds
        # everyone's prompts, and its profile and triggers are everyone's. Reading the history
        # and changing the account are for the bot's admins (enforced when `admins:` is set).
        return [
            CommandSpec("profile", "Show the BambiSleep profile", usage="[username]"),
            CommandSpec("profile_set", "Change the account's display name",
                        usage="<display name>", admin_only=True),
            CommandSpec("triggers", "List the triggers you can use"),
            CommandSpec("trigger_add", "Create a private trigger on the account",
                        usage="name | description | content", admin_only=True),
            CommandSpec("sessions", "List the account's past sessions (all users)",
                        admin_only=True),
            CommandSpec("session", "Show the messages of a session", usage="<id>",
                        admin_only=True),
        ]

    async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        handler = {
            "profile": self._cmd_profile,
            "profile_set": self._cmd_profile_set,
            "triggers": self._cmd_triggers,
            "trigger_add": self._cmd_trigger_add,
            "sessions": self._cmd_sessions,
            "session": self._cmd_session,
        }.get(turn.command or "")
        if handler is None:
            raise NotImplementedError(f"bambisleep has no command {turn.command}")
        yield await handler(turn.args.strip())

    def _own_username(self) -> str | None:
        if self.settings.username:
            return self.settings.username
        user = self.client.user
        name = user.get("username") if isinstance(user, dict) else None
        return name if isinstance(name, str) and name else None

    async def _cmd_profile(self, args: str) -> ReplyPart:
        username = args.lstrip("@") or self._own_username()
        if not username:
            return Notice("Whose profile? Use /profile <username> (or set `username` in the "
                          "bambisleep backend's config).")
        try:
            profile = await self.client.get_profile(username)
        except NotFoundError:
            return Notice(f"There is no BambiSleep user {username}.")
        except AuthError as exc:
            if exc.status == 403:
                return Notice(f"The profile of {username} is private.")
            raise
        lines = [f"👤 {profile.display_name or profile.username} (@{profile.username})"]
        if profile.level is not None or profile.xp is not None:
            lines.append(f"Level {_num(profile.level)} · {_num(profile.xp)} XP")
        if profile.is_public is not None:
            lines.append("Public profile" if profile.is_public else "Private profile")
        if profile.created_at:
            lines.append(f"Member since {_date(profile.created_at)}")
        if profile.triggers:
            lines.append("Triggers: " + ", ".join(profile.triggers))
        if profile.avatar_url:
            lines.append(f"Avatar: {profile.avatar_url}")
        return Text("\n".join(lines))

    async def _cmd_profile_set(self, args: str) -> ReplyPart:
        if not args:
            return Notice("Usage: /profile_set <display name>")
        username = self._own_username()
        if not username:
            return Notice("I don't know the account's username: set `username` in the "
                          "bambisleep backend's config.")
        try:
            profile = await self.client.update_profile(username, display_name=args)
        except BadRequestError as exc:
            return Notice(f"The display name was not accepted: {exc.provider_message}")
        except AuthError as exc:
            if exc.status == 403:
                return Notice(f"This account may not change the profile of {username}.")
            raise
        shown = profile.display_name if profile and profile.display_name else args
        return Text(f"Display name of @{username} is now: {shown}")

    async def _cmd_triggers(self, args: str) -> ReplyPart:
        triggers = await self.client.list_triggers()
        if not triggers:
            return Text("No triggers yet. Create one with /trigger_add name | description | "
                        "content")
        lines = [f"Triggers ({len(triggers)}):"]
        for t in triggers:
            line = f"• {t.name}"
            if t.description:
                line += f" — {t.description}"
            tags = []
            if t.is_public is not None:
                tags.append("public" if t.is_public else "private")
            if t.creator:
                tags.append(f"by {t.creator}")
            if tags:
                line += f" ({', '.join(tags)})"
            lines.append(line)
        return Text("\n".join(lines))

    async def _cmd_trigger_add(self, args: str) -> ReplyPart:
        parts = [p.strip() for p in args.split("|", 2)]
        if len(parts) != 3 or not parts[0] or not parts[2]:
            return Notice("Usage: /trigger_add name | description | content")
        name, description, content = parts
        try:
            trigger = await self.client.create_trigger(name, description, content,
                                                       is_public=False)
        except BadRequestError as exc:
            return Notice(f"The trigger was not created: {exc.provider_message}")
        return Text(f"Created the private trigger “{trigger.name}”.")

    async def _cmd_sessions(self, args: str) -> ReplyPart:
        sessions = await self.client.list_sessions()
        if not sessions:
            return Text("No sessions yet.")
        lines = [f"Sessions ({len(sessions)}):"]
        for s in sessions:
            bits = []
            if s.created_at:
                bits.append(_date(s.created_at, with_time=True))
            if s.message_count is not None:
                bits.append(f"{s.message_count} message{'' if s.message_count == 1 else 's'}")
            lines.append(f"• {s.id}" + (f" — {', '.join(bits)}" if bits else ""))
        lines.append("Show one with /session <id>")
        return Text("\n".join(lines))

    async def _cmd_session(self, args: str) -> ReplyPart:
        if not args:
            return Notice("Usage: /session <id> (/sessions lists them)")
        session_id = args.split()[0]
        try:
            session = await self.client.get_session(session_id)
        except NotFoundError:
            return Notice(f"There is no session {session_id}. /sessions lists them.")
        head = f"Session {session.id}"
        if session.created_at:
            head += f" ({_date(session.created_at, with_time=True)})"
        if not session.messages:
            return Text(f"{head}: no messages.")
        lines = [head + ":"]
        for m in session.messages:
            who = {"user": "You", "assistant": "Bambi"}.get(m.role, m.role or "?")
            stamp = f"[{_time(m.timestamp)}] " if m.timestamp else ""
            lines.append(f"{stamp}{who}: {m.content}")
        return Text("\n".join(lines))


def _num(value: int | None) -> str:
    return "?" if value is None else f"{value:,}"


def _parse_iso(value: str) -> datetime | None:
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when.astimezone(UTC) if when.tzinfo else when


def _date(value: str, *, with_time: bool = False) -> str:
    when = _parse_iso(value)
    if when is None:
        return value
    return when.strftime("%Y-%m-%d %H:%M UTC" if with_time else "%Y-%m-%d")


def _time(value: str) -> str:
    when = _parse_iso(value)
    return value if when is None else when.strftime("%Y-%m-%d %H:%M:%S")
