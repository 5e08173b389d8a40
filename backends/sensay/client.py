"""A pure async client for Sensay's replica Telegram completion endpoint.

Usable without the engine: it only needs :mod:`tgmux.http`, :mod:`tgmux.errors`
and :mod:`tgmux.text`::

    async with SensayClient("org-secret", user_id="tg_42") as sensay:
        data = telegram_data(chat_type="private", chat_id=42, user_id=42, message_id=7)
        print(await sensay.complete(REPLICA, "Hello!", data))
        async for delta in sensay.stream(REPLICA, "Tell me more", data):
            print(delta, end="")

``POST {base_url}/v1/replicas/{replica_uuid}/chat/completions/telegram`` with
``X-ORGANIZATION-SECRET`` and ``X-USER-ID``, body ``{content, skip_chat_history,
telegram_data}``. ``Accept: application/json`` answers ``{"success": true, "content": "…"}``;
``Accept: text/event-stream`` answers a Vercel AI SDK stream (see :mod:`.streams`).

Also, as Sensay's own Telegram bot uses them: ``GET /v1/users/me`` (:meth:`SensayClient.
current_user`), ``POST /v1/users`` (:meth:`SensayClient.create_user`), and
``POST``/``GET /v1/replicas/{replica_uuid}/chat/history/telegram``
(:meth:`SensayClient.record_history`, :meth:`SensayClient.telegram_history`). With
``api_version`` every request carries ``X-API-Version``; each call may name its user
(``X-USER-ID``) and that id's type (``X-USER-ID-TYPE``, e.g. ``telegram``: the id is a linked
Telegram account, not a Sensay user id).

Quirks handled here:

* Error bodies carry ``"success": true`` (as documented): the HTTP status decides, never the
  ``success`` field. ``request_id`` and ``fingerprint`` are kept for logs
  (:attr:`BackendError.request_id`, ``details["fingerprint"]``); ``inner_exception`` is logged
  as its name and message only (never its stack) and never reaches users.
* One documented 200 example is a Ruby hash (``{"content"=>"…", "success"=>true}``); such a
  body is read too.
* ``content`` must be 1..10000 characters. Characters are counted as JavaScript does (UTF-16
  code units, an emoji outside the BMP counts 2), which is never more lenient than the server.
  Out-of-range content raises :class:`BadRequestError` before anything is sent.
* A completion is a POST that lands in the chat history: the HTTP layer never repeats it once
  it may have reached the provider.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from tgmux.errors import (
    AuthError,
    BackendError,
    BackendTimeoutError,
    BadRequestError,
    ProtocolError,
    UnavailableError,
    error_for_status,
)
from tgmux.http import HttpClient
from tgmux.text import split_text, str_or_none, utf16_index, utf16_len, valid_unicode

from .streams import Flavor, StreamParser, flavor_from_headers

log = logging.getLogger("tgmux.backends.sensay")

DEFAULT_BASE_URL = "https://api.sensay.io"
MIN_CONTENT = 1
MAX_CONTENT = 10000
CHAT_TYPES = ("private", "group", "supergroup", "channel")


# -- content -----------------------------------------------------------------------------------


def content_length(text: str) -> int:
    """Length as the API counts it (JavaScript string length: UTF-16 code units)."""
    return utf16_len(text)


def truncate_content(text: str, limit: int = MAX_CONTENT) -> str:
    """The start of ``text`` that fits in ``limit`` units (never half a character)."""
    return text[: utf16_index(text, limit)]


def split_content(text: str, limit: int = MAX_CONTENT) -> list[str]:
    """``text`` in pieces of at most ``limit`` units, cut at a paragraph, line, sentence or
    word boundary (whitespace at a cut is dropped)."""
    return split_text(text, limit)


def check_content(content: str) -> None:
    """Raise :class:`BadRequestError` unless 1 <= length <= 10000 (nothing is sent then)."""
    n = content_length(content)
    if n < MIN_CONTENT:
        raise BadRequestError(
            "sensay: empty content is never sent",
            user_message="Send me a message and I will answer.",
            details={"length": n},
        )
    if n > MAX_CONTENT:
        raise BadRequestError(
            f"sensay: content of {n} characters is over the limit of {MAX_CONTENT}",
            user_message=(
                f"Your message is {n:,} characters long; this AI accepts at most "
                f"{MAX_CONTENT:,}. Please send a shorter message."
            ),
            details={"length": n},
        )


def telegram_data(
    *,
    chat_type: str,
    chat_id: int,
    message_id: int,
    user_id: int | None = None,
    username: str | None = None,
    message_thread_id: int | None = None,
    chat_name: str | None = None,
) -> dict[str, Any]:
    """The ``telegram_data`` object: only the documented keys, absent optional ones omitted
    (never null); ``message_thread_id`` only for a message in a topic/thread; ``chat_name``
    only when given (API versions that know it)."""
    if chat_type not in CHAT_TYPES:
        raise ValueError(f"chat_type must be one of {', '.join(CHAT_TYPES)}, not {chat_type!r}")
    data: dict[str, Any] = {"chat_type": chat_type, "chat_id": chat_id}
    if chat_name:
        data["chat_name"] = chat_name
    if user_id is not None:
        data["user_id"] = user_id
    if username:
        data["username"] = username
    data["message_id"] = message_id
    if message_thread_id is not None:
        data["message_thread_id"] = message_thread_id
    return data


# -- responses ---------------------------------------------------------------------------------

_RUBY_ARROW = re.compile(r'("(?:[^"\\]|\\.)*")|=>|\bnil\b')


def _loads_lenient(text: str) -> Any:
    """JSON, or the Ruby-hash spelling of it that one documented example uses."""
    try:
        return json.loads(text)
    except ValueError:
        pass

    def fix(m: re.Match[str]) -> str:
        if m.group(1) is not None:
            return m.group(1)
        return ":" if m.group(0) == "=>" else "null"

    return json.loads(_RUBY_ARROW.sub(fix, text))  # ValueError if it is neither


def parse_error(response: httpx.Response) -> BackendError:
    """A :class:`BackendError` for an error response; its kind comes from the status."""
    status = response.status_code
    body: Any = None
    if response.content:
        try:
            body = _loads_lenient(response.text)
        except ValueError:
            body = None
    details: dict[str, Any] = {}
    message: str | None = None
    request_id: str | None = None
    if isinstance(body, dict):
        message = str_or_none(body.get("error"))
        request_id = str_or_none(body.get("request_id"))
        if isinstance(body.get("fingerprint"), str):
            details["fingerprint"] = body["fingerprint"]
        inner = body.get("inner_exception")
        if isinstance(inner, dict):  # name and message for the log; the stack stays out
            summary = ": ".join(
                str(inner[k]) for k in ("name", "message") if isinstance(inner.get(k), str)
            )
            if summary:
                details["inner_exception"] = summary[:300]
    elif response.content:
        message = response.text[:300]
    request_id = request_id or response.headers.get("x-request-id")
    return error_for_status(status)(
        f"sensay: HTTP {status}",
        status=status,
        provider_message=message or response.reason_phrase,
        request_id=request_id,
        details=details,
    )


def parse_completion(response: httpx.Response) -> str:
    """The ``content`` of a 200 JSON answer (trusting the status, not ``success``)."""
    try:
        body = _loads_lenient(response.text)
    except ValueError as exc:
        raise ProtocolError(
            "sensay: the completion is not JSON",
            status=response.status_code,
            provider_message=response.text[:200],
        ) from exc
    if not isinstance(body, dict) or not isinstance(body.get("content"), str):
        error = body.get("error") if isinstance(body, dict) else None
        raise ProtocolError(
            "sensay: the completion has no content",
            status=response.status_code,
            provider_message=error if isinstance(error, str) else response.text[:200],
            request_id=body.get("request_id") if isinstance(body, dict) else None,
        )
    return body["content"]


def _is_json(response: httpx.Response) -> bool:
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    return ctype == "application/json" or ctype.endswith("+json")


def _stream_flavor(response: httpx.Response) -> Flavor | None:
    return flavor_from_headers(response.headers)


#: Content types a stream answering a JSON request may come as (HTML is an error page, never a
#: reply).
_TEXT_TYPES = ("text/plain", "text/event-stream", "")


def _is_stream_answer(response: httpx.Response) -> bool:
    """Whether an answer to a JSON request is a stream: announced by an ``x-vercel-ai-*``
    header or ``text/event-stream``, or a ``text/plain`` (or unlabeled) body that is not JSON
    (then the body is the reply: a plain text stream, or a data or UI stream by its first
    bytes)."""
    if _is_json(response):
        return False
    ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
    if _stream_flavor(response) is not None or ctype == "text/event-stream":
        return True
    if ctype not in _TEXT_TYPES or not response.content.strip():
        return False
    try:
        _loads_lenient(response.text)
    except ValueError:
        return True
    return False  # JSON, labeled text/plain: read as the JSON answer


@dataclass(frozen=True)
class HistoryItem:
    """One message of ``GET …/chat/history/telegram``."""

    role: str
    content: str
    created_at: str | None = None


def parse_history(body: Any) -> list[HistoryItem]:
    """The items of a history answer (``{"items": [{role, content, created_at}, …]}``);
    items without a role or content are skipped."""
    items = body.get("items") if isinstance(body, dict) else None
    if not isinstance(items, list):
        raise ProtocolError("sensay: the chat history has no items",
                            provider_message=str(body)[:200])
    found = []
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("content"), str) \
                and isinstance(item.get("role"), str):
            found.append(HistoryItem(item["role"], item["content"],
                                     str_or_none(item.get("created_at"))))
    return found


# -- the client --------------------------------------------------------------------------------


class SensayClient:
    """One organization's access to Sensay replicas.

    ``user_id`` is the default ``X-USER-ID``; each call may name another (and its
    ``user_id_type``). ``api_version`` is sent as ``X-API-Version`` with every request (none:
    the header is left out, and the server takes its default). ``http`` lets a caller pass a
    ready :class:`HttpClient` (its base URL, limiter, retries); otherwise one is made from
    ``base_url`` and ``timeout``.
    """

    def __init__(
        self,
        organization_secret: str,
        *,
        user_id: str | None = None,
        api_version: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        timeout: float = 30.0,
        http: HttpClient | None = None,
        name: str = "sensay",
        http_options: dict[str, Any] | None = None,
    ) -> None:
        self.user_id = user_id
        self.api_version = api_version
        self.name = name
        self._secret = organization_secret
        self.http = http or HttpClient(
            base_url, **{"timeout": timeout, **(http_options or {})}, error_parser=parse_error,
            name=name,
        )

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> SensayClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- requests ------------------------------------------------------------------------------

    @staticmethod
    def path(replica_uuid: str) -> str:
        return f"v1/replicas/{quote(replica_uuid, safe='')}/chat/completions/telegram"

    @staticmethod
    def history_path(replica_uuid: str) -> str:
        return f"v1/replicas/{quote(replica_uuid, safe='')}/chat/history/telegram"

    def _headers(self, accept: str, user_id: str | None,
                 user_id_type: str | None = None) -> dict[str, str]:
        headers = {"X-ORGANIZATION-SECRET": self._secret, "Accept": accept}
        user = user_id if user_id is not None else self.user_id
        if user:
            headers["X-USER-ID"] = user
            if user_id_type:
                headers["X-USER-ID-TYPE"] = user_id_type
        if self.api_version:
            headers["X-API-Version"] = self.api_version
        return headers

    @staticmethod
    def body(content: str, telegram_data: dict[str, Any], skip_chat_history: bool = False,
             image_url: str | None = None) -> dict[str, Any]:
        check_content(content)
        body: dict[str, Any] = {"content": content}
        if image_url is not None:
            body["imageURL"] = image_url
        body["skip_chat_history"] = skip_chat_history
        body["telegram_data"] = telegram_data
        return body

    async def current_user(self, user_id: str, user_id_type: str | None = None,
                           ) -> dict[str, Any] | None:
        """``GET /v1/users/me`` as that user: the user, or None when Sensay does not know it
        (401, as Sensay's own bot reads it)."""
        try:
            body = await self.http.request_json(
                "GET", "v1/users/me",
                headers=self._headers("application/json", user_id, user_id_type),
                expected_statuses={401})  # every new user's first call: not a warning
        except AuthError:
            return None
        return body if isinstance(body, dict) else {}

    async def create_user(self, linked_accounts: list[dict[str, str]]) -> bool:
        """``POST /v1/users`` with these linked accounts (``accountID``, ``accountType``):
        True when created, False when it exists already (409: e.g. another process created it
        first). Safe to repeat, so the HTTP layer may retry it."""
        headers = {"X-ORGANIZATION-SECRET": self._secret, "Accept": "application/json"}
        if self.api_version:
            headers["X-API-Version"] = self.api_version
        try:
            await self.http.request("POST", "v1/users", json={"linkedAccounts": linked_accounts},
                                    headers=headers, idempotent=True,
                                    expected_statuses={409})  # another process was first
        except BadRequestError as exc:
            if exc.status == 409:
                return False
            raise
        return True

    async def record_history(self, replica_uuid: str, content: str,
                             telegram_data: dict[str, Any], *, user_id: str | None = None,
                             user_id_type: str | None = None) -> None:
        """``POST …/chat/history/telegram``: a message the replica did not answer, kept in its
        history (``content`` is cut to 10,000 characters)."""
        if not content.strip():
            raise BadRequestError("sensay: empty content is never recorded")
        await self.http.request(
            "POST", self.history_path(replica_uuid),
            json={"content": truncate_content(content), "telegram_data": telegram_data},
            headers=self._headers("application/json", user_id, user_id_type))

    async def telegram_history(self, replica_uuid: str, *, user_id: str | None = None,
                               user_id_type: str | None = None) -> list[HistoryItem]:
        """``GET …/chat/history/telegram``: the user's Telegram history with the replica."""
        body = await self.http.request_json(
            "GET", self.history_path(replica_uuid),
            headers=self._headers("application/json", user_id, user_id_type))
        return parse_history(body)

    async def complete(
        self,
        replica_uuid: str,
        content: str,
        telegram_data: dict[str, Any],
        skip_chat_history: bool = False,
        *,
        user_id: str | None = None,
        user_id_type: str | None = None,
        image_url: str | None = None,
    ) -> str:
        """Ask for a completion as JSON; return the reply text."""
        body = self.body(content, telegram_data, skip_chat_history, image_url)
        response = await self.http.request(
            "POST", self.path(replica_uuid), json=body,
            headers=self._headers("application/json", user_id, user_id_type),
        )
        if _is_stream_answer(response):  # asked for JSON, got a stream anyway: read it whole
            parser = StreamParser(_stream_flavor(response), name=self.name)
            return valid_unicode("".join([d async for d in parser.parse(_one(response.content))]))
        return parse_completion(response)

    async def stream(
        self,
        replica_uuid: str,
        content: str,
        telegram_data: dict[str, Any],
        skip_chat_history: bool = False,
        *,
        user_id: str | None = None,
        user_id_type: str | None = None,
        image_url: str | None = None,
        usage: list[dict[str, int]] | None = None,
    ) -> AsyncIterator[str]:
        """Ask for a streamed completion; yield text deltas as they arrive. ``usage`` gets
        the tokens a data stream reported at its end (``promptTokens``, ``completionTokens``).

        Raises :class:`~.streams.StreamPartError` (an :class:`UnavailableError`) when the
        stream carries an error part, after the text before it was yielded; a connection lost
        mid-stream is an :class:`UnavailableError`, a stall a :class:`BackendTimeoutError`.
        """
        body = self.body(content, telegram_data, skip_chat_history, image_url)
        async with self.http.stream(
            "POST", self.path(replica_uuid), json=body,
            headers=self._headers("text/event-stream", user_id, user_id_type),
        ) as response:
            request_id = response.headers.get("x-request-id")
            try:
                if _is_json(response):  # the server ignored Accept
                    await response.aread()
                    text = parse_completion(response)
                    if text:
                        yield text
                    return
                parser = StreamParser(_stream_flavor(response), name=self.name)
                async for delta in parser.parse(response.aiter_bytes()):
                    yield delta
                if usage is not None and parser.usage is not None:
                    usage.append(parser.usage)
            except BackendError as exc:
                exc.request_id = exc.request_id or request_id
                raise
            except httpx.TimeoutException as exc:
                raise BackendTimeoutError(
                    f"{self.name}: the stream stalled", provider_message=str(exc) or None,
                    request_id=request_id,
                ) from exc
            except httpx.HTTPError as exc:
                raise UnavailableError(
                    f"{self.name}: the stream broke off", provider_message=str(exc) or None,
                    request_id=request_id,
                ) from exc
            log.debug("%s: %s stream done (finished=%s reason=%s, %d chars)", self.name,
                      parser.flavor, parser.finished, parser.finish_reason, len(parser.text))


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
