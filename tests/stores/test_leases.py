"""Account leases: one holder at a time; the next one gets it once the holder is gone, even when
it was killed (a SQLite flock and a PostgreSQL advisory lock die with their process)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import asyncpg
import pytest
from conftest import OpenStore

from tgmux.store import PostgresStore, Store

SHARED = pytest.mark.parametrize("store_url", ["sqlite", "postgresql"], indirect=True)
#: Seconds within which a lease whose holder died is free (or the holder knows it lost it): the
#: next poll (a second) on an idle machine; generous for a loaded one, and well below the
#: slower ways a lease is freed with the tests' holders' lease timeout of 120 s.
LOST = 20


async def test_one_holder_at_a_time(open_stores: OpenStore) -> None:
    first_store, second_store = await open_stores(), await open_stores()
    first = await first_store.hold_account("main")
    second = await second_store.hold_account("main")
    other = await second_store.hold_account("other")
    assert await first.holder() is None
    assert await first.acquire(wait=False) is True and first.held
    assert await first.acquire(wait=False) is True  # already held: fine
    assert await second.acquire(wait=False) is False and not second.held
    assert await other.acquire(wait=False) is True  # another account
    holder = await second.holder()
    assert holder is not None
    assert (holder.account, holder.hostname, holder.pid) == ("main", socket.gethostname(),
                                                              os.getpid())
    assert abs(holder.since - time.time()) < 60
    started = time.monotonic()
    assert await second.acquire(wait=True, timeout=1.2) is False
    # it gave up after its timeout (the upper bound only catches a wait that never ends: a
    # loaded machine may be seconds late)
    assert 1.0 < time.monotonic() - started < 15
    waiting = asyncio.create_task(second.acquire(wait=True))
    await asyncio.sleep(0.2)
    await first.release()
    assert await asyncio.wait_for(waiting, 30) is True
    assert await first.acquire(wait=False) is False
    await second.release()
    await other.release()
    assert await first.holder() is None
    async with await first_store.hold_account("main") as lease:
        assert lease.held and await second.acquire(wait=False) is False
    assert not lease.held and await second.acquire(wait=False) is True
    await second.release()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize("how", ["pg_terminate_backend", "connection dropped"])
async def test_a_dead_connection_frees_the_lease_within_seconds(open_stores: OpenStore,
                                                                 how: str) -> None:
    store, other = await open_stores(), await open_stores()
    assert isinstance(store, PostgresStore)
    first = await store.hold_account("main")
    # the server's own bounds (idle_session_timeout, keepalives) and the probe then take
    # 40 s or more: a lease freed, or noticed lost, within LOST seconds is the connection's
    # end, with room for a loaded machine
    first.timeout = 120
    assert await first.acquire(wait=False)
    second = await other.hold_account("main")
    waiting = asyncio.create_task(second.acquire(wait=True))
    await asyncio.sleep(1.5)
    assert not waiting.done()
    conn = first._conn
    assert conn is not None
    if how == "pg_terminate_backend":
        admin = await store.connect()
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", conn.get_server_pid())
        await admin.close()
    else:
        conn.terminate()  # as a killed process: no goodbye, the socket just closes
    started = time.monotonic()
    assert await asyncio.wait_for(waiting, 2 * LOST) is True
    assert time.monotonic() - started < LOST
    if how == "pg_terminate_backend":
        await asyncio.wait_for(first.wait_lost(), LOST)  # the first one learns it lost it
        assert not first.held
    holder = await first.holder()
    assert holder is not None and holder.pid == os.getpid()
    unopened = await PostgresStore(store.target.dsn).hold_account("main")  # store not open
    assert await unopened.acquire(wait=False) is False
    assert (await unopened.holder()) == await second.holder()
    await unopened.release()
    await second.release()


HOLDER = """
import asyncio, sys
from tgmux.store import open_store

async def main():
    store = open_store(sys.argv[1])
    await store.open()
    lease = await store.hold_account("main")
    lease.timeout = 120  # (PostgreSQL) the server's own bounds: minutes, not the kill
    assert await lease.acquire(wait=False)
    print("held", flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@SHARED
async def test_a_killed_holder_frees_the_lease(store_url: str, store: Store) -> None:
    child = await asyncio.create_subprocess_exec(sys.executable, "-c", HOLDER, store_url,
                                                 stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(child.stdout.readline(), 30)
        assert line == b"held\n"
        lease = await store.hold_account("main")
        assert await lease.acquire(wait=False) is False
        holder = await lease.holder()
        assert holder is not None and holder.pid == child.pid
        waiting = asyncio.create_task(lease.acquire(wait=True))
        await asyncio.sleep(0.5)
        os.kill(child.pid, signal.SIGKILL)
        started = time.monotonic()
        assert await asyncio.wait_for(waiting, 2 * LOST) is True
        assert time.monotonic() - started < LOST
        assert (await lease.holder()).pid == os.getpid()  # type: ignore[union-attr]
        await lease.release()
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()


@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
async def test_the_holder_is_written_down_for_status(store: Store) -> None:
    assert isinstance(store, PostgresStore)
    lease = await store.hold_account("acc")
    await lease.acquire(wait=False)
    conn = await asyncpg.connect(store.target.dsn)
    row = await conn.fetchrow("SELECT hostname, pid FROM tgmux_accounts WHERE account='acc'")
    assert tuple(row) == (socket.gethostname(), os.getpid())
    await lease.release()
    assert await conn.fetchval("SELECT count(*) FROM tgmux_accounts") == 0
    await conn.close()
