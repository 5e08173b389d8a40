"""The HTTP layer under hostile answers: every fault comes from a real server on 127.0.0.1
(an aiohttp app, a raw asyncio server or a listening socket that never accepts)."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import httpx
import pytest
from aiohttp import web

import tgmux.http
from tgmux.errors import (
    AuthError,
    BackendError,
    BackendTimeoutError,
    ProtocolError,
    RateLimitedError,
    UnavailableError,
)
from tgmux.http import HttpClient, default_error_parser
from tgmux.ratelimit import SlidingWindowLimiter
from tgmux.simulator import Fault, SimulatorServer

# -- servers ----------------------------------------------------------------------------------


class Hostile(SimulatorServer):
    """Routes that misbehave on purpose; ``written`` counts body bytes a route got out."""

    name = "hostile"

    def __init__(self) -> None:
        super().__init__()
        self.written = 0

    def routes(self, app: web.Application) -> None:
        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True})

        async def trickle(request: web.Request) -> web.StreamResponse:
            """A 200-byte body, one byte every 0.25 s (each read is quick, the whole is not: 50 s,
            far from any bound a loaded machine could stretch to); ends when the client goes."""
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            response.content_length = 200
            await response.prepare(request)
            for _ in range(200):
                await response.write(b" ")
                await asyncio.sleep(0.25)
            return response

        async def chunks(request: web.Request) -> web.StreamResponse:
            """``n`` lines, ``every`` seconds apart, then a ``stall`` before the end (cut short
            when the client goes: the server's shutdown does not wait for it)."""
            n = int(request.query.get("n", "5"))
            every = float(request.query.get("every", "0.1"))
            stall = float(request.query.get("stall", "0"))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            for i in range(n):
                await response.write(f"data: {i}\n\n".encode())
                await asyncio.sleep(every)
            stalled_until = asyncio.get_running_loop().time() + stall
            while asyncio.get_running_loop().time() < stalled_until:
                if request.transport is None or request.transport.is_closing():
                    return response
                await asyncio.sleep(0.05)
            await response.write(b"data: end\n\n")
            return response

        async def huge(request: web.Request) -> web.StreamResponse:
            """Up to 20 MB at the status asked for, written until the client goes away."""
            status = int(request.query.get("status", "200"))
            response = web.StreamResponse(
                status=status, headers={"Content-Type": "application/json"}
            )
            await response.prepare(request)
            block = b"[" + b"1," * 32767 + b"1]"
            try:
                for _ in range(20 * 1024 * 1024 // len(block)):
                    await response.write(block)
                    self.written += len(block)
            except (ConnectionError, RuntimeError):
                pass
            return response

        async def bomb(request: web.Request) -> web.Response:
            """10 MB of JSON, gzipped to a few kB."""
            body = gzip.compress(b'"' + b"0" * (10 * 1024 * 1024) + b'"')
            return web.Response(
                body=body, headers={"Content-Type": "application/json",
                                    "Content-Encoding": "gzip"},
            )

        async def bomb_stream(request: web.Request) -> web.StreamResponse:
            """An event stream gzipped from 32 MiB to about 32 kB, sent in 4 kB pieces."""
            status = int(request.query.get("status", "200"))
            squeeze = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            line = b"data: " + b"0" * 1017 + b"\n\n"  # 1 KiB
            body = b"".join(squeeze.compress(line * 1024) for _ in range(32)) + squeeze.flush()
            response = web.StreamResponse(status=status, headers={
                "Content-Type": "text/event-stream", "Content-Encoding": "gzip"})
            await response.prepare(request)
            with contextlib.suppress(ConnectionError, RuntimeError):
                for start in range(0, len(body), 4096):
                    await response.write(body[start:start + 4096])
                    self.written += len(body[start:start + 4096])
            return response

        async def html(request: web.Request) -> web.Response:
            status = int(request.query.get("status", "200"))
            header = request.query.get("header", "X-Request-Id")
            return web.Response(
                status=status, text="<html><body>Bad gateway</body></html>",
                content_type="text/html", headers={header: "req-42"},
            )

        app.router.add_route("*", "/ok", ok)
        app.router.add_route("*", "/trickle", trickle)
        app.router.add_route("*", "/chunks", chunks)
        app.router.add_route("*", "/huge", huge)
        app.router.add_route("*", "/bomb", bomb)
        app.router.add_route("*", "/bomb-stream", bomb_stream)
        app.router.add_route("*", "/html", html)


@pytest.fixture
async def server() -> AsyncIterator[Hostile]:
    async with Hostile() as sim:
        yield sim


def client(sim: SimulatorServer | str, **kwargs) -> HttpClient:
    kwargs.setdefault("backoff", 0.01)
    return HttpClient(sim if isinstance(sim, str) else sim.base_url, **kwargs)


@contextlib.asynccontextmanager
async def raw_server(
    handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[str]:
    """A raw asyncio server on 127.0.0.1 that reads one request head, then runs ``handle``."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handle(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.close()
        await srv.wait_closed()


@contextlib.contextmanager
def never_accepting() -> Iterator[str]:
    """A socket on 127.0.0.1 that listens but never accepts, its backlog full: a connect to it
    stays unanswered (the kernel drops the SYNs), as with a provider whose host is swamped."""
    srv = socket.socket()
    fillers: list[socket.socket] = []
    try:
        srv.bind(("127.0.0.1", 0))
        srv.listen(0)
        port = srv.getsockname()[1]
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        for filler in fillers:
            filler.close()
        srv.close()


# -- 1. timeouts bound the whole request; streams bound each idle gap --------------------------


async def test_timeout_bounds_the_whole_request_not_each_read(server: Hostile) -> None:
    """Each byte comes quickly (0.25 s), the whole 200 would take 50 s: 1 s is the bound."""
    async with client(server, timeout=1.0) as http:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError) as info:
            await http.request("POST", "/trickle")
    assert time.monotonic() - started < 20  # 1 s, with room for a loaded machine
    assert "took too long" in info.value.user_message


async def test_stream_is_not_bound_by_the_whole_timeout_only_by_idle_gaps(
    server: Hostile,
) -> None:
    # gaps of 0.15 s, bound by 5 s each (a stalled process may see a long one): 1.2 s in all
    async with client(server, timeout=0.4, stream_idle_timeout=5.0) as http:
        started = time.monotonic()
        async with http.stream("GET", "/chunks?n=8&every=0.15") as response:
            lines = [line async for line in response.aiter_lines() if line]
    assert time.monotonic() - started > 1.0  # longer than timeout: the body is not bound
    assert lines[-1] == "data: end"


@pytest.mark.parametrize("reader", ["aiter_bytes", "aiter_lines", "aiter_text", "aiter_raw"])
async def test_stream_idle_gap_is_bounded_for_what_consumers_call(
    server: Hostile, reader: str
) -> None:
    async with client(server, timeout=5.0, stream_idle_timeout=0.3) as http:
        started = time.monotonic()
        got: list[object] = []
        with pytest.raises(BackendTimeoutError) as info:
            async with http.stream("POST", "/chunks?n=2&every=0.05&stall=60") as response:
                async for part in getattr(response, reader)():
                    got.append(part)
    assert time.monotonic() - started < 20  # the 0.3 s gap, not the 60 s stall
    assert got  # what came before the stall was delivered
    assert "no data for" in info.value.log_text()


async def test_stream_headers_are_bound_by_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # no answer, ever: until the client hangs up

    # the idle bound (and the reads' backstop past it) far away: only ``timeout`` ends it soon
    async with raw_server(silent) as url, client(url, timeout=0.3,
                                                 stream_idle_timeout=30) as http:
        started = time.monotonic()
        with pytest.raises(BackendTimeoutError):
            async with http.stream("POST", "/chunks") as response:
                await response.aread()
    assert time.monotonic() - started < 20  # 0.3 s, with room for a loaded machine


# -- 2. bounded reads ------------------------------------------------------------------------


async def test_a_huge_reply_is_not_read_whole(server: Hostile, caplog) -> None:
    async with client(server, max_response_bytes=1024 * 1024) as http:
        with pytest.raises(ProtocolError) as info:
            await http.request_json("GET", "/huge")
    assert "answered more than 1048576 bytes" in info.value.log_text()
    await asyncio.sleep(0.1)
    assert server.written < 8 * 1024 * 1024


async def test_a_decompressed_reply_is_capped_too(server: Hostile) -> None:
    async with client(server, max_response_bytes=1024 * 1024) as http:
        with pytest.raises(ProtocolError):
            await http.request_json("GET", "/bomb")


async def test_a_huge_error_body_is_read_only_in_part(server: Hostile) -> None:
    async with client(server) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request("POST", "/huge?status=500")
    await asyncio.sleep(0.1)
    assert server.written < 4 * 1024 * 1024
    assert len(info.value.provider_message or "") <= 300


async def test_a_streamed_reply_is_capped(server: Hostile) -> None:
    async with client(server, max_response_bytes=64 * 1024) as http:
        with pytest.raises(ProtocolError):
            async with http.stream("GET", "/huge") as response:
                async for _ in response.aiter_bytes():
                    pass


async def test_a_compressed_stream_is_capped_by_its_decompressed_size(server: Hostile) -> None:
    """32 kB on the wire, 32 MiB inflated: the cap counts what the consumer would get, and no
    piece handed over is larger than the cap (memory stays bounded)."""
    pieces: list[int] = []
    async with client(server, max_response_bytes=1024 * 1024) as http:
        with pytest.raises(ProtocolError) as info:
            async with http.stream("GET", "/bomb-stream") as response:
                async for piece in response.aiter_bytes():
                    pieces.append(len(piece))
    assert "answered more than 1048576 bytes" in str(info.value)
    assert sum(pieces) <= 1024 * 1024 and max(pieces) <= 64 * 1024
    assert server.written < 256 * 1024  # the rest was never read


@pytest.mark.parametrize("reader", ["aiter_lines", "aread"])
async def test_every_reader_of_a_compressed_stream_is_capped(server: Hostile, reader) -> None:
    async with client(server, max_response_bytes=1024 * 1024) as http:
        with pytest.raises(ProtocolError):
            async with http.stream("GET", "/bomb-stream") as response:
                if reader == "aread":
                    await response.aread()
                else:
                    async for _ in response.aiter_lines():
                        pass


async def test_a_compressed_error_body_is_read_only_in_part(server: Hostile) -> None:
    async with client(server) as http:
        for call in (lambda: http.request("POST", "/bomb-stream?status=500", content=b"x"),
                     lambda: http.request("POST", "/bomb-stream?status=500")):
            with pytest.raises(UnavailableError) as info:
                await call()
            assert len(info.value.provider_message or "") <= 300


async def test_a_compressed_answer_on_the_httpx_path_is_capped(server: Hostile) -> None:
    async with client(server, max_response_bytes=1024 * 1024) as http:
        with pytest.raises(ProtocolError):  # a raw body goes through httpx
            await http.request("POST", "/bomb-stream", content=b"x")


async def test_a_corrupt_compressed_body_is_a_protocol_error(server: Hostile) -> None:
    server.inject(Fault(status=200, body="not gzip at all",
                        headers={"Content-Encoding": "gzip"}, times=2))
    async with client(server) as http:
        with pytest.raises(ProtocolError):
            async with http.stream("GET", "/ok") as response:
                await response.aread()
        with pytest.raises(ProtocolError):  # a raw body: the httpx path, not repeated
            await http.request("POST", "/ok", content=b"x")
    assert len(server.requests) == 2


# -- 3. a Retry-After beyond max_retry_after ----------------------------------------------------


def test_durations_read_well() -> None:
    from tgmux.errors import format_duration

    assert format_duration(86400) == "24 h"
    assert format_duration(7200) == "2 h"
    assert format_duration(600) == "10 min"
    assert format_duration(90) == "2 min"
    assert format_duration(45) == "45 s"
    assert format_duration(0.2) == "1 s"
    assert format_duration(5 * 86400) == "5 days"


def test_absurd_durations_are_clamped_and_said_as_a_date() -> None:
    from datetime import UTC, datetime

    from tgmux.errors import ErrorKind, format_duration, retry_later_message

    morning = datetime(2026, 12, 7, 9, 0, tzinfo=UTC).timestamp()
    for absurd in (float("inf"), 1e308, 10**400):
        assert format_duration(absurd) == "31 days"
        assert retry_later_message(ErrorKind.RATE_LIMITED, absurd, now=morning) == (
            "The AI provider is busy; please try again after 7 January 2027.")
    assert format_duration(float("nan")) == "1 s"
    assert format_duration(-3) == "1 s"
    said = retry_later_message(ErrorKind.UNAVAILABLE, 5 * 3600, now=morning)
    assert said == "The AI provider is unavailable right now; please try again later today."
    assert retry_later_message(ErrorKind.RATE_LIMITED, 1800, now=morning) == (
        "The AI provider is busy; please try again in about 30 min.")
    late = datetime(2026, 12, 7, 23, 0, tzinfo=UTC).timestamp()
    assert retry_later_message(ErrorKind.RATE_LIMITED, 5 * 3600, now=late) == (
        "The AI provider is busy; please try again in about 5 h.")
    assert retry_later_message(ErrorKind.RATE_LIMITED, 3 * 86400, now=late) == (
        "The AI provider is busy; please try again after 10 December 2026.")


@pytest.mark.parametrize(("header", "seconds"), [
    ("inf", 31 * 86400), ("Infinity", 31 * 86400), ("1e308", 31 * 86400),
    ("Fri, 31 Dec 9999 23:59:59 GMT", 31 * 86400),
])
async def test_an_absurd_retry_after_is_clamped_not_a_crash(
    server: Hostile, header: str, seconds: float,
) -> None:
    server.inject(Fault(status=429, body={}, headers={"Retry-After": header}))
    async with client(server, max_retry_after=30) as http:
        async with asyncio.timeout(5):
            with pytest.raises(RateLimitedError) as info:
                await http.request("POST", "/ok", json={})
            assert info.value.retry_after == seconds
            assert info.value.user_message.startswith(
                "The AI provider is busy; please try again after ")
            with pytest.raises(RateLimitedError) as again:  # remembered: answered at once
                await http.request("POST", "/ok", json={})
            assert "not sent" in str(again.value) and "31 days" not in again.value.user_message
    assert len(server.requests) == 1


@pytest.mark.parametrize("header", ["nan", "-5", "-inf"])
async def test_a_meaningless_retry_after_is_a_plain_retry(server: Hostile, header: str) -> None:
    server.inject(Fault(status=429, body={}, headers={"Retry-After": header}))
    async with client(server, max_retry_after=30) as http:
        async with asyncio.timeout(5):
            assert (await http.request_json("POST", "/ok", json={}))["ok"]
    assert len(server.requests) == 2


async def test_a_day_long_retry_after_answers_at_once_and_does_not_stall_others(
    server: Hostile,
) -> None:
    limiter = SlidingWindowLimiter(10, 1.0)
    server.inject(Fault(status=429, body={}, headers={"Retry-After": "86400"}))
    async with client(server, limiter=limiter, max_retry_after=30) as http, \
            client(server, limiter=limiter, max_retry_after=30) as other:
        async with asyncio.timeout(1.0):
            with pytest.raises(RateLimitedError) as first:
                await http.request("POST", "/ok", json={})
        assert first.value.user_message == (
            "The AI provider is busy; please try again in about 24 h."
        )
        assert first.value.retry_after == 86400
        # The next messages, on this client or another on the same credentials, get the same
        # fast answer without the provider being asked again.
        async with asyncio.timeout(30):  # not the 24 h
            with pytest.raises(RateLimitedError) as second:
                await http.request("POST", "/ok", json={})
            with pytest.raises(RateLimitedError):
                await other.request("GET", "/ok")
        assert "24 h" in second.value.user_message
    assert len(server.requests) == 1


async def test_a_refusal_ends_when_the_provider_said(server: Hostile) -> None:
    server.inject(Fault(status=429, body={}, headers={"Retry-After": "0.5"}))
    async with client(server, max_retry_after=0.1) as http:
        with pytest.raises(RateLimitedError) as info:
            await http.request("POST", "/ok", json={})
        assert "1 s" in info.value.user_message
        await asyncio.sleep(0.6)
        assert (await http.request_json("POST", "/ok", json={}))["ok"]
    assert len(server.requests) == 2


async def test_a_retry_after_within_the_cap_penalizes_the_limiter_by_at_most_the_cap(
    server: Hostile,
) -> None:
    limiter = SlidingWindowLimiter(10, 1.0)
    server.inject(Fault(status=429, body={}, headers={"Retry-After": "0.3"}, times=3))
    async with client(server, limiter=limiter, retries=0) as http:
        with pytest.raises(RateLimitedError):
            await http.request("POST", "/ok")
    assert limiter.delay() <= 0.3


# -- 4. a connect timeout proves nothing was sent ----------------------------------------------


async def test_a_post_whose_connect_timed_out_is_retried(caplog, monkeypatch) -> None:
    caplog.set_level(logging.INFO, logger="tgmux.http")
    # The connect's share of the timeout: 0.2 of 2 s here. By default 0.9: with a 0.3 s
    # timeout the connect's and the whole attempt's timers were 30 ms apart, and after a
    # stall of the process the whole attempt's fired first (a timeout: not retried).
    monkeypatch.setattr(tgmux.http, "CONNECT_SHARE", 0.1)
    with never_accepting() as url:
        async with client(url, timeout=2.0, retries=2) as http:
            started = time.monotonic()
            with pytest.raises(UnavailableError) as info:
                await http.request("POST", "/chat", json={"message": "hi"})
    assert time.monotonic() - started < 20  # 3 x 0.2 s, not a connect that hangs
    assert "cannot connect" in str(info.value)
    waits = [r for r in caplog.records if "waiting" in r.getMessage()]
    assert len(waits) == 2  # three attempts: a connect that never happened is safe to repeat


# -- 5. a dropped connection is "unavailable", a stall is "took too long" ----------------------


async def test_a_connection_closed_before_the_answer_is_unavailable() -> None:
    async def close(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async with raw_server(close) as url, client(url) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request("POST", "/chat", json={})
    assert not isinstance(info.value, BackendTimeoutError)
    assert "unavailable" in info.value.user_message


async def test_a_connection_reset_is_unavailable() -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        writer.transport.abort()

    async with raw_server(reset) as url, client(url) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request("POST", "/chat", json={})
    assert info.value.kind.value == "unavailable"


async def test_a_connection_closed_mid_body_is_unavailable() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 100\r\n\r\n{\"ok\":")
        await writer.drain()
        await asyncio.sleep(0.05)

    async with raw_server(half) as url, client(url) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request_json("POST", "/chat", json={})
    assert info.value.kind.value == "unavailable"


async def test_a_stream_dropped_midway_is_unavailable_for_its_reader() -> None:
    async def half(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n8\r\ndata: 1\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.05)

    async with raw_server(half) as url, client(url) as http:
        with pytest.raises(UnavailableError):
            async with http.stream("POST", "/chat", json={}) as response:
                async for _ in response.aiter_lines():
                    pass


async def test_an_answer_that_is_not_http_is_a_protocol_error() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async with raw_server(garbage) as url, client(url) as http:
        with pytest.raises(ProtocolError):
            await http.request("POST", "/chat", json={})


async def test_a_read_that_stalls_is_still_a_timeout() -> None:
    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3)

    async with raw_server(stall) as url, client(url, timeout=0.3) as http:
        with pytest.raises(BackendTimeoutError):
            await http.request("POST", "/chat", json={})


# -- 6. request ids from the headers -----------------------------------------------------------


@pytest.mark.parametrize("header", ["X-Request-Id", "request-id", "x-amzn-requestid", "CF-Ray",
                                    "X-Correlation-Id"])
async def test_an_html_error_page_keeps_the_request_id(server: Hostile, header: str) -> None:
    async with client(server, retries=0) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request("POST", f"/html?status=502&header={header}")
    assert info.value.request_id == "req-42"
    assert "request_id=req-42" in info.value.log_text()


async def test_a_custom_parser_gets_the_request_id_too(server: Hostile) -> None:
    def parse(response: httpx.Response) -> BackendError:
        return UnavailableError("custom", status=response.status_code)

    async with client(server, retries=0, error_parser=parse) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request("POST", "/html?status=500&header=cf-ray")
    assert info.value.request_id == "req-42"


async def test_a_non_json_success_keeps_the_request_id(server: Hostile) -> None:
    async with client(server) as http:
        with pytest.raises(ProtocolError) as info:
            await http.request_json("POST", "/html?status=200")
    assert info.value.request_id == "req-42"


def test_the_default_parser_reads_the_request_id() -> None:
    response = httpx.Response(503, headers={"x-amzn-requestid": "amz-1"}, text="<html/>")
    assert default_error_parser(response).request_id == "amz-1"


async def test_an_error_answer_in_an_unreadable_encoding_keeps_its_status(server: Hostile) -> None:
    server.inject(Fault(status=401, body="not gzip", headers={"Content-Encoding": "gzip"}))
    server.inject(Fault(status=401, body="brotli?", headers={"Content-Encoding": "br"}))
    async with client(server) as http:
        for _ in range(2):
            with pytest.raises(AuthError):
                async with http.stream("GET", "/ok"):
                    pass
    server.inject(Fault(status=200, body="brotli?", headers={"Content-Encoding": "br"}))
    async with client(server) as http:
        with pytest.raises(ProtocolError) as info:
            async with http.stream("GET", "/ok"):
                pass
    assert "Content-Encoding br" in (info.value.provider_message or "")
