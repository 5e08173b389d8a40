"""Budgets in money (``limits.daily_cost_per_user``, ``monthly_cost_per_user``): a user over
one is told in one line when they can write again, across a restart, on SQLite and
PostgreSQL; admins are exempt; no store read without a cost limit.

The usage rows are written as the engine's recorder writes them (``Store.usage_add``); the
clock of the gate is fixed at 2026-03-10 18:00 UTC: 6 h to the next day, 21 days to April."""

from __future__ import annotations

import calendar
import time
import types
from collections.abc import AsyncIterator

import pytest

from tgmux.backend import Backend, BackendSettings, ReplyPart, Text, Turn
from tgmux.bootstrap import load_text
from tgmux.harness import EngineHarness
from tgmux.hooks import hookimpl
from tgmux.store import MemoryStore, open_store
from tgmux.types import Notice, UsageRow

NOW = calendar.timegm((2026, 3, 10, 18, 0, 0))
TODAY = "2026-03-10"
DAILY = "You have used your daily budget of USD 0.50; you can write again in 6 h."
MONTHLY = "You have used your monthly budget of USD 5.00; you can write again in 21 days."


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


@pytest.fixture(autouse=True)
def fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = types.SimpleNamespace(time=lambda: float(NOW), gmtime=time.gmtime,
                                  strftime=time.strftime)
    monkeypatch.setattr("tgmux.access.time", clock)
    Counting.asked = []


CONFIG = "backends:\n  c: {type: counting}\ndefault: c\nadmins: [1]\n"
BUDGETS = "limits:\n  daily_cost_per_user: 0.5\n  monthly_cost_per_user: 5\n"


def harness(extra: str, store: str = "memory://") -> EngineHarness:
    return EngineHarness.from_yaml(CONFIG + extra, store=store, plugins=[CountingPlugin()])


def spent(cost: float | None, day: str = TODAY, user_id: int = 42, *, model: str = "m",
          account: str = "main") -> UsageRow:
    """What the recorder writes for one reply."""
    return UsageRow(day, account, user_id, user_id, "c", model, messages=1, input_tokens=100,
                    output_tokens=50, cost=cost)


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_user_over_the_daily_budget_is_told_when_to_come_back_after_a_restart(
        store_url: str) -> None:
    async with harness(BUDGETS, store=store_url) as h:
        assert await h.say("one", user_id=42) == [Text("ok")]
        await h.store.usage_add(spent(0.3))
        assert await h.say("two", user_id=42) == [Text("ok")]  # 0.30 of 0.50: goes on
        await h.store.usage_add(spent(0.25))  # the reply in flight overran: 0.55
    async with harness(BUDGETS, store=store_url) as h:
        assert await h.say("three", user_id=42, message_id=10) == [Notice(DAILY)]
        assert await h.say("four", user_id=42, message_id=11) == []  # told once a day
        assert await h.say("hi", user_id=43, message_id=12) == [Text("ok")]  # another user
        assert await h.say("hi", user_id=1, message_id=13) == [Text("ok")]  # an admin
        await h.store.usage_add(spent(9.0, user_id=1))
        assert await h.say("again", user_id=1, message_id=14) == [Text("ok")]  # exempt
    assert Counting.asked == ["one", "two", "hi", "hi", "again"]


@pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
async def test_a_user_over_the_monthly_budget_waits_for_the_next_month(store_url: str) -> None:
    async with harness(BUDGETS, store=store_url) as h:
        for day in range(1, 10):  # 0.49 a day: under the daily budget every day
            await h.store.usage_add(spent(0.49, f"2026-03-{day:02}"))
        assert await h.say("one", user_id=42) == [Text("ok")]  # 4.41 this month
        await h.store.usage_add(spent(0.49, "2026-02-28"))  # last month's: not counted
        await h.store.usage_add(spent(0.3))
        assert await h.say("two", user_id=42) == [Text("ok")]  # 4.71
        await h.store.usage_add(spent(0.3))  # 5.01, today 0.60 (both spent)
    async with harness(BUDGETS, store=store_url) as h:
        assert await h.say("three", user_id=42, message_id=10) == [Notice(MONTHLY)]
    assert Counting.asked == ["one", "two"]


async def test_an_unknown_cost_counts_nothing_and_the_reply_text_is_the_configs() -> None:
    extra = ("currency: EUR\nlimits:\n  daily_cost_per_user: 0.005\n"
             "  cost_reply: 'Budget {limit} ({period}) spent; back in {reset_in}.'\n")
    async with harness(extra) as h:
        await h.store.usage_add(spent(None))  # a model of unknown price
        assert await h.say("one", user_id=42) == [Text("ok")]
        await h.store.usage_add(spent(0.005, model="other"))
        assert await h.say("two", user_id=42) == [
            Notice("Budget EUR 0.005 (daily) spent; back in 6 h.")]


async def test_a_budget_of_another_account_is_its_own() -> None:
    async with harness(BUDGETS) as h:
        await h.store.usage_add(spent(1.0, account="other"))
        assert await h.say("one", user_id=42) == [Text("ok")]


class ReadCounting(MemoryStore):
    reads = 0

    async def usage_rows(self, **kwargs):  # type: ignore[no-untyped-def]
        ReadCounting.reads += 1
        return await super().usage_rows(**kwargs)


@pytest.mark.parametrize(("limits", "reads"), [
    ("limits:\n  daily_per_user: 50\n  per_user: {messages: 10, per: 60s}\n", 0),
    ("limits:\n  daily_cost_per_user: 1\n", 3),
    ("limits:\n  monthly_cost_per_user: 1\n", 3),
])
async def test_the_budget_costs_one_store_read_a_message_only_when_set(limits: str,
                                                                        reads: int) -> None:
    config, pm = load_text(CONFIG + limits, source="<test config>", plugins=[CountingPlugin()])
    ReadCounting.reads = 0
    async with EngineHarness(config, store=ReadCounting(), plugin_manager=pm) as h:
        for n in range(3):
            assert await h.say(f"m{n}", user_id=42) == [Text("ok")]
        assert await h.say("m", user_id=1) == [Text("ok")]  # an admin: nothing read
    assert ReadCounting.reads == reads


def test_a_bad_cost_reply_or_budget_is_a_config_error() -> None:
    from tgmux.errors import ConfigError

    with pytest.raises(ConfigError, match="cost_reply"):
        load_text(CONFIG + "limits:\n  cost_reply: 'in {when}'\n", source="<test config>",
                  plugins=[CountingPlugin()])
    with pytest.raises(ConfigError, match="daily_cost_per_user"):
        load_text(CONFIG + "limits:\n  daily_cost_per_user: 0\n", source="<test config>",
                  plugins=[CountingPlugin()])


async def test_the_store_opens_as_the_harness_uses_it(store_url: str) -> None:
    # the store_url fixture is parametrized over every store: usage reads work on each
    store = open_store(store_url)
    await store.open()
    try:
        await store.usage_add(spent(0.5))
        assert [r.cost for r in await store.usage_rows(since=TODAY, user_id=42)] == [0.5]
    finally:
        await store.close()


class UsageDown(MemoryStore):
    """A store whose usage rows cannot be read (an outage of that table, say)."""

    async def usage_rows(self, **kwargs: object) -> list[UsageRow]:
        raise OSError("connection refused")


async def test_a_budget_the_store_cannot_read_is_not_checked_and_said_once(
        caplog: pytest.LogCaptureFixture) -> None:
    # during an outage a budget is not checked, as the rate windows are not (the guard lets
    # them through): the user is answered and the outage is said once by the guard, not a
    # "limits not checked" line per message
    config, pm = load_text(CONFIG + "limits:\n  daily_cost_per_user: 0.5\n"
                           "  per_user: {messages: 2, per: 60}\n", source="<test config>",
                           plugins=[CountingPlugin()])
    async with EngineHarness(config, store=UsageDown(), plugin_manager=pm) as h:
        replies = [await h.say(f"m{n}", user_id=42) for n in range(3)]
    assert [r[-1] for r in replies] == [Text("ok")] * 3
    assert not [r for r in caplog.records if "limits not checked" in r.message]
