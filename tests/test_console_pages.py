"""The console's pages (tgmux.admin.pages) on a fake service and the real auth
(tgmux.admin.auth): what each page shows, that every value is escaped, that forms need the
CSRF token, the headers. The browser tests (tests/browser) drive the whole thing."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tgmux.admin.auth import ConsoleAuth
from tgmux.admin.pages import (
    _flatten,
    _where,
    add_console_pages,
    chart_bars,
    usage_lines,
)
from tgmux.admin.service import (
    AccountView,
    AdminService,
    BackendView,
    ChatDetail,
    ChatView,
    ConfigView,
    ReloadReport,
    UserView,
)
from tgmux.store import StoreUnavailable

TOKEN = "a-console-token-of-some-length"
#: A user's usage on one account, as the service gives it.
USAGE = {"today": {"messages": 2, "input_tokens": 10, "output_tokens": 20, "cost": 0.0125,
                   "unpriced_messages": 0},
         "month": {"messages": 1, "input_tokens": 1, "output_tokens": 1, "cost": 0,
                   "unpriced_messages": 0},
         "currency": "USD", "daily_cost_limit": 0.5, "monthly_cost_limit": None,
         "exempt": False, "per_user": {"used": 2, "messages": 50, "per_seconds": 3600}}
EVIL = "<script>alert(1)</script>"


class FakeService(AdminService):
    def __init__(self) -> None:
        super().__init__(engine=None, show_messages=False)  # type: ignore[arg-type]
        self.calls: list[tuple[Any, ...]] = []
        self.chat_view = ChatView(account="main", chat_id=42, type="group", title=EVIL,
                                  backend="e", reason="default", last_message_at=time.time())

    async def accounts(self) -> list[AccountView]:
        return [AccountView(name="main", kind="bot", holder_host="host-a", holder_pid=7,
                            held_since=time.time() - 60, held_here=True, ready=True),
                AccountView(name="second", kind="user", not_ready_because="not connected")]

    async def backends(self) -> list[BackendView]:
        return [BackendView(name="e", type="echo", circuit="closed", p50_seconds=0.012,
                            replies_last_hour=5),
                BackendView(name="o", type="openai", circuit="open", last_error="HTTP 500",
                            last_error_at=time.time() - 30, errors_last_hour=3)]

    async def messages_per_minute(self) -> list[int]:
        return [0] * 58 + [3, 1]

    async def chats(self, query: str = "", *, limit: int = 200) -> list[ChatView]:
        self.calls.append(("chats", query))
        return [self.chat_view] if query in ("", "42") else []

    async def chat(self, account: str, chat_id: int) -> ChatDetail | None:
        if (account, chat_id) != ("main", 42):
            return None
        return ChatDetail(chat=self.chat_view, memory_exchanges=3,
                          limits={"per_chat": {"used": 4, "messages": 100,
                                               "per_seconds": 60}},
                          exchanges=[{"user": "hi", "reply": "hello"}])

    async def set_backend(self, account: str, chat_id: int, backend: str | None, *,
                          who: str) -> ChatView:
        self.calls.append(("set_backend", account, chat_id, backend, who))
        if backend not in (None, "e", "o"):
            raise ValueError(f"no backend {backend!r}")
        return ChatView(account=account, chat_id=chat_id, type="group", backend=backend or "e",
                        override=backend, reason="override" if backend else "default")

    async def reset(self, account: str, chat_id: int, *, who: str) -> int:
        self.calls.append(("reset", account, chat_id, who))
        return 3

    async def users(self, query: str = "", *, limit: int = 200) -> list[UserView]:
        return [UserView(user_id=5, username="bob", verdict="allowed", usage={"main": USAGE})]

    async def block(self, user_id: int, *, who: str) -> UserView:
        self.calls.append(("block", user_id, who))
        return UserView(user_id=user_id, verdict="blocked", blocked_in_console=True)

    async def unblock(self, user_id: int, *, who: str) -> UserView:
        return UserView(user_id=user_id)

    async def config(self) -> ConfigView:
        return ConfigView(source="tgmux.yaml",
                          data={"backends": {"o": {"type": "openai", "api_key": "***"}},
                                "default": "e"},
                          lines={"backends.o": "tgmux.yaml:3", "backends.o.api_key":
                                 "tgmux.yaml:4", "default": "tgmux.yaml:6"})

    async def reload(self, *, who: str) -> ReloadReport:
        return ReloadReport(applied=False, errors=["tgmux.yaml:6: default: no backend 'x'"])


@pytest.fixture
async def console() -> Any:
    service = FakeService()
    app = web.Application()
    auth = ConsoleAuth(TOKEN)
    auth.add_routes(app)
    add_console_pages(app, service, auth)
    async with TestClient(TestServer(app)) as client:
        client.service = service
        yield client


async def signed_in(client: TestClient) -> str:
    """Sign in; the session's CSRF token, as its pages carry it."""
    response = await client.post("/console/sign-in", data={"token": TOKEN},
                                 allow_redirects=False)
    assert response.status == 303
    page = await (await client.get("/console/users")).text()
    [csrf] = re.findall(r'name="csrf_token" value="([^"]+)"', page)[:1]
    return csrf


async def test_a_page_without_a_session_sends_to_the_sign_in_form(console: TestClient) -> None:
    response = await console.get("/console/chats?q=4", allow_redirects=False)
    assert response.status == 303
    location = response.headers["Location"]
    assert location.startswith("/console/sign-in?next=")
    form = await (await console.get(location)).text()
    assert 'name="next" value="/console/chats?q=4"' in form  # back there once signed in
    response = await console.post("/console/sign-in?next=/console/users",
                                  data={"token": "wrong", "next": "/console/users"})
    page = await response.text()
    assert response.status == 401 and "Wrong token." in page
    assert 'action="/console/sign-in?next=/console/users"' in page  # the way back kept
    response = await console.post("/console/sign-in",
                                  data={"token": TOKEN, "next": "https://elsewhere/"},
                                  allow_redirects=False)
    assert response.headers["Location"] == "/console/"  # never away from the console


async def test_each_page_renders_escaped_with_its_headers(console: TestClient) -> None:
    await signed_in(console)
    for path, expected in [("/console", "host-a pid 7 (this process)"),
                           ("/console/chats", "/console/chats/main/42"),
                           ("/console/chats/main/42", "in this chat: 4 of 100 messages per 60 s"),
                           ("/console/users", "per user: 2 of 50 messages per 3600 s"),
                           ("/console/config", "tgmux.yaml:4")]:
        response = await console.get(path)
        body = await response.text()
        assert response.status == 200, path
        assert expected in body, path
        assert "<script" not in body, path  # no script of ours, and a stranger's is escaped
        assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        assert response.headers["X-Frame-Options"] == "DENY"
        assert TOKEN not in body
    body = await (await console.get("/console/chats")).text()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in body
    overview = await (await console.get("/console")).text()
    assert "not ready: not connected" in overview and "HTTP 500" in overview
    assert overview.count("<rect") == 1 + 2  # the background and two minutes with messages
    # no messages shown unless show_messages
    assert "hello" not in await (await console.get("/console/chats/main/42")).text()
    console.service.show_messages = True
    assert "hello" in await (await console.get("/console/chats/main/42")).text()
    assert (await console.get("/console/chats/main/43")).status == 404


async def test_a_form_without_the_csrf_token_is_refused(console: TestClient) -> None:
    csrf = await signed_in(console)
    assert csrf
    for path in ["/console/chats/main/42/backend", "/console/chats/main/42/reset",
                 "/console/users/5/block", "/console/config/reload"]:
        for data in ({}, {"csrf": "forged"}):
            response = await console.post(path, data=data, allow_redirects=False)
            assert response.status == 403, path
            assert "CSRF token is missing or wrong" in await response.text()
    assert [c for c in console.service.calls if c[0] != "chats"] == []


async def test_actions_call_the_service_and_redirect_with_what_they_did(
        console: TestClient) -> None:
    csrf = await signed_in(console)
    response = await console.post("/console/chats/main/42/backend",
                                  data={"csrf_token": csrf, "backend": "o"})
    assert str(response.url).endswith("/console/chats/main/42")
    assert "chat 42: backend set to o; it is now answered by o" in await response.text()
    response = await console.post("/console/chats/main/42/backend",
                                  data={"csrf_token": csrf, "backend": "nope"})
    assert "no backend &#39;nope&#39;" in await response.text()
    await console.post("/console/chats/main/42/backend", data={"csrf_token": csrf, "backend": ""})
    response = await console.post("/console/chats/main/42/reset", data={"csrf_token": csrf})
    assert "3 exchanges forgotten" in await response.text()
    response = await console.post("/console/users/5/block", data={"csrf_token": csrf})
    assert "user 5 blocked: now blocked" in await response.text()
    response = await console.post("/console/config/reload", data={"csrf_token": csrf})
    assert str(response.url).endswith("/console/config")
    assert "tgmux.yaml:6: default: no backend &#39;x&#39;" in await response.text()
    calls = [c for c in console.service.calls if c[0] != "chats"]
    assert [c[:-1] for c in calls] == [
        ("set_backend", "main", 42, "o"), ("set_backend", "main", 42, "nope"),
        ("set_backend", "main", 42, None), ("reset", "main", 42), ("block", 5)]
    # who acted: the session (as the audit log names it), from where
    assert all(re.fullmatch(r"session [0-9a-f]{8} \(127\.0\.0\.1\)", c[-1]) for c in calls)
    # a notice shows once
    assert "forgotten" not in await (await console.get("/console/chats/main/42")).text()


def test_usage_reads_as_sentences() -> None:
    assert usage_lines(USAGE) == ["today: 2 messages, 0.0125 USD (limit 0.5 USD)",
                                  "month: 1 message", "per user: 2 of 50 messages per 3600 s"]
    assert usage_lines({"daily": {"used": 3, "messages": 9}, "exempt": True}) == [
        "daily messages: 3 of 9 messages today", "an admin: exempt from the limits"]


def test_config_rows_name_where_each_value_came_from() -> None:
    rows = _flatten({"routes": [{"backend": "e", "match": {"chat": 5}}], "default": "e"})
    assert rows == [("routes[0].backend", "e"), ("routes[0].match.chat", 5), ("default", "e")]
    lines = {"routes[0]": "c.yaml:3", "default": "c.yaml:9"}
    assert [_where(lines, path) for path, _ in rows] == ["in c.yaml:3", "in c.yaml:3",
                                                         "c.yaml:9"]
    assert _where(lines, "routes[0]") == "c.yaml:3"
    assert _where(lines, "engine.concurrency") == "default"


def test_the_chart_scales_to_the_busiest_minute() -> None:
    chart = chart_bars([0] * 59 + [4])
    assert chart["top"] == 4 and chart["total"] == 4
    assert chart["bars"][-1]["height"] == 78 and chart["bars"][0]["height"] == 0
    assert re.fullmatch(r"\d+(\.\d)?", str(chart["bars"][-1]["x"]))


async def test_a_store_that_does_not_answer_is_one_clear_page(console: TestClient) -> None:
    await signed_in(console)

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("the store did not answer in 5 s")

    async def bug(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("a bug")

    console.service.accounts = down
    response = await console.get("/console")
    assert response.status == 503 and response.headers["Retry-After"] == "5"
    assert "The store is not answering" in await response.text()
    assert response.headers["X-Frame-Options"] == "DENY"
    console.service.users = bug
    response = await console.get("/console/users")
    body = await response.text()
    assert response.status == 500 and "internal error: KeyError" in body
    assert "Traceback" not in body
