"""The store suite runs against every store: ``store`` is parametrized over memory, SQLite and
a real PostgreSQL server.

PostgreSQL: ``$TGMUX_TEST_POSTGRES_URL`` when set (CI starts a server, see ``.ci/run``), else one
server started for the session (:mod:`pg_server`) and stopped at the end. When none can be
started the PostgreSQL tests skip, except under ``$CI``, where they fail.

Each test gets a schema of its own in that database (``?search_path=``), dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pg_server
import pytest

from tgmux.store import Store, open_store


@dataclass
class Postgres:
    url: str  # the tgmux role on the tgmux database
    server: pg_server.Server | None  # None: $TGMUX_TEST_POSTGRES_URL, not ours to stop


def need_postgres(why: str) -> None:
    """Fail under $CI, skip elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL is required in CI: {why}", pytrace=False)
    pytest.skip(f"no PostgreSQL: {why}")


def start_private_server() -> pg_server.Server:
    try:
        return pg_server.start()
    except (pg_server.Unavailable, OSError) as exc:
        need_postgres(str(exc))
        raise


@pytest.fixture
def private_pg() -> Iterator[pg_server.Server]:
    """A server of this test's own (it may be restarted, stopped or made read-only)."""
    server = start_private_server()
    try:
        yield server
    finally:
        server.destroy()


def worker_database(url: str, worker: str) -> str:
    """``url`` on a database of this pytest-xdist worker's own (made when missing): account
    leases are advisory locks, which a database shares across its schemas, so two workers'
    tests must not share a database."""
    parts = urlsplit(url)
    name = f"{parts.path.lstrip('/') or 'postgres'}_{worker}"

    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if url := os.environ.get("TGMUX_TEST_POSTGRES_URL"):
        if worker := os.environ.get("PYTEST_XDIST_WORKER"):
            url = worker_database(url, worker)
        yield Postgres(url, None)
        return
    server = start_private_server()
    try:
        yield Postgres(server.url(), server)
    finally:
        server.destroy()


def with_query(url: str, **query: str) -> str:
    joiner = "&" if "?" in url else "?"
    return url + joiner + "&".join(f"{k}={v}" for k, v in query.items())


@pytest.fixture
async def pg_url(postgres: Postgres) -> AsyncIterator[str]:
    """A URL of the test database whose tables go to a new, empty schema."""
    schema = f"t_{secrets.token_hex(6)}"
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    yield with_query(postgres.url, search_path=schema)
    conn = await asyncpg.connect(postgres.url)
    try:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["memory", "sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/tgmux.db"
    return request.getfixturevalue("pg_url")


OpenStore = Callable[[], Awaitable[Store]]


@pytest.fixture
async def open_stores(store_url: str) -> AsyncIterator[OpenStore]:
    """Opens stores on the same data (for memory://: the same store, there is no sharing)."""
    opened: list[Store] = []

    async def another() -> Store:
        if store_url == "memory://" and opened:
            return opened[0]
        store = open_store(store_url)
        await store.open()
        opened.append(store)
        return store

    yield another
    for store in opened:
        await store.close()


@pytest.fixture
async def store(open_stores: OpenStore) -> Store:
    return await open_stores()
