"""The admin API (``/api/v1/``) and its security: signing in, Bearer tokens, the rate limit on
wrong tokens, CSRF, the audit log, and that no secret is ever in an answer."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tgmux.admin.auth import FAILURES_PER_ADDRESS
from tgmux.admin.mount import mount_console, reachable_beyond_this_machine
from tgmux.bootstrap import load
from tgmux.harness import EngineHarness
from tgmux.ops import start_ops_server
from tgmux.store import open_store
from tgmux.types import Notice

TOKEN = "console-token-0123456789abcdef"
API_KEY = "sk-test-apikey-5up3rs3cret"
BOT_TOKEN = "123456:AAbot-token-n0t-f0r-y0ur-3y3s-abcde"
DSN_PASSWORD = "dsn-pa55w0rd-x"
API_HASH = "0123456789abcdef0123456789abcdef"
SECRETS = (TOKEN, API_KEY, BOT_TOKEN, DSN_PASSWORD, API_HASH)

CONFIG = f"""\
telegram: {{api_id: 1, api_hash: "{API_HASH}", bot_token: "{BOT_TOKEN}"}}
store: "postgresql://tgmux:{DSN_PASSWORD}@127.0.0.1:9/tgmux"
backends:
  e: {{type: echo, prefix: "echo: "}}
  loud: {{type: echo, prefix: "LOUD: "}}
  gpt: {{type: openai, base_url: "http://127.0.0.1:9/v1", api_key: "{API_KEY}", model: m}}
default: e
admins: [99]
access: {{denied_reply: "This bot is private."}}
server:
  listen: 127.0.0.1:0
  console: {{token: "{TOKEN}"}}
"""

#: Every route of the API: (method, path, JSON body).
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "/api/v1/session", None),
    ("GET", "/api/v1/accounts", None),
    ("GET", "/api/v1/backends", None),
    ("GET", "/api/v1/chats", None),
    ("GET", "/api/v1/chats/main/7", None),
    ("POST", "/api/v1/chats/main/7/backend", {"backend": "loud"}),
    ("POST", "/api/v1/chats/main/7/reset", {}),
    ("GET", "/api/v1/users", None),
    ("POST", "/api/v1/users/8/block", {}),
    ("POST", "/api/v1/users/8/unblock", {}),
    ("GET", "/api/v1/config", None),
    ("POST", "/api/v1/reload", {}),
]


class Console:
    """A running engine with its server, and a client."""

    def __init__(self, h: EngineHarness, base: str, client: aiohttp.ClientSession,
                 path: Path) -> None:
        self.h, self.base, self.client, self.path = h, base, client, path
        self.bodies: list[str] = []  # every answer's body, for the secrets test

    async def call(self, method: str, path: str, body: Any = None, *,
                   headers: dict[str, str] | None = None, data: Any = None,
                   bearer: str | None = None) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(headers or {})
        if bearer is not None:
            headers["Authorization"] = f"Bearer {bearer}"
        async with self.client.request(method, self.base + path, json=body, data=data,
                                       headers=headers, allow_redirects=False) as response:
            text = await response.text()
            self.bodies.append(text + json.dumps(dict(response.headers)))
            try:
                parsed = json.loads(text)
            except ValueError:
                parsed = text
            return response.status, parsed, response

    async def sign_in(self) -> str:
        status, body, _ = await self.call("POST", "/console/sign-in", {"token": TOKEN})
        assert status == 200, body
        return str(body["csrf_token"])


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    async with started(tmp_path, CONFIG) as running:
        yield running


class started:  # an async context manager: a running console
    def __init__(self, tmp_path: Path, text: str) -> None:
        self.path = tmp_path / "config.yaml"
        self.path.write_text(text)

    async def __aenter__(self) -> Console:
        config, pm = load(self.path)
        self.h = EngineHarness(config, store=open_store("memory://"), plugin_manager=pm)
        await self.h.__aenter__()
        self.server = await start_ops_server(config, self.h.engine)
        assert self.server is not None
        self.client = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        return Console(self.h, f"http://127.0.0.1:{self.server.port}", self.client, self.path)

    async def __aexit__(self, *exc: object) -> None:
        await self.client.close()
        await self.server.stop()
        await self.h.__aexit__(*exc)


def texts(parts: list[Any]) -> list[str]:
    return [p.text for p in parts]


async def test_without_a_console_token_there_is_no_api(tmp_path: Path) -> None:
    text = CONFIG.replace(f'  console: {{token: "{TOKEN}"}}\n', "")
    async with started(tmp_path, text) as c:
        for method, path, body in ROUTES:
            status, _, _ = await c.call(method, path, body, bearer=TOKEN)
            assert status == 404, (method, path)
        assert (await c.call("POST", "/console/sign-in", {"token": TOKEN}))[0] == 404
        assert (await c.call("GET", "/healthz"))[0] == 200
        assert (await c.call("GET", "/metrics"))[0] == 200


async def test_every_route_refuses_the_unauthenticated(console: Console) -> None:
    for method, path, body in ROUTES:
        status, answer, _ = await console.call(method, path, body)
        assert status == 401, (method, path)
        assert "sign in first" in answer["error"]
        status, answer, _ = await console.call(method, path, body,
                                               headers={"Authorization": "Basic eDp5"})
        assert status == 401 and "Bearer" in answer["error"]
    # nothing was done meanwhile
    assert await console.h.say("hi", user_id=8) != [Notice("This bot is private.")]
    assert await console.h.engine.override("main", 7) is None


async def test_wrong_tokens_are_refused_then_rate_limited(console: Console) -> None:
    for i in range(FAILURES_PER_ADDRESS):
        if i % 2:
            status, answer, _ = await console.call("GET", "/api/v1/accounts", bearer="wrong")
        else:
            status, answer, _ = await console.call("POST", "/console/sign-in",
                                                   {"token": "wrong"})
        assert (status, answer) == (401, {"error": "wrong token"})
    # from now on every try is refused, the right token too (else it would tell a guess)
    for route in (("GET", "/api/v1/accounts", None, TOKEN),
                  ("POST", "/console/sign-in", {"token": TOKEN}, None)):
        status, answer, response = await console.call(*route[:3], bearer=route[3])
        assert status == 429 and "too many wrong tokens" in answer["error"]
        assert 1 <= int(response.headers["Retry-After"]) <= 60
    # the form says so on its page
    status, page, response = await console.call("POST", "/console/sign-in",
                                                data={"token": TOKEN})
    assert status == 429 and "Too many wrong tokens" in page and "Retry-After" in response.headers


async def test_sign_in_cookie_and_csrf(console: Console) -> None:
    status, body, response = await console.call("POST", "/console/sign-in", {"token": TOKEN})
    assert status == 200
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie  # no https public_url
    csrf = body["csrf_token"]
    status, session, _ = await console.call("GET", "/api/v1/session")
    assert status == 200 and session["csrf_token"] == csrf
    assert session["who"].startswith("session ")
    # a state-changing request of the cookie session without its CSRF token: refused
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/reset", {})
    assert status == 403 and "CSRF" in answer["error"]
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/reset", {},
                                           headers={"X-CSRF-Token": "nope"})
    assert status == 403
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/reset", {},
                                           headers={"X-CSRF-Token": csrf})
    assert (status, answer) == (200, {"forgotten": 0})
    # a form carries it as a field
    status, _, response = await console.call("POST", "/console/sign-out",
                                             data={"csrf_token": csrf})
    assert status == 303 and response.headers["Location"] == "/console/sign-in"
    assert (await console.call("GET", "/api/v1/session"))[0] == 401  # the session ended


async def test_a_form_sign_in_goes_on_to_the_console_and_never_elsewhere(
        console: Console) -> None:
    for wanted, goes_to in (("/console/chats", "/console/chats"),
                            ("https://evil.example/", "/console/"),
                            ("//evil.example/console", "/console/")):
        status, _, response = await console.call("POST", "/console/sign-in",
                                                 data={"token": TOKEN, "next": wanted})
        assert status == 303 and response.headers["Location"] == goes_to
    status, page, _ = await console.call("POST", "/console/sign-in", data={"token": "bad"})
    assert status == 401 and "Wrong token." in page


async def test_bearer_needs_no_csrf_token(console: Console) -> None:
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/backend",
                                           {"backend": "loud"}, bearer=TOKEN)
    assert status == 200 and answer["chat"]["backend"] == "loud"
    status, session, _ = await console.call("GET", "/api/v1/session", bearer=TOKEN)
    assert session["who"] == "bearer (127.0.0.1)" and session["csrf_token"] is None


async def test_switch_reset_block_through_the_api_act_on_the_next_message(
        console: Console, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tgmux.console")
    h = console.h
    assert texts(await h.say("hi", user_id=7)) == ["echo: hi"]
    csrf = await console.sign_in()
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/backend",
                                           {"backend": "loud"}, headers={"X-CSRF-Token": csrf})
    assert status == 200
    assert answer["chat"] | {"last_message_at": None} == {
        "account": "main", "chat_id": 7, "type": "private", "title": None, "username": None,
        "backend": "loud", "reason": "override", "override": "loud", "last_message_at": None}
    assert texts(await h.say("hi", user_id=7)) == ["LOUD: hi"]
    status, answer, _ = await console.call("GET", "/api/v1/chats?q=loud", bearer=TOKEN)
    assert [c["chat_id"] for c in answer["chats"]] == [7]
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/backend",
                                           {"backend": None}, bearer=TOKEN)
    assert status == 200 and answer["chat"]["reason"] == "default"
    assert texts(await h.say("hi", user_id=7)) == ["echo: hi"]
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/backend",
                                           {"backend": "nope"}, bearer=TOKEN)
    assert status == 400 and "no backend 'nope'" in answer["error"]
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/backend",
                                           data="{not json", bearer=TOKEN)
    assert status == 400 and answer == {"error": "the body is not JSON"}
    status, answer, _ = await console.call("POST", "/api/v1/chats/other/7/backend",
                                           {"backend": "loud"}, bearer=TOKEN)
    assert status == 404 and answer == {"error": "no account 'other'"}
    assert (await console.call("GET", "/api/v1/chats/main/x7", bearer=TOKEN))[0] == 400
    assert (await console.call("GET", "/api/v1/nothing", bearer=TOKEN))[0] == 404

    status, answer, _ = await console.call("POST", "/api/v1/users/7/block", {},
                                           headers={"X-CSRF-Token": csrf})
    assert status == 200 and answer["user"]["verdict"] == "blocked"
    assert await h.say("hi", user_id=7) == [Notice("This bot is private.")]
    status, answer, _ = await console.call("GET", "/api/v1/users?q=7", bearer=TOKEN)
    assert [(u["user_id"], u["verdict"], u["blocked_in_console"]) for u in answer["users"]] == [
        (7, "blocked", True)]
    status, answer, _ = await console.call("POST", "/api/v1/users/7/unblock", {},
                                           bearer=TOKEN)
    assert status == 200 and answer["user"]["verdict"] == "allowed"
    assert texts(await h.say("back", user_id=7)) == ["echo: back"]
    logged = [r.getMessage() for r in caplog.records if r.name == "tgmux.console"]
    assert any(m.startswith("session ") and "chat 7 (main): backend loud" in m for m in logged)
    assert any(m.startswith("bearer (127.0.0.1): user 7 unblocked") for m in logged), logged
    assert any("signed in" in m for m in logged)


async def test_reload_of_a_broken_config_says_where_and_keeps_the_old(
        console: Console) -> None:
    console.path.write_text(console.path.read_text().replace("default: e", "default: gone"))
    status, answer, _ = await console.call("POST", "/api/v1/reload", bearer=TOKEN)
    assert status == 422 and answer["applied"] is False
    assert "the old config keeps running" in answer["error"]
    assert any(e.startswith(f"{console.path}:7: default") for e in answer["errors"]), answer
    assert texts(await console.h.say("still", user_id=5)) == ["echo: still"]
    console.path.write_text(console.path.read_text().replace("default: gone", "default: loud"))
    status, answer, _ = await console.call("POST", "/api/v1/reload", bearer=TOKEN)
    assert status == 200 and answer["changes"] == ["default: e → loud"]
    assert texts(await console.h.say("now", user_id=5)) == ["LOUD: now"]


async def test_no_secret_is_in_any_answer(console: Console) -> None:
    await console.h.say("hello", user_id=7, username="ann")
    csrf = await console.sign_in()
    for method, path, body in ROUTES:
        for auth in ({"bearer": TOKEN}, {"headers": {"X-CSRF-Token": csrf}}):
            status, _, _ = await console.call(method, path, body, **auth)  # type: ignore[arg-type]
            assert status == 200, (method, path)
    await console.call("GET", "/api/v1/chats/main/7", bearer="wrong")
    status, config, _ = await console.call("GET", "/api/v1/config", bearer=TOKEN)
    assert config["data"]["backends"]["gpt"]["api_key"] == "***"
    assert config["data"]["telegram"]["bot_token"] == "***"
    assert config["data"]["store"]["url"] == "postgresql://tgmux:***@127.0.0.1:9/tgmux"
    assert config["lines"]["backends.gpt.api_key"] == f"{console.path}:6"
    everything = "\n".join(console.bodies)
    assert len(console.bodies) > 2 * len(ROUTES)
    for secret in SECRETS:
        assert secret not in everything


async def test_secure_cookie_with_https_and_a_warning_when_reachable_in_clear(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert reachable_beyond_this_machine("0.0.0.0:80")
    assert reachable_beyond_this_machine("example.org:80")
    assert not reachable_beyond_this_machine("127.0.0.1:80")
    assert not reachable_beyond_this_machine("[::1]:80")
    assert not reachable_beyond_this_machine("localhost:80")
    caplog.set_level(logging.WARNING, logger="tgmux.console")
    for public_url, warned, secure in ((None, True, False),
                                       ("https://bot.example.org", False, True)):
        text = CONFIG.replace("listen: 127.0.0.1:0", "listen: 0.0.0.0:8080")
        if public_url:
            text = text.replace("server:\n", f"server:\n  public_url: {public_url}\n")
        path = tmp_path / "config.yaml"
        path.write_text(text)
        config, pm = load(path)
        caplog.clear()
        async with EngineHarness(config, store=open_store("memory://"), plugin_manager=pm) as h:
            _, auth = mount_console(web.Application(), config, h.engine)
        assert auth.secure_cookie is secure
        said = [r.getMessage() for r in caplog.records if r.name == "tgmux.console"]
        assert bool([m for m in said if "in clear" in m and "0.0.0.0:8080" in m]) is warned


async def test_a_body_too_large_is_refused_in_json(console: Console) -> None:
    status, answer, _ = await console.call("POST", "/api/v1/chats/main/7/backend",
                                           {"backend": "x" * 100_000}, bearer=TOKEN)
    assert status == 413 and "error" in answer
    status, answer, _ = await console.call("POST", "/console/sign-in",
                                           {"token": "x" * 100_000})
    assert status == 413 and "error" in answer


ROOT = Path(__file__).resolve().parent.parent
#: a ```sh block, and the ```json block right after it (the answer's shape), if any
EXAMPLE = re.compile(r"^```sh\n(?P<sh>.*?)^```\n(?:\n```json\n(?P<json>.*?)^```)?",
                     re.M | re.S)

DOCS_CONFIG = f"""\
store: "memory://"
backends:
  echo: {{type: echo}}
default: echo
server:
  listen: 127.0.0.1:0
  console: {{token: "{TOKEN}"}}
"""


def same_shape(documented: Any, actual: Any, where: str) -> None:
    """The documented answer has the actual one's keys (nested mappings: a part of them; the
    first item of a list: the same keys)."""
    if isinstance(documented, dict):
        assert isinstance(actual, dict), where
        for key, value in documented.items():
            assert key in actual, f"{where}: {key} is not in the answer"
            same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(documented, list) and documented and isinstance(documented[0], dict):
        assert actual, f"{where}: the answer's list is empty"
        assert set(documented[0]) == set(actual[0]), f"{where}: {set(actual[0])}"
        same_shape(documented[0], actual[0], f"{where}[0]")


async def test_the_curl_examples_in_the_docs_run(tmp_path: Path) -> None:
    page = (ROOT / "docs" / "console.md").read_text()
    examples = list(EXAMPLE.finditer(page))
    assert len(examples) >= 10
    async with started(tmp_path, DOCS_CONFIG) as c:
        await c.h.say("hello", user_id=42, username="ann")
        env = {"PATH": os.environ["PATH"], "TGMUX": c.base, "TGMUX_CONSOLE_TOKEN": TOKEN}
        for example in examples:
            line = page[:example.start()].count("\n") + 2
            process = await asyncio.create_subprocess_exec(
                "bash", "-euo", "pipefail", "-c", example["sh"], cwd=tmp_path, env=env,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(process.communicate(), timeout=60)
            assert process.returncode == 0, f"docs/console.md:{line}: {err.decode()}"
            if example["json"]:
                same_shape(json.loads(example["json"]), json.loads(out.decode().splitlines()[-1]),
                           f"docs/console.md:{line}")


def test_sessions_expire_and_their_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiohttp.test_utils import make_mocked_request

    import tgmux.admin.auth as auth_module

    now = [1000.0]
    auth = auth_module.ConsoleAuth(TOKEN, clock=lambda: now[0])

    def request(sid: str) -> web.Request:
        return make_mocked_request("GET", "/api/v1/session",
                                   headers={"Cookie": f"{auth_module.COOKIE}={sid}"})

    sid, session = auth.open_session()
    assert sid not in str(session) and auth.session_of(request(sid)) is session
    now[0] += auth_module.SESSION_IDLE - 1
    assert auth.session_of(request(sid)) is session  # used: its idle time starts again
    now[0] += auth_module.SESSION_IDLE + 1
    assert auth.session_of(request(sid)) is None and not auth.sessions
    monkeypatch.setattr(auth_module, "MAX_SESSIONS", 3)
    first, _ = auth.open_session()
    for _ in range(3):
        auth.open_session()
    assert len(auth.sessions) == 3 and auth.session_of(request(first)) is None


async def test_a_store_that_does_not_answer_is_a_503(console: Console,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from tgmux.store import StoreUnavailable

    async def down(*args: Any, **kwargs: Any) -> None:
        raise StoreUnavailable("down")

    monkeypatch.setattr(console.h.engine.store, "kv_set", down)
    status, answer, response = await console.call("POST", "/api/v1/users/7/block",
                                                  bearer=TOKEN)
    assert status == 503 and "store is not answering" in answer["error"]
    assert response.headers["Retry-After"] == "5"
    assert 7 not in console.h.engine.gate.blocked
