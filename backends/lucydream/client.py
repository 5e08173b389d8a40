"""A pure async client for the LucyDream Telegram Chatbot API (``/wp-json/telegram/v1/``).

Usable without the engine: it only needs :mod:`tgmux.http`, :mod:`tgmux.errors`
and :mod:`tgmux.text`::

    async with LucyDreamClient("my-key") as lucy:
        sub = await lucy.create_sub_user("tg_42")
        print(await lucy.send_message("Hello!", chatbot_model="2195981", user_id=sub.user_id))

Every request carries ``X-API-Key``; bodies are JSON. Errors are :mod:`tgmux.errors` kinds:
403 auth, 400 bad request, 404 not found, 500 unavailable; an exhausted account (HTTP 402, or
any error whose ``code``/``message`` speaks of credits) is a :class:`QuotaExceededError`. The
provider's ``code`` and ``message`` are kept for logs (``provider_message``, ``details``).

``send-message`` and ``request-image`` are POSTs that may cost credits: the HTTP layer never
repeats them once they may have reached the provider.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import httpx

from tgmux.errors import (
    BackendError,
    ProtocolError,
    QuotaExceededError,
    UnavailableError,
    error_for_status,
)
from tgmux.http import HttpClient
from tgmux.text import str_or_none

DEFAULT_BASE_URL = "https://my.lucydream.ai/wp-json/telegram/v1/"
DEFAULT_MODEL = "2195981"  # "Lucy Dream"

#: What the user reads when the account's free messages and credits are used up.
QUOTA_USER_MESSAGE = (
    "This bot has run out of AI credits, so I can't answer right now. "
    "The bot's operator has to top up the account."
)

_CREDITS = re.compile(r"credit|insufficient[_ ]?(funds|balance)|quota", re.IGNORECASE)


@dataclass(frozen=True)
class SubUser:
    """A child account of the API key's owner (one per Telegram user or chat)."""

    user_id: str
    username: str
    email: str | None = None


@dataclass(frozen=True)
class ImageReply:
    image_url: str
    reply: str | None = None


@dataclass(frozen=True)
class HistoryEntry:
    role: str
    message: str
    clean_message: str
    timestamp: Any = None


@dataclass(frozen=True)
class History:
    entries: list[HistoryEntry]
    chatbot_name: str | None = None
    count: int | None = None


def normalize_base_url(base_url: str) -> str:
    """The API root ending in ``/telegram/v1/``.

    The provider document says endpoints are relative to ``.../wp-json/`` while its examples
    use ``.../wp-json/telegram/v1/``; both spellings are accepted.
    """
    url = base_url.rstrip("/")
    if url.endswith("/wp-json"):
        url += "/telegram/v1"
    return url + "/"


def is_quota_error(code: str | None, message: str | None) -> bool:
    return bool(_CREDITS.search(code or "") or _CREDITS.search(message or ""))


def parse_error(response: httpx.Response) -> BackendError:
    """Map a LucyDream error answer (WordPress REST: ``{"code", "message", "data"}``)."""
    status = response.status_code
    code: str | None = None
    message: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        code = str_or_none(body.get("code"))
        message = str_or_none(body.get("message", body.get("error")))
    if message is None:
        message = (response.text[:300] if response.content else "") or response.reason_phrase
    details = {"code": code} if code else {}
    request_id = response.headers.get("X-Request-Id")
    if status == 402 or is_quota_error(code, message):
        return QuotaExceededError(
            f"lucydream: credits exhausted (HTTP {status})",
            status=status,
            provider_message=message,
            request_id=request_id,
            user_message=QUOTA_USER_MESSAGE,
            details=details,
        )
    cls = error_for_status(status)
    if status >= 500:
        cls = UnavailableError
    return cls(
        f"lucydream: HTTP {status}: {message}",
        status=status,
        provider_message=message,
        request_id=request_id,
        details=details,
    )


def _bad_answer(what: str, data: Any) -> ProtocolError:
    """A 200 answer that is not what the endpoint promises (the body's start kept for logs)."""
    return ProtocolError(what, status=200, provider_message=str(data)[:200])


def _failed_body(endpoint: str, data: dict[str, Any]) -> BackendError:
    """A 200 answer that says ``"success": false``."""
    code = str_or_none(data.get("code"))
    raw = data.get("message", data.get("error"))
    message = raw if isinstance(raw, str) else "success: false"
    details = {"code": code} if code else {}
    if is_quota_error(code, message):
        return QuotaExceededError(
            f"lucydream: {endpoint}: credits exhausted",
            status=200, provider_message=message, user_message=QUOTA_USER_MESSAGE,
            details=details,
        )
    return UnavailableError(
        f"lucydream: {endpoint} failed", status=200, provider_message=message, details=details
    )


class LucyDreamClient:
    """The five LucyDream endpoints. Close with :meth:`aclose` (or use ``async with``)."""

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 60.0,
        retries: int = 2,
        name: str = "lucydream",
        transport: httpx.AsyncBaseTransport | None = None,
        http_options: dict[str, Any] | None = None,
    ) -> None:
        self.http = HttpClient(
            normalize_base_url(base_url),
            **{"timeout": timeout, **(http_options or {})},
            headers={"X-API-Key": api_key, "Accept": "application/json"},
            retries=retries,
            error_parser=parse_error,
            name=name,
            transport=transport,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> LucyDreamClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- endpoints ---------------------------------------------------------------------------

    async def send_message(self, message: str, *, chatbot_model: str, user_id: str) -> str:
        """``POST send-message``: the chatbot's reply text."""
        data = await self._call(
            "POST", "send-message",
            json={"message": message, "chatbot_model": chatbot_model, "user_id": user_id},
        )
        reply = data.get("reply")
        if not isinstance(reply, str):
            raise _bad_answer("lucydream: send-message answer has no `reply`", data)
        return reply

    async def request_image(self, *, chatbot_model: str, user_id: str) -> ImageReply:
        """``POST request-image``: an image URL and a caption."""
        data = await self._call(
            "POST", "request-image", json={"chatbot_model": chatbot_model, "user_id": user_id}
        )
        url = data.get("image_url")
        if not isinstance(url, str) or not url:
            raise _bad_answer("lucydream: request-image answer has no `image_url`", data)
        return ImageReply(image_url=url, reply=str_or_none(data.get("reply")))

    async def get_history(self, *, chatbot_model: str, user_id: str) -> History:
        """``GET get-history?chatbot_model=...&user_id=...`` (query parameters, no body)."""
        data = await self._call(
            "GET", "get-history", params={"chatbot_model": chatbot_model, "user_id": user_id}
        )
        raw = data.get("history")
        if raw is None:
            raw = []
        if not isinstance(raw, list):
            raise _bad_answer("lucydream: get-history `history` is not a list", data)
        entries = []
        for item in raw:
            if not isinstance(item, dict):
                continue
            message = item.get("message")
            clean = item.get("clean_message")
            message = message if isinstance(message, str) else ""
            entries.append(
                HistoryEntry(
                    role=str(item.get("role") or "?"),
                    message=message,
                    clean_message=clean if isinstance(clean, str) else message,
                    timestamp=item.get("timestamp"),
                )
            )
        count = data.get("count")
        return History(
            entries=entries,
            chatbot_name=str_or_none(data.get("chatbot_name")),
            count=count if isinstance(count, int) else None,
        )

    async def create_sub_user(self, username: str, email: str | None = None) -> SubUser:
        """``POST create-sub-user``. A taken username answers 400 (:class:`BadRequestError`)."""
        body: dict[str, str] = {"username": username}
        if email is not None:
            body["email"] = email
        data = await self._call("POST", "create-sub-user", json=body)
        user_id = data.get("user_id")
        if user_id is None or user_id == "":
            raise _bad_answer("lucydream: create-sub-user answer has no `user_id`", data)
        return SubUser(
            user_id=str(user_id),
            username=str(data.get("username") or username),
            email=str_or_none(data.get("email")),
        )

    async def list_sub_users(self) -> list[SubUser]:
        """``GET sub-users``: every sub-user of this API key."""
        data = await self.http.request_json("GET", "sub-users")
        if isinstance(data, dict):
            if data.get("success") is False:
                raise _failed_body("sub-users", data)
            for key in ("sub_users", "users", "data"):
                if isinstance(data.get(key), list):
                    data = data[key]
                    break
        if not isinstance(data, list):
            raise _bad_answer("lucydream: sub-users answer is not a list", data)
        found = []
        for item in data:
            if isinstance(item, dict) and item.get("user_id") not in (None, ""):
                found.append(
                    SubUser(
                        user_id=str(item["user_id"]),
                        username=str(item.get("username") or ""),
                        email=str_or_none(item.get("email")),
                    )
                )
        return found

    async def find_sub_user(self, username: str) -> SubUser | None:
        """The sub-user with this username (exact match first, then case-insensitive)."""
        users = await self.list_sub_users()
        for user in users:
            if user.username == username:
                return user
        folded = username.casefold()
        for user in users:
            if user.username.casefold() == folded:
                return user
        return None

    # -- machinery ---------------------------------------------------------------------------

    async def _call(self, method: str, endpoint: str, **kwargs: Any) -> dict[str, Any]:
        data = await self.http.request_json(method, endpoint, **kwargs)
        if not isinstance(data, dict):
            raise _bad_answer(f"lucydream: {endpoint} answer is not a JSON object", data)
        if data.get("success") is False:
            raise _failed_body(endpoint, data)
        return data
