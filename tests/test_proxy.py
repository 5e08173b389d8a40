"""Proxies: a backend's ``proxy`` and ``trust_env`` (HTTPS_PROXY / NO_PROXY), through the one
HTTP layer and BambiSleep's websocket; ``telegram.proxy`` (SOCKS5, SOCKS4, HTTP) through
kurigram; what the user reads when a proxy refuses; no proxy password in any log line.

Every proxy here is a small one written for the test (tests/proxies.py), on 127.0.0.1, in
front of a backend simulator or a local server: the assertions are what the proxy saw and what
the provider got."""

from __future__ import annotations

import base64
import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from proxies import HttpProxy, Socks5Proxy, closed_port

import tgmux.backends.bambisleep as bambisleep_plugin
from tgmux.backend import Text
from tgmux.backends.bambisleep.simulator import BambiSleepSimulator
from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.bootstrap import load_text
from tgmux.errors import USER_MESSAGES, ConfigError, ErrorKind
from tgmux.harness import EngineHarness
from tgmux.logs import setup_logging

KEY = "sk-proxy-test"
PROXY_USER, PROXY_PASSWORD = "relay", "p@ss:w/rd"  # needs percent-encoding in a URL
ENCODED_PASSWORD = "p%40ss%3Aw%2Frd"


@pytest.fixture
async def sim() -> AsyncIterator[OpenAISimulator]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("gpt-test")]) as server:
        yield server  # type: ignore[misc]


@pytest.fixture(autouse=True)
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without proxy variables (it sets its own)."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def openai_config(sim: OpenAISimulator, extra: str = "", *, stream: bool = True) -> str:
    return f"""
backends:
  gpt:
    type: openai
    base_url: {sim.base_url}
    api_key: {KEY}
    model: gpt-test
    stream: {str(stream).lower()}
{extra}
default: gpt
"""


def proxy_line(indent: str = "    ", value: str = "") -> str:
    return f"{indent}proxy: {value}"


def texts(reply: list[object]) -> list[str]:
    return [p.text for p in reply if isinstance(p, Text)]


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


# -- a backend's proxy -----------------------------------------------------------------------


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
async def test_backend_requests_go_through_its_http_proxy_with_credentials(
        sim: OpenAISimulator, stream: bool) -> None:
    async with HttpProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        url = f"http://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{proxy.port}"
        text = openai_config(sim, proxy_line(value=url), stream=stream)
        async with EngineHarness.from_yaml(text) as h:
            reply = await h.say("hello there", user_id=42)
    assert [p.text for p in reply if isinstance(p, Text)] == ["You said: hello there"]
    # the proxy was asked for the provider's URL, with the configured credentials
    assert [r.line for r in proxy.requests] == [
        f"POST {sim.base_url}/chat/completions HTTP/1.1"]
    assert proxy.requests[0].proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD)
    # and the provider got exactly the request it gets without a proxy
    assert [c.messages for c in sim.completions] == [[{"role": "user", "content": "hello there"}]]


async def test_a_refusing_proxy_is_one_line_naming_the_proxy_not_the_provider(
        sim: OpenAISimulator, caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    text = openai_config(sim, proxy_line(value=f"http://{PROXY_USER}:{ENCODED_PASSWORD}@"
                                                f"127.0.0.1:{port}"))
    caplog.set_level(logging.WARNING, logger="tgmux.http")
    async with EngineHarness.from_yaml(text) as h:
        reply = await h.say("hello", user_id=42)
    assert [p.text for p in reply] == [USER_MESSAGES[ErrorKind.UNAVAILABLE]]
    assert not sim.completions
    lines = [r.getMessage() for r in caplog.records if r.name == "tgmux.http"]
    assert len(lines) == 1, lines  # retried (never sent), then said once
    assert lines[0] == (
        f"openai:gpt: POST /v1/chat/completions failed: kind=unavailable message='openai:gpt: "
        f"POST /v1/chat/completions: cannot connect to the proxy http://{PROXY_USER}:***@"
        f"127.0.0.1:{port} (connection refused)'")
    assert str(sim.port) not in lines[0] and "p@ss" not in lines[0]


async def test_a_proxy_refusing_the_tunnel_is_named(caplog: pytest.LogCaptureFixture) -> None:
    from tgmux.http import HttpClient
    from tgmux.proxy import backend_route

    async with HttpProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        route = backend_route(f"http://{PROXY_USER}:wrong@127.0.0.1:{proxy.port}", True,
                              "https://provider.invalid")
        async with HttpClient("https://provider.invalid", proxy=route, retries=0,
                              name="p") as http:
            with pytest.raises(Exception) as caught:
                await http.request("GET", "/v1/models")
    assert proxy.lines() == ["CONNECT provider.invalid:443 HTTP/1.1"]
    assert str(caught.value) == (f"p: GET /v1/models: the proxy http://{PROXY_USER}:***@"
                                 f"127.0.0.1:{proxy.port} refused: HTTP 407 Proxy "
                                 "Authentication Required")


# -- trust_env: the environment's proxy ----------------------------------------------------------


async def test_trust_env_takes_the_environment_proxy_unless_no_proxy_names_the_host(
        sim: OpenAISimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    async with HttpProxy() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        async with EngineHarness.from_yaml(openai_config(sim)) as h:
            assert texts(await h.say("one", user_id=1)) == ["You said: one"]
        assert proxy.lines() == [f"POST {sim.base_url}/chat/completions HTTP/1.1"]

        monkeypatch.setenv("NO_PROXY", "example.com,127.0.0.1")
        async with EngineHarness.from_yaml(openai_config(sim)) as h:
            assert texts(await h.say("two", user_id=1)) == ["You said: two"]
        monkeypatch.delenv("NO_PROXY")
        async with EngineHarness.from_yaml(openai_config(sim, "    trust_env: false")) as h:
            assert texts(await h.say("three", user_id=1)) == ["You said: three"]
        assert len(proxy.requests) == 1  # the last two went direct
    assert len(sim.completions) == 3


def test_https_proxy_for_https_providers_and_no_proxy_by_domain(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from tgmux.proxy import backend_route

    monkeypatch.setenv("HTTPS_PROXY", "http://u:s3cret@proxy.internal:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://plain.internal:8080")
    route = backend_route(None, True, "https://api.openai.com/v1")
    assert str(route) == "http://u:***@proxy.internal:3128 (from HTTPS_PROXY)"
    assert str(backend_route(None, True, "http://ollama:11434")) == \
        "http://plain.internal:8080 (from HTTP_PROXY)"
    assert backend_route(None, False, "https://api.openai.com/v1") is None
    # a backend's own proxy wins over the environment
    assert str(backend_route("https://mine:8443", True, "https://api.openai.com")) == \
        "https://mine:8443"
    monkeypatch.setenv("NO_PROXY", ".openai.com")
    assert backend_route(None, True, "https://api.openai.com/v1") is None
    assert backend_route(None, True, "https://api.groq.com/openai/v1") is not None


# -- config ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "problem"), [
    ("socks5://127.0.0.1:1080", "socks5 scheme is not one of these"),
    ("proxy.internal:3128", "expected a proxy URL http|https://[USER:PASSWORD@]HOST:PORT"),
    ("http://proxy.internal:70000", "the port is not a number from 1 to 65535"),
    ("http://:3128", "HOST is missing"),
])
def test_a_bad_backend_proxy_is_a_config_error_with_its_line(
        sim_url: str, value: str, problem: str) -> None:
    text = f"backends:\n  gpt:\n    type: openai\n    base_url: {sim_url}\n    model: m\n" \
           f"    proxy: \"{value}\"\ndefault: gpt\n"
    with pytest.raises(ConfigError) as caught:
        load_text(text, source="cfg.yaml")
    assert str(caught.value).startswith("cfg.yaml:6: backends.gpt.proxy: expected a proxy URL")
    assert problem in str(caught.value)


@pytest.fixture
def sim_url() -> str:
    return "http://127.0.0.1:9"


# -- a backend's websocket -----------------------------------------------------------------------


async def test_bambisleep_websocket_goes_through_the_backend_proxy() -> None:
    async with BambiSleepSimulator(api_keys={"k": "bambi"}) as bsim, \
            HttpProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        text = f"""
backends:
  bambi:
    type: bambisleep
    base_url: {bsim.base_url}
    transport: websocket
    ws_url: {bsim.ws_url}
    api_key: k
    proxy: http://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{proxy.port}
default: bambi
"""
        async with EngineHarness.from_yaml(text, plugins=[bambisleep_plugin]) as h:
            assert await h.say("one", user_id=1) == [Text("Bambi hears you: one")]
    host = bsim.base_url.split("://", 1)[1].split("/", 1)[0]
    assert f"CONNECT {host} HTTP/1.1" in proxy.lines()
    assert all(r.proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD)
               for r in proxy.requests)
    assert bsim.ws_messages == [("bambi", "one")]


async def test_a_refusing_proxy_in_front_of_a_websocket_is_named(
        caplog: pytest.LogCaptureFixture) -> None:
    port = closed_port()
    async with BambiSleepSimulator(api_keys={"k": "bambi"}) as bsim:
        text = f"""
backends:
  bambi:
    type: bambisleep
    base_url: {bsim.base_url}
    transport: websocket
    ws_url: {bsim.ws_url}
    ws_max_attempts: 2
    ws_reconnect_delay: 0.01
    api_key: k
    proxy: http://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{port}
default: bambi
"""
        caplog.set_level(logging.WARNING)
        async with EngineHarness.from_yaml(text, plugins=[bambisleep_plugin]) as h:
            reply = await h.say("one", user_id=1)
    assert [p.text for p in reply] == [USER_MESSAGES[ErrorKind.UNAVAILABLE]]
    assert not bsim.ws_messages
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert lines == [
        "chat 1: bambi: kind=unavailable message='cannot connect to the proxy "
        f"http://{PROXY_USER}:***@127.0.0.1:{port} (connection refused)'"]


# -- telegram.proxy -------------------------------------------------------------------------------

TOKEN = "123456:ABCdefGhIJKlmnoPQRstuVWXyz012345678"
TELEGRAM_CONFIG = """
telegram:
  api_id: 12345
  api_hash: 0123456789abcdef0123456789abcdef
  bot_token: "{token}"
  data_dir: {data}
  shutdown_timeout: 1
  proxy: "{proxy}"
store: memory://
backends:
  echo: {{type: echo}}
default: echo
"""


def telegram_config(tmp_path: Path, proxy: str) -> str:
    return TELEGRAM_CONFIG.format(token=TOKEN, data=tmp_path / "data", proxy=proxy)


@pytest.mark.parametrize(("scheme", "kind"), [
    ("socks5", "SOCKS5Proxy"), ("socks4", "SOCKS4Proxy"), ("http", "HTTPProxy")])
def test_telegram_proxy_reaches_kurigram_with_its_credentials(tmp_path: Path, scheme: str,
                                                              kind: str) -> None:
    from pyrogram.connection import proxy as kurigram_proxy

    from tgmux.telegram.client import build_client

    url = f"{scheme}://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:1080"
    config, _ = load_text(telegram_config(tmp_path, url))
    client = build_client(config)
    assert isinstance(client.proxy, getattr(kurigram_proxy, kind))
    assert (client.proxy.hostname, client.proxy.port, client.proxy.username,
            client.proxy.password) == ("127.0.0.1", 1080, PROXY_USER, PROXY_PASSWORD)
    assert repr(client.proxy) == f"{scheme}://{PROXY_USER}:***@127.0.0.1:1080"  # kurigram logs it


def test_a_bad_telegram_proxy_is_a_config_error_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_text(telegram_config(tmp_path, "https://127.0.0.1:8443"), source="cfg.yaml")
    assert str(caught.value) == (
        "cfg.yaml:8: telegram.proxy: expected a proxy URL socks5|socks4|http://[USER:PASSWORD@]"
        "HOST:PORT (percent-encode @ : / % in USER and PASSWORD): https scheme is not one of "
        "these (got a str; value not shown)")


async def run_telegram_logged(config_text: str) -> tuple[int, str]:
    """``tgmux run``'s coroutine on this config, and what it logged (as the operator reads it,
    through tgmux's logging at INFO: Pyrogram's own lines included)."""
    from tgmux.hooks import build_plugin_manager
    from tgmux.telegram import run_telegram

    config, _ = load_text(config_text)
    stream = io.StringIO()
    root = logging.getLogger()
    level = root.level
    before = list(root.handlers)
    setup_logging("INFO")
    handler = next(h for h in root.handlers if h not in before)
    handler.setStream(stream)  # type: ignore[attr-defined]
    try:
        result = await run_telegram(config, build_plugin_manager())
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return result, stream.getvalue()


@pytest.mark.timeout(60)
async def test_telegram_connects_through_its_socks5_proxy(tmp_path: Path) -> None:
    async with Socks5Proxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        url = f"socks5://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{proxy.port}"
        result, logged = await run_telegram_logged(telegram_config(tmp_path, url))
    # the proxy was asked, with the credentials, for a Telegram data centre (and, being a test
    # proxy, refused to go beyond 127.0.0.1)
    assert proxy.requests
    assert {(r.username, r.password, r.port) for r in proxy.requests} == {
        (PROXY_USER, PROXY_PASSWORD, 443)}
    assert all(r.host.startswith("149.154.") for r in proxy.requests), proxy.requests
    assert result == 1
    errors = [line for line in logged.splitlines() if " ERROR tgmux.telegram:" in line]
    assert len(errors) == 1, logged
    assert errors[0].endswith(
        f"cannot reach Telegram through the proxy socks5://{PROXY_USER}:***@127.0.0.1:"
        f"{proxy.port} (the proxy refused: Connection refused by destination host): check "
        "telegram.proxy and the proxy's own network")
    assert "via proxy socks5://relay:***@127.0.0.1" in logged  # kurigram's own line
    assert PROXY_PASSWORD not in logged and ENCODED_PASSWORD not in logged


@pytest.mark.timeout(60)
async def test_a_telegram_proxy_that_is_down_is_named(tmp_path: Path) -> None:
    port = closed_port()
    url = f"socks5://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{port}"
    result, logged = await run_telegram_logged(telegram_config(tmp_path, url))
    assert result == 1
    errors = [line for line in logged.splitlines() if " ERROR tgmux.telegram:" in line]
    assert len(errors) == 1, logged
    assert errors[0].endswith(
        f"cannot reach the Telegram proxy socks5://{PROXY_USER}:***@127.0.0.1:{port} "
        "(connection refused): check telegram.proxy and that the proxy is running")
    assert PROXY_PASSWORD not in logged and ENCODED_PASSWORD not in logged


async def test_bambisleep_audio_is_fetched_through_the_backend_proxy() -> None:
    from tgmux.backends.bambisleep.client import BambiSleepClient
    from tgmux.proxy import backend_route

    async with BambiSleepSimulator(api_keys={"k": "bambi"}) as bsim, HttpProxy() as proxy:
        route = backend_route(proxy.url, True, bsim.base_url)
        async with BambiSleepClient(api_key="k", base_url=bsim.base_url,
                                    http_options={"proxy": route}) as client:
            result = await client.generate("hi")
            assert result.audio_url is not None
            audio = await client.fetch_audio(result.audio_url)
    assert audio  # the simulator's MP3
    assert proxy.lines() == [f"POST {bsim.base_url}/ai/generate HTTP/1.1",
                             f"GET {result.audio_url} HTTP/1.1"]


async def test_the_voice_plugins_audio_api_goes_through_its_proxy(
        sim: OpenAISimulator) -> None:
    from tgmux.plugins.audio_api import AudioApiSettings, make_client

    async with HttpProxy() as proxy:
        settings = AudioApiSettings(base_url=sim.base_url, model="whisper-1", proxy=proxy.url)
        async with make_client(settings, name="transcribe", timeout=5,
                               max_response_bytes=1000) as http:
            await http.request_json("GET", "/models")
    assert proxy.lines() == [f"GET {sim.base_url}/models HTTP/1.1"]


def test_check_prints_the_proxy_of_each_account_and_backend(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    (tmp_path / "config.yaml").write_text(f"""
store: memory://
telegram:
  proxy: "socks5://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:1080"
backends:
  echo: {{type: echo}}
  own: {{type: openai, base_url: "https://api.example.com/v1", model: m, api_key: k,
        proxy: "https://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:3128"}}
  env: {{type: openai, base_url: "https://api.example.com/v1", model: m, api_key: k}}
  local: {{type: openai, base_url: "http://127.0.0.1:11434/v1", model: m}}
  direct: {{type: openai, base_url: "https://api.example.com/v1", model: m, api_key: k,
           trust_env: false}}
default: echo
""")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(HTTPS_PROXY="http://proxy.internal:8080", NO_PROXY="127.0.0.1")
    done = subprocess.run([sys.executable, "-m", "tgmux", "check", "config.yaml"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    start = lines.index("backends:")
    assert lines[start:start + 7] == [
        "backends:",
        "  echo: echo",
        f"  own: openai through the proxy https://{PROXY_USER}:***@127.0.0.1:3128",
        "  env: openai through the proxy http://proxy.internal:8080 (from HTTPS_PROXY)",
        "  local: openai",
        "  direct: openai",
        "",
    ]
    assert (f"account main (telegram: not configured, through the proxy socks5://{PROXY_USER}:"
            "***@127.0.0.1:1080), routes (first match wins):") in done.stdout
    assert PROXY_PASSWORD not in done.stdout and ENCODED_PASSWORD not in done.stdout


async def test_healthcheck_asks_its_own_server_directly_whatever_http_proxy_says(
        tmp_path: Path) -> None:
    import asyncio
    import os
    import sys

    from aiohttp import web

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        (tmp_path / "config.yaml").write_text(
            f"server: {{listen: '127.0.0.1:{port}'}}\nbackends: {{echo: {{type: echo}}}}\n"
            "default: echo\n")
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["HTTP_PROXY"] = f"http://127.0.0.1:{closed_port()}"
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tgmux", "healthcheck", "-c", "config.yaml", cwd=tmp_path,
            env=env, stderr=asyncio.subprocess.PIPE)
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    finally:
        await runner.cleanup()
    assert process.returncode == 0, stderr.decode()


def test_a_malformed_proxy_url_is_not_echoed(tmp_path: Path) -> None:
    # an unencoded "/" in the password: no URL parser (nor the log redaction) finds it
    with pytest.raises(ConfigError) as caught:
        load_text(telegram_config(tmp_path, "socks5://relay:pa/ss@127.0.0.1:1080"),
                  source="cfg.yaml")
    assert str(caught.value).startswith("cfg.yaml:8: telegram.proxy: expected a proxy URL")
    assert "pa/ss" not in str(caught.value)


@pytest.mark.timeout(90)
def test_login_through_a_proxy_that_is_down_is_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    port = closed_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TG_")}
    done = subprocess.run(
        [sys.executable, "-m", "tgmux", "login", "--api-id", "1", "--api-hash", "0" * 32,
         "--phone", "+10000000000", "--proxy",
         f"socks5://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{port}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=80, stdin=subprocess.DEVNULL,
        env=env)
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        f"error: cannot reach the Telegram proxy socks5://{PROXY_USER}:***@127.0.0.1:{port} "
        "(connection refused): check --proxy and that the proxy is running"]


def test_an_unusable_environment_proxy_is_said_once_and_not_used(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from tgmux.proxy import backend_route

    monkeypatch.setenv("HTTPS_PROXY", "socks5://u:s3cret@127.0.0.1:1080")
    caplog.set_level(logging.WARNING, logger="tgmux.proxy")
    assert backend_route(None, True, "https://api.openai.com/v1") is None
    assert [r.getMessage() for r in caplog.records] == [
        "HTTPS_PROXY is not used: expected a proxy URL http|https://[USER:PASSWORD@]HOST:PORT "
        "(percent-encode @ : / % in USER and PASSWORD): socks5 scheme is not one of these"]


async def test_a_proxy_name_that_does_not_resolve_is_named(monkeypatch) -> None:
    from tgmux.http import HttpClient
    from tgmux.proxy import backend_route

    route = backend_route("http://proxy.invalid:3128", True, "https://provider.invalid")
    async with HttpClient("https://provider.invalid", proxy=route, retries=0, name="p") as http:
        with pytest.raises(Exception) as caught:
            await http.request("GET", "/v1/models")
    assert str(caught.value).startswith(
        "p: GET /v1/models: cannot connect to the proxy http://proxy.invalid:3128 (")


@pytest.mark.timeout(60)
async def test_telegram_connects_through_its_http_proxy(tmp_path: Path) -> None:
    async with HttpProxy(credentials=(PROXY_USER, PROXY_PASSWORD)) as proxy:
        url = f"http://{PROXY_USER}:{ENCODED_PASSWORD}@127.0.0.1:{proxy.port}"
        result, logged = await run_telegram_logged(telegram_config(tmp_path, url))
    assert proxy.requests
    assert all(r.line.startswith("CONNECT 149.154.") and r.line.endswith(":443 HTTP/1.1")
               and r.proxy_authorization == basic(PROXY_USER, PROXY_PASSWORD)
               for r in proxy.requests), proxy.requests
    assert result == 1
    errors = [line for line in logged.splitlines() if " ERROR tgmux.telegram:" in line]
    assert len(errors) == 1, logged
    assert f"cannot reach Telegram through the proxy http://{PROXY_USER}:***@127.0.0.1:" \
           f"{proxy.port} (the proxy refused: " in errors[0]
    assert PROXY_PASSWORD not in logged and ENCODED_PASSWORD not in logged
