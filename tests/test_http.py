"""The one HTTP layer: what is retried and what is not, against a real local server."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from aiohttp import web

from tgmux.errors import (
    AuthError,
    BackendTimeoutError,
    RateLimitedError,
    UnavailableError,
)
from tgmux.http import HttpClient, delay_notifier, parse_retry_after
from tgmux.ratelimit import SlidingWindowLimiter
from tgmux.simulator import Fault, SimulatorServer


class Echo(SimulatorServer):
    name = "echo"
    #: called as each request to /arrived reaches the server
    on_arrival: Callable[[], None] = staticmethod(lambda: None)

    def routes(self, app: web.Application) -> None:
        async def arrived(request: web.Request) -> web.Response:
            self.on_arrival()
            return web.json_response({"ok": True})

        async def ok(request: web.Request) -> web.Response:
            return web.json_response({"ok": True, "method": request.method})

        async def slow(request: web.Request) -> web.Response:
            await asyncio.sleep(1)
            return web.json_response({"ok": True})

        async def form(request: web.Request) -> web.Response:
            fields = self.requests[-1].form()
            upload = fields["file"]
            return web.json_response({
                "model": fields["model"].text, "filename": upload.filename,
                "content_type": upload.content_type, "bytes": upload.text})

        app.router.add_route("*", "/ok", ok)
        app.router.add_route("*", "/arrived", arrived)
        app.router.add_route("POST", "/form", form)
        app.router.add_route("*", "/slow", slow)


@pytest.fixture
async def server():
    async with Echo() as sim:
        yield sim


def client(sim: SimulatorServer, **kwargs) -> HttpClient:
    kwargs.setdefault("backoff", 0.01)
    return HttpClient(sim.base_url, **kwargs)


async def test_get_is_retried_after_a_server_error(server: Echo) -> None:
    server.inject(Fault(status=503, body={"e": 1}))
    async with client(server) as http:
        assert await http.request_json("GET", "/ok") == {"ok": True, "method": "GET"}
    assert [r.method for r in server.requests] == ["GET", "GET"]


async def test_post_that_reached_the_provider_is_not_retried(server: Echo) -> None:
    server.inject(Fault(status=500, body={"e": 1}))
    async with client(server) as http:
        with pytest.raises(UnavailableError) as info:
            await http.request("POST", "/ok", json={"message": "hi"})
    assert len(server.requests) == 1
    assert info.value.status == 500


async def test_post_refused_with_429_is_retried_after_retry_after(server: Echo) -> None:
    server.inject(Fault(status=429, body={}, headers={"Retry-After": "0.2"}))
    async with client(server) as http:
        started = time.monotonic()
        assert (await http.request_json("POST", "/ok", json={}))["ok"]
    assert time.monotonic() - started >= 0.2
    assert len(server.requests) == 2


async def test_long_retry_after_is_not_slept_but_raised(server: Echo) -> None:
    server.inject(Fault(status=429, body={}, headers={"Retry-After": "120"}))
    async with client(server, max_retry_after=30) as http:
        with pytest.raises(RateLimitedError) as info:
            await http.request("POST", "/ok")
    assert info.value.retry_after == 120
    assert len(server.requests) == 1


async def test_auth_errors_map_and_are_not_retried(server: Echo) -> None:
    server.inject(Fault(status=403, body={"code": "rest_forbidden"}))
    async with client(server) as http:
        with pytest.raises(AuthError):
            await http.request("GET", "/ok")
    assert len(server.requests) == 1


async def test_read_timeout_on_post_is_a_timeout_error_without_retry(server: Echo) -> None:
    async with client(server, timeout=0.2) as http:
        with pytest.raises(BackendTimeoutError):
            await http.request("POST", "/slow")
    assert len(server.requests) == 1


async def test_connection_refused_is_retried_then_unavailable() -> None:
    async with HttpClient("http://127.0.0.1:9", backoff=0.01, retries=2) as http:
        with pytest.raises(UnavailableError):
            await http.request("POST", "/x")


async def test_limiter_paces_requests_and_tells_the_user_about_long_waits(server: Echo) -> None:
    told: list[float] = []

    async def notify(seconds: float) -> None:
        told.append(seconds)

    # 2 per 2 s: the third waits for the window, told when its wait is 0.5 s or more (the
    # first two may take 1.5 s on a loaded machine; with 2 per 0.5 s and 0.1 s, 0.4 s)
    limiter = SlidingWindowLimiter(2, 2.0)
    token = delay_notifier.set(notify)
    try:
        async with client(server, limiter=limiter, notify_after=0.5) as http:
            started = time.monotonic()
            for _ in range(4):
                await http.request("GET", "/ok")
            elapsed = time.monotonic() - started
    finally:
        delay_notifier.reset(token)
    assert 2.0 <= elapsed < 20  # (the upper bound only catches a wait that never ends)
    assert told and told[0] > 0.5


class Reporting(SlidingWindowLimiter):
    """Counts the transport's reports that a granted slot's request went out."""

    reports = 0

    def sent(self) -> None:
        self.reports += 1
        super().sent()


async def test_a_slot_counts_from_when_its_request_went_out_not_from_its_answer(
        server: Echo) -> None:
    """The provider counts a request when it arrives: the slot is moved to when the request's
    headers went out (before the provider has it), once per request, on every path. Counting
    from the answer would cost a slow model's budget its throughput (tgmux.ratelimit)."""
    limiter = Reporting(100, 60.0)
    reported_at_arrival: list[int] = []
    server.on_arrival = lambda: reported_at_arrival.append(limiter.reports)
    async with client(server, limiter=limiter) as http:
        await http.request_json("GET", "/arrived")  # the direct aiohttp path
        await http.request("GET", "/arrived")  # through httpx
        async with http.stream("GET", "/arrived") as answer:
            await answer.aread()
        server.inject(Fault(status=500, path="/arrived", times=1))  # a retry: a new slot
        await http.request_json("GET", "/arrived")
    assert reported_at_arrival == [1, 2, 3, 5]
    assert limiter.reports == 5


def test_retry_after_formats() -> None:
    assert parse_retry_after("7") == 7
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0


async def test_multipart_form_is_sent_whole_and_again_when_refused(server: Echo) -> None:
    server.inject(Fault(status=429, headers={"Retry-After": "0"}, path="/form"))
    async with client(server) as http:
        answer = await http.request_json(
            "POST", "/form", files={"file": ("voice.ogg", b"OggS-ish", "audio/ogg")},
            form={"model": "whisper-1"})
    assert answer == {"model": "whisper-1", "filename": "voice.ogg",
                      "content_type": "audio/ogg", "bytes": "OggS-ish"}
    first, second = server.requests
    assert first.body == second.body  # the same bytes, sent again after the 429
    assert first.header("Content-Type").startswith("multipart/form-data; boundary=")


async def test_a_status_the_caller_expects_is_raised_but_not_logged_as_a_warning(
    server: Echo, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="tgmux.http")
    server.inject(Fault(status=401, body={"error": "who?"}, times=4))
    async with client(server) as http:
        with pytest.raises(AuthError):
            await http.request_json("GET", "/ok", expected_statuses={401})
        with pytest.raises(AuthError):
            await http.request("GET", "/ok", expected_statuses={401})
        with pytest.raises(AuthError):
            async with http.stream("GET", "/ok", expected_statuses={401}):
                pass
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert sum("GET /ok failed: kind=auth status=401" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.DEBUG) == 3
        with pytest.raises(AuthError):  # not expected: a warning, as always
            await http.request_json("GET", "/ok", expected_statuses={404})
    [warning] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "GET /ok failed: kind=auth status=401" in warning.getMessage()
