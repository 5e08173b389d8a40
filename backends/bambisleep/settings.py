"""The ``bambisleep`` backend's settings: the models behind its ``backends:`` entry.

:class:`BambiSleepSettings` is the entry itself; :class:`WebhookSettings` (``webhook:``) and
:class:`RateLimitSettings` (``rate_limit:``) are its sections. Unknown keys are errors at every
level (:class:`tgmux.backend.Strict`).
"""

from __future__ import annotations

import hashlib
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from tgmux.backend import HttpBackendSettings, Strict

from .client import DEFAULT_BASE_URL, WEBHOOK_EVENTS, credential_identity
from .webhooks import parse_listen

__all__ = ["BambiSleepSettings", "EventName", "RateLimitSettings", "WebhookSettings"]

def _http_url(value: str) -> str:
    if urlsplit(value).scheme not in ("http", "https"):
        raise ValueError("expected an http(s) URL")
    return value


EventName = Literal["message.new", "profile.update", "trigger.shared"]


class RateLimitSettings(Strict):
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


class WebhookSettings(Strict):
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
    max_age: float = Field(
        300.0, ge=0, description="refuse (400) a delivery whose timestamp is more than this "
        "many seconds before or after this host's clock: a replay, or a clock that is off "
        "(0: timestamps are not checked)"
    )
    require_timestamp: bool = Field(
        False, description="refuse (400) deliveries without a timestamp"
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
        return _http_url(value)

    @field_validator("signature_algorithm")
    @classmethod
    def _algorithm(cls, value: str) -> str:
        try:
            hashlib.new(value)
        except ValueError:
            raise ValueError(f"unknown hash algorithm {value!r}") from None
        return value

    @field_validator("secret")
    @classmethod
    def _secret_not_empty(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("is empty (is its environment variable set to nothing?): anyone "
                             "could sign deliveries with the empty key; set the secret the "
                             "provider signs with")
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
    audio_as: Literal["voice", "audio"] = Field(
        "voice", description="how the audio is shown: voice (a voice note: the MP3 is fetched "
        "and transcoded to OGG/Opus) or audio (the MP3 by its URL, as an audio file)"
    )
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
        return _http_url(value).rstrip("/")

    @property
    def identity(self) -> str:
        """A non-secret name of the account's credentials (rate-limit keys, webhook records)."""
        key = self.api_key.get_secret_value() if self.api_key is not None else None
        return credential_identity(key, self.username)
