"""Short-lived public links to media (``server.public_url``): what ``/media/{token}`` serves,
for how long, within which bounds, and the config that turns it on."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import aiohttp
import pytest

from tgmux.backend import Turn
from tgmux.errors import ConfigError
from tgmux.harness import EngineHarness
from tgmux.media_links import MediaLinks
from tgmux.metrics import Metrics
from tgmux.ops import start_ops_server
from tgmux.server import OpsServer

PUBLIC = "https://bot.example.com"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


async def fetch(url: str) -> tuple[int, bytes, dict[str, str]]:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return response.status, await response.read(), dict(response.headers)


def token_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def test_a_link_works_until_its_ttl_then_is_forgotten() -> None:
    clock = Clock()
    links = MediaLinks(PUBLIC + "/", ttl=60, clock=clock)
    url = await links.share(b"\xff\xd8jpeg", "image/jpeg")
    assert url is not None and url.startswith(f"{PUBLIC}/media/")
    token = token_of(url)
    assert len(token) >= 43  # 32 random bytes, base64url
    assert links.get(token).data == b"\xff\xd8jpeg"
    clock.now += 59.9
    assert links.get(token) is not None
    clock.now += 0.1
    assert links.get(token) is None
    assert len(links) == 0 and links.total_bytes == 0
    other = await links.share(b"x", "image/png")
    assert token_of(other) != token


async def test_the_bounds_drop_the_oldest_first_and_say_so(caplog) -> None:
    links = MediaLinks(PUBLIC, max_entries=3, max_bytes=10, clock=Clock())
    first, second, third = [token_of(await links.share(b"ab", "image/png")) for _ in range(3)]
    with caplog.at_level(logging.WARNING, logger="tgmux.media_links"):
        fourth = token_of(await links.share(b"cd", "image/png"))  # a 4th link: over 3
    assert links.get(first) is None
    assert [links.get(t) is not None for t in (second, third, fourth)] == [True, True, True]
    assert "dropped the 1 oldest link(s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tgmux.media_links"):
        big = token_of(await links.share(b"0123456", "image/png"))  # 7 + 2 + 2 > 10 bytes
    assert links.get(second) is None and links.get(third) is None
    assert links.get(fourth) is not None and links.get(big) is not None
    assert links.total_bytes == 9
    assert "dropped the 2 oldest link(s)" in caplog.text
    # one media larger than every bound together is not kept (and drops nothing)
    assert await links.share(b"x" * 11, "image/png") is None
    assert links.get(big) is not None and len(links) == 2


async def test_the_route_serves_the_bytes_and_404s_the_rest() -> None:
    clock = Clock()
    links = MediaLinks("http://127.0.0.1", ttl=30, clock=clock)
    server = OpsServer("127.0.0.1:0", Metrics(), media_links=links)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        url = await links.share(b"GIF89a...", "image/gif")
        served = f"{base}/media/{token_of(url)}"
        status, body, headers = await fetch(served)
        assert (status, body) == (200, b"GIF89a...")
        assert headers["Content-Type"] == "image/gif"
        assert headers["Cache-Control"] == "no-store"
        odd = token_of(await links.share(b"?", "text/html; charset=utf-8\r\nX: y"))
        assert (await fetch(f"{base}/media/{odd}"))[2]["Content-Type"] == \
            "application/octet-stream"
        assert (await fetch(f"{base}/media/{'A' * 43}"))[0] == 404  # unknown
        assert (await fetch(f"{base}/media/"))[0] == 404  # no listing
        clock.now += 30
        status, body, headers = await fetch(served)  # expired
        assert status == 404 and b"GIF89a" not in body
        assert headers["Cache-Control"] == "no-store"
    finally:
        await server.stop()


async def test_without_public_url_there_is_no_media_route_and_no_share() -> None:
    config = "store: memory://\nbackends: {e: {type: echo}}\ndefault: e\n" \
             "server: {listen: 127.0.0.1:0}\n"
    async with EngineHarness.from_yaml(config) as h:
        assert h.engine.media_links is None
        server = await start_ops_server(h.config, h.engine)
        try:
            assert (await fetch(f"http://127.0.0.1:{server.port}/media/x"))[0] == 404
        finally:
            await server.stop()
        backend = h.engine.backends["e"]
        message = h.message("hi")
        decision = h.engine.routers["main"].decide(message)
        turn: Turn = h.engine.turn_for(message, decision, backend)
        assert turn.share is None


def test_public_url_needs_listen_and_an_http_url() -> None:
    base = "backends: {e: {type: echo}}\ndefault: e\n"
    with pytest.raises(ConfigError) as error:
        EngineHarness.from_yaml(base + "server:\n  public_url: https://bot.example.com\n")
    assert "<test config>:4: server.public_url: needs server.listen" in str(error.value)
    with pytest.raises(ConfigError) as error:
        EngineHarness.from_yaml(base + "server:\n  listen: 127.0.0.1:0\n"
                                "  public_url: ftp://bot.example.com\n")
    assert "<test config>:5: server.public_url: " in str(error.value)
    assert "expected an http(s) URL" in str(error.value)
    ok = EngineHarness.from_yaml(base + "server:\n  listen: 127.0.0.1:0\n"
                                 "  public_url: https://example.com/tgmux/\n")
    assert ok.config.data.server.public_url == "https://example.com/tgmux"
    assert ok.engine.media_links is not None
    assert ok.engine.media_links.url_for("t") == "https://example.com/tgmux/media/t"
