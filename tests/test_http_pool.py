"""The HTTP layer's pool and its direct aiohttp path: ``max_connections`` bounds what is in
flight, connects are paced, and the direct path keeps the httpx path's contract (headers,
cookies, params, bodies, no repeated POST), against real servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import io
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import httpx
import pytest
from aiohttp import web

import tgmux.http
from tgmux import gctuning
from tgmux.bootstrap import load_text
from tgmux.console import ConsoleFrontend
from tgmux.engine import Engine
from tgmux.errors import ConfigError, UnavailableError
from tgmux.http import HttpClient
from tgmux.simulator import SimulatorServer
from tgmux.store import open_store

#: Seconds a request to /hold waits at most for :attr:`Counting.full` requests in flight.
HOLD_MAX = 5.0


class Counting(SimulatorServer):
    """Counts requests in flight and the client connections they came on."""

    name = "counting"

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = 0
        self.most_in_flight = 0
        self.client_ports: set[int] = set()
        self.seen: list[dict[str, object]] = []
        #: /hold answers once this many requests were in flight at once (or after HOLD_MAX):
        #: the client's bound is reached however slow the machine (with a fixed 50 ms hold, a
        #: first request could be answered before a starved client sent the third)
        self.full = 1
        self._full = asyncio.Event()

    def routes(self, app: web.Application) -> None:
        async def hold(request: web.Request) -> web.Response:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self.client_ports.add(request.transport.get_extra_info("peername")[1])
            if self.in_flight >= self.full:
                self._full.set()
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(HOLD_MAX):
                        await self._full.wait()
                await asyncio.sleep(0.05)
            finally:
                self.in_flight -= 1
            return web.json_response({"ok": True})

        async def echo(request: web.Request) -> web.Response:
            body = await request.read()
            self.seen.append({"headers": dict(request.headers), "body": body,
                              "query": dict(request.query), "method": request.method})
            response = web.json_response({"ok": True})
            if request.path == "/login":
                response.set_cookie("session", "s3cret")
            return response

        app.router.add_route("*", "/hold", hold)
        app.router.add_route("*", "/echo", echo)
        app.router.add_route("*", "/login", echo)


@pytest.fixture
async def server() -> AsyncIterator[Counting]:
    async with Counting() as sim:
        yield sim


async def test_max_connections_bounds_the_requests_in_flight(server: Counting) -> None:
    server.full = 3
    async with HttpClient(server.base_url, max_connections=3) as http:
        answers = await asyncio.gather(
            *(http.request_json("POST", "/hold", json={"n": i}) for i in range(15)))
    assert answers == [{"ok": True}] * 15
    assert server.most_in_flight == 3
    assert len(server.client_ports) == 3  # and those are reused, not reopened


async def test_a_stream_shares_the_same_pool(server: Counting) -> None:
    server.full = 2
    async with HttpClient(server.base_url, max_connections=2) as http:

        async def streamed() -> None:
            async with http.stream("GET", "/hold") as response:
                await response.aread()

        await asyncio.gather(*(streamed() for _ in range(3)),
                             *(http.request("GET", "/hold") for _ in range(3)))
    assert server.most_in_flight == 2


async def test_connects_in_flight_are_bounded(server: Counting, monkeypatch) -> None:
    opening = 0
    most_opening = 0
    create = aiohttp.TCPConnector._create_connection

    async def slow_create(self, *args, **kwargs):  # each connect takes a while
        nonlocal opening, most_opening
        opening += 1
        most_opening = max(most_opening, opening)
        try:
            await asyncio.sleep(0.05)
            return await create(self, *args, **kwargs)
        finally:
            opening -= 1

    monkeypatch.setattr(aiohttp.TCPConnector, "_create_connection", slow_create)
    monkeypatch.setattr(tgmux.http, "CONNECTS_IN_FLIGHT", 4)
    server.full = 20
    async with HttpClient(server.base_url, max_connections=20) as http:
        await asyncio.gather(*(http.request_json("GET", "/hold") for _ in range(20)))
    assert most_opening == 4
    assert len(server.client_ports) == 20


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10"])
def test_max_connections_must_be_a_positive_integer(bad: object) -> None:
    with pytest.raises(ValueError, match="max_connections must be a positive integer"):
        HttpClient("http://127.0.0.1:9", max_connections=bad)  # type: ignore[arg-type]


# -- the direct path -------------------------------------------------------------------------


@contextlib.contextmanager
def httpx_forbidden(monkeypatch) -> None:
    async def refuse(*args, **kwargs):
        raise AssertionError("went through httpx")

    monkeypatch.setattr(httpx.AsyncClient, "send", refuse)
    yield


async def test_requests_skip_httpx_but_keep_its_headers_and_body(server: Counting,
                                                                 monkeypatch) -> None:
    async with HttpClient(server.base_url, headers={"Authorization": "Bearer k"}) as http:
        with httpx_forbidden(monkeypatch):
            assert await http.request_json("POST", "/echo", json={"text": "héllo", "n": [1]},
                                           headers={"X-Turn": "7"}) == {"ok": True}
            http.headers["Authorization"] = "Bearer rotated"  # seen by the next request
            response = await http.request("GET", "/echo", params={"q": "a b"})
    assert isinstance(response, httpx.Response) and response.json() == {"ok": True}
    assert response.request.url.path == "/echo" and response.is_closed
    first, second = server.seen
    assert first["method"] == "POST"
    assert first["body"] == '{"text":"héllo","n":[1]}'.encode()  # as httpx encodes JSON
    headers = first["headers"]
    assert headers["Content-Type"] == "application/json"
    assert headers["Authorization"] == "Bearer k" and headers["X-Turn"] == "7"
    assert headers["User-Agent"].startswith("tgmux/")
    assert second["headers"]["Authorization"] == "Bearer rotated"
    assert "Content-Type" not in second["headers"] and second["body"] == b""
    assert second["query"] == {"q": "a b"}


async def test_cookies_a_provider_sets_are_kept_and_sent(server: Counting) -> None:
    async with HttpClient(server.base_url) as http:
        await http.request_json("POST", "/login", json={})
        assert http.cookies.get("session") == "s3cret"
        await http.request_json("GET", "/echo")  # a client with cookies goes through httpx
        http.cookies.clear()
        await http.request_json("GET", "/echo")
    assert "Cookie" not in server.seen[0]["headers"]
    assert server.seen[1]["headers"]["Cookie"] == "session=s3cret"
    assert "Cookie" not in server.seen[2]["headers"]


@contextlib.asynccontextmanager
async def dropping_server(
    answer: Callable[[asyncio.StreamWriter], Awaitable[None]],
) -> AsyncIterator[tuple[str, list[bytes]]]:
    """Reads each request whole, records its method, then runs ``answer``."""
    methods: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            methods.append(head.split(b" ", 1)[0])
            await answer(writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", methods
    finally:
        srv.close()
        await srv.wait_closed()


async def hang_up(writer: asyncio.StreamWriter) -> None:
    writer.close()


async def test_a_post_that_arrived_is_never_repeated_on_the_direct_path(monkeypatch) -> None:
    async with dropping_server(hang_up) as (url, methods):
        async with HttpClient(url, backoff=0.01, retries=2) as http:
            with httpx_forbidden(monkeypatch):
                with pytest.raises(UnavailableError, match="connection lost"):
                    await http.request_json("POST", "/chat", json={"m": 1})
                with pytest.raises(UnavailableError, match="connection lost"):
                    await http.request_json("GET", "/chat")
    # The POST went out once; the GET is repeated (by the policy, 3 attempts; aiohttp also
    # resends an idempotent request once when its kept-alive connection was closed).
    assert methods[0] == b"POST" and methods.count(b"POST") == 1
    assert methods.count(b"GET") >= 3


# -- the collector while an engine serves --------------------------------------------------


def engine() -> Engine:
    config, pm = load_text("backends: {echo: {type: echo}}\ndefault: echo\n")
    return Engine(config, pm, open_store("memory://"),
                  ConsoleFrontend(io.StringIO(), interactive=False))


async def test_an_engine_sets_the_serving_thresholds_and_puts_the_defaults_back(
        monkeypatch) -> None:
    # counted from no engine serving (a test that leaves one running must not decide this one)
    monkeypatch.setattr(gctuning, "_engines", 0)
    monkeypatch.setattr(gctuning, "_replaced", False)
    before = gc.get_threshold()
    gc.set_threshold(*gctuning.PYTHON_DEFAULTS)
    try:
        first, second = engine(), engine()
        await first.start()
        assert gc.get_threshold() == gctuning.SERVING_THRESHOLDS
        await second.start()
        await first.stop()
        assert gc.get_threshold() == gctuning.SERVING_THRESHOLDS  # one still serves
        await second.stop()
        assert gc.get_threshold() == gctuning.PYTHON_DEFAULTS
        gc.set_threshold(900, 10, 10)  # an application's own choice is left alone
        await first.start()
        assert gc.get_threshold() == (900, 10, 10)
        await first.stop()
        assert gc.get_threshold() == (900, 10, 10)
    finally:
        gc.set_threshold(*before)


# -- the setting ----------------------------------------------------------------------------


def lucy(extra: str, engine: str = "") -> str:
    return (f"{engine}backends:\n  lucy:\n    type: lucydream\n    api_key: k\n"
            f"    base_url: http://127.0.0.1:9\n{extra}default: lucy\n")


def test_max_connections_defaults_to_the_engine_concurrency() -> None:
    config, _ = load_text(lucy("", "engine: {concurrency: 700}\n"), source="c.yaml", env={})
    assert config.backend_settings["lucy"].max_connections == 700
    assert config.backend_settings["lucy"].http_options()["max_connections"] == 700
    config, _ = load_text(lucy("    max_connections: 50\n", "engine: {concurrency: 700}\n"),
                          source="c.yaml", env={})
    assert config.backend_settings["lucy"].max_connections == 50


@pytest.mark.parametrize(("value", "message"), [
    ("0", "greater than or equal to 1"), ("yes", "not yes/no/true/false"),
    ("many", "valid integer")])
def test_a_bad_max_connections_is_a_config_error_with_its_line(value: str,
                                                               message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(lucy(f"    max_connections: {value}\n"), source="c.yaml", env={})
    assert "c.yaml:6: backends.lucy.max_connections: " in str(info.value)
    assert message in str(info.value)


async def test_a_backend_client_gets_its_max_connections() -> None:
    from tgmux.backends.lucydream.adapter import LucyDreamBackend

    config, _ = load_text(lucy("    max_connections: 33\n"), source="c.yaml", env={})
    backend = LucyDreamBackend("lucy", config.backend_settings["lucy"], kv=None)  # type: ignore[arg-type]
    try:
        assert backend.client.http.max_connections == 33
    finally:
        await backend.close()
