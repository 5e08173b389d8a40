"""Store data a process keeps in memory (each chat's /backend and persona choice) follows a
change made by another process at once (tgmux.store.changes; PostgreSQL: LISTEN/NOTIFY), and
the store says who holds each account of the deployment (Store.holders).

"Processes" here are engines on stores of their own (each its own connections to the one
database), as two tgmux processes would be; the account holder is a real other process."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import textwrap
from collections.abc import AsyncIterator

import asyncpg
import pytest

from tgmux.bootstrap import load_text
from tgmux.harness import EngineHarness
from tgmux.store import (
    AccountHolder,
    Change,
    ChangeFeed,
    FollowedCache,
    MemoryStore,
    Store,
    open_store,
)
from tgmux.store.changes import EVERYTHING, FOLLOWED_NAMESPACES, kv_change
from tgmux.store.pg_changes import PostgresFeed
from tgmux.types import Text

#: Seconds to wait for a notification: generous (a loaded 2-core machine), never a sleep.
DEADLINE = 20.0

CONFIG = """
backends:
  a: {type: echo, prefix: "a: "}
  b: {type: echo, prefix: "b: "}
  c: {type: echo, prefix: "c: "}
admins: [5]
personas:
  tutor: {backend: b}
  plain: {backend: c}
routes:
  - match: {chat_type: private}
    backend: a
    personas: [tutor, plain]
default: a
"""


class Heard:
    """The changes a store's feed delivers, awaited one by one."""

    def __init__(self, store: Store) -> None:
        self.queue: asyncio.Queue[Change] = asyncio.Queue()
        store.changes().subscribe(self.queue.put_nowait)

    async def next(self, wanted: Change | str) -> Change:
        """The next change that is ``wanted`` (a Change, or a kind), within DEADLINE."""
        async with asyncio.timeout(DEADLINE):
            while True:
                change = await self.queue.get()
                if change == wanted or change.kind == wanted:
                    return change


@pytest.fixture
async def two(pg_url: str) -> AsyncIterator[tuple[EngineHarness, EngineHarness]]:
    """Two engines on one PostgreSQL database, each with its own store (connections)."""
    first = EngineHarness.from_yaml(CONFIG, store=pg_url)
    second = EngineHarness.from_yaml(CONFIG, store=pg_url)
    async with first, second:
        yield first, second


async def test_a_backend_chosen_in_one_process_answers_the_next_message_in_another(
        two: tuple[EngineHarness, EngineHarness]) -> None:
    console, runner = two
    assert await runner.say("hi", user_id=5) == [Text("a: hi")]
    assert ("main", 5) in runner.engine._overrides  # the old choice (none) kept
    heard = Heard(runner.store)

    await console.engine.set_override("main", 5, "b")  # as the console (or /backend) does

    await heard.next(Change("override", account="main", chat_id=5))
    assert await runner.say("next", user_id=5) == [Text("b: next")]
    await console.engine.set_override("main", 5, None)  # cleared: the route's again
    await heard.next(Change("override", account="main", chat_id=5))
    assert await runner.say("then", user_id=5) == [Text("a: then")]


async def test_a_persona_chosen_in_one_process_answers_the_next_message_in_another(
        two: tuple[EngineHarness, EngineHarness]) -> None:
    console, runner = two
    assert await runner.say("hi", user_id=6) == [Text("a: hi")]
    heard = Heard(runner.store)

    # (one inbox: another message id than the runner's)
    assert await console.say("/persona tutor", user_id=6, message_id=100) == [
        Text("This chat now talks to tutor.")]

    await heard.next(Change("persona", account="main", chat_id=6))
    assert await runner.say("next", user_id=6) == [Text("b: next")]


async def test_a_change_made_while_not_listening_is_not_served_stale(
        two: tuple[EngineHarness, EngineHarness], pg_url: str) -> None:
    console, runner = two
    feed = runner.store.changes()
    assert isinstance(feed, PostgresFeed) and feed.live
    assert await runner.say("hi", user_id=5) == [Text("a: hi")]  # none kept
    heard = Heard(runner.store)
    gate = asyncio.Event()  # the next LISTEN connection waits for it
    connect = feed._connect

    async def held_back() -> asyncpg.Connection:
        await gate.wait()
        return await connect()

    feed._connect = held_back  # type: ignore[method-assign]
    db = await asyncpg.connect(pg_url)
    try:
        assert await db.fetchval("SELECT pg_terminate_backend($1)", feed.server_pid)
    finally:
        await db.close()
    await heard.next(EVERYTHING)  # the runner noticed: what it kept is dropped
    assert not feed.live

    await console.engine.set_override("main", 5, "b")  # not heard by the runner

    assert await runner.say("meanwhile", user_id=5) == [Text("b: meanwhile")]
    assert ("main", 5) not in runner.engine._overrides  # nothing kept while deaf
    gate.set()
    await heard.next(EVERYTHING)  # listening again
    assert feed.live
    assert await runner.say("back", user_id=5) == [Text("b: back")]
    assert ("main", 5) in runner.engine._overrides
    await console.engine.set_override("main", 5, "c")
    await heard.next(Change("override", account="main", chat_id=5))
    assert await runner.say("after", user_id=5) == [Text("c: after")]


async def test_every_store_tells_its_own_subscribers_what_is_kept_in_memory(
        store: Store) -> None:
    heard = Heard(store)
    if not store.changes().live:  # PostgreSQL: listening from a moment after the subscribe
        await heard.next(EVERYTHING)
    await store.set_override(42, "b", account="acct")
    assert await heard.next("override") == Change("override", account="acct", chat_id=42)
    await store.kv_set("backend:x", "acct:42", "not followed")
    await store.kv_set("persona", "acct:42", "tutor")
    assert await heard.next("persona") == Change("persona", account="acct", chat_id=42)
    await store.kv_delete("blocked", "1234")
    assert await heard.next("blocked") == Change("blocked", user_id=1234)
    await store.publish(Change("override", account="acct"))
    assert await heard.next("override") == Change("override", account="acct")
    await store.set_override(42, None, account="acct")
    assert await heard.next("override") == Change("override", account="acct", chat_id=42)
    assert heard.queue.empty()  # the kv write outside the followed namespaces said nothing


async def test_in_process_an_engine_drops_a_choice_written_to_its_store_elsewhere() -> None:
    store = MemoryStore()  # what an in-process console (or plugin) writes to, directly
    config, pm = load_text(CONFIG)
    async with EngineHarness(config, store=store, plugin_manager=pm) as h:
        assert await h.say("hi", user_id=5) == [Text("a: hi")]
        await store.set_override(5, "b")
        assert await h.say("then", user_id=5) == [Text("b: then")]
        await store.kv_set("persona", "main:5", "plain")
        await store.set_override(5, None)
        assert await h.say("later", user_id=5) == [Text("c: later")]


def test_a_kv_write_is_a_change_only_in_a_followed_namespace() -> None:
    assert FOLLOWED_NAMESPACES == {"persona": "persona", "blocked": "blocked"}
    assert kv_change("persona", "main:-1001") == Change("persona", account="main",
                                                        chat_id=-1001)
    assert kv_change("persona", "a:b:7") == Change("persona", account="a:b", chat_id=7)
    assert kv_change("blocked", "42") == Change("blocked", user_id=42)
    assert kv_change("blocked", "odd") == Change("blocked")  # all of the kind
    assert kv_change("usernames", "bob") is None


def test_a_payload_round_trips_and_a_foreign_one_is_refused() -> None:
    change = Change("override", account="main", chat_id=-5)
    assert change.to_payload() == '{"kind":"override","account":"main","chat_id":-5}'
    assert Change.from_payload(change.to_payload()) == change
    for foreign in ("hello", "[]", '{"account": "x"}', '{"kind": "x", "chat_id": "5"}',
                    '{"kind": "x", "chat_id": true}', '{"kind": "' + "x" * 3000 + '"}'):
        with pytest.raises(ValueError):
            Change.from_payload(foreign)


async def test_a_foreign_notification_drops_everything(pg_url: str) -> None:
    store = open_store(pg_url)
    heard = Heard(store)  # subscribed before open: it listens from the open on
    await store.open()
    try:
        assert await heard.next(EVERYTHING)  # listening (dropped what was read before)
        await store.pool.execute("NOTIFY tgmux_changes, 'not json'")
        assert await heard.next(EVERYTHING)
    finally:
        await store.close()
    assert not store.changes().live


HOLDER = textwrap.dedent("""
    import asyncio, sys
    from tgmux.store import open_store

    async def main():
        store = open_store(sys.argv[1])
        await store.open()
        lease = await store.hold_account(sys.argv[2])
        assert await lease.acquire(wait=False)
        print("held", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        await lease.release()
        await store.close()

    asyncio.run(main())
""")


async def test_holders_lists_an_account_held_by_another_process(pg_url: str) -> None:
    account = f"held_{os.getpid()}_{id(pg_url)}"  # advisory locks are database-wide
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, pg_url, account, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE)
    store = open_store(pg_url)
    await store.open()
    try:
        async with asyncio.timeout(60):
            assert await proc.stdout.readline() == b"held\n"  # type: ignore[union-attr]
        holders = await store.holders(["idle"])
        assert list(holders) == sorted([account, "idle"])
        held = holders[account]
        assert held is not None and (held.hostname, held.pid) == (socket.gethostname(),
                                                                   proc.pid)
        assert held == await (await store.hold_account(account)).holder()
        assert holders["idle"] is None
        proc.stdin.write(b"go\n")  # type: ignore[union-attr]
        async with asyncio.timeout(60):
            assert await proc.wait() == 0
        assert (await store.holders([account]))[account] is None  # released
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        await store.close()


@pytest.mark.parametrize("kind", ["memory", "sqlite"])  # (PostgreSQL: the test above)
async def test_holders_of_a_store_in_one_process(kind: str, tmp_path) -> None:
    store_url = "memory://" if kind == "memory" else f"sqlite:///{tmp_path}/tgmux.db"
    store = open_store(store_url)
    await store.open()
    try:
        lease = await store.hold_account("bot")
        assert await lease.acquire(wait=False)
        holders = await store.holders(["main", "bot"])
        assert holders == {"bot": await lease.holder(), "main": None}
        assert isinstance(holders["bot"], AccountHolder)
        assert holders["bot"].pid == os.getpid()
        await lease.release()
        assert (await store.holders(["main"])) == {
            "main": None, **({"bot": None} if store_url.startswith("sqlite") else {})}
    finally:
        await store.close()


class DeafFeed(ChangeFeed):
    """A feed that hears nothing from elsewhere now (PostgreSQL without its connection)."""

    @property
    def live(self) -> bool:
        return False


async def test_a_read_a_change_overtook_is_not_kept() -> None:
    feed = ChangeFeed()
    cache: FollowedCache[str | None] = FollowedCache(feed, "override", 10)
    asked, answer = asyncio.Event(), asyncio.Event()

    async def slow_read() -> str:
        asked.set()
        await answer.wait()
        return "old"  # what the store had when it was asked

    reading = asyncio.create_task(cache.get(("main", 1), slow_read))
    await asked.wait()
    feed.deliver(Change("override", account="main", chat_id=1))  # written meanwhile
    answer.set()
    assert await reading == "old"
    assert ("main", 1) not in cache  # the next use reads the store again

    async def read(value: str) -> str:
        return value

    assert await cache.get(("main", 1), lambda: read("new")) == "new"
    assert await cache.get(("main", 1), lambda: read("not asked")) == "new"  # kept
    feed.deliver(Change("persona", account="main", chat_id=1))  # another kind: kept
    feed.deliver(Change("override", account="other"))  # another account's: kept
    assert ("main", 1) in cache
    feed.deliver(Change("override", account="main"))  # all of the account's chats
    assert ("main", 1) not in cache


async def test_nothing_is_kept_while_the_feed_is_deaf_and_the_cache_is_bounded() -> None:
    async def read() -> str:
        return "x"

    deaf: FollowedCache[str] = FollowedCache(DeafFeed(), "override", 10)
    assert await deaf.get(("main", 1), read) == "x"
    await deaf.put(("main", 2), read, "y")
    assert len(deaf) == 0
    bounded: FollowedCache[str] = FollowedCache(ChangeFeed(), "override", 2)
    for chat in (1, 2, 3):
        await bounded.get(("main", chat), read)
    assert list(bounded) == [("main", 2), ("main", 3)]  # the oldest read went



async def test_a_user_blocked_in_one_process_is_refused_in_another(
        two: tuple[EngineHarness, EngineHarness]) -> None:
    console, runner = two
    assert await runner.say("hi", user_id=7) == [Text("a: hi")]
    heard = Heard(runner.store)  # told after the gate (it followed the feed at start)
    gate = runner.engine.gate

    await console.engine.gate.block(7, True, by="test")  # as the console does

    await heard.next(Change("blocked", user_id=7))
    await asyncio.gather(*gate._rereads)  # the gate reads the block it was told of
    refused = await runner.say("again", user_id=7)
    assert [p.text for p in refused] == ["This bot is private."]
    await console.engine.gate.block(7, False, by="test")
    await heard.next(Change("blocked", user_id=7))
    await asyncio.gather(*gate._rereads)
    assert await runner.say("back", user_id=7) == [Text("a: back")]
