"""The store fails or hangs while messages come (row "PostgreSQL stopped, read-only or its inbox
locked" of issue 20): every message is still answered, within the store's deadline, its inbox
state is written when the store is back, ``/readyz`` says degraded, and the outage is logged
once, not per message.

The faults are injected by :class:`FaultyStore`, a memory store whose calls hang or raise on
demand (PostgreSQL-specific faults: tests/stores/test_store_outage_pg.py)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from tgmux.bootstrap import load_text
from tgmux.harness import EngineHarness
from tgmux.store import MemoryStore
from tgmux.types import Text

CONFIG = """
store: {url: "memory://", timeout: 0.3}
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""


class FaultyStore(MemoryStore):
    """A memory store whose data calls hang (``mode="hang"``) or raise (``"raise"``)."""

    def __init__(self) -> None:
        super().__init__()
        self.mode: str | None = None
        self.calls_while_faulty = 0

    async def _fault(self) -> None:
        if self.mode is None:
            return
        self.calls_while_faulty += 1
        if self.mode == "hang":
            await asyncio.Event().wait()
        raise ConnectionRefusedError("connection refused (injected)")

    def inbox_done_ids(self) -> set[int]:
        return {key[-1] for key, (state, _, _) in self.inbox.items() if state == "done"}


def _faulty(name: str) -> Callable[..., Awaitable[Any]]:
    async def call(self: FaultyStore, *args: Any, **kwargs: Any) -> Any:
        await self._fault()
        return await getattr(MemoryStore, name)(self, *args, **kwargs)
    return call


for _name in ("get_override", "set_override", "kv_get", "kv_set", "kv_delete", "kv_items",
              "inbox_accept", "inbox_dispatched", "inbox_done", "inbox_unanswered",
              "inbox_backlog", "inbox_prune", "rate_take", "rate_count", "rate_block",
              "rate_restamp",
              "history_append", "history_read", "history_trim", "history_clear"):
    setattr(FaultyStore, _name, _faulty(_name))


def harness(store: FaultyStore) -> EngineHarness:
    config, pm = load_text(CONFIG, source="<test config>")
    return EngineHarness(config, store=store, plugin_manager=pm)


def texts(parts: list[Any]) -> list[str]:
    return [p.text for p in parts if isinstance(p, Text)]


async def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (polling state of the store under test)
            await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["hang", "raise"])
async def test_messages_are_answered_while_the_store_is_down_and_written_when_back(
        mode: str, caplog: pytest.LogCaptureFixture) -> None:
    store = FaultyStore()
    caplog.set_level(logging.INFO, "tgmux")
    async with harness(store) as h:
        assert texts(await h.say("before", message_id=1)) == ["echo: before"]
        store.mode = mode
        for message_id in (2, 3, 4):  # a hung store would hold each for ever
            async with asyncio.timeout(30):
                assert texts(await h.say(f"during {message_id}", message_id=message_id)) == \
                    [f"echo: during {message_id}"]
        # a duplicate delivered during the outage is still recognised
        delivered = len(h.delivered)
        async with asyncio.timeout(30):
            await (await h.submit("during 4", message_id=4))[1]
        assert len(h.delivered) == delivered
        degraded = h.engine.store.degraded
        assert degraded is not None and degraded.startswith("degraded")
        for _ in range(2):  # metrics scrapes read the backlog: no line each
            await h.engine.metrics.render()
        outage_lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(outage_lines) == 1, [r.getMessage() for r in outage_lines]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert store.inbox_done_ids() == {1}

        store.mode = None  # back: the states kept in memory are written
        await wait_for(lambda: h.engine.store.degraded is None, "the store back")
        assert store.inbox_done_ids() == {1, 2, 3, 4}
        assert await store.inbox_backlog() == 0
        back = [r for r in caplog.records if r.name == "tgmux.store"
                and r.levelno == logging.INFO and "back" in r.getMessage()]
        assert len(back) == 1
        assert texts(await h.say("after", message_id=5)) == ["echo: after"]
        assert await store.inbox_accept(1, 3, {}) is False  # deduplicated after a restart too


async def test_the_inbox_kept_in_memory_is_bounded_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FaultyStore()
    async with harness(store) as h:
        h.engine.store.max_pending = 2
        store.mode = "raise"
        for message_id in (1, 2, 3, 4):
            assert texts(await h.say("hi", message_id=message_id)) == ["echo: hi"]
        full = [r for r in caplog.records if "no room for more" in r.getMessage()]
        assert len(full) == 1
        store.mode = None
        await wait_for(lambda: h.engine.store.degraded is None, "the store back")
        assert store.inbox_done_ids() == {1, 2}


async def test_readyz_says_degraded_during_an_outage() -> None:
    from tgmux.ops import start_ops_server

    store = FaultyStore()
    config, pm = load_text(CONFIG + 'server: {listen: "127.0.0.1:0"}\n', source="<test>")
    h = EngineHarness(config, store=store, plugin_manager=pm)
    async with h:
        server = await start_ops_server(config, h.engine)
        assert server is not None
        try:
            assert (await server.readiness())["store"]["ok"] is True
            store.mode = "hang"
            assert texts(await h.say("hi", message_id=1)) == ["echo: hi"]
            check = (await server.readiness())["store"]
            assert check["ok"] is False and str(check["detail"]).startswith("degraded")
            store.mode = None
            await wait_for(lambda: h.engine.store.degraded is None, "the store back")
            assert (await server.readiness())["store"]["ok"] is True
        finally:
            await server.stop()


async def test_an_override_is_not_forgotten_because_of_an_outage() -> None:
    config, pm = load_text(CONFIG.replace("backends:\n", "backends:\n  other: {type: echo, "
                                          "prefix: 'other: '}\n"), source="<test>")
    store = FaultyStore()
    await store.set_override(1, "other")
    async with EngineHarness(config, store=store, plugin_manager=pm) as h:
        store.mode = "raise"
        assert texts(await h.say("hi", message_id=1)) == ["echo: hi"]  # unknown: the route's
        store.mode = None
        await wait_for(lambda: h.engine.store.degraded is None, "the store back")
        assert texts(await h.say("hi", message_id=2)) == ["other: hi"]


def test_store_timeout_is_checked_with_its_line() -> None:
    from tgmux.errors import ConfigError

    config, _ = load_text(CONFIG, source="c.yaml")
    assert (config.data.store.url, config.data.store.timeout) == ("memory://", 0.3)
    config, _ = load_text(CONFIG.replace('{url: "memory://", timeout: 0.3}', "memory://"),
                          source="c.yaml")
    assert (config.data.store.timeout, config.data.store.lease_timeout) == (5.0, 10.0)
    with pytest.raises(ConfigError) as bad:
        load_text(CONFIG.replace("timeout: 0.3", "timeout: -1"), source="c.yaml")
    assert "c.yaml:2: store.timeout" in str(bad.value)
    with pytest.raises(ConfigError) as bad:
        load_text(CONFIG.replace('{url: "memory://", timeout: 0.3}', "mysql://x"),
                  source="c.yaml")
    assert "c.yaml:2: store: " in str(bad.value) and "expected sqlite:///PATH" in str(bad.value)


async def test_an_account_taken_back_reads_its_inbox_before_the_probe_noticed() -> None:
    """A lease is taken back as soon as the database answers (tgmux.telegram.leases): reading
    the account's unanswered messages must not fail because the outage is not over yet here,
    nor return a message answered during the outage."""
    store = FaultyStore()
    async with harness(store) as h:
        h.engine.store.probe_interval = 3600  # the probe does not notice during this test
        store.mode = "raise"
        assert texts(await h.say("during", message_id=1)) == ["echo: during"]
        store.mode = None
        assert await h.engine.store.inbox_unanswered() == []
        assert store.inbox_done_ids() == {1}


async def test_a_backends_key_values_serve_from_memory_during_an_outage() -> None:
    """Backends keep their providers' ids there (LucyDream's users, Sensay's): a chat whose ids
    were read or written before goes on during an outage; what is written meanwhile reaches the
    store when it is back."""
    from tgmux.store import GuardedStore, StoreUnavailable

    store = FaultyStore()
    guarded = GuardedStore(store, timeout=0.3)
    await guarded.kv_set("backend:lucy", "user:1", "u-1")
    await store.kv_set("backend:lucy", "user:2", "u-2")
    assert await guarded.kv_get("backend:lucy", "user:2") == "u-2"
    store.mode = "hang"
    assert await guarded.kv_get("backend:lucy", "user:1") == "u-1"
    assert await guarded.kv_get("backend:lucy", "user:2") == "u-2"
    with pytest.raises(StoreUnavailable):
        await guarded.kv_get("backend:lucy", "user:3")  # never seen here: unknown
    await guarded.kv_set("backend:lucy", "user:3", "u-3")
    await guarded.kv_delete("backend:lucy", "user:2")
    assert await guarded.kv_get("backend:lucy", "user:3") == "u-3"
    assert await guarded.kv_get("backend:lucy", "user:2") is None
    store.mode = None
    await wait_for(lambda: guarded.degraded is None, "the store back")
    assert await store.kv_items("backend:lucy") == [("user:1", "u-1"), ("user:3", "u-3")]
    await guarded.close()


async def test_commands_that_need_the_store_say_so_during_an_outage() -> None:
    from tgmux.chat_commands import STORE_UNAVAILABLE

    config, pm = load_text(CONFIG + "admins: [1]\nlimits: {daily_per_user: 50}\n",
                           source="<test config>")
    store = FaultyStore()
    async with EngineHarness(config, store=store, plugin_manager=pm) as h:
        store.mode = "raise"
        assert texts(await h.say("hi", message_id=1)) == ["echo: hi"]  # the outage begins
        parts = await h.say("/backend echo", message_id=2)  # an admin switching
        assert [p.text for p in parts] == [STORE_UNAVAILABLE]
        parts = await h.say("/usage", message_id=3, user_id=2)  # a user's counts
        assert [p.text for p in parts] == [STORE_UNAVAILABLE]


@pytest.mark.timeout(120)
async def test_limits_kept_in_a_hung_store_do_not_hold_messages() -> None:
    config, pm = load_text(CONFIG + "limits: {per_user: {messages: 100, per: 60}}\n",
                           source="<test config>")
    store = FaultyStore()
    async with EngineHarness(config, store=store, plugin_manager=pm) as h:
        assert texts(await h.say("before", message_id=1, user_id=2)) == ["echo: before"]
        store.mode = "hang"
        async with asyncio.timeout(30):
            assert texts(await h.say("during", message_id=2, user_id=2)) == ["echo: during"]


@pytest.mark.parametrize("mode", ["hang", "raise"])
async def test_pruning_the_inbox_during_an_outage_logs_no_traceback(mode: str, caplog) -> None:
    # The pruner runs every 10 minutes: during an outage it logged a traceback each time.
    store = FaultyStore()
    bot = harness(store)
    await bot.engine.start()
    try:
        store.mode = mode
        with caplog.at_level(logging.DEBUG):
            await bot.engine._prune()
        assert not [r for r in caplog.records if r.exc_info]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    finally:
        store.mode = None
        await bot.engine.stop()


async def test_a_persona_during_an_outage() -> None:
    # a choice not known yet reads as none (the route answers); one made meanwhile applies at
    # once and is written when the store is back (as a backend's key-values are)
    config, pm = load_text(CONFIG.replace("backends:\n", "backends:\n  other: {type: echo, "
                                          "prefix: 'other: '}\n")
                           + "personas: {a: {backend: other}, b: {backend: echo}}\n"
                           "default_personas: [a, b]\n", source="<test>")
    store = FaultyStore()
    await store.kv_set("persona", "main:1", "a")
    async with EngineHarness(config, store=store, plugin_manager=pm) as h:
        store.mode = "raise"
        assert texts(await h.say("hi", message_id=1)) == ["echo: hi"]  # unknown: the route's
        assert texts(await h.say("/persona a", message_id=2, user_id=2)) == [
            "This chat now talks to a."]
        assert texts(await h.say("hi", message_id=3, user_id=2)) == ["other: hi"]
        store.mode = None
        await wait_for(lambda: h.engine.store.degraded is None, "the store back")
        assert texts(await h.say("hi", message_id=4)) == ["other: hi"]
        assert await store.kv_get("persona", "main:2") == "a"
