"""PostgreSQL-specific store outages (issue 20, "The database"): the inbox table locked by
another session, and the database turned read-only (as after a full disk). Every message is
answered within ``store.timeout``, the outage is logged once, and the inbox states are written
once the database takes writes again. (The same through injected faults, for every store:
tests/faults/test_store_outage.py.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import asyncpg
import pg_server
import pytest

from tgmux.bootstrap import load_text
from tgmux.harness import EngineHarness
from tgmux.store import PostgresStore, open_store
from tgmux.types import Text

# store.timeout: a healthy database must answer within it on a loaded machine too (with 0.5 s
# a slow answer before the outage started an outage of its own: two lines logged)
CONFIG = """
store: {url: "memory://", timeout: 5}
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""


def harness(url: str) -> EngineHarness:
    config, pm = load_text(CONFIG, source="<test config>")
    return EngineHarness(config, store=open_store(url), plugin_manager=pm)


def texts(parts: list[object]) -> list[str]:
    return [p.text for p in parts if isinstance(p, Text)]


async def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    async with asyncio.timeout(timeout):
        while not condition():  # noqa: ASYNC110 (polling the guard's state)
            await asyncio.sleep(0.05)


async def done_ids(store: PostgresStore) -> set[int]:
    rows = await store.pool.fetch("SELECT message_id FROM tgmux_inbox WHERE state='done'")
    return {r["message_id"] for r in rows}


def outage_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "tgmux.store" and r.levelno >= logging.WARNING]


@pytest.mark.timeout(120)
async def test_a_locked_inbox_holds_no_chat(pg_url: str,
                                            caplog: pytest.LogCaptureFixture) -> None:
    async with harness(pg_url) as h:
        store = h.store
        assert isinstance(store, PostgresStore)
        assert texts(await h.say("before", message_id=1)) == ["echo: before"]
        locker = await asyncpg.connect(pg_url)
        try:
            transaction = locker.transaction()
            await transaction.start()
            await locker.execute("LOCK TABLE tgmux_inbox IN ACCESS EXCLUSIVE MODE")
            for message_id in (2, 3):
                async with asyncio.timeout(30):
                    assert texts(await h.say("during", message_id=message_id,
                                             user_id=message_id)) == ["echo: during"]
            assert h.engine.store.degraded is not None
            assert len(outage_lines(caplog)) == 1, outage_lines(caplog)
            await transaction.rollback()
        finally:
            await locker.close()
        await wait_for(lambda: h.engine.store.degraded is None)
        assert await done_ids(store) == {1, 2, 3}


@pytest.mark.timeout(120)
async def test_a_read_only_database_still_answers(private_pg: pg_server.Server,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    async def read_only(on: bool) -> None:
        # for sessions from now on; the store's are ended so that its pool reconnects
        private_pg.psql(f"ALTER DATABASE {pg_server.DATABASE} SET default_transaction_read_only"
                        f" = {'on' if on else 'off'}")
        private_pg.psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        f"WHERE datname = '{pg_server.DATABASE}' AND pid <> pg_backend_pid()")

    async with harness(private_pg.url()) as h:
        store = h.store
        assert isinstance(store, PostgresStore)
        assert texts(await h.say("before", message_id=1)) == ["echo: before"]
        await read_only(True)
        for message_id in (2, 3, 4):
            async with asyncio.timeout(30):
                assert texts(await h.say("during", message_id=message_id)) == ["echo: during"]
        assert h.engine.store.degraded is not None
        assert len(outage_lines(caplog)) == 1, outage_lines(caplog)
        await read_only(False)
        await wait_for(lambda: h.engine.store.degraded is None)
        assert await done_ids(store) == {1, 2, 3, 4}
