"""``store: postgresql://USER:PASSWORD@HOST:PORT/DB`` (or ``postgres://``): PostgreSQL through
an asyncpg connection pool, for several processes sharing one database.

* The schema is versioned (table ``tgmux_schema``) and migrated at open, in one transaction
  under an advisory lock: processes starting together do not race.
* Every operation is one statement: the inbox claim is ``INSERT … ON CONFLICT DO NOTHING``, so of
  two processes accepting the same message exactly one gets it.
* Opening is bounded (``connect_timeout``, default :data:`CONNECT_TIMEOUT` seconds) and fails with
  an error naming host, port and database, never the password.
* A database that goes away makes operations raise; the pool reconnects when it is back.
* Account leases are ``pg_try_advisory_lock`` on a dedicated connection (not from the pool) kept
  open while the lease lives: the lock dies with the connection, so with the process too. Who
  holds it is written to ``tgmux_accounts``.
* Changes (``set_override``, the key-value writes of followed namespaces, :meth:`publish`) are
  ``NOTIFY``'d in the write's own statement; every process hears them through ``LISTEN`` on a
  connection of its own (:mod:`tgmux.store.pg_changes`), while the store is open and someone
  subscribed (:meth:`~tgmux.store.base.Store.changes`).

URL query settings (taken out before the URL goes to asyncpg; any other query parameter is a
PostgreSQL setting for the session, e.g. ``?search_path=tgmux``): ``pool_max`` (default 10),
``pool_min`` (1), ``connect_timeout`` (seconds, default 5).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlencode, urlsplit, urlunsplit

import asyncpg

from tgmux.redact import redact_urls
from tgmux.store.base import (
    DEFAULT_ACCOUNT,
    AccountHolder,
    AccountLease,
    Store,
    StreamPosition,
    Unanswered,
    usage_row,
    usage_values,
)
from tgmux.store.changes import CHANNEL, Change, ChangeFeed, kv_change
from tgmux.store.pg_changes import PostgresFeed
from tgmux.types import ChatLine, Exchange, UsageRow

log = logging.getLogger("tgmux.store")

SCHEMA_VERSION = 6

#: Seconds to wait for a connection (DNS, TCP, TLS, authentication) unless ?connect_timeout=.
CONNECT_TIMEOUT = 5.0
#: Seconds one statement may take before it fails.
COMMAND_TIMEOUT = 30.0
#: Seconds to wait for another process's migration (the schema lock).
MIGRATE_TIMEOUT = 30.0
POOL_MAX = 10

#: version -> the script taking the schema from version - 1 to it (run in one transaction).
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE tgmux_chat_override (
    account TEXT NOT NULL,
    chat_id BIGINT NOT NULL,
    backend TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (account, chat_id)
);
CREATE TABLE tgmux_kv (
    namespace TEXT COLLATE "C" NOT NULL,
    key TEXT COLLATE "C" NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE tgmux_inbox (
    account TEXT NOT NULL,
    chat_id BIGINT NOT NULL,
    message_id BIGINT NOT NULL,
    state TEXT NOT NULL,            -- 'pending', 'dispatched' (a backend has it), 'done'
    payload TEXT,                   -- the message (JSON), kept while not done
    received_at DOUBLE PRECISION NOT NULL,
    seq BIGINT GENERATED ALWAYS AS IDENTITY,
    PRIMARY KEY (account, chat_id, message_id)
);
CREATE INDEX tgmux_inbox_open ON tgmux_inbox (account, state, received_at);
CREATE TABLE tgmux_accounts (
    account TEXT PRIMARY KEY,
    hostname TEXT NOT NULL,
    pid INTEGER NOT NULL,
    since DOUBLE PRECISION NOT NULL,
    backend_pid INTEGER NOT NULL    -- the server process of the lock's connection
);
""",
    2: """
CREATE TABLE tgmux_rate_event (
    key TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,       -- when it was taken (a timestamp)
    expires DOUBLE PRECISION NOT NULL   -- at + its window: deleted after, whatever the key
);
CREATE INDEX tgmux_rate_event_key ON tgmux_rate_event (key, at);
CREATE INDEX tgmux_rate_event_expires ON tgmux_rate_event (expires);
CREATE TABLE tgmux_rate_block (
    key TEXT PRIMARY KEY,
    blocked_until DOUBLE PRECISION NOT NULL
);
""",
    3: """
CREATE TABLE tgmux_history (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- a conversation's order
    conversation TEXT COLLATE "C" NOT NULL,               -- BACKEND/ACCOUNT/CHAT[/USER]
    user_text TEXT NOT NULL,
    reply_text TEXT NOT NULL,
    chars INTEGER NOT NULL,         -- of both texts: what counts against max_chars
    created_at DOUBLE PRECISION NOT NULL
);
CREATE INDEX tgmux_history_conversation ON tgmux_history (conversation, id);
""",
    4: """
CREATE TABLE tgmux_account_state (
    account TEXT PRIMARY KEY,
    session TEXT,                   -- the Telegram session (JSON: auth key, data centre, user)
    position TEXT,                  -- where it is in the update stream (JSON)
    position_order BIGINT NOT NULL DEFAULT 0    -- the highest is kept
);
""",
    5: """
CREATE TABLE tgmux_group_context (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,   -- the order of a chat's lines
    account TEXT NOT NULL,
    chat_id BIGINT NOT NULL,
    thread_id BIGINT NOT NULL,      -- the forum topic, 0 for none
    at DOUBLE PRECISION NOT NULL,   -- when it was written: pruned by age
    line TEXT NOT NULL              -- the ChatLine (JSON)
);
CREATE INDEX tgmux_group_context_chat ON tgmux_group_context (account, chat_id, thread_id, id);
CREATE INDEX tgmux_group_context_at ON tgmux_group_context (at);
""",
    6: """
CREATE TABLE tgmux_usage (
    day TEXT COLLATE "C" NOT NULL,  -- the UTC day, YYYY-MM-DD
    account TEXT NOT NULL,
    user_id BIGINT NOT NULL,        -- 0: no user (a key column cannot be NULL)
    chat_id BIGINT NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    messages BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    reasoning_tokens BIGINT NOT NULL,
    cost DOUBLE PRECISION,          -- in the config's currency, NULL: no price known
    PRIMARY KEY (day, account, user_id, chat_id, backend, model)
);
CREATE INDEX tgmux_usage_user ON tgmux_usage (account, user_id, day);
""",
}

_USAGE_COLUMNS = ("day, account, user_id, chat_id, backend, model, messages, input_tokens, "
                  "output_tokens, cached_input_tokens, reasoning_tokens, cost")
#: Adds a UsageRow to its key's row: counts add up; a cost adds to a NULL one as to 0, a NULL
#: cost adds nothing.
_USAGE_UPSERT = (
    f"INSERT INTO tgmux_usage AS u ({_USAGE_COLUMNS}) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) "
    "ON CONFLICT (day, account, user_id, chat_id, backend, model) DO UPDATE SET "
    "messages=u.messages + excluded.messages, "
    "input_tokens=u.input_tokens + excluded.input_tokens, "
    "output_tokens=u.output_tokens + excluded.output_tokens, "
    "cached_input_tokens=u.cached_input_tokens + excluded.cached_input_tokens, "
    "reasoning_tokens=u.reasoning_tokens + excluded.reasoning_tokens, "
    "cost=CASE WHEN excluded.cost IS NULL THEN u.cost ELSE coalesce(u.cost, 0) + excluded.cost "
    "END"
)

#: Writes a position ($1 account, $2 value, $3 order) unless the kept one is as new.
_POSITION_UPSERT = (
    "INSERT INTO tgmux_account_state (account, position, position_order) VALUES ($1, $2, $3) "
    "ON CONFLICT (account) DO UPDATE SET position=excluded.position, "
    "position_order=excluded.position_order "
    "WHERE excluded.position_order > tgmux_account_state.position_order OR "
    "tgmux_account_state.position IS NULL"
)

#: The ids of the exchanges history_read returns: the newest, within both limits.
_HISTORY_KEPT = (
    "SELECT id FROM (SELECT id, row_number() OVER newest AS n, sum(chars) OVER newest AS total "
    "FROM tgmux_history WHERE conversation=$1 WINDOW newest AS (ORDER BY id DESC)) AS recent "
    "WHERE n <= $2 AND total <= $3"
)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for ``name``."""
    digest = hashlib.blake2b(name.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def account_key(account: str) -> int:
    return lock_key(f"tgmux:account:{account}")


def rate_key(key: str) -> int:
    return lock_key(f"tgmux:rate:{key}")


SCHEMA_LOCK = lock_key("tgmux:schema")


class StoreOpenError(RuntimeError):
    """The database cannot be reached or used; the message names host, port and database."""


@dataclass(frozen=True)
class Target:
    """A ``postgresql://`` URL taken apart."""

    dsn: str  # for asyncpg: tgmux's own query settings removed
    host: str
    port: int
    database: str
    user: str
    password: str
    pool_min: int
    pool_max: int
    connect_timeout: float

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("postgresql", "postgres"):
            raise ValueError("expected postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
        try:
            port = parts.port or 5432
        except ValueError:
            raise ValueError("the port is not a number from 1 to 65535") from None
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        own = {k: query.pop(k) for k in ("pool_min", "pool_max", "connect_timeout") if k in query}
        try:
            pool_max = int(own.get("pool_max", POOL_MAX))
            pool_min = min(int(own.get("pool_min", 1)), pool_max)
            timeout = float(own.get("connect_timeout", CONNECT_TIMEOUT))
        except ValueError:
            raise ValueError("pool_max and pool_min must be whole numbers, connect_timeout "
                             "a number of seconds") from None
        if not 1 <= pool_max <= 1000 or pool_min < 0 or not 0 < timeout <= 600:
            raise ValueError("pool_max must be 1 to 1000, pool_min 0 or more, connect_timeout "
                             "0 to 600 seconds")
        user = unquote(parts.username or "")
        host = query.get("host") or parts.hostname or "localhost"
        database = unquote(parts.path.lstrip("/")) or query.get("dbname") or user
        dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(query), ""))
        return cls(dsn, host, port, database, user, unquote(parts.password or ""),
                   pool_min, pool_max, timeout)

    @property
    def where(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port}, database {self.database!r}"

    def scrub(self, text: str) -> str:
        """``text`` without the password (plain or URL-encoded) nor URL credentials."""
        if self.password:
            for form in {self.password, quote(self.password, safe=""),
                         quote_plus(self.password, safe="")}:
                text = text.replace(form, "***")
        return redact_urls(text)

    def explain(self, exc: BaseException) -> str:
        """Why connecting failed, in one line, with no secret in it."""
        if isinstance(exc, asyncpg.InvalidPasswordError):
            why = f"password authentication failed for user {self.user!r}"
        elif isinstance(exc, asyncpg.InvalidCatalogNameError):
            why = f"database {self.database!r} does not exist"
        elif isinstance(exc, socket.gaierror):
            why = f"cannot resolve host {self.host!r} ({exc.strerror or exc})"
        elif isinstance(exc, ConnectionRefusedError):
            why = "connection refused (is PostgreSQL running and listening there?)"
        elif isinstance(exc, TimeoutError):
            why = f"no answer within {self.connect_timeout:g} s"
        elif isinstance(exc, OSError):
            why = exc.strerror or str(exc) or type(exc).__name__
        else:
            why = str(exc) or type(exc).__name__
        return self.scrub(f"{self.where}: {why}")


class PostgresStore(Store):
    """``store: postgresql://USER:PASSWORD@HOST:PORT/DB[?pool_max=10&connect_timeout=5]``."""

    def __init__(self, url: str) -> None:
        self.target = Target.parse(url)
        self._pool: asyncpg.Pool | None = None

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    # -- connecting --------------------------------------------------------------------------

    async def connect(self) -> asyncpg.Connection:
        """One connection outside the pool (bounded; errors explained as at open)."""
        target = self.target
        try:
            async with asyncio.timeout(target.connect_timeout + 1):
                return await asyncpg.connect(target.dsn, timeout=target.connect_timeout,
                                             command_timeout=COMMAND_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            raise StoreOpenError(target.explain(exc)) from None

    async def open(self) -> None:
        target = self.target
        try:
            async with asyncio.timeout(target.connect_timeout + 1):
                pool = await asyncpg.create_pool(
                    target.dsn, min_size=target.pool_min, max_size=target.pool_max,
                    timeout=target.connect_timeout, command_timeout=COMMAND_TIMEOUT)
        except (OSError, TimeoutError, asyncpg.PostgresError,
                asyncpg.InterfaceError) as exc:
            raise StoreOpenError(target.explain(exc)) from None
        try:
            await self._migrate(pool)
        except BaseException:
            pool.terminate()
            raise
        self._pool = pool
        if self._feed is not None and self._feed.followed:
            await self._feed.start()

    async def _migrate(self, pool: asyncpg.Pool) -> None:
        try:
            async with asyncio.timeout(MIGRATE_TIMEOUT), pool.acquire() as conn, \
                    conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
                await conn.execute("CREATE TABLE IF NOT EXISTS tgmux_schema "
                                   "(version INTEGER NOT NULL)")
                version = await conn.fetchval("SELECT max(version) FROM tgmux_schema") or 0
                if version > SCHEMA_VERSION:
                    raise StoreOpenError(
                        f"{self.target.where}: schema version {version} is newer than this "
                        f"tgmux ({SCHEMA_VERSION}); upgrade tgmux")
                for step in range(version + 1, SCHEMA_VERSION + 1):
                    await conn.execute(MIGRATIONS[step])
                if version < SCHEMA_VERSION:
                    await conn.execute("DELETE FROM tgmux_schema")
                    await conn.execute("INSERT INTO tgmux_schema (version) VALUES ($1)",
                                       SCHEMA_VERSION)
        except TimeoutError:
            raise StoreOpenError(f"{self.target.where}: the schema stayed locked for "
                                 f"{MIGRATE_TIMEOUT:.0f} s (another tgmux migrating?)") from None
        except asyncpg.PostgresError as exc:
            raise StoreOpenError(self.target.scrub(f"{self.target.where}: {exc}")) from None
        if version < SCHEMA_VERSION:
            self.migrated = (version, SCHEMA_VERSION)
            log.info("%s: schema migrated from version %d to %d", self.target.where, version,
                     SCHEMA_VERSION)
        self.schema_version = SCHEMA_VERSION

    async def check(self) -> int:
        """Connect without changing anything: the schema version found (0: none yet)."""
        conn = await self.connect()
        try:
            if await conn.fetchval("SELECT to_regclass('tgmux_schema')") is None:
                return 0
            version = await conn.fetchval("SELECT max(version) FROM tgmux_schema") or 0
        finally:
            await _close(conn)
        if version > SCHEMA_VERSION:
            raise StoreOpenError(f"{self.target.where}: schema version {version} is newer "
                                 f"than this tgmux ({SCHEMA_VERSION}); upgrade tgmux")
        return version

    async def close(self) -> None:
        if self._feed is not None:
            await self._feed.stop()
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                async with asyncio.timeout(5):
                    await pool.close()
            except (TimeoutError, OSError, asyncpg.InterfaceError):
                pool.terminate()

    # -- overrides ---------------------------------------------------------------------------

    async def get_override(self, chat_id: int, *, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self.pool.fetchval(
            "SELECT backend FROM tgmux_chat_override WHERE account=$1 AND chat_id=$2",
            account, chat_id)

    async def set_override(self, chat_id: int, backend: str | None, *,
                           account: str = DEFAULT_ACCOUNT) -> None:
        told = Change("override", account=account, chat_id=chat_id).to_payload()
        # One statement: the NOTIFY goes out when (and only if) the write commits.
        if backend is None:
            await self.pool.execute(
                "WITH gone AS (DELETE FROM tgmux_chat_override WHERE account=$1 AND chat_id=$2) "
                "SELECT pg_notify($3, $4)", account, chat_id, CHANNEL, told)
        else:
            await self.pool.execute(
                "WITH written AS (INSERT INTO tgmux_chat_override (account, chat_id, backend, "
                "updated_at) VALUES ($1, $2, $3, $4) ON CONFLICT (account, chat_id) DO UPDATE "
                "SET backend=excluded.backend, updated_at=excluded.updated_at) "
                "SELECT pg_notify($5, $6)", account, chat_id, backend, time.time(), CHANNEL, told)

    # -- changes -----------------------------------------------------------------------------

    def _new_feed(self) -> ChangeFeed:
        def keep_alive(conn: asyncpg.Connection) -> None:
            set_keepalives(conn, round(PostgresFeed.probe_interval))

        return PostgresFeed(self.connect, keep_alive, store_open=lambda: self._pool is not None)

    async def publish(self, change: Change) -> None:
        await self.pool.execute("SELECT pg_notify($1, $2)", CHANNEL, change.to_payload())

    # -- key-value ---------------------------------------------------------------------------

    async def kv_get(self, namespace: str, key: str) -> str | None:
        return await self.pool.fetchval(
            "SELECT value FROM tgmux_kv WHERE namespace=$1 AND key=$2", namespace, key)

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        write = ("INSERT INTO tgmux_kv (namespace, key, value) VALUES ($1, $2, $3) "
                 "ON CONFLICT (namespace, key) DO UPDATE SET value=excluded.value")
        if (change := kv_change(namespace, key)) is None:
            await self.pool.execute(write, namespace, key, value)
        else:  # kept in memory by processes: told in the same statement
            await self.pool.execute(f"WITH written AS ({write}) SELECT pg_notify($4, $5)",
                                    namespace, key, value, CHANNEL, change.to_payload())

    async def kv_delete(self, namespace: str, key: str) -> None:
        delete = "DELETE FROM tgmux_kv WHERE namespace=$1 AND key=$2"
        if (change := kv_change(namespace, key)) is None:
            await self.pool.execute(delete, namespace, key)
        else:
            await self.pool.execute(f"WITH gone AS ({delete}) SELECT pg_notify($3, $4)",
                                    namespace, key, CHANNEL, change.to_payload())

    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        rows = await self.pool.fetch(
            "SELECT key, value FROM tgmux_kv WHERE namespace=$1 AND starts_with(key, $2) "
            "ORDER BY key", namespace, prefix)
        return [(r["key"], r["value"]) for r in rows]

    # -- inbox -------------------------------------------------------------------------------

    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any], *,
                           account: str = DEFAULT_ACCOUNT,
                           position: StreamPosition | None = None) -> bool:
        if position is None:
            claimed = await self.pool.fetchval(
                "INSERT INTO tgmux_inbox (account, chat_id, message_id, state, payload, "
                "received_at) VALUES ($1, $2, $3, 'pending', $4, $5) "
                "ON CONFLICT DO NOTHING RETURNING true",
                account, chat_id, message_id, json.dumps(payload), time.time())
            return claimed is True
        # One statement: the claim and the position commit together (a data-modifying WITH
        # runs whether or not the query reads it).
        claimed = await self.pool.fetchval(
            "WITH moved AS (" + _POSITION_UPSERT.replace("$2", "$6").replace("$3", "$7") + "), "
            "claimed AS (INSERT INTO tgmux_inbox (account, chat_id, message_id, state, payload, "
            "received_at) VALUES ($1, $2, $3, 'pending', $4, $5) ON CONFLICT DO NOTHING "
            "RETURNING true AS new) SELECT EXISTS (SELECT 1 FROM claimed)",
            account, chat_id, message_id, json.dumps(payload), time.time(), position.value,
            position.order)
        return claimed is True

    async def session_read(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self.pool.fetchval(
            "SELECT session FROM tgmux_account_state WHERE account=$1", account)

    async def session_write(self, session: str | None, *, account: str = DEFAULT_ACCOUNT
                            ) -> None:
        await self.pool.execute(
            "INSERT INTO tgmux_account_state (account, session) VALUES ($1, $2) "
            "ON CONFLICT (account) DO UPDATE SET session=excluded.session", account, session)

    async def position_read(self, account: str = DEFAULT_ACCOUNT) -> StreamPosition | None:
        row = await self.pool.fetchrow(
            "SELECT position_order, position FROM tgmux_account_state WHERE account=$1", account)
        if row is None or row["position"] is None:
            return None
        return StreamPosition(int(row["position_order"]), row["position"])

    async def position_write(self, position: StreamPosition | None, *,
                             account: str = DEFAULT_ACCOUNT) -> None:
        if position is None:
            await self.pool.execute("UPDATE tgmux_account_state SET position=NULL, "
                                    "position_order=0 WHERE account=$1", account)
        else:
            await self.pool.execute(_POSITION_UPSERT, account, position.value, position.order)

    async def inbox_dispatched(self, chat_id: int, message_id: int, *,
                               account: str = DEFAULT_ACCOUNT) -> None:
        await self.pool.execute(
            "UPDATE tgmux_inbox SET state='dispatched' WHERE account=$1 AND chat_id=$2 "
            "AND message_id=$3 AND state='pending'", account, chat_id, message_id)

    async def inbox_done(self, chat_id: int, message_id: int, *,
                         account: str = DEFAULT_ACCOUNT) -> None:
        await self.pool.execute(
            "UPDATE tgmux_inbox SET state='done', payload=NULL WHERE account=$1 AND chat_id=$2 "
            "AND message_id=$3", account, chat_id, message_id)

    async def inbox_unanswered(self, *, account: str = DEFAULT_ACCOUNT) -> list[Unanswered]:
        rows = await self.pool.fetch(
            "SELECT payload, state FROM tgmux_inbox WHERE account=$1 AND state<>'done' "
            "AND payload IS NOT NULL ORDER BY received_at, seq", account)
        return [Unanswered(json.loads(r["payload"]), r["state"] == "dispatched") for r in rows]

    async def inbox_backlog(self, *, account: str = DEFAULT_ACCOUNT) -> int:
        return await self.pool.fetchval(
            "SELECT count(*) FROM tgmux_inbox WHERE account=$1 AND state<>'done'", account)

    async def inbox_prune(self, older_than: float, *, account: str | None = None) -> int:
        status = await self.pool.execute(
            "DELETE FROM tgmux_inbox WHERE state='done' AND received_at < $1 "
            "AND ($2::text IS NULL OR account=$2)", older_than, account)
        return int(status.rsplit(" ", 1)[-1])

    # -- shared rate limits ------------------------------------------------------------------

    async def rate_take(self, key: str, limit: int, window: float, *,
                        now: float | None = None) -> float:
        async with self.pool.acquire() as conn, conn.transaction():
            # One taker per key at a time, across processes: count and insert cannot interleave.
            await conn.execute("SELECT pg_advisory_xact_lock($1)", rate_key(key))
            # the time once the lock is held: waiting for it must not count as elapsed
            now = time.time() if now is None else now
            until = await conn.fetchval(
                "SELECT blocked_until FROM tgmux_rate_block WHERE key=$1", key)
            if until is not None and until > now:
                return until - now
            await conn.execute("DELETE FROM tgmux_rate_block WHERE key=$1 AND blocked_until <= $2",
                               key, now)
            await conn.execute("DELETE FROM tgmux_rate_event WHERE key=$1 AND at <= $2",
                               key, now - window)
            # Other keys' expired events, a few at a time: SKIP LOCKED, so two takers of
            # different keys never wait for (nor deadlock on) each other's rows.
            await conn.execute(
                "DELETE FROM tgmux_rate_event WHERE ctid IN (SELECT ctid FROM tgmux_rate_event "
                "WHERE expires <= $1 AND key <> $2 LIMIT 100 FOR UPDATE SKIP LOCKED)", now, key)
            count = await conn.fetchval("SELECT count(*) FROM tgmux_rate_event WHERE key=$1", key)
            if count < limit:
                await conn.execute("INSERT INTO tgmux_rate_event (key, at, expires) "
                                   "VALUES ($1, $2, $3)", key, now, now + window)
                return 0.0
            oldest = await conn.fetchval("SELECT at FROM tgmux_rate_event WHERE key=$1 "
                                         "ORDER BY at LIMIT 1 OFFSET $2", key, count - limit)
            return max(0.0, oldest + window - now)

    async def rate_count(self, key: str, window: float, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return await self.pool.fetchval(
            "SELECT count(*) FROM tgmux_rate_event WHERE key=$1 AND at > $2", key, now - window)

    async def rate_restamp(self, key: str, since: float, at: float) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            # as rate_take: no taker of this key counts between the choice and the move
            await conn.execute("SELECT pg_advisory_xact_lock($1)", rate_key(key))
            await conn.execute(
                "UPDATE tgmux_rate_event SET expires = expires + ($1 - at), at = $1 "
                "WHERE ctid = (SELECT ctid FROM tgmux_rate_event WHERE key=$2 AND at >= $3 "
                "ORDER BY at LIMIT 1) AND at < $1", at, key, since)

    async def rate_block(self, key: str, until: float) -> None:
        await self.pool.execute(
            "INSERT INTO tgmux_rate_block (key, blocked_until) VALUES ($1, $2) "
            "ON CONFLICT (key) DO UPDATE SET "
            "blocked_until=greatest(tgmux_rate_block.blocked_until, excluded.blocked_until)",
            key, until)

    # -- conversation memory -----------------------------------------------------------------

    async def history_append(self, conversation: str, exchange: Exchange, *, max_turns: int,
                             max_chars: int) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(
                "INSERT INTO tgmux_history (conversation, user_text, reply_text, chars, "
                "created_at) VALUES ($1, $2, $3, $4, $5)",
                conversation, exchange.user, exchange.reply, exchange.chars, time.time())
            await _history_trim(conn, conversation, max_turns, max_chars)

    async def history_read(self, conversation: str, *, max_turns: int,
                           max_chars: int) -> list[Exchange]:
        rows = await self.pool.fetch(
            f"SELECT user_text, reply_text FROM tgmux_history WHERE id IN ({_HISTORY_KEPT}) "
            "ORDER BY id", conversation, max_turns, max_chars)
        return [Exchange(r["user_text"], r["reply_text"]) for r in rows]

    async def history_trim(self, conversation: str, *, max_turns: int, max_chars: int) -> int:
        return await _history_trim(self.pool, conversation, max_turns, max_chars)

    async def history_clear(self, conversation: str) -> int:
        status = await self.pool.execute("DELETE FROM tgmux_history WHERE conversation=$1",
                                         conversation)
        return int(status.rsplit(" ", 1)[-1])

    # -- group context -----------------------------------------------------------------------

    async def context_add(self, account: str, chat_id: int, thread_id: int | None,
                          line: ChatLine, *, keep: int) -> None:
        # One statement: the DELETE sees the table as before the INSERT (one snapshot), so
        # the newest keep - 1 lines from before stay, with the new one.
        await self.pool.execute(
            "WITH added AS (INSERT INTO tgmux_group_context (account, chat_id, thread_id, at, "
            "line) VALUES ($1, $2, $3, $4, $5)) "
            "DELETE FROM tgmux_group_context WHERE account=$1 AND chat_id=$2 AND thread_id=$3 "
            "AND id NOT IN (SELECT id FROM tgmux_group_context WHERE account=$1 AND "
            "chat_id=$2 AND thread_id=$3 ORDER BY id DESC LIMIT $6)",
            account, chat_id, thread_id or 0, line.at, json.dumps(line.to_json()),
            max(0, keep - 1))

    async def context_take(self, account: str, chat_id: int,
                           thread_id: int | None) -> list[ChatLine]:
        rows = await self.pool.fetch(
            "DELETE FROM tgmux_group_context WHERE account=$1 AND chat_id=$2 AND thread_id=$3 "
            "RETURNING id, line", account, chat_id, thread_id or 0)
        return [ChatLine.from_json(json.loads(r["line"]))
                for r in sorted(rows, key=lambda r: r["id"])]

    # -- usage -------------------------------------------------------------------------------

    async def usage_add(self, row: UsageRow) -> None:
        await self.pool.execute(_USAGE_UPSERT, *usage_values(row))

    async def usage_rows(self, *, since: str, until: str | None = None,
                         account: str | None = None,
                         user_id: int | None = None) -> list[UsageRow]:
        where, args = ["day >= $1"], [since]
        for column, value in (("day <=", until), ("account =", account),
                              ("user_id =", user_id)):
            if value is not None:
                args.append(value)
                where.append(f"{column} ${len(args)}")
        rows = await self.pool.fetch(
            f"SELECT {_USAGE_COLUMNS} FROM tgmux_usage WHERE {' AND '.join(where)} "
            "ORDER BY day, account, chat_id, backend, model, user_id", *args)
        return [usage_row(row.values()) for row in rows]

    async def usage_prune(self, before: str) -> int:
        status = await self.pool.execute("DELETE FROM tgmux_usage WHERE day < $1", before)
        return int(status.rsplit(" ", 1)[-1])

    async def context_prune(self, older_than: float) -> int:
        status = await self.pool.execute("DELETE FROM tgmux_group_context WHERE at < $1",
                                         older_than)
        return int(status.rsplit(" ", 1)[-1])

    # -- account leases ----------------------------------------------------------------------

    async def hold_account(self, account: str) -> PostgresLease:
        return PostgresLease(self, account)

    async def known_accounts(self) -> set[str]:
        rows = await self.pool.fetch("SELECT account FROM tgmux_accounts UNION "
                                     "SELECT account FROM tgmux_account_state")
        return {row["account"] for row in rows}

    async def holders(self, accounts: Iterable[str] = ()) -> dict[str, AccountHolder | None]:
        """As :meth:`PostgresLease.holder` for every account, in three statements: the
        recorded holders count only where their connection still holds the lock."""
        async with self.pool.acquire() as conn:
            recorded = {r["account"]: r for r in await conn.fetch(
                "SELECT account, hostname, pid, since, backend_pid FROM tgmux_accounts")}
            stated = await conn.fetch("SELECT account FROM tgmux_account_state")
            locks = await conn.fetch(
                "SELECT pid, classid::bigint AS high, objid::bigint AS low FROM pg_locks "
                "WHERE locktype='advisory' AND granted AND objsubid=1 "
                "AND database=(SELECT oid FROM pg_database WHERE datname=current_database())")
        held = {(r["high"], r["low"]): r["pid"] for r in locks}
        holders: dict[str, AccountHolder | None] = {}
        for name in sorted({*accounts, *recorded, *(r["account"] for r in stated)}):
            unsigned = account_key(name) & 0xFFFF_FFFF_FFFF_FFFF
            pid = held.get((unsigned >> 32, unsigned & 0xFFFF_FFFF))
            row = recorded.get(name)
            if pid is None:
                holders[name] = None
            elif row is None or row["backend_pid"] != pid:  # taken, not written down yet
                holders[name] = AccountHolder(name, "?", 0, 0.0)
            else:
                holders[name] = AccountHolder(name, row["hostname"], row["pid"], row["since"])
        return holders


async def _history_trim(db: asyncpg.Pool | asyncpg.Connection, conversation: str,
                        max_turns: int, max_chars: int) -> int:
    status = await db.execute(
        f"DELETE FROM tgmux_history WHERE conversation=$1 AND id NOT IN ({_HISTORY_KEPT})",
        conversation, max_turns, max_chars)
    return int(status.rsplit(" ", 1)[-1])


def set_keepalives(conn: asyncpg.Connection, seconds: int) -> None:
    """TCP keepalives on ``conn``'s socket: a peer gone silently (a network partition) is
    noticed within about ``seconds`` (Linux: unacknowledged data too, TCP_USER_TIMEOUT)."""
    transport = getattr(conn, "_transport", None)  # asyncpg has no public way to the socket
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", max(1, seconds // 3)),
                        ("TCP_KEEPINTVL", max(1, seconds // 6)), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", seconds * 1000)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        with contextlib.suppress(OSError):
            sock.setsockopt(level, option, value)


async def _close(conn: asyncpg.Connection) -> None:
    try:
        async with asyncio.timeout(2):
            await conn.close()
    except (TimeoutError, OSError, asyncpg.InterfaceError):
        conn.terminate()


class PostgresLease(AccountLease):
    """``pg_try_advisory_lock`` on a connection of its own, open as long as the lease.

    A lease lost silently (a network partition: no reset reaches either side) is noticed by
    both sides, this one first: here a probe (``SELECT 1`` every third of :attr:`timeout`,
    answered within a third, and TCP keepalives) finds it within :attr:`timeout` seconds; the
    server ends the session (and frees the lock for a standby) only after twice that without
    a query (``idle_session_timeout``, PostgreSQL 14 and later; and its TCP keepalives)."""

    def __init__(self, store: PostgresStore, account: str) -> None:
        super().__init__(account)
        self.store = store
        self.key = account_key(account)
        self._conn: asyncpg.Connection | None = None
        self._probe: asyncio.Task[None] | None = None

    async def _try_acquire(self) -> bool:
        conn = self._conn
        if conn is None or conn.is_closed():
            conn = self._conn = await self.store.connect()
            conn.add_termination_listener(self._terminated)
            await self._keep_alive(conn)
        return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key))

    async def _keep_alive(self, conn: asyncpg.Connection) -> None:
        """The server gives the session up after 2 x :attr:`timeout` s silent; the client's
        TCP notices a dead peer within :attr:`timeout` s."""
        seconds = max(1, round(self.timeout))
        set_keepalives(conn, seconds)
        # the server's side: 2 x timeout silent (idle, then 3 unanswered probes a third apart)
        for name, value in (("idle_session_timeout", f"{2 * seconds}s"),
                            ("tcp_keepalives_idle", f"{seconds}s"),
                            ("tcp_keepalives_interval", f"{max(1, seconds // 3)}s"),
                            ("tcp_keepalives_count", "3")):
            try:  # an older server without the setting: the probe alone
                await conn.execute(f"SET {name} = '{value}'")
            except asyncpg.PostgresError as exc:
                log.debug("account %s: the lease's connection has no %s: %s", self.account,
                          name, exc)

    def _terminated(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn:  # not closed by release()
            self._conn = None
            self._stop_probe()
            self._mark_lost()

    def _stop_probe(self) -> None:
        if self._probe is not None and self._probe is not asyncio.current_task():
            self._probe.cancel()
        self._probe = None

    async def _probe_until_lost(self, conn: asyncpg.Connection) -> None:
        step = self.timeout / 3
        while conn is self._conn:
            await asyncio.sleep(step)
            if conn is not self._conn:
                return
            try:
                async with asyncio.timeout(step):
                    await conn.fetchval("SELECT 1")
            except (Exception, TimeoutError) as exc:
                if conn is not self._conn:
                    return
                log.error("account %s: the lease's connection did not answer within %.1f s "
                          "(%s)", self.account, step,
                          "no answer" if isinstance(exc, TimeoutError) else exc)
                self._conn = None
                self._probe = None
                conn.terminate()
                self._mark_lost()
                return

    async def _record(self, holder: AccountHolder) -> None:
        conn = self._conn
        assert conn is not None
        try:
            await conn.execute(
                "INSERT INTO tgmux_accounts (account, hostname, pid, since, backend_pid) "
                "VALUES ($1, $2, $3, $4, pg_backend_pid()) ON CONFLICT (account) DO UPDATE SET "
                "hostname=excluded.hostname, pid=excluded.pid, since=excluded.since, "
                "backend_pid=excluded.backend_pid",
                holder.account, holder.hostname, holder.pid, holder.since)
        except BaseException:
            await self._release()
            raise
        self._stop_probe()
        self._probe = asyncio.create_task(self._probe_until_lost(conn),
                                          name=f"tgmux-lease-probe-{self.account}")

    async def _release(self) -> None:
        self._stop_probe()
        conn, self._conn = self._conn, None
        if conn is None or conn.is_closed():
            return
        with contextlib.suppress(Exception):
            await conn.execute("DELETE FROM tgmux_accounts WHERE account=$1 "
                               "AND backend_pid=pg_backend_pid()", self.account)
        await _close(conn)  # the lock goes with the connection

    async def holder(self) -> AccountHolder | None:
        if self._holder is not None:
            return self._holder
        unsigned = self.key & 0xFFFF_FFFF_FFFF_FFFF
        # The lease's own connection once it tried: works before the store is open.
        conn = self._conn if self._conn is not None and not self._conn.is_closed() else None
        row = await (conn or self.store.pool).fetchrow(
            "SELECT l.pid AS backend_pid, a.hostname, a.pid, a.since FROM pg_locks l "
            "LEFT JOIN tgmux_accounts a ON a.account=$1 AND a.backend_pid=l.pid "
            "WHERE l.locktype='advisory' AND l.granted AND l.objsubid=1 "
            "AND l.classid=$2::oid AND l.objid=$3::oid "
            "AND l.database=(SELECT oid FROM pg_database WHERE datname=current_database())",
            self.account, unsigned >> 32, unsigned & 0xFFFF_FFFF)
        if row is None:
            return None
        if row["hostname"] is None:  # taken, not written down yet
            return AccountHolder(self.account, "?", 0, 0.0)
        return AccountHolder(self.account, row["hostname"], row["pid"], row["since"])
