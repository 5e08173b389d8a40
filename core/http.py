"""The one HTTP layer for backends: timeouts, retries with backoff and jitter, ``Retry-After``,
rate limiting and error mapping, around one ``httpx.AsyncClient`` per backend instance.

Retry policy (why: a retried chat turn is a duplicated chat turn):

* a request that never reached the provider (connect error, connect/pool timeout) is retried,
  whatever its method;
* an explicit refusal (429, or 503 with ``Retry-After``) is retried, whatever its method;
* anything else (5xx, read timeout, dropped connection) is retried only for idempotent methods
  (GET, HEAD, PUT, DELETE, OPTIONS) or when the caller says ``idempotent=True``.

Provider SDK retries do not exist here: this is the only place that retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from tgmux import __version__
from tgmux.errors import (
    BackendError,
    BackendTimeoutError,
    ProtocolError,
    RateLimitedError,
    UnavailableError,
    error_for_status,
)
from tgmux.ratelimit import SlidingWindowLimiter
from tgmux.types import delay_notifier

log = logging.getLogger("tgmux.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

ErrorParser = Callable[[httpx.Response], BackendError]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def default_error_parser(response: httpx.Response) -> BackendError:
    """Map a status to an error kind, keeping a short excerpt of the body for logs."""
    text = response.text[:300] if response.content else ""
    return error_for_status(response.status_code)(
        f"HTTP {response.status_code}",
        status=response.status_code,
        provider_message=text or response.reason_phrase,
    )


async def acquire_slot(limiter: SlidingWindowLimiter | None, notify_after: float) -> None:
    """Wait for the limiter; when the wait is ``notify_after`` seconds or more, tell the user
    first (through :data:`delay_notifier`). For any provider transport, HTTP or not."""
    if limiter is None:
        return
    pause = limiter.delay()
    if pause >= notify_after and (notify := delay_notifier.get()) is not None:
        await notify(pause)
    await limiter.acquire()


def _transport(max_connections: int) -> AiohttpTransport:
    """httpx's API over aiohttp's connection pool: httpcore's pool slows to seconds per request
    with a thousand concurrent connections (see docs/benchmarks.md); aiohttp's does not.
    Cookies stay with httpx (a dummy jar here), so they are sent once."""

    def session() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=max_connections),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    return AiohttpTransport(client=session)


def never_reached(exc: httpx.TransportError) -> bool:
    """Did the request certainly not reach the provider? (Only then is a POST repeated.)
    The aiohttp transport maps every aiohttp connection error (a server disconnect mid-request
    too) to ConnectTimeout; only a failed connect proves nothing was sent."""
    if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return False
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, aiohttp.ClientConnectorError)
    return True


class HttpClient:
    """A backend's HTTP client. Every backend instance owns one; close it with :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        headers: dict[str, str] | None = None,
        retries: int = 2,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        max_retry_after: float = 60.0,
        notify_after: float = 5.0,
        limiter: SlidingWindowLimiter | None = None,
        error_parser: ErrorParser = default_error_parser,
        name: str = "backend",
        transport: httpx.AsyncBaseTransport | None = None,
        cookies: httpx.Cookies | None = None,
        max_connections: int = 256,
    ) -> None:
        self.name = name
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.notify_after = notify_after
        self.limiter = limiter
        self.error_parser = error_parser
        self._urls: dict[str, httpx.URL] = {}
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            headers={"User-Agent": f"tgmux/{__version__}", **(headers or {})},
            transport=transport or _transport(max_connections),
            cookies=cookies,
            follow_redirects=False,
        )

    def _absolute(self, url: str) -> httpx.URL:
        """The absolute URL for a path, cached: httpx re-parses and merges the base URL on every
        request otherwise, a measurable share of a busy bot's CPU (docs/benchmarks.md)."""
        found = self._urls.get(url)
        if found is None:
            if "://" in url:
                found = httpx.URL(url)
            else:  # as httpx merges: a path is relative to the base URL's path
                base = str(self._client.base_url)
                found = httpx.URL(base.rstrip("/") + "/" + url.lstrip("/"))
            if len(self._urls) < 1024:
                self._urls[url] = found
        return found

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    @property
    def headers(self) -> httpx.Headers:
        return self._client.headers

    async def aclose(self) -> None:
        await self._client.aclose()

    async def __aenter__(self) -> HttpClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- public calls ------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """Send a request; return the 2xx/3xx response or raise a :class:`BackendError`."""
        request = self._client.build_request(
            method, self._absolute(url), json=json, params=params, headers=headers,
            content=content,
        )
        async with self._send(request, stream=False, idempotent=idempotent) as response:
            return response

    async def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """:meth:`request`, then the body as JSON (a :class:`ProtocolError` if it is not)."""
        response = await self.request(method, url, **kwargs)
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(
                f"{self.name}: {method} {response.request.url.path} answered non-JSON",
                status=response.status_code,
                provider_message=response.text[:200],
            ) from exc

    @contextlib.asynccontextmanager
    async def stream(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> AsyncIterator[httpx.Response]:
        """A streamed response (body not read yet); errors before the body are raised here."""
        request = self._client.build_request(
            method, self._absolute(url), json=json, params=params, headers=headers
        )
        async with self._send(request, stream=True, idempotent=idempotent) as response:
            yield response

    # -- machinery ---------------------------------------------------------------------------

    async def _wait(self, seconds: float, why: str) -> None:
        if seconds >= self.notify_after and (notify := delay_notifier.get()) is not None:
            await notify(seconds)
        log.info("%s: waiting %.1fs (%s)", self.name, seconds, why)
        await asyncio.sleep(seconds)

    async def _acquire_slot(self) -> None:
        await acquire_slot(self.limiter, self.notify_after)

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base / 2 + random.uniform(0, base / 2)  # "equal jitter"

    @contextlib.asynccontextmanager
    async def _send(
        self, request: httpx.Request, *, stream: bool, idempotent: bool | None
    ) -> AsyncIterator[httpx.Response]:
        safe_to_repeat = (
            idempotent if idempotent is not None else request.method in IDEMPOTENT_METHODS
        )
        where = f"{request.method} {request.url.path}"
        attempt = 0
        while True:
            await self._acquire_slot()
            started = time.monotonic()
            try:
                response = await self._client.send(request, stream=stream)
            except httpx.TransportError as exc:
                if never_reached(exc):
                    # Repeating cannot duplicate anything, whatever the method.
                    retry, error = True, UnavailableError(
                        f"{self.name}: {where}: cannot connect", provider_message=str(exc))
                elif isinstance(exc, httpx.TimeoutException):
                    retry, error = safe_to_repeat, BackendTimeoutError(
                        f"{self.name}: {where}: timed out", provider_message=str(exc))
                else:  # the provider may have got it: only idempotent requests are repeated
                    retry, error = safe_to_repeat, UnavailableError(
                        f"{self.name}: {where}: connection failed", provider_message=str(exc))
                if retry and attempt < self.retries:
                    await self._wait(self._backoff(attempt), f"{where}: {type(exc).__name__}")
                    attempt += 1
                    continue
                log.warning("%s: %s failed: %s", self.name, where, error.log_text())
                raise error from exc

            log.debug(
                "%s: %s -> %s in %.0f ms",
                self.name, where, response.status_code, (time.monotonic() - started) * 1000,
            )
            if response.status_code < 400:
                try:
                    yield response
                finally:
                    await response.aclose()
                return

            if stream:
                await response.aread()
            await response.aclose()
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            refused = response.status_code == 429 or (
                response.status_code == 503 and retry_after is not None
            )
            if refused and self.limiter is not None and retry_after:
                self.limiter.penalize(retry_after)
            retryable = refused or (safe_to_repeat and response.status_code >= 500)
            pause = retry_after if retry_after is not None else self._backoff(attempt)
            if retryable and attempt < self.retries and pause <= self.max_retry_after:
                await self._wait(pause, f"{where}: HTTP {response.status_code}")
                attempt += 1
                continue
            error = self.error_parser(response)
            if error.status is None:
                error.status = response.status_code
            if retry_after is not None and error.retry_after is None:
                error.retry_after = retry_after
            if response.status_code == 429 and not isinstance(error, RateLimitedError):
                error = RateLimitedError(
                    str(error), status=429, provider_message=error.provider_message,
                    request_id=error.request_id, retry_after=retry_after,
                )
            log.warning("%s: %s failed: %s", self.name, where, error.log_text())
            raise error
