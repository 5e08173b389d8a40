"""``/usage``: a user's messages, tokens and cost today and this month (UTC) against their
limits; an admin's ``/usage USER_ID`` and ``/usage @username``; nobody else's.

The gate's clock is fixed at 2026-03-10 18:00 UTC: 6 h to the next day, 21 days to April."""

from __future__ import annotations

import calendar
import time
import types

import pytest

from tgmux.chat_commands import STORE_UNAVAILABLE
from tgmux.harness import EngineHarness
from tgmux.store import MemoryStore
from tgmux.types import Notice, Text, UsageRow

NOW = calendar.timegm((2026, 3, 10, 18, 0, 0))
CONFIG = "backends:\n  e: {type: echo}\ndefault: e\nadmins: [1]\n"
LIMITS = ("limits:\n  daily_per_user: 50\n  daily_cost_per_user: 0.5\n"
          "  monthly_cost_per_user: 5\n")


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = types.SimpleNamespace(time=lambda: float(NOW), gmtime=time.gmtime,
                                  strftime=time.strftime)
    monkeypatch.setattr("tgmux.access.time", clock)
    # the replies these tests get are recorded too (messages of an unknown price): on a day
    # far from the fixed clock's month, so that /usage shows the rows record() writes alone
    elsewhere = types.SimpleNamespace(time=lambda: float(calendar.timegm((2025, 1, 1, 0, 0, 0))),
                                      gmtime=time.gmtime, strftime=time.strftime)
    monkeypatch.setattr("tgmux.usage.time", elsewhere)


def harness(extra: str = "") -> EngineHarness:
    return EngineHarness.from_yaml(CONFIG + extra)


async def record(h: EngineHarness, user_id: int = 42) -> None:
    """What the recorder wrote for this user: two replies today, one earlier this month,
    one last month."""
    def row(day: str, model: str, tokens: int, cost: float | None, cached: int = 0,
            reasoning: int = 0) -> UsageRow:
        return UsageRow(day, "main", user_id, user_id, "e", model, 1, tokens, tokens // 2,
                        cached, reasoning, cost)

    for usage in (row("2026-03-10", "gpt-4o", 1200, 0.0123, cached=200, reasoning=100),
                  row("2026-03-10", "mystery", 10, None),
                  row("2026-03-02", "gpt-4o", 3000, 1.5),
                  row("2026-02-28", "gpt-4o", 9999, 9.0)):
        await h.store.usage_add(usage)


TODAY = ("Used today: 2 messages, 1,815 tokens (1,210 in, 605 out), USD 0.0123 of USD 0.50 "
         "(resets in 6 h); 1 of unknown price")
MONTH = ("Used this month: 3 messages, 6,315 tokens (4,210 in, 2,105 out), USD 1.51 of "
         "USD 5.00 (resets in 21 days); 1 of unknown price")


async def test_usage_shows_today_and_this_month_against_the_limits() -> None:
    async with harness(LIMITS) as h:
        for n in range(2):
            await h.say(f"m{n}", user_id=42)
        await record(h)
        [usage] = await h.say("/usage", user_id=42)
    assert usage == Text("\n".join([
        "Your usage:", "Today: 2 of 50 messages (resets in 6 h)", TODAY, MONTH]))


async def test_usage_without_limits() -> None:
    async with harness() as h:
        await record(h)
        [usage] = await h.say("/usage", user_id=42)
        [nothing] = await h.say("/usage", user_id=43)
    assert usage == Text(
        "Your usage:\n"
        "Used today: 2 messages, 1,815 tokens (1,210 in, 605 out), USD 0.0123; "
        "1 of unknown price\n"
        "Used this month: 3 messages, 6,315 tokens (4,210 in, 2,105 out), USD 1.51; "
        "1 of unknown price\n"
        "There are no limits here.")
    assert nothing == Text(
        "Your usage:\n"
        "Used today: 0 messages, 0 tokens (0 in, 0 out), USD 0.00\n"
        "Used this month: 0 messages, 0 tokens (0 in, 0 out), USD 0.00\n"
        "There are no limits here.")


async def test_an_admin_sees_another_users_usage_by_id_and_by_username() -> None:
    async with harness(LIMITS) as h:
        await h.say("hi", user_id=42, username="Anna_K")
        await record(h)
        [by_id] = await h.say("/usage 42", user_id=1)
        [by_name] = await h.say("/usage @anna_k", user_id=1)
        [mine] = await h.say("/usage", user_id=1)
        [unknown] = await h.say("/usage @nobody", user_id=1)
        [odd] = await h.say("/usage anna", user_id=1)
    quota = "Today: 1 of 50 messages (resets in 6 h)"
    assert by_id == Text("\n".join(["Usage of user 42:", quota, TODAY, MONTH]))
    assert by_name == Text("\n".join(["Usage of @anna_k (42):", quota, TODAY, MONTH]))
    assert mine == Text(
        "Your usage:\n"
        "Used today: 0 messages, 0 tokens (0 in, 0 out), USD 0.00\n"
        "Used this month: 0 messages, 0 tokens (0 in, 0 out), USD 0.00\n"
        "You are an admin here: no limits apply to you.")
    assert unknown == Notice("I have not seen @nobody write here yet; try /usage USER_ID.")
    assert odd == Notice("Use /usage, /usage @username or /usage USER_ID.")


async def test_a_user_cannot_see_another_users_usage() -> None:
    async with harness(LIMITS) as h:
        await h.say("hi", user_id=42, username="anna")
        await record(h)
        assert await h.say("/usage 42", user_id=43) == [
            Notice("Only the bot's admins can see another user's usage.")]
        assert await h.say("/usage @anna", user_id=43) == [
            Notice("Only the bot's admins can see another user's usage.")]


class Writes(MemoryStore):
    kv_writes: list[tuple[str, str, str]] = []

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        Writes.kv_writes.append((namespace, key, value))
        await super().kv_set(namespace, key, value)


async def test_a_username_is_written_once_per_process_and_again_when_it_moves() -> None:
    from tgmux.bootstrap import load_text

    config, pm = load_text(CONFIG, source="<test config>")
    Writes.kv_writes = []
    async with EngineHarness(config, store=Writes(), plugin_manager=pm) as h:
        for n in range(3):
            await h.say(f"m{n}", user_id=42, username="Anna")
        await h.say("m", user_id=44, username="anna")  # the name went to another user
        [usage] = await h.say("/usage @ANNA", user_id=1)
    assert Writes.kv_writes == [("usernames", "anna", "42"), ("usernames", "anna", "44")]
    assert usage.text.startswith("Usage of @ANNA (44):\n")


async def test_usage_says_when_the_store_does_not_answer() -> None:
    class Down(MemoryStore):
        async def usage_rows(self, **kwargs):  # type: ignore[no-untyped-def]
            raise OSError("down")

    from tgmux.bootstrap import load_text

    config, pm = load_text(CONFIG + LIMITS, source="<test config>")
    async with EngineHarness(config, store=Down(), plugin_manager=pm) as h:
        assert await h.say("/usage", user_id=42) == [Notice(STORE_UNAVAILABLE)]
