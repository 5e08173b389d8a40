"""PostgreSQL only: the schema at open, connection failures that name the server but never
the password, a server that goes away and comes back."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import quote, quote_plus, urlsplit

import asyncpg
import pg_server
import pytest
import yaml
from conftest import Postgres, need_postgres, start_private_server, with_query

from tgmux.redact import redact_urls
from tgmux.store import PostgresStore
from tgmux.store.postgres import (
    CONNECT_TIMEOUT,
    MIGRATIONS,
    SCHEMA_VERSION,
    StoreOpenError,
    Target,
)
from tgmux.types import ChatLine, Exchange, UsageRow

WRONG_PASSWORD = "wrong'\"@pw"
#: The test server's password (ours, or the one in $TGMUX_TEST_POSTGRES_URL) and the wrong one.
PASSWORDS = {pg_server.PASSWORD, WRONG_PASSWORD, *(
    [Target.parse(os.environ["TGMUX_TEST_POSTGRES_URL"]).password]
    if os.environ.get("TGMUX_TEST_POSTGRES_URL") else [])}
SECRETS = {form for p in PASSWORDS for form in (p, quote(p, safe=""), quote_plus(p))}


def assert_no_password(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, text


def config(tmp_path: Path, url: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"store: '{url}'\nbackends:\n  e: {{type: echo}}\ndefault: e\n")
    return path


def tgmux(*args: str, prefix: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "tgmux", *args], capture_output=True,
                          text=True, timeout=60)


async def test_open_creates_the_schema_once_even_when_processes_start_together(
        pg_url: str) -> None:
    stores = [PostgresStore(pg_url) for _ in range(6)]
    await asyncio.gather(*(s.open() for s in stores))
    try:
        assert {s.schema_version for s in stores} == {SCHEMA_VERSION}
        assert [s.migrated for s in stores].count((0, SCHEMA_VERSION)) == 1
        assert [s.migrated for s in stores].count(None) == 5
        assert await stores[0].check() == SCHEMA_VERSION
    finally:
        await asyncio.gather(*(s.close() for s in stores))


def compose_environment(variables: dict[str, str]) -> dict[str, str]:
    """compose.yaml's environment for tgmux as compose interpolates it from ``variables``
    (``${NAME}``, ``${NAME:-default}``, ``${NAME:?message}``)."""
    root = Path(__file__).resolve().parents[2]
    service = yaml.safe_load((root / "compose.yaml").read_text())["services"]["tgmux"]

    def value(m: re.Match[str]) -> str:
        return variables.get(m.group(1)) or (m.group(3) if m.group(2) == ":-" else "")

    return {key: re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", value, str(raw))
            for key, raw in service["environment"].items()}


async def test_the_store_opens_as_compose_sets_it_up(pg_url: str, monkeypatch) -> None:
    """A password with "@", ":", "/" and quotes (the test server's): in the URL it would break
    it; compose passes it as PGPASSWORD, which the driver uses when the URL names none."""
    target = Target.parse(pg_url)
    assert set("@:/'") <= set(target.password)
    environment = compose_environment({"POSTGRES_PASSWORD": target.password})
    # compose's service name "postgres" is this test server; its tables go to the test's schema
    # (and its database: one per pytest-xdist worker)
    url = environment["TGMUX_STORE"].replace("@postgres:5432/tgmux",
                                             f"@{target.host}:{target.port}"
                                             f"{urlsplit(pg_url).path}")
    url += "?" + urlsplit(pg_url).query
    monkeypatch.setenv("PGPASSWORD", environment.get("PGPASSWORD", ""))
    store = PostgresStore(url)
    await store.open()
    try:
        assert await store.inbox_backlog(account="main") == 0
    finally:
        await store.close()


def test_store_migrate_and_check(tmp_path: Path, pg_url: str) -> None:
    path = config(tmp_path, pg_url)
    shown = redact_urls(pg_url)
    check = tgmux("check", str(path))  # creates nothing
    assert check.returncode == 0, check.stderr
    assert f"store: {shown}" in check.stdout
    first = tgmux("store", "migrate", "-c", str(path))
    assert (first.returncode, first.stdout) == (0, f"store: {shown}: schema version 6 (created)\n")
    second = tgmux("store", "migrate", "-c", str(path))
    assert (second.returncode, second.stdout) == (0, f"store: {shown}: schema version 6\n")
    for result in (check, first, second):
        assert_no_password(result.stdout + result.stderr)


def test_the_pool_size_and_timeout_come_from_the_url() -> None:
    target = Target.parse("postgres://u:p%40ss@db.example:6000/app?pool_max=3&connect_timeout=2"
                          "&search_path=x")
    assert (target.host, target.port, target.database, target.user, target.password) == \
        ("db.example", 6000, "app", "u", "p@ss")
    assert (target.pool_min, target.pool_max, target.connect_timeout) == (1, 3, 2.0)
    assert target.dsn == "postgres://u:p%40ss@db.example:6000/app?search_path=x"
    assert Target.parse("postgresql://u@h/").database == "u"
    with pytest.raises(ValueError, match="pool_max"):
        Target.parse("postgresql://u@h/d?pool_max=0")


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A TCP server on 127.0.0.1 that accepts connections and never says anything."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


def failing_url(case: str, postgres: Postgres, silent: int) -> tuple[str, str]:
    target = Target.parse(postgres.url)
    if case == "wrong password":
        url = pg_server.url(target.port, host=target.host, password=WRONG_PASSWORD,
                            user=target.user, database=target.database)
        return url, f"password authentication failed for user '{target.user}'"
    if case == "missing database":
        return pg_server.url(target.port, host=target.host, password=target.password,
                             user=target.user, database="nosuchdb"), \
            "database 'nosuchdb' does not exist"
    if case == "refused":
        port = pg_server.free_port()
        return pg_server.url(port), f"127.0.0.1:{port}, database 'tgmux': connection refused"
    return with_query(pg_server.url(silent), connect_timeout="1"), "no answer within 1 s"


CASES = ["wrong password", "missing database", "refused", "no answer"]


@pytest.mark.parametrize("case", CASES)
async def test_a_store_that_cannot_be_opened_is_one_clear_error(
        case: str, postgres: Postgres, silent_port: int, tmp_path: Path) -> None:
    url, expected = failing_url(case, postgres, silent_port)
    store = PostgresStore(url)
    started = time.monotonic()
    with pytest.raises(StoreOpenError) as caught:
        await store.open()
    # bounded (a second at most on an idle machine; "no answer within 1 s" in the message says
    # the URL's connect_timeout was the bound): the limit only catches a hang or a retry loop
    assert time.monotonic() - started < 20
    message = str(caught.value)
    assert expected in message and f":{Target.parse(url).port}" in message
    assert_no_password(message)
    assert_no_password(repr(caught.value.__cause__) + repr(caught.value.__context__))
    # The engine's path: `store: cannot open URL: why` on stderr, exit 2 (run, chat, migrate).
    for command in (["store", "migrate", "-c"], ["chat", "-c"], ["check"]):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tgmux", *command, str(config(tmp_path, url)),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 30)
        assert process.returncode == 2, (command, err)
        assert f":1: store: cannot open {url.split(':')[0]}://" in err.decode()
        assert expected in err.decode()
        assert_no_password(out.decode() + err.decode())


async def test_no_answer_is_bounded_by_the_default_connect_timeout(silent_port: int) -> None:
    started = time.monotonic()
    with pytest.raises(StoreOpenError, match=f"no answer within {CONNECT_TIMEOUT:g} s"):
        await PostgresStore(pg_server.url(silent_port)).open()
    # not much more than the timeout (twice that: a loaded machine may be seconds late)
    assert time.monotonic() - started < 2 * CONNECT_TIMEOUT + 2


def test_an_unknown_host_fails_at_once(tmp_path: Path) -> None:
    """In a network namespace of its own (``unshare -rn``): the name cannot be looked up, and
    nothing can leave the machine whatever the resolver is."""
    if shutil.which("unshare") is None or subprocess.run(
            ["unshare", "-rn", "true"], capture_output=True).returncode != 0:
        need_postgres("unshare -rn (a network namespace) is not available")
    url = pg_server.url(5432, host="nonexistent.invalid")
    started = time.monotonic()
    result = tgmux("store", "migrate", "-c", str(config(tmp_path, url)),
                   prefix=("unshare", "-rn"))
    assert time.monotonic() - started < 15
    assert result.returncode == 2, result.stderr
    assert ("PostgreSQL at nonexistent.invalid:5432, database 'tgmux': cannot resolve host "
            "'nonexistent.invalid'") in result.stderr
    assert_no_password(result.stdout + result.stderr)


#: What an operation raises while the database is down.
DOWN = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)


@pytest.fixture
def own_server() -> Iterator[pg_server.Server]:
    """A server of this test's own, to stop and start again."""
    server = start_private_server()
    yield server
    server.destroy()


async def test_a_server_that_goes_away_makes_operations_fail_then_is_reconnected(
        own_server: pg_server.Server) -> None:
    store = PostgresStore(own_server.url(pool_max="3"))
    await store.open()
    try:
        await store.kv_set("ns", "k", "v")
        assert await store.inbox_accept(1, 1, {"n": 1})
        lease = await store.hold_account("main")
        assert await lease.acquire(wait=False)
        await asyncio.to_thread(own_server.stop, "fast")
        await asyncio.wait_for(lease.wait_lost(), 30)  # its connection died with the server
        for operation in (store.kv_get("ns", "k"), store.inbox_accept(1, 2, {"n": 2}),
                          store.inbox_unanswered()):
            started = time.monotonic()
            with pytest.raises(DOWN) as caught:
                await operation
            assert time.monotonic() - started < 10
            assert_no_password(str(caught.value))
        await asyncio.to_thread(own_server.start)
        assert await store.kv_get("ns", "k") == "v"
        assert await store.inbox_accept(1, 1, {"n": 1}) is False
        assert await store.inbox_accept(1, 2, {"n": 2}) is True
        assert await lease.acquire(wait=False) is True  # the lock was freed with the server
        await lease.release()
    finally:
        await store.close()


async def test_an_unreachable_server_is_retried_by_a_waiting_lease(
        own_server: pg_server.Server) -> None:
    store = PostgresStore(own_server.url(connect_timeout="1"))
    await store.open()
    try:
        await asyncio.to_thread(own_server.stop, "fast")
        lease = await store.hold_account("main")
        lease.poll_interval = 0.2
        with pytest.raises(StoreOpenError, match="connection refused"):
            await lease.acquire(wait=False)
        waiting = asyncio.create_task(lease.acquire(wait=True))
        await asyncio.sleep(1)
        assert not waiting.done()
        await asyncio.to_thread(own_server.start)
        assert await asyncio.wait_for(waiting, 10) is True
        await lease.release()
    finally:
        await store.close()


def test_ci_has_postgres(postgres: Postgres) -> None:
    """Under $CI the suite must have run against a real server (the fixture fails otherwise)."""
    assert postgres.url.startswith(("postgresql://", "postgres://"))
    if postgres.server is None and not pg_server.bindir():
        need_postgres("own_server tests need initdb too")


async def test_a_version_1_schema_gains_the_rate_tables(pg_url: str) -> None:
    conn = await asyncpg.connect(pg_url)
    try:
        await conn.execute(MIGRATIONS[1])
        await conn.execute("CREATE TABLE tgmux_schema (version INTEGER NOT NULL)")
        await conn.execute("INSERT INTO tgmux_schema VALUES (1)")
        await conn.execute("INSERT INTO tgmux_kv VALUES ('backend:a', 'k', 'v')")
    finally:
        await conn.close()
    store = PostgresStore(pg_url)
    await store.open()
    try:
        assert store.migrated == (1, SCHEMA_VERSION)
        assert await store.kv_get("backend:a", "k") == "v"
        now = time.time()  # one instant: a second between the two takes would empty the window
        assert await store.rate_take("k", 1, 1.0, now=now) == 0.0
        assert await store.rate_take("k", 1, 1.0, now=now) > 0
        # version 3: the conversation memory
        await store.history_append("gpt/main/1", Exchange("q", "a"), max_turns=2, max_chars=99)
        assert await store.history_read("gpt/main/1", max_turns=2, max_chars=99) == \
            [Exchange("q", "a")]
        # version 5: the group context
        await store.context_add("main", -5, None, ChatLine("Anna", "hi", 1.0), keep=2)
        assert await store.context_take("main", -5, None) == [ChatLine("Anna", "hi", 1.0)]
        # version 6: the usage table
        row = UsageRow("2026-01-02", "main", 5, 5, "gpt", "gpt-4o", 1, 10, 20, cost=0.5)
        await store.usage_add(row)
        assert await store.usage_rows(since="2026-01-01") == [row]
    finally:
        await store.close()
