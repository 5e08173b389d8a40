"""Access lists and limits, checked before any backend: a denied user's message reaches no
provider, the 11th message in 10 s gets the limit reply once, a daily quota survives a
restart, admins are exempt, built-in commands are never counted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, Turn
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.types import Notice


class Counting(Backend):
    """Answers "ok", and counts what reached it."""

    type_name = "counting"
    Settings = BackendSettings
    asked: list[str] = []

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        Counting.asked.append(turn.text)
        yield Text("ok")


class CountingPlugin:
    @hookimpl
    def tgmux_backend_types(self):
        return [Counting]


def harness(extra: str, store: str = "memory://") -> EngineHarness:
    Counting.asked = []
    return EngineHarness.from_yaml("backends:\n  c: {type: counting}\ndefault: c\n"
                                   "admins: [1]\n" + extra, store=store,
                                   plugins=[CountingPlugin()])


async def test_a_denied_user_reaches_no_provider() -> None:
    access = ("access:\n  allow_users: [42]\n  deny_users: [43]\n"
              "  denied_reply: This bot is private.\n")
    async with harness(access) as h:
        assert await h.say("hi", user_id=42) == [Text("ok")]
        assert await h.say("hi", user_id=43) == [Notice("This bot is private.")]
        assert await h.say("/help", user_id=44) == [Notice("This bot is private.")]
        assert await h.say("hi", user_id=1) == [Text("ok")]  # an admin
    assert Counting.asked == ["hi", "hi"]
    async with harness("access:\n  allow_chats: [-5]\n  denied_reply: null\n") as h:
        assert await h.say("hi", user_id=7) == []  # ignored silently
        assert await h.say("hi", user_id=7, chat_id=-5, chat_type="group",
                           addressed=True) == [Text("ok")]


async def test_the_eleventh_message_in_ten_seconds_is_limited_once() -> None:
    async with harness("limits:\n  per_user: {messages: 10, per: 10s}\n") as h:
        for i in range(10):
            assert await h.say(f"m{i}", user_id=42) == [Text("ok")]
        [limited] = await h.say("m10", user_id=42)
        assert isinstance(limited, Notice)
        assert limited.text.startswith("You are sending messages too fast; try again in ")
        assert await h.say("m11", user_id=42) == []  # told once per window
        assert await h.say("/help", user_id=42) != []  # built-ins are never limited
        for i in range(12):
            assert await h.say(f"a{i}", user_id=1) == [Text("ok")]  # admins are exempt
    assert len([t for t in Counting.asked if t.startswith("m")]) == 10


async def test_a_daily_quota_survives_a_restart(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/t.db"
    async with harness("limits:\n  daily_per_user: 2\n", store=store) as h:
        assert await h.say("one", user_id=42) == [Text("ok")]
        assert await h.say("/start", user_id=42) != []  # not counted
    async with harness("limits:\n  daily_per_user: 2\n", store=store) as h:
        assert await h.say("two", user_id=42, message_id=10) == [Text("ok")]
        [quota] = await h.say("three", user_id=42, message_id=11)
    assert isinstance(quota, Notice)
    assert quota.text.startswith("You have used your 2 messages for today; more in ")
    assert Counting.asked == ["two"]


async def test_a_message_the_daily_quota_refuses_uses_no_window_slot() -> None:
    limits = "limits:\n  per_user: {messages: 3, per: 10s}\n  daily_per_user: 2\n"
    async with harness(limits) as h:
        assert await h.say("one", user_id=42) == [Text("ok")]
        assert await h.say("two", user_id=42) == [Text("ok")]
        [quota] = await h.say("three", user_id=42)
        assert isinstance(quota, Notice) and quota.text.startswith("You have used your 2")
        assert await h.say("four", user_id=42) == []  # the quota reply once a day
        [usage] = await h.say("/usage", user_id=42)
    assert usage.text.splitlines()[:2] == ["Your usage:", "You: 2 of 3 messages per 10 s"]
    assert usage.text.splitlines()[2].startswith("Today: 2 of 2 messages (resets in ")
    assert Counting.asked == ["one", "two"]
