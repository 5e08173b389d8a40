"""The console's service (tgmux.admin.service) on a running engine: what it reads, and that its
actions do what the chat commands do."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

from tgmux import hookimpl
from tgmux.activity import MinuteCounter
from tgmux.admin.service import AdminService
from tgmux.backend import Backend, BackendSettings, HistorySettings, Text, Turn
from tgmux.bootstrap import load
from tgmux.errors import UnavailableError
from tgmux.harness import EngineHarness
from tgmux.store import open_store
from tgmux.types import Notice


class RecallSettings(BackendSettings):
    type: Literal["recall"] = "recall"


class RecallBackend(Backend):
    """Says how many exchanges it remembers, then the text (tgmux keeps its memory)."""

    type_name = "recall"
    Settings = RecallSettings

    def memory(self, options: Any) -> HistorySettings:
        return HistorySettings(max_turns=10)

    async def reply(self, turn: Turn) -> AsyncIterator[Any]:
        remembered = await turn.history.read() if turn.history is not None else []
        yield Text(f"{len(remembered)} before: {turn.text}")


class FailingSettings(BackendSettings):
    type: Literal["failing"] = "failing"
    api_key: str = ""


class FailingBackend(Backend):
    """Fails as a provider that repeats the key in its error would."""

    type_name = "failing"
    Settings = FailingSettings

    async def reply(self, turn: Turn) -> AsyncIterator[Any]:
        raise UnavailableError(f"upstream said: bad key {turn.options.api_key}\nmore")
        yield Text("never")


class RecallPlugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [RecallBackend, FailingBackend]


CONFIG = """\
store: "memory://"
backends:
  e: {type: echo, prefix: "echo: "}
  r: {type: recall}
default: r
admins: [99]
access: {denied_reply: "This bot is private."}
limits: {per_user: {messages: 50, per: 60}}
"""


def texts(parts: list[Any]) -> list[str]:
    return [p.text for p in parts]


async def test_switching_a_chats_backend_sends_its_next_message_there() -> None:
    async with EngineHarness.from_yaml(CONFIG, plugins=[RecallPlugin()]) as h:
        service = AdminService(h.engine)
        assert texts(await h.say("hi", user_id=7, username="ann")) == ["0 before: hi"]
        view = await service.set_backend("main", 7, "e", who="test")
        assert (view.backend, view.reason, view.override) == ("e", "override", "e")
        assert texts(await h.say("again", user_id=7)) == ["echo: again"]
        view = await service.set_backend("main", 7, None, who="test")
        assert (view.backend, view.reason, view.override) == ("r", "default", None)
        assert texts(await h.say("back", user_id=7, username="ann")) == ["1 before: back"]
        [listed] = await service.chats()
        assert (listed.chat_id, listed.username, listed.type, listed.backend) == (
            7, "ann", "private", "r")
        assert await service.chats("nobody") == []
        assert [c.chat_id for c in await service.chats("ann")] == [7]


async def test_unknown_backend_is_refused_by_name() -> None:
    async with EngineHarness.from_yaml(CONFIG, plugins=[RecallPlugin()]) as h:
        service = AdminService(h.engine)
        try:
            await service.set_backend("main", 7, "nope", who="test")
        except ValueError as exc:
            assert "no backend 'nope'" in str(exc) and "e, r" in str(exc)
        else:
            raise AssertionError("an unknown backend was taken")


async def test_reset_forgets_the_conversation_and_chat_shows_memory() -> None:
    async with EngineHarness.from_yaml(CONFIG, plugins=[RecallPlugin()]) as h:
        service = AdminService(h.engine)
        await h.say("one", user_id=7)
        await h.say("two", user_id=7)
        detail = await service.chat("main", 7)
        assert detail is not None and detail.memory_exchanges == 2
        assert detail.exchanges is None  # show_messages is off
        assert detail.limits["per_user"] == {"used": 2, "messages": 50, "per_seconds": 60.0}
        shown = await AdminService(h.engine, show_messages=True).chat("main", 7)
        assert shown is not None and shown.exchanges == [
            {"user": "one", "reply": "0 before: one"}, {"user": "two", "reply": "1 before: two"}]
        assert await service.reset("main", 7, who="test") == 2
        assert texts(await h.say("three", user_id=7)) == ["0 before: three"]
        assert await service.chat("nope", 7) is None


async def test_block_refuses_the_user_until_unblocked_and_survives_a_restart(
        tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path}/t.db"
    async with EngineHarness.from_yaml(CONFIG, plugins=[RecallPlugin()], store=store_url) as h:
        service = AdminService(h.engine)
        view = await service.block(7, who="test")
        assert (view.verdict, view.blocked_in_console) == ("blocked", True)
        assert await h.say("hi", user_id=7) == [Notice("This bot is private.")]
        assert await h.say("hi", user_id=99) != []  # others are not
    async with EngineHarness.from_yaml(CONFIG, plugins=[RecallPlugin()], store=store_url) as h:
        service = AdminService(h.engine)
        assert await h.say("hi", user_id=7, message_id=100) == [Notice("This bot is private.")]
        users = {u.user_id: u for u in await service.users()}
        assert users[7].verdict == "blocked" and users[99].verdict == "admin"
        view = await service.unblock(7, who="test")
        assert (view.verdict, view.blocked_in_console) == ("allowed", False)
        assert texts(await h.say("hi again", user_id=7, message_id=101)) == ["0 before: hi again"]


async def test_accounts_backends_and_messages_per_minute() -> None:
    async with EngineHarness.from_yaml(CONFIG, plugins=[RecallPlugin()]) as h:
        service = AdminService(h.engine)
        await h.say("a", user_id=7)
        await h.say("b", user_id=8)
        [account] = await service.accounts()
        assert (account.name, account.kind, account.held_here, account.ready,
                account.backlog) == ("main", "bot", True, True, 0)
        # a store without leases: the account is held by this process (not "nobody")
        assert (account.holder_host, account.holder_pid) == (socket.gethostname(), os.getpid())
        backends = {b.name: b for b in await service.backends()}
        assert backends["r"].replies_last_hour == 2 and backends["r"].circuit == "closed"
        assert backends["r"].p50_seconds is not None and backends["e"].replies_last_hour == 0
        per_minute = await service.messages_per_minute()
        assert len(per_minute) == 60 and sum(per_minute) == 2 and per_minute[-1] == 2


def test_minute_counter_forgets_what_is_older_than_an_hour() -> None:
    counter = MinuteCounter()
    counter.add(600.0)
    counter.add(610.0)
    counter.add(660.0)
    assert counter.last_hour(now=660.0)[-2:] == [2, 1]
    assert sum(counter.last_hour(now=660.0 + 59 * 60)) == 1
    assert sum(counter.last_hour(now=660.0 + 3600)) == 0


async def test_config_is_masked_with_lines_and_a_broken_reload_keeps_the_old(
        tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(CONFIG.replace('"memory://"', '"postgresql://u:pa55word-x@db/t"')
                    + "server:\n  console: {token: abcdefghijklmnop0123}\n"
                    "  listen: 127.0.0.1:0\n")
    config, pm = load(path, plugins=[RecallPlugin()])
    async with EngineHarness(config, store=open_store("memory://"), plugin_manager=pm) as h:
        service = AdminService(h.engine)
        view = await service.config()
        text = str(view.to_json())
        assert "pa55word-x" not in text and "abcdefghijklmnop0123" not in text
        assert view.data["server"]["console"]["token"] == "***"
        assert view.data["store"]["url"] == "postgresql://u:***@db/t"
        assert view.lines["server.console"] == f"{path}:10"
        path.write_text(path.read_text().replace("default: r", "default: nope"))
        report = await service.reload(who="test")
        assert not report.applied
        assert any(e.startswith(f"{path}:5: default") for e in report.errors), report.errors
        assert h.engine.config.accounts["main"].default == "r"
        path.write_text(path.read_text().replace("default: nope", "default: e"))
        report = await service.reload(who="test")
        assert report.applied and report.changes == ["default: r → e"], report


async def test_a_backends_last_error_is_shown_redacted() -> None:
    text = CONFIG.replace("  r: {type: recall}\n", "  r: {type: recall}\n"
                          '  f: {type: failing, api_key: "sk-very-secret-1"}\n')
    async with EngineHarness.from_yaml(text, plugins=[RecallPlugin()]) as h:
        service = AdminService(h.engine)
        await service.set_backend("main", 7, "f", who="test")
        await h.say("hi", user_id=7)
        failing = {b.name: b for b in await service.backends()}["f"]
        assert failing.last_error == "unavailable: upstream said: bad key ***"
        assert failing.errors_last_hour == 1 and failing.replies_last_hour == 0
        assert failing.last_error_at is not None


def test_a_secret_the_error_length_would_cut_is_still_masked() -> None:
    # the text is masked whole, then cut: cut first, a secret across the cut is no longer
    # known and its first characters were shown
    from tgmux.activity import ERROR_CHARS, Activity
    from tgmux.redact import remember_secrets

    secret = "sk-straddling-the-cut-0123456789"
    remember_secrets({secret})
    try:
        activity = Activity()
        said = "x" * (ERROR_CHARS - len("unavailable: ") - 6) + secret
        activity.replied("b", "error", RuntimeError(said), lambda e: "unavailable")
        shown = activity.backends["b"].last_error
    finally:
        remember_secrets(set())
        remember_secrets(set())
    assert shown is not None and len(shown) <= ERROR_CHARS
    assert "sk-str" not in shown and shown.endswith("***")
