"""One error model for every backend, frontend and plugin.

Backends raise :class:`BackendError` subclasses (never raw ``httpx`` errors); the engine turns
each kind into a short message for the user and a log line that keeps the provider's own
message and request ids (never secrets, never stack traces from the provider).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from tgmux.redact import redact


class ErrorKind(StrEnum):
    AUTH = "auth"
    RATE_LIMITED = "rate_limited"
    BAD_REQUEST = "bad_request"
    NOT_FOUND = "not_found"
    UNAVAILABLE = "unavailable"
    TIMEOUT = "timeout"
    PROTOCOL = "protocol"
    QUOTA = "quota"
    CIRCUIT_OPEN = "circuit_open"


USER_MESSAGES: dict[ErrorKind, str] = {
    ErrorKind.AUTH: "The AI provider rejected our credentials. The bot's operator has to fix this.",
    ErrorKind.RATE_LIMITED: "The AI provider is busy right now. Please try again in a moment.",
    ErrorKind.BAD_REQUEST: "The AI provider could not accept this message.",
    ErrorKind.NOT_FOUND: "The AI provider could not find this conversation or model.",
    ErrorKind.UNAVAILABLE: "The AI provider is unavailable right now. Please try again later.",
    ErrorKind.TIMEOUT: "The AI provider took too long to answer. Please try again.",
    ErrorKind.PROTOCOL: "The AI provider sent an answer we could not read.",
    ErrorKind.QUOTA: "The AI provider's credits for this bot are used up.",
    ErrorKind.CIRCUIT_OPEN: "The AI provider is unavailable right now. Please try again later.",
}


#: "Please try again {when}": for a refusal whose end the provider told us (``Retry-After``).
RETRY_LATER_MESSAGES: dict[ErrorKind, str] = {
    ErrorKind.RATE_LIMITED: "The AI provider is busy; please try again {when}.",
    ErrorKind.UNAVAILABLE: "The AI provider is unavailable right now; please try again {when}.",
}

#: The longest wait a provider is believed (``Retry-After: inf``, ``1e308``, a date in the
#: year 9999 are absurd): a month, as a monthly quota may say.
MAX_WAIT = 31 * 86400.0


def clamp_wait(seconds: float | None) -> float | None:
    """A provider's wait made sane: None when it is not a number (NaN too), at least 0, at
    most :data:`MAX_WAIT`."""
    if seconds is None:
        return None
    try:
        seconds = float(seconds)
    except (TypeError, ValueError, OverflowError):
        return MAX_WAIT if isinstance(seconds, int) and seconds > 0 else None
    if seconds != seconds:  # NaN
        return None
    return min(max(0.0, seconds), MAX_WAIT)


def format_duration(seconds: float) -> str:
    """A duration for people, rounded: ``45 s``, ``10 min``, ``24 h``, ``5 days`` (at most
    :data:`MAX_WAIT`; never an error, whatever number it is given)."""
    seconds = max(1.0, clamp_wait(seconds) or 0.0)
    if seconds < 60:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60 - 30:
        return f"{round(seconds / 60)} min"
    if seconds < 48 * 3600:
        return f"{round(seconds / 3600)} h"
    return f"{round(seconds / 86400)} days"


def retry_when(seconds: float, now: float | None = None) -> str:
    """When to try again, for people: ``in about 10 min``; ``later today`` for hours that end
    today (UTC); ``in about 30 h``; beyond two days a date (``after 7 January 2027``, UTC),
    the wait clamped to :data:`MAX_WAIT`."""
    wait = clamp_wait(seconds) or 0.0
    start = datetime.now(UTC) if now is None else datetime.fromtimestamp(now, UTC)
    end = start + timedelta(seconds=wait)
    if wait < 90 * 60 - 30:
        return f"in about {format_duration(wait)}"
    if end.date() == start.date():
        return "later today"
    if wait < 48 * 3600:
        return f"in about {format_duration(wait)}"
    return f"after {end.day} {end:%B %Y}"


def retry_later_message(kind: ErrorKind, seconds: float, *, now: float | None = None
                        ) -> str | None:
    """The user message for a refusal of ``kind`` that ends in ``seconds`` (None: no such
    message for the kind; the kind's usual text stands)."""
    template = RETRY_LATER_MESSAGES.get(kind)
    return template.format(when=retry_when(seconds, now)) if template else None


class TgmuxError(Exception):
    """Base of every error tgmux raises on purpose."""


class ConfigError(TgmuxError):
    """A configuration problem; ``str()`` is the message to print (file:line: key.path: what)."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class BackendError(TgmuxError):
    """A provider call failed.

    ``provider_message`` and ``request_id`` are for logs; ``user_message`` is what the chat sees
    (defaults to the text for the kind). ``retry_after`` is in seconds when the provider said it.
    """

    kind: ErrorKind = ErrorKind.UNAVAILABLE

    def __init__(
        self,
        message: str = "",
        *,
        status: int | None = None,
        provider_message: str | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        user_message: str | None = None,
        details: dict[str, Any] | None = None,
    ):
        self.status = status
        self.provider_message = provider_message
        self.request_id = request_id
        self.retry_after = retry_after
        self._user_message = user_message
        self.details = details or {}
        super().__init__(message or provider_message or self.kind.value)

    @property
    def retry_after(self) -> float | None:
        return self._retry_after

    @retry_after.setter
    def retry_after(self, value: float | None) -> None:
        self._retry_after = clamp_wait(value)  # whoever parsed it, it is sane here

    @property
    def user_message(self) -> str:
        # A parser may have put a provider's text here: never a configured secret to a chat.
        return redact(self._user_message) if self._user_message else USER_MESSAGES[self.kind]

    @user_message.setter
    def user_message(self, value: str | None) -> None:
        self._user_message = value

    @property
    def has_own_user_message(self) -> bool:
        """Was a user message given (rather than the kind's usual text)?"""
        return self._user_message is not None

    def log_text(self) -> str:
        parts = [f"kind={self.kind.value}"]
        if self.status is not None:
            parts.append(f"status={self.status}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        for key, value in self.details.items():
            parts.append(f"{key}={value}")
        parts.append(f"message={self.provider_message or str(self)!r}")
        return " ".join(parts)


class AuthError(BackendError):
    kind = ErrorKind.AUTH


class RateLimitedError(BackendError):
    kind = ErrorKind.RATE_LIMITED


class BadRequestError(BackendError):
    kind = ErrorKind.BAD_REQUEST


class NotFoundError(BackendError):
    kind = ErrorKind.NOT_FOUND


class UnavailableError(BackendError):
    kind = ErrorKind.UNAVAILABLE


class BackendTimeoutError(BackendError):
    kind = ErrorKind.TIMEOUT


class ProtocolError(BackendError):
    kind = ErrorKind.PROTOCOL


class QuotaExceededError(BackendError):
    kind = ErrorKind.QUOTA


class CircuitOpenError(BackendError):
    """The backend's circuit is open (it failed ``circuit.failures`` turns in a row): it is
    not asked until the cooldown ends."""

    kind = ErrorKind.CIRCUIT_OPEN


ERRORS_BY_KIND: dict[ErrorKind, type[BackendError]] = {
    cls.kind: cls
    for cls in (
        AuthError,
        RateLimitedError,
        BadRequestError,
        NotFoundError,
        UnavailableError,
        BackendTimeoutError,
        ProtocolError,
        QuotaExceededError,
    )
}


def error_for_status(status: int) -> type[BackendError]:
    """The error class for an HTTP status (providers may refine it, e.g. to QUOTA)."""
    if status in (401, 403):
        return AuthError
    if status == 404:
        return NotFoundError
    if status == 429:
        return RateLimitedError
    if status == 402:
        return QuotaExceededError
    if status == 408 or status == 504:
        return BackendTimeoutError
    if 400 <= status < 500:
        return BadRequestError
    return UnavailableError
