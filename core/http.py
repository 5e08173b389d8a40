"""The one HTTP layer for backends: timeouts, retries with backoff and jitter, ``Retry-After``,
rate limiting and error mapping, around one ``httpx.AsyncClient`` per backend instance.

Retry policy (why: a retried chat turn is a duplicated chat turn):

* a request that never reached the provider (connect error, connect/pool timeout) is retried,
  whatever its method;
* an explicit refusal (429, or 503 with ``Retry-After``) is retried, whatever its method;
* anything else (5xx, read timeout, dropped connection) is retried only for idempotent methods
  (GET, HEAD, PUT, DELETE, OPTIONS) or when the caller says ``idempotent=True``.

Provider SDK retries do not exist here: this is the only place that retries (but for aiohttp
resending an idempotent request once when the kept-alive connection it took turns out closed;
never a POST).

Bounds (nothing is read or awaited without one):

* ``timeout`` bounds each attempt of :meth:`HttpClient.request` / ``request_json`` whole, from
  connecting to the last byte of the body (a body trickling in byte by byte too); connecting
  gets at most 90 % of it (and 10 s), so that a connect that did not happen is known as such
  and retried. For :meth:`HttpClient.stream` it bounds the time to the response headers; the
  body is bounded by ``stream_idle_timeout`` for each gap between chunks instead, whatever the
  consumer calls (``aiter_bytes``, ``aiter_lines``, ``aiter_text``, ``aiter_raw``, ``aread``).
* ``max_response_bytes`` bounds what is read of a body, decompressed (and on the wire), on
  every path: more is a :class:`ProtocolError` ("answered more than N bytes"), found without
  reading or inflating the rest (:mod:`tgmux.http_body`). An error answer's body is read up
  to :data:`MAX_ERROR_BODY_BYTES`, the rest dropped.
* a ``Retry-After`` longer than ``max_retry_after`` is not waited for: the request fails at once
  (:class:`RateLimitedError` for a 429, with a user message saying when to try again), and every
  request on the same credentials (the same limiter, or else the same client) is answered the
  same way, without asking the provider, until then (at most :attr:`HttpClient.max_refusal`).
  The shared limiter is penalized only by a ``Retry-After`` within ``max_retry_after``.

Errors raised while a streamed body is read are :class:`BackendError` kinds too: a stall is a
:class:`BackendTimeoutError`, a connection lost an :class:`UnavailableError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
import logging
import random
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import httpx
import yarl
from httpx_aiohttp import AiohttpTransport
from httpx_aiohttp.transport import map_aiohttp_exceptions
from multidict import CIMultiDict, CIMultiDictProxy

from tgmux import __version__
from tgmux.errors import (
    BackendError,
    BackendTimeoutError,
    ProtocolError,
    RateLimitedError,
    UnavailableError,
    error_for_status,
    format_duration,
    retry_later_message,
)
from tgmux.http_body import ACCEPT_ENCODING, guard_body, join_bounded, read_body
from tgmux.proxy import ProxyRoute
from tgmux.ratelimit import SENT_TRACE, Limiter, acquire_slot, slot_sent
from tgmux.retry_after import parse_retry_after
from tgmux.types import delay_notifier

log = logging.getLogger("tgmux.http")

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})

ErrorParser = Callable[[httpx.Response], BackendError]

#: Headers that carry a provider's id for a request, most specific first.
REQUEST_ID_HEADERS = (
    "x-request-id", "request-id", "x-amzn-requestid", "x-correlation-id", "cf-ray",
)
#: How much of an error answer's body is read (for the error parser and the logs).
MAX_ERROR_BODY_BYTES = 64 * 1024
DEFAULT_MAX_RESPONSE_BYTES = 4 * 1024 * 1024
#: Connecting gets this share of ``timeout`` (so it fails, provably unsent, before the request's
#: own bound runs out), and at most ``MAX_CONNECT_TIMEOUT`` seconds.
CONNECT_SHARE = 0.9
MAX_CONNECT_TIMEOUT = 10.0


def request_id_from(headers: Mapping[str, str]) -> str | None:
    """The provider's request id from a response's headers (:data:`REQUEST_ID_HEADERS`)."""
    for name in REQUEST_ID_HEADERS:
        value = headers.get(name)
        if value:
            return value.strip()[:200]
    return None


def _ids(error: BackendError) -> dict[str, Any]:
    """A log record's ``request_id`` field (JSON logs), when the provider gave one."""
    return {"request_id": error.request_id} if error.request_id else {}


def default_error_parser(response: httpx.Response) -> BackendError:
    """Map a status to an error kind, keeping a short excerpt of the body for logs."""
    text = response.text[:300] if response.content else ""
    return error_for_status(response.status_code)(
        f"HTTP {response.status_code}",
        status=response.status_code,
        provider_message=text or response.reason_phrase,
        request_id=request_id_from(response.headers),
    )


#: New connections being opened at once, per client: beyond the listen backlogs of providers,
#: and on the client's own core, a storm of thousands of concurrent connects makes each one
#: wait for all the others; a bounded storm opens them in order, each in milliseconds.
CONNECTS_IN_FLIGHT = 128


class _PacedConnector(aiohttp.TCPConnector):
    """aiohttp's pool, opening at most ``connects_in_flight`` new connections at once (the
    wait for a turn counts against the connect timeout, as the wait for a pooled connection
    does: a request that timed out there was never sent)."""

    def __init__(self, *, connects_in_flight: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._connecting = asyncio.Semaphore(connects_in_flight)

    async def _create_connection(self, req: Any, traces: Any, timeout: Any) -> Any:
        # aiohttp's own hook for how a connection is made (its Unix and pipe connectors
        # override it too); pooled connections never get here.
        async with self._connecting:
            return await super()._create_connection(req, traces, timeout)


def _session(max_connections: int, proxy: ProxyRoute | None,
             limiter: Limiter | None) -> aiohttp.ClientSession:
    """The one aiohttp pool of a client, for both of its paths (see :class:`HttpClient`):
    httpcore's pool slows to seconds per request with a thousand concurrent connections (see
    docs/benchmarks.md); aiohttp's does not. Cookies stay with httpx (a dummy jar here), so
    they are sent once."""
    return aiohttp.ClientSession(
        connector=_PacedConnector(
            limit=max_connections, limit_per_host=max_connections,
            connects_in_flight=CONNECTS_IN_FLIGHT),
        cookie_jar=aiohttp.DummyCookieJar(), **(proxy.session_options() if proxy else {}),
        trace_configs=None if limiter is None else [SENT_TRACE])  # (80 µs a request)


#: A multipart file field: (file name, bytes, content type).
MultipartFile = tuple[str, bytes, str]


def multipart_body(files: Mapping[str, MultipartFile], form: Mapping[str, str],
                   headers: dict[str, str] | None) -> tuple[bytes, dict[str, str]]:
    """A ``multipart/form-data`` body as bytes (httpx encodes it; bytes can be sent again
    when a retry is allowed) and the headers with its ``Content-Type``."""
    encoded = httpx.Request("POST", "http://multipart.invalid/", data=dict(form),
                            files=dict(files))
    return encoded.read(), {**(headers or {}), "Content-Type": encoded.headers["Content-Type"]}


def encode_json(value: Any) -> bytes:
    """A JSON body as httpx encodes it (compact, UTF-8, no NaN): the same bytes either path."""
    return jsonlib.dumps(
        value, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")


class _Answer:
    """A whole answer read on the direct path (status < 400): what ``request_json`` needs,
    without building httpx objects."""

    __slots__ = ("content", "headers", "raw_headers", "reason", "status_code", "url")

    def __init__(self, status_code: int, headers: CIMultiDictProxy[str],
                 raw_headers: tuple[tuple[bytes, bytes], ...], content: bytes,
                 reason: str | None, url: yarl.URL) -> None:
        self.status_code = status_code
        self.headers = headers
        self.raw_headers = raw_headers
        self.content = content
        self.reason = reason
        self.url = url


class _ErrorAnswer(Exception):
    """An attempt's answer of 400 or more (its body read, bounded), for the retry policy."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response


Answered = TypeVar("Answered", httpx.Response, _Answer)

def never_reached(exc: httpx.TransportError) -> bool:
    """Did the request certainly not reach the provider? (Only then is a POST repeated.)
    The aiohttp transport maps every aiohttp connection error (a server disconnect mid-request
    too) to ConnectTimeout; only a failed connect (refused, unresolvable, TLS failed, or timed
    out: aiohttp's ConnectionTimeoutError, which covers waiting for a pooled connection too)
    proves nothing was sent."""
    if not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout):
        return False
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    return True


def timed_out(exc: httpx.TransportError) -> bool:
    """Did the transport give up waiting, rather than the connection break? The aiohttp
    transport maps a server disconnect or a reset to httpx's ConnectTimeout, so the aiohttp
    cause decides: its timeouts (``ServerTimeoutError`` and subclasses) are ``TimeoutError``s."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.ClientError):
        return isinstance(cause, asyncio.TimeoutError)
    return isinstance(exc, httpx.TimeoutException)


@dataclass
class _Refusal:
    """The provider said "not before ``until``" (monotonic), further than we wait."""

    until: float
    error_class: type[BackendError]
    status: int
    user_message: str | None  # the parser's own text, if it gave one


# Refusals per limiter (shared by everything on the same credentials) or per client.
_refusals: weakref.WeakKeyDictionary[object, _Refusal] = weakref.WeakKeyDictionary()


#: Headers httpx's client sets that the direct path leaves to aiohttp, which only asks for the
#: encodings it can decode and manages keep-alive itself.
_AIOHTTP_OWN_HEADERS = frozenset({b"accept-encoding", b"connection"})


def _as_the_transport_maps(exc: aiohttp.ClientError) -> Exception:
    """``exc`` as the httpx transport raises it (an httpx error caused by ``exc``, or ``exc``
    itself), so that the direct path's failures are judged as the httpx path's are."""
    try:
        with map_aiohttp_exceptions():
            raise exc
    except Exception as mapped:
        return mapped
    raise AssertionError("unreachable")  # pragma: no cover


class HttpClient:
    """A backend's HTTP client. Every backend instance owns one; close it with :meth:`aclose`.

    Two paths share one aiohttp pool of at most ``max_connections`` connections (requests in
    flight included), with the same policy, bounds and errors: :meth:`request` and
    :meth:`request_json` go straight to aiohttp (the hot path: no httpx objects are built
    unless the answer is an error or the caller wants an ``httpx.Response``); :meth:`stream`,
    a client given its own ``transport``, and a client holding cookies go through httpx, whose
    request and response objects cost about 0.3 ms of CPU per request (docs/benchmarks.md).
    """

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
        limiter: Limiter | None = None,
        error_parser: ErrorParser = default_error_parser,
        name: str = "backend",
        transport: httpx.AsyncBaseTransport | None = None,
        cookies: httpx.Cookies | None = None,
        max_connections: int = 256,
        stream_idle_timeout: float | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        proxy: ProxyRoute | None = None,  # tgmux.proxy: set up there, only used here
    ) -> None:
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if isinstance(max_connections, bool) or not isinstance(max_connections, int) \
                or max_connections < 1:
            raise ValueError(f"max_connections must be a positive integer, not "
                             f"{max_connections!r}")
        self.name = name
        self.timeout = timeout
        #: The longest gap between two chunks of a streamed body (default: ``timeout``).
        self.stream_idle_timeout = timeout if stream_idle_timeout is None else stream_idle_timeout
        if self.stream_idle_timeout <= 0:
            raise ValueError("stream_idle_timeout must be > 0")
        self.max_response_bytes = max_response_bytes
        self.max_error_bytes = MAX_ERROR_BODY_BYTES
        self.max_connections = max_connections
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.max_retry_after = max_retry_after
        self.notify_after = notify_after
        self.limiter = limiter
        self.proxy = proxy
        self.error_parser = error_parser
        #: How long a refusal beyond ``max_retry_after`` is remembered at most: then the
        #: provider is asked again (and may refuse again).
        self.max_refusal = 86400.0
        self._refusal_key: object = limiter if limiter is not None else self
        self._urls: dict[str, httpx.URL] = {}
        self._targets: dict[str, tuple[yarl.URL, str]] = {}
        self._direct = transport is None
        self._session: aiohttp.ClientSession | None = None
        self._header_source: list[tuple[bytes, bytes]] | None = None
        self._plain_headers: CIMultiDict[str] = CIMultiDict()
        self._json_headers: CIMultiDict[str] = CIMultiDict()
        connect = min(CONNECT_SHARE * timeout, MAX_CONNECT_TIMEOUT)
        # Per read, a backstop only: the bounds that count are ours (see the module doc).
        read_backstop = max(timeout, self.stream_idle_timeout) + 1.0
        # What the httpx transport derives from httpx.Timeout below; no read backstop, as
        # the whole attempt is bounded by ``timeout`` (one timer fewer per request).
        self._aiohttp_timeout = aiohttp.ClientTimeout(
            total=None, connect=connect, sock_connect=connect)
        self._client = httpx.AsyncClient(
            base_url=base_url,
            timeout=httpx.Timeout(read_backstop, connect=connect, pool=connect),
            headers={"User-Agent": f"tgmux/{__version__}", **(headers or {})},
            transport=transport or AiohttpTransport(client=self._shared_session),
            cookies=cookies,
            follow_redirects=False,
        )

    def _shared_session(self) -> aiohttp.ClientSession:
        """The aiohttp pool, made on first use (inside the event loop, as aiohttp wants)."""
        if self._session is None:
            self._session = _session(self.max_connections, self.proxy, self.limiter)
        return self._session

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

    def _target(self, url: str, params: dict[str, Any] | None) -> tuple[yarl.URL, str]:
        """The direct path's URL (as httpx would send it) and its path (for messages)."""
        if params:  # merged as httpx merges them; not cached (the values vary)
            merged = self._absolute(url).copy_merge_params(params)
            return yarl.URL(str(merged), encoded=True), merged.path
        found = self._targets.get(url)
        if found is None:
            absolute = self._absolute(url)
            found = yarl.URL(str(absolute), encoded=True), absolute.path
            if len(self._targets) < 1024:
                self._targets[url] = found
        return found

    def _direct_headers(self, extra: dict[str, str] | None,
                        json_body: bool) -> CIMultiDict[str]:
        """The client's headers (as :attr:`headers` holds them now) with ``extra`` on top, for
        the direct path; rebuilt only when :attr:`headers` changed."""
        raw = self._client.headers.raw
        if raw != self._header_source:
            base: CIMultiDict[str] = CIMultiDict(
                (k.decode("latin-1"), v.decode("latin-1"))
                for k, v in raw if k.lower() not in _AIOHTTP_OWN_HEADERS)
            self._plain_headers = base
            self._json_headers = CIMultiDict(base)
            self._json_headers["Content-Type"] = "application/json"
            self._header_source = raw
        chosen = self._json_headers if json_body else self._plain_headers
        if not extra:
            return chosen  # aiohttp copies what it is given: never changed in place
        merged = CIMultiDict(chosen)
        merged.update(extra)
        return merged

    def _goes_direct(self, content: bytes | None) -> bool:
        # Cookies need httpx's jar (set and sent per RFC 6265); a raw body keeps httpx's
        # headers for it; a closed client gets httpx's error.
        return (self._direct and content is None and not self._client.is_closed
                and not self._client.cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._client.cookies

    @property
    def headers(self) -> httpx.Headers:
        return self._client.headers

    async def aclose(self) -> None:
        await self._client.aclose()
        if self._session is not None and not self._session.closed:
            await self._session.close()  # made by the direct path, never by the transport

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
        files: Mapping[str, MultipartFile] | None = None,
        form: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        expected_statuses: Collection[int] = (),
    ) -> httpx.Response:
        """Send a request; return the 2xx/3xx response or raise a :class:`BackendError`.

        ``files`` (and ``form`` fields beside them) send a ``multipart/form-data`` body:
        ``files={"file": ("voice.ogg", data, "audio/ogg")}, form={"model": "whisper-1"}``.
        ``expected_statuses`` are answers the caller handles (Sensay's 401 for a user it does
        not know yet): raised all the same, logged at DEBUG instead of as a warning."""
        if files is not None or form is not None:
            content, headers = multipart_body(files or {}, form or {}, headers)
        if self._goes_direct(content):
            answer = await self._request_direct(method, url, json, params, headers, idempotent,
                                                expected_statuses)
            return self._httpx_response(method.upper(), answer.url, answer.status_code,
                                        answer.raw_headers, answer.content, answer.reason)
        request = self._client.build_request(
            method, self._absolute(url), json=json, params=params, headers=headers,
            content=content,
        )
        async with self._send(request, stream=False, idempotent=idempotent,
                              expected=expected_statuses) as response:
            return response

    async def request_json(self, method: str, url: str, **kwargs: Any) -> Any:
        """:meth:`request`, then the body as JSON (a :class:`ProtocolError` if it is not)."""
        multipart = kwargs.get("files") is not None or kwargs.get("form") is not None
        if not multipart and self._goes_direct(kwargs.get("content")):
            answer = await self._request_direct(
                method, url, kwargs.get("json"), kwargs.get("params"), kwargs.get("headers"),
                kwargs.get("idempotent"), kwargs.get("expected_statuses", ()))
            content, status, path = answer.content, answer.status_code, answer.url.path
            response_headers: Mapping[str, str] = answer.headers
        else:
            response = await self.request(method, url, **kwargs)
            content, status, path = response.content, response.status_code, \
                response.request.url.path
            response_headers = response.headers
        try:
            return jsonlib.loads(content)
        except ValueError as exc:
            error = ProtocolError(
                f"{self.name}: {method} {path} answered non-JSON",
                status=status,
                provider_message=content.decode("utf-8", "replace")[:200],
                request_id=request_id_from(response_headers),
            )
            log.warning("%s: %s %s failed: %s", self.name, method, path, error.log_text(),
                        extra=_ids(error))
            raise error from exc

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
        expected_statuses: Collection[int] = (),
    ) -> AsyncIterator[httpx.Response]:
        """A streamed response (body not read yet); errors before the body are raised here.

        ``timeout`` bounds the wait for the headers; reading the body (any ``aiter_*`` or
        ``aread``) is bounded by ``stream_idle_timeout`` per gap between chunks and by
        ``max_response_bytes`` in all, and raises :class:`BackendError` kinds only."""
        request = self._client.build_request(
            method, self._absolute(url), json=json, params=params, headers=headers
        )
        async with self._send(request, stream=True, idempotent=idempotent,
                              expected=expected_statuses) as response:
            yield response

    # -- machinery ---------------------------------------------------------------------------

    async def _wait(self, seconds: float, why: str) -> None:
        if seconds >= self.notify_after and (notify := delay_notifier.get()) is not None:
            await notify(seconds)
        log.info("%s: waiting %.1fs (%s)", self.name, seconds, why)
        await asyncio.sleep(seconds)

    def _backoff(self, attempt: int) -> float:
        base = min(self.max_backoff, self.backoff * (2**attempt))
        return base / 2 + random.uniform(0, base / 2)  # "equal jitter"

    def _transport_failure(
        self, exc: httpx.TransportError, where: str, safe_to_repeat: bool
    ) -> tuple[bool, BackendError]:
        """(repeat it?, the error) for a transport error."""
        if self.proxy is not None and (problem := self.proxy.failure(exc)) is not None:
            return True, UnavailableError(f"{self.name}: {where}: {problem}")  # never sent
        detail = str(exc) or type(exc).__name__
        if never_reached(exc):  # repeating cannot duplicate anything, whatever the method
            return True, UnavailableError(
                f"{self.name}: {where}: cannot connect", provider_message=detail)
        if timed_out(exc):
            return safe_to_repeat, BackendTimeoutError(
                f"{self.name}: {where}: timed out", provider_message=detail)
        # Dropped, reset, cut short: the provider may have got it, so only idempotent requests
        # are repeated; and it is not "took too long".
        return safe_to_repeat, UnavailableError(
            f"{self.name}: {where}: connection lost", provider_message=detail)

    def _too_big(self, where: str, limit: int, request_id: str | None) -> BackendError:
        return ProtocolError(
            f"{self.name}: {where} answered more than {limit} bytes", request_id=request_id)

    def _guard(self, response: httpx.Response, where: str, request_id: str | None, *,
               limit: int | None, idle: float | None, convert: bool, lenient: bool) -> None:
        """Bound ``response``'s body (:mod:`tgmux.http_body`); with ``convert``, transport
        errors while it is read become :class:`BackendError` kinds too; ``lenient``: an error
        answer, whose status decides even when its body cannot be decoded."""

        def lost(exc: httpx.TransportError) -> BackendError:
            error = self._transport_failure(exc, where, False)[1]
            error.request_id = request_id
            return error

        guard_body(
            response, limit=limit, idle=idle, lost=lost if convert else None, lenient=lenient,
            too_big=lambda: self._too_big(where, limit or 0, request_id),
            stalled=lambda: BackendTimeoutError(
                f"{self.name}: {where}: no data for {idle:g} s mid-response",
                request_id=request_id),
            unreadable=lambda why: ProtocolError(
                f"{self.name}: {where}: unreadable answer", provider_message=why,
                request_id=request_id))

    # -- refusals beyond max_retry_after ----------------------------------------------------

    def _refuse(self, retry_after: float, error: BackendError, status: int) -> None:
        until = time.monotonic() + min(retry_after, self.max_refusal)
        known = _refusals.get(self._refusal_key)
        if known is None or known.until < until:
            _refusals[self._refusal_key] = _Refusal(
                until, type(error), status,
                error.user_message if error.has_own_user_message else None,
            )

    def _check_refusal(self, where: str) -> None:
        """Answer at once while the provider's refusal lasts."""
        refusal = _refusals.get(self._refusal_key)
        if refusal is None:
            return
        left = refusal.until - time.monotonic()
        if left <= 0:
            _refusals.pop(self._refusal_key, None)
            return
        error = refusal.error_class(
            f"{self.name}: {where}: not sent, the provider refused everything for "
            f"{format_duration(left)} more (Retry-After)",
            status=refusal.status, retry_after=left,
            user_message=refusal.user_message or retry_later_message(
                refusal.error_class.kind, left),
        )
        log.info("%s: %s", self.name, error.log_text(), extra=_ids(error))
        raise error

    # -- one attempt -------------------------------------------------------------------------

    async def _attempt(
        self, request: httpx.Request, *, stream: bool, where: str
    ) -> httpx.Response:
        """Send once through httpx: the response with its body read (and bounded) unless
        ``stream``; an answer of 400 or more is raised as :class:`_ErrorAnswer`. Bounded whole
        by ``timeout`` (a ``TimeoutError`` when it runs out)."""
        response: httpx.Response | None = None
        try:
            async with asyncio.timeout(self.timeout):
                request.headers["Accept-Encoding"] = ACCEPT_ENCODING  # what the guard reads
                response = await self._client.send(request, stream=True)
                request_id = request_id_from(response.headers)
                failed = response.status_code >= 400
                limit = None if failed else self.max_response_bytes
                self._guard(response, where, request_id, limit=limit,
                            idle=self.stream_idle_timeout if stream and not failed else None,
                            convert=stream and not failed, lenient=failed)
                if failed or not stream:
                    await read_body(response, self.max_error_bytes if failed else
                                    self.max_response_bytes,
                                    None if failed else lambda: self._too_big(
                                        where, self.max_response_bytes, request_id))
                    await response.aclose()
        except BaseException:
            if response is not None:
                with contextlib.suppress(Exception):
                    await response.aclose()
            raise
        if response.status_code >= 400:
            raise _ErrorAnswer(response)
        return response

    async def _attempt_direct(
        self, method: str, url: yarl.URL, headers: CIMultiDict[str], body: bytes | None,
        where: str,
    ) -> _Answer:
        """:meth:`_attempt` (not streamed) straight on aiohttp. aiohttp's errors are mapped as
        the httpx transport maps them, so that one policy judges both paths."""
        response: aiohttp.ClientResponse | None = None
        try:
            async with asyncio.timeout(self.timeout):
                response = await self._shared_session().request(
                    method, url, headers=headers, data=body, allow_redirects=False,
                    timeout=self._aiohttp_timeout)
                status = response.status
                if status >= 400:
                    content = await join_bounded(
                        response.content.iter_any(), self.max_error_bytes, None)
                else:
                    content = await join_bounded(
                        response.content.iter_any(), self.max_response_bytes,
                        lambda: self._too_big(where, self.max_response_bytes,
                                              request_id_from(response.headers)))
        except aiohttp.ClientError as exc:
            if response is not None:
                response.close()
            raise _as_the_transport_maps(exc)  # noqa: B904 (its cause is exc already)
        except BaseException:
            if response is not None:
                response.close()
            raise
        response.release()  # back to the pool (closed instead if a body was left unread)
        if status >= 400 or "Set-Cookie" in response.headers:
            as_httpx = self._httpx_response(method, url, status, response.raw_headers, content,
                                            response.reason)
            self._client.cookies.extract_cookies(as_httpx)  # as httpx's client does
            if status >= 400:
                raise _ErrorAnswer(as_httpx)
        return _Answer(status, response.headers, response.raw_headers, content,
                       response.reason, url)

    def _httpx_response(
        self, method: str, url: yarl.URL, status: int,
        raw_headers: tuple[tuple[bytes, bytes], ...], content: bytes, reason: str | None,
    ) -> httpx.Response:
        """An already read (and decoded) answer as a closed ``httpx.Response``."""
        response = httpx.Response(
            status, headers=raw_headers, stream=httpx.ByteStream(content),
            request=httpx.Request(method, str(url)),
            extensions={"http_version": b"HTTP/1.1",
                        **({"reason_phrase": reason.encode()} if reason else {})},
        )
        response._content = content  # decoded already: httpx must not decode it again
        response.close()
        return response

    async def _request_direct(
        self, method: str, url: str, json: Any, params: dict[str, Any] | None,
        headers: dict[str, str] | None, idempotent: bool | None, expected: Collection[int],
    ) -> _Answer:
        method = method.upper()
        target, path = self._target(url, params)
        where = f"{method} {path}"
        body = None if json is None else encode_json(json)
        merged = self._direct_headers(headers, body is not None)
        safe_to_repeat = idempotent if idempotent is not None else method in IDEMPOTENT_METHODS
        return await self._retrying(
            where, safe_to_repeat,
            lambda: self._attempt_direct(method, target, merged, body, where), expected)

    # -- the policy around attempts ----------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _send(
        self, request: httpx.Request, *, stream: bool, idempotent: bool | None,
        expected: Collection[int],
    ) -> AsyncIterator[httpx.Response]:
        safe_to_repeat = (
            idempotent if idempotent is not None else request.method in IDEMPOTENT_METHODS
        )
        where = f"{request.method} {request.url.path}"
        response = await self._retrying(
            where, safe_to_repeat, lambda: self._attempt(request, stream=stream, where=where),
            expected)
        try:
            yield response
        finally:
            await response.aclose()

    async def _retrying(self, where: str, safe_to_repeat: bool,
                        attempt: Callable[[], Awaitable[Answered]],
                        expected: Collection[int] = ()) -> Answered:
        """Attempts until one is answered below 400, or the policy (module doc) says stop."""
        tries = 0
        while True:
            self._check_refusal(where)
            if self.limiter is not None:
                await acquire_slot(self.limiter, self.notify_after)
                self._check_refusal(where)
            started = time.monotonic()
            error: BackendError
            answered: httpx.Response | None = None
            try:
                answer = await attempt()
            except _ErrorAnswer as refused:
                answered = refused.response
            except httpx.TransportError as exc:
                retry, error = self._transport_failure(exc, where, safe_to_repeat)
                cause: BaseException = exc
            except TimeoutError as exc:  # our bound on the whole attempt
                retry, error = safe_to_repeat, BackendTimeoutError(
                    f"{self.name}: {where}: no complete answer within {self.timeout:g} s")
                cause = exc
            except aiohttp.ClientError as exc:  # one the transport does not map: not HTTP
                retry, error = safe_to_repeat, ProtocolError(
                    f"{self.name}: {where}: unreadable answer",
                    provider_message=str(exc) or type(exc).__name__)
                cause = exc
            except BackendError as exc:  # a body over the cap: answered, so not repeated
                log.warning("%s: %s failed: %s", self.name, where, exc.log_text(),
                            extra=_ids(exc))
                raise
            else:
                log.debug("%s: %s -> %s in %.0f ms", self.name, where, answer.status_code,
                          (time.monotonic() - started) * 1000)
                return answer
            finally:  # not sent (failed before its headers went out): counts from now
                slot_sent(self.limiter)
            if answered is not None:  # out of the except block: its error stands alone
                pause = self._judge_answer(answered, where, safe_to_repeat, tries, expected)
                await self._wait(pause, f"{where}: HTTP {answered.status_code}")
                tries += 1
                continue
            if retry and tries < self.retries:
                await self._wait(self._backoff(tries), f"{where}: {type(cause).__name__}")
                tries += 1
                continue
            log.warning("%s: %s failed: %s", self.name, where, error.log_text(),
                        extra=_ids(error))
            raise error from cause

    def _judge_answer(self, response: httpx.Response, where: str, safe_to_repeat: bool,
                      tries: int, expected: Collection[int]) -> float:
        """An answer of 400 or more: how long to wait before repeating it, or its error."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        refused = response.status_code == 429 or (
            response.status_code == 503 and retry_after is not None
        )
        too_long = retry_after is not None and retry_after > self.max_retry_after
        if refused and self.limiter is not None and retry_after and not too_long:
            # Everyone on these credentials waits; never longer than max_retry_after.
            self.limiter.penalize(retry_after)
        retryable = refused or (safe_to_repeat and response.status_code >= 500)
        pause = retry_after if retry_after is not None else self._backoff(tries)
        if retryable and tries < self.retries and pause <= self.max_retry_after:
            return pause
        error = self.error_parser(response)
        if error.status is None:
            error.status = response.status_code
        if retry_after is not None and error.retry_after is None:
            error.retry_after = retry_after
        if response.status_code == 429 and not isinstance(error, RateLimitedError):
            error = RateLimitedError(
                str(error), status=429, provider_message=error.provider_message,
                request_id=error.request_id, retry_after=retry_after,
                user_message=error.user_message if error.has_own_user_message else None,
                details=error.details,
            )
        if not error.request_id:
            error.request_id = request_id_from(response.headers)
        if refused and too_long and retry_after is not None:
            if not error.has_own_user_message:
                error.user_message = retry_later_message(error.kind, retry_after)
            self._refuse(retry_after, error, response.status_code)
        log.log(logging.DEBUG if response.status_code in expected else logging.WARNING,
                "%s: %s failed: %s", self.name, where, error.log_text(), extra=_ids(error))
        raise error
