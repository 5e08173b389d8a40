"""``store: sqlite:///PATH``: SQLite through aiosqlite (WAL, one connection in its own thread),
the schema versioned by ``PRAGMA user_version`` and migrated at open.

Account leases are ``fcntl.flock`` locks on ``PATH.account-NAME.lock`` next to the database:
they exclude other processes on this machine (and other leases in this one), and the kernel
drops them when the holding process dies. The lock file says who holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import glob
import itertools
import json
import logging
import os
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, unquote

import aiosqlite

from tgmux.store.base import (
    DEFAULT_ACCOUNT,
    OPEN_TIMEOUT,
    AccountHolder,
    AccountLease,
    Store,
    StreamPosition,
    Unanswered,
    usage_row,
    usage_values,
)
from tgmux.store.changes import Change
from tgmux.types import ChatLine, Exchange, UsageRow

log = logging.getLogger("tgmux.store")

T = TypeVar("T")

SCHEMA_VERSION = 7

#: Lock files of accounts looked at, at most (:meth:`SQLiteStore.known_accounts`).
MAX_ACCOUNTS = 1000

#: Version 1 (before accounts); kept to test the migration from it.
SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS chat_override (
    chat_id INTEGER PRIMARY KEY,
    backend TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
CREATE TABLE IF NOT EXISTS inbox (
    chat_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    state TEXT NOT NULL,            -- 'pending', 'dispatched' (a backend has it), 'done'
    payload TEXT,                   -- the message, kept while pending
    received_at REAL NOT NULL,
    PRIMARY KEY (chat_id, message_id)
);
CREATE INDEX IF NOT EXISTS inbox_pending ON inbox (state, received_at);
"""

_OVERRIDE_V2 = """
CREATE TABLE chat_override (
    account TEXT NOT NULL,
    chat_id INTEGER NOT NULL,
    backend TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (account, chat_id)
);
"""
_KV = """
CREATE TABLE kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""
_INBOX_V2 = """
CREATE TABLE inbox (
    account TEXT NOT NULL,
    chat_id INTEGER NOT NULL,
    message_id INTEGER NOT NULL,
    state TEXT NOT NULL,            -- 'pending', 'dispatched' (a backend has it), 'done'
    payload TEXT,                   -- the message, kept while pending
    received_at REAL NOT NULL,
    PRIMARY KEY (account, chat_id, message_id)
);
CREATE INDEX inbox_pending ON inbox (account, state, received_at);
"""

_RATE_V3 = """
CREATE TABLE rate_event (
    key TEXT NOT NULL,
    at REAL NOT NULL,               -- when it was taken (a timestamp)
    expires REAL NOT NULL           -- at + its window: deleted after, whatever the key
);
CREATE INDEX rate_event_key ON rate_event (key, at);
CREATE INDEX rate_event_expires ON rate_event (expires);
CREATE TABLE rate_block (
    key TEXT PRIMARY KEY,
    blocked_until REAL NOT NULL
);
"""

_HISTORY_V4 = """
CREATE TABLE history (
    id INTEGER PRIMARY KEY,         -- the order of a conversation's exchanges
    conversation TEXT NOT NULL,     -- BACKEND/ACCOUNT/CHAT[/USER]
    user_text TEXT NOT NULL,
    reply_text TEXT NOT NULL,
    chars INTEGER NOT NULL,         -- of both texts: what counts against max_chars
    created_at REAL NOT NULL
);
CREATE INDEX history_conversation ON history (conversation, id);
"""

_ACCOUNT_STATE_V5 = """
CREATE TABLE account_state (
    account TEXT PRIMARY KEY,
    session TEXT,                   -- the Telegram session (JSON: auth key, data centre, user)
    position TEXT,                  -- where it is in the update stream (JSON)
    position_order INTEGER NOT NULL DEFAULT 0   -- the highest is kept
);
"""

_GROUP_CONTEXT_V6 = """
CREATE TABLE group_context (
    id INTEGER PRIMARY KEY,         -- the order of a chat's lines
    account TEXT NOT NULL,
    chat_id INTEGER NOT NULL,
    thread_id INTEGER NOT NULL,     -- the forum topic, 0 for none
    at REAL NOT NULL,               -- when it was written: pruned by age
    line TEXT NOT NULL              -- the ChatLine (JSON)
);
CREATE INDEX group_context_chat ON group_context (account, chat_id, thread_id, id);
CREATE INDEX group_context_at ON group_context (at);
"""

_USAGE_V7 = """
CREATE TABLE usage (
    day TEXT NOT NULL,              -- the UTC day, YYYY-MM-DD
    account TEXT NOT NULL,
    user_id INTEGER NOT NULL,       -- 0: no user (a key column cannot be NULL)
    chat_id INTEGER NOT NULL,
    backend TEXT NOT NULL,
    model TEXT NOT NULL,
    messages INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    cached_input_tokens INTEGER NOT NULL,
    reasoning_tokens INTEGER NOT NULL,
    cost REAL,                      -- in the config's currency, NULL: no price known
    PRIMARY KEY (day, account, user_id, chat_id, backend, model)
);
CREATE INDEX usage_user ON usage (account, user_id, day);
"""

#: The current schema, for a new file.
SCHEMA = (_OVERRIDE_V2 + _KV + _INBOX_V2 + _RATE_V3 + _HISTORY_V4 + _ACCOUNT_STATE_V5
          + _GROUP_CONTEXT_V6 + _USAGE_V7)

#: version -> the script taking the schema from version - 1 to it (run in one transaction).
MIGRATIONS = {
    2: ("ALTER TABLE chat_override RENAME TO chat_override_v1;\n"
        "ALTER TABLE inbox RENAME TO inbox_v1;\n"
        "DROP INDEX IF EXISTS inbox_pending;\n"
        + _OVERRIDE_V2 + _INBOX_V2 +
        "INSERT INTO chat_override (account, chat_id, backend, updated_at) "
        "SELECT 'main', chat_id, backend, updated_at FROM chat_override_v1;\n"
        "INSERT INTO inbox (account, chat_id, message_id, state, payload, received_at) "
        "SELECT 'main', chat_id, message_id, state, payload, received_at FROM inbox_v1 "
        "ORDER BY rowid;\n"
        "DROP TABLE chat_override_v1;\n"
        "DROP TABLE inbox_v1;\n"),
    3: _RATE_V3,
    4: _HISTORY_V4,
    5: _ACCOUNT_STATE_V5,
    6: _GROUP_CONTEXT_V6,
    7: _USAGE_V7,
}

#: Adds a UsageRow to its key's row: counts add up; a cost adds to a NULL one as to 0, a NULL
#: cost adds nothing.
_USAGE_UPSERT = (
    "INSERT INTO usage (day, account, user_id, chat_id, backend, model, messages, input_tokens, "
    "output_tokens, cached_input_tokens, reasoning_tokens, cost) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(day, account, user_id, chat_id, backend, model) DO UPDATE SET "
    "messages=messages + excluded.messages, "
    "input_tokens=input_tokens + excluded.input_tokens, "
    "output_tokens=output_tokens + excluded.output_tokens, "
    "cached_input_tokens=cached_input_tokens + excluded.cached_input_tokens, "
    "reasoning_tokens=reasoning_tokens + excluded.reasoning_tokens, "
    "cost=CASE WHEN excluded.cost IS NULL THEN cost ELSE coalesce(cost, 0) + excluded.cost END"
)
_USAGE_COLUMNS = ("day, account, user_id, chat_id, backend, model, messages, input_tokens, "
                  "output_tokens, cached_input_tokens, reasoning_tokens, cost")


#: Writes a position unless the kept one is as new (its order): (account, value, order).
_POSITION_UPSERT = (
    "INSERT INTO account_state (account, position, position_order) VALUES (?, ?, ?) "
    "ON CONFLICT(account) DO UPDATE SET position=excluded.position, "
    "position_order=excluded.position_order "
    "WHERE excluded.position_order > account_state.position_order OR "
    "account_state.position IS NULL"
)

#: The ids of the exchanges history_read returns: the newest, within both limits.
_HISTORY_KEPT = (
    "SELECT id FROM (SELECT id, row_number() OVER newest AS n, sum(chars) OVER newest AS total "
    "FROM history WHERE conversation=? WINDOW newest AS (ORDER BY id DESC)) "
    "WHERE n <= ? AND total <= ?"
)


#: ``INSERT ... RETURNING`` exists from SQLite 3.35 (older ones: one statement a message).
_RETURNING = sqlite3.sqlite_version_info >= (3, 35)
#: Rows one batched insert carries at most (5 values each; SQLite allows 32 766 values).
_ACCEPTS_PER_STATEMENT = 500


#: One accept waiting for its batch: the row, the position it carries, its answer.
_Accept = tuple[tuple[Any, ...], StreamPosition | None, "asyncio.Future[bool]"]


def _in_transaction(conn: sqlite3.Connection, work: Callable[[], T]) -> T:
    """In the database thread: ``work()`` in one transaction (joining one already open on the
    connection)."""
    own = not conn.in_transaction
    if own:
        conn.execute("BEGIN")
    try:
        result = work()
        if own:
            conn.execute("COMMIT")
    except BaseException:
        if own:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise
    return result


_CONTEXT_CHAT = "account=? AND chat_id=? AND thread_id=?"


def _context_add(conn: sqlite3.Connection, chat: tuple[str, int, int], at: float, line: str,
                 keep: int) -> None:
    def work() -> None:
        conn.execute("INSERT INTO group_context (account, chat_id, thread_id, at, line) "
                     "VALUES (?, ?, ?, ?, ?)", (*chat, at, line))
        conn.execute(f"DELETE FROM group_context WHERE {_CONTEXT_CHAT} AND id NOT IN "
                     f"(SELECT id FROM group_context WHERE {_CONTEXT_CHAT} ORDER BY id DESC "
                     "LIMIT ?)", (*chat, *chat, keep))

    _in_transaction(conn, work)


def _context_take(conn: sqlite3.Connection, chat: tuple[str, int, int]) -> list[str]:
    def work() -> list[str]:
        rows = conn.execute(f"SELECT line FROM group_context WHERE {_CONTEXT_CHAT} ORDER BY id",
                            chat).fetchall()
        if rows:
            conn.execute(f"DELETE FROM group_context WHERE {_CONTEXT_CHAT}", chat)
        return [line for (line,) in rows]

    return _in_transaction(conn, work)


def _accept_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
                 positions: list[tuple[str, str, int]]) -> set[tuple[str, int, int]]:
    """In the database thread: insert the inbox rows (those new are returned) and write the
    positions, in one transaction (joining one already open on the connection)."""
    def work() -> set[tuple[str, int, int]]:
        inserted: set[tuple[str, int, int]] = set()
        for start in range(0, len(rows), _ACCEPTS_PER_STATEMENT):
            chunk = rows[start:start + _ACCEPTS_PER_STATEMENT]
            found = conn.execute(
                "INSERT OR IGNORE INTO inbox (account, chat_id, message_id, state, payload, "
                "received_at) VALUES " + ", ".join(["(?, ?, ?, 'pending', ?, ?)"] * len(chunk))
                + " RETURNING account, chat_id, message_id",
                [value for row in chunk for value in row]).fetchall()
            inserted.update((a, c, m) for a, c, m in found)
        if positions:
            conn.executemany(_POSITION_UPSERT, positions)
        return inserted

    return _in_transaction(conn, work)


class SQLiteStore(Store):
    """``store: sqlite:///path/to/tgmux.db`` (WAL; one connection, its own thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None
        self._tx = asyncio.Lock()  # one explicit transaction at a time on the one connection
        #: writes with no answer, gathered while the loop runs and made in one trip to the
        #: database thread (statement -> rows); the future is the batch's
        self._batch: dict[str, list[tuple[Any, ...]]] = {}
        self._batch_written: asyncio.Future[None] | None = None
        self._accepts: list[_Accept] | None = None
        self._accepting: asyncio.Task[None] | None = None  # the last batch of accepts
        self._flusher: asyncio.Task[None] | None = None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        # Private: pending messages' texts and provider ids live here. SQLite gives its -wal and
        # -shm files the database file's mode.
        if not self.path.parent.exists():
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        else:
            _make_private(self.path)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            # Bounded: a file another process holds locked must fail in a second, not hang.
            async with asyncio.timeout(OPEN_TIMEOUT):
                await self._prepare(self._db)
        except BaseException as exc:
            # aiosqlite's thread is not a daemon: left open, it keeps the process alive.
            db, self._db = self._db, None
            with contextlib.suppress(Exception):
                await db.close()
            if isinstance(exc, TimeoutError):
                raise RuntimeError(f"{self.path}: still locked after {OPEN_TIMEOUT:.0f} s "
                                   "(another tgmux on this file?)") from exc
            raise

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        await db.execute(f"PRAGMA busy_timeout={int(OPEN_TIMEOUT * 1000) // 2}")
        while True:
            try:
                await db.execute("PRAGMA journal_mode=WAL")
                break
            except sqlite3.OperationalError as exc:
                # Switching to WAL while another process creates the file answers "locked" at
                # once, without the busy timeout: try again (open() bounds the whole of it).
                if "locked" not in str(exc):
                    raise
                await asyncio.sleep(0.02)
        await db.execute("PRAGMA synchronous=NORMAL")
        version = await self._version(db)
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this tgmux "
                f"({SCHEMA_VERSION}); upgrade tgmux"
            )
        if version < SCHEMA_VERSION:
            # BEGIN IMMEDIATE: a second process opening the file at the same time waits, then
            # sees the new version and does nothing.
            await db.execute("BEGIN IMMEDIATE")
            try:
                version = await self._version(db)
                start = version
                if version == 0:
                    await _script(db, SCHEMA)
                else:
                    for target in range(version + 1, SCHEMA_VERSION + 1):
                        await _script(db, MIGRATIONS[target])
                if start < SCHEMA_VERSION:
                    await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
                await db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await db.execute("ROLLBACK")
                raise
            if start < SCHEMA_VERSION:
                self.migrated = (start, SCHEMA_VERSION)
            if 0 < start < SCHEMA_VERSION:
                log.info("%s: schema migrated from version %d to %d", self.path, start,
                         SCHEMA_VERSION)
        self.schema_version = SCHEMA_VERSION
        await db.execute("PRAGMA busy_timeout=5000")

    @staticmethod
    async def _version(db: aiosqlite.Connection) -> int:
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        return row[0] if row else 0

    async def close(self) -> None:
        for task in (self._accepting, self._flusher):  # what was asked for is made first
            if task is not None:
                await asyncio.gather(asyncio.shield(task), return_exceptions=True)
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        async with self.db.execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def get_override(self, chat_id: int, *, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self._one("SELECT backend FROM chat_override WHERE account=? AND chat_id=?",
                               (account, chat_id))

    async def set_override(self, chat_id: int, backend: str | None, *,
                           account: str = DEFAULT_ACCOUNT) -> None:
        if backend is None:
            await self.db.execute("DELETE FROM chat_override WHERE account=? AND chat_id=?",
                                  (account, chat_id))
        else:
            await self.db.execute(
                "INSERT INTO chat_override (account, chat_id, backend, updated_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(account, chat_id) DO UPDATE SET "
                "backend=excluded.backend, updated_at=excluded.updated_at",
                (account, chat_id, backend, time.time()),
            )
        self._told(Change("override", account=account, chat_id=chat_id))

    async def kv_get(self, namespace: str, key: str) -> str | None:
        return await self._one("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key))

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value",
            (namespace, key, value),
        )
        self._kv_told(namespace, key)

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self.db.execute("DELETE FROM kv WHERE namespace=? AND key=?", (namespace, key))
        self._kv_told(namespace, key)

    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        # substr, not LIKE: LIKE ignores ASCII case, and % and _ would need escaping.
        async with self.db.execute(
            "SELECT key, value FROM kv WHERE namespace=? AND substr(key, 1, ?)=? ORDER BY key",
            (namespace, len(prefix), prefix),
        ) as cursor:
            return [(k, v) for k, v in await cursor.fetchall()]

    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any], *,
                           account: str = DEFAULT_ACCOUNT,
                           position: StreamPosition | None = None) -> bool:
        row = (account, chat_id, message_id, json.dumps(payload), time.time())
        if not _RETURNING:
            cursor = await self.db.execute(
                "INSERT OR IGNORE INTO inbox (account, chat_id, message_id, state, payload, "
                "received_at) VALUES (?, ?, ?, 'pending', ?, ?)", row)
            if position is not None:
                await self.position_write(position, account=account)
            return cursor.rowcount == 1
        # Accepts asked for in the same turn of the loop go in one statement: one trip to the
        # database thread and one commit for all of them (a commit per message was the
        # store's main cost per message); RETURNING says which rows are new. The positions
        # they carry are written in that same trip and transaction.
        db = self.db
        if self._accepts is None:
            self._accepts = []
            self._accepting = asyncio.get_running_loop().create_task(
                self._flush_accepts(db, self._accepts), name="tgmux-sqlite-accepts")
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._accepts.append((row, position, future))
        return await asyncio.shield(future)  # a cancelled caller leaves the batch alone

    async def _flush_accepts(self, db: aiosqlite.Connection, accepts: list[_Accept]) -> None:
        await asyncio.sleep(0)  # the rest of this turn joins the batch
        self._accepts = None
        positions: dict[str, StreamPosition] = {}
        for row, position, _ in accepts:
            kept = positions.get(row[0])
            if position is not None and (kept is None or kept.order < position.order):
                positions[row[0]] = position
        try:
            # one trip to the database thread (aiosqlite's own way of running a call there)
            inserted = await db._execute(_accept_rows, db._conn, [row for row, _, _ in accepts],
                                         [(a, p.value, p.order) for a, p in positions.items()])
        except BaseException as exc:
            for _, _, future in accepts:
                if not future.done():
                    future.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        seen: set[tuple[str, int, int]] = set()
        for row, _, future in accepts:
            key = (row[0], row[1], row[2])
            # the same message twice in one batch: the first is new, the second a duplicate
            future.set_result(key in inserted and key not in seen)
            seen.add(key)

    async def session_read(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self._one("SELECT session FROM account_state WHERE account=?", (account,))

    async def session_write(self, session: str | None, *, account: str = DEFAULT_ACCOUNT
                            ) -> None:
        await self.db.execute(
            "INSERT INTO account_state (account, session) VALUES (?, ?) "
            "ON CONFLICT(account) DO UPDATE SET session=excluded.session", (account, session))

    async def position_read(self, account: str = DEFAULT_ACCOUNT) -> StreamPosition | None:
        async with self.db.execute(
            "SELECT position_order, position FROM account_state WHERE account=?", (account,)
        ) as cursor:
            row = await cursor.fetchone()
        return None if row is None or row[1] is None else StreamPosition(row[0], row[1])

    async def position_write(self, position: StreamPosition | None, *,
                             account: str = DEFAULT_ACCOUNT) -> None:
        if position is None:
            await self.db.execute("UPDATE account_state SET position=NULL, position_order=0 "
                                  "WHERE account=?", (account,))
        else:
            await self.db.execute(_POSITION_UPSERT, (account, position.value, position.order))

    async def inbox_dispatched(self, chat_id: int, message_id: int, *,
                               account: str = DEFAULT_ACCOUNT) -> None:
        await self._write_batched(
            "UPDATE inbox SET state='dispatched' WHERE account=? AND chat_id=? AND message_id=? "
            "AND state='pending'",
            (account, chat_id, message_id),
        )

    async def inbox_done(self, chat_id: int, message_id: int, *,
                         account: str = DEFAULT_ACCOUNT) -> None:
        await self._write_batched(
            "UPDATE inbox SET state='done', payload=NULL WHERE account=? AND chat_id=? "
            "AND message_id=?",
            (account, chat_id, message_id),
        )

    async def _write_batched(self, sql: str, args: tuple[Any, ...]) -> None:
        """One write, made together with the others asked for in the same turn of the event
        loop (one ``executemany`` per statement, one trip to the database thread); returns
        once it is written. Only for writes of one row each whose order among themselves does
        not matter (each message's states follow one another, awaited)."""
        db = self.db
        written = self._batch_written
        if written is None:
            loop = asyncio.get_running_loop()
            written = self._batch_written = loop.create_future()
            self._flusher = loop.create_task(self._flush_batch(db, written, self._flusher),
                                             name="tgmux-sqlite-batch")
        self._batch.setdefault(sql, []).append(args)
        await asyncio.shield(written)  # a cancelled caller leaves the batch alone

    async def _flush_batch(self, db: aiosqlite.Connection, written: asyncio.Future[None],
                           previous: asyncio.Task[None] | None) -> None:
        await asyncio.sleep(0)  # the rest of this turn joins the batch
        if previous is not None:  # batches one after the other: close() waits for the last
            await asyncio.gather(previous, return_exceptions=True)
        batch, self._batch, self._batch_written = self._batch, {}, None
        try:
            for sql, rows in batch.items():
                await db.executemany(sql, rows)
        except BaseException as exc:
            written.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        else:
            written.set_result(None)

    async def inbox_unanswered(self, *, account: str = DEFAULT_ACCOUNT) -> list[Unanswered]:
        async with self.db.execute(
            "SELECT payload, state FROM inbox WHERE account=? AND state!='done' "
            "ORDER BY received_at, rowid", (account,)
        ) as cursor:
            return [Unanswered(json.loads(p), state == "dispatched")
                    for p, state in await cursor.fetchall() if p]

    async def inbox_backlog(self, *, account: str = DEFAULT_ACCOUNT) -> int:
        return await self._one("SELECT count(*) FROM inbox WHERE account=? AND state!='done'",
                               (account,))

    async def inbox_prune(self, older_than: float, *, account: str | None = None) -> int:
        cursor = await self.db.execute(
            "DELETE FROM inbox WHERE state='done' AND received_at < ? "
            "AND (? IS NULL OR account=?)", (older_than, account, account)
        )
        return cursor.rowcount

    async def rate_take(self, key: str, limit: int, window: float, *,
                        now: float | None = None) -> float:
        async with self._tx:
            # IMMEDIATE: the write lock first, so two processes never both count then insert.
            await self.db.execute("BEGIN IMMEDIATE")
            try:
                # the time once the lock is held: waiting for it must not count as elapsed
                wait = await self._rate_take(key, limit, window,
                                             time.time() if now is None else now)
                await self.db.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await self.db.execute("ROLLBACK")
                raise
        return wait

    async def _rate_take(self, key: str, limit: int, window: float, now: float) -> float:
        until = await self._one("SELECT blocked_until FROM rate_block WHERE key=?", (key,))
        if until is not None and until > now:
            return until - now
        await self.db.execute("DELETE FROM rate_block WHERE blocked_until <= ?", (now,))
        await self.db.execute("DELETE FROM rate_event WHERE expires <= ? OR (key=? AND at <= ?)",
                              (now, key, now - window))
        count = await self._one("SELECT count(*) FROM rate_event WHERE key=?", (key,))
        if count < limit:
            await self.db.execute("INSERT INTO rate_event (key, at, expires) VALUES (?, ?, ?)",
                                  (key, now, now + window))
            return 0.0
        oldest = await self._one("SELECT at FROM rate_event WHERE key=? ORDER BY at "
                                 "LIMIT 1 OFFSET ?", (key, count - limit))
        return max(0.0, oldest + window - now)

    async def rate_count(self, key: str, window: float, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return await self._one("SELECT count(*) FROM rate_event WHERE key=? AND at > ?",
                               (key, now - window))

    async def rate_block(self, key: str, until: float) -> None:
        await self.db.execute(
            "INSERT INTO rate_block (key, blocked_until) VALUES (?, ?) ON CONFLICT(key) DO UPDATE "
            "SET blocked_until=max(blocked_until, excluded.blocked_until)", (key, until))

    async def rate_restamp(self, key: str, since: float, at: float) -> None:
        # One statement (atomic against a taker in another process), outside any open
        # transaction of this connection.
        async with self._tx:
            await self.db.execute(
                "UPDATE rate_event SET expires = expires + (? - at), at = ? WHERE rowid = ("
                "SELECT rowid FROM rate_event WHERE key=? AND at >= ? ORDER BY at LIMIT 1) "
                "AND at < ?", (at, at, key, since, at))

    async def history_append(self, conversation: str, exchange: Exchange, *, max_turns: int,
                             max_chars: int) -> None:
        # Two statements, no transaction: a crash between them leaves one exchange too many,
        # forgotten by the next append (and never read beyond the limits meanwhile).
        await self.db.execute(
            "INSERT INTO history (conversation, user_text, reply_text, chars, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            (conversation, exchange.user, exchange.reply, exchange.chars, time.time()))
        await self.history_trim(conversation, max_turns=max_turns, max_chars=max_chars)

    async def history_read(self, conversation: str, *, max_turns: int,
                           max_chars: int) -> list[Exchange]:
        async with self.db.execute(
            f"SELECT user_text, reply_text FROM history WHERE id IN ({_HISTORY_KEPT}) "
            "ORDER BY id", (conversation, max_turns, max_chars),
        ) as cursor:
            return [Exchange(u, r) for u, r in await cursor.fetchall()]

    async def history_trim(self, conversation: str, *, max_turns: int, max_chars: int) -> int:
        cursor = await self.db.execute(
            f"DELETE FROM history WHERE conversation=? AND id NOT IN ({_HISTORY_KEPT})",
            (conversation, conversation, max_turns, max_chars))
        return cursor.rowcount

    async def history_clear(self, conversation: str) -> int:
        cursor = await self.db.execute("DELETE FROM history WHERE conversation=?",
                                       (conversation,))
        return cursor.rowcount

    async def context_add(self, account: str, chat_id: int, thread_id: int | None,
                          line: ChatLine, *, keep: int) -> None:
        # one trip to the database thread (aiosqlite's own way of running a call there)
        db = self.db
        await db._execute(_context_add, db._conn, (account, chat_id, thread_id or 0), line.at,
                          json.dumps(line.to_json()), max(1, keep))

    async def context_take(self, account: str, chat_id: int,
                           thread_id: int | None) -> list[ChatLine]:
        db = self.db
        lines = await db._execute(_context_take, db._conn, (account, chat_id, thread_id or 0))
        return [ChatLine.from_json(json.loads(line)) for line in lines]

    # -- usage -------------------------------------------------------------------------------

    async def usage_add(self, row: UsageRow) -> None:
        await self.db.execute(_USAGE_UPSERT, usage_values(row))

    async def usage_rows(self, *, since: str, until: str | None = None,
                         account: str | None = None,
                         user_id: int | None = None) -> list[UsageRow]:
        where, args = ["day >= ?"], [since]
        for column, value in (("day <=", until), ("account =", account),
                              ("user_id =", user_id)):
            if value is not None:
                where.append(f"{column} ?")
                args.append(value)
        # execute_fetchall: one trip to the database thread
        rows = await self.db.execute_fetchall(
            f"SELECT {_USAGE_COLUMNS} FROM usage WHERE {' AND '.join(where)} "
            "ORDER BY day, account, chat_id, backend, model, user_id", args)
        return [usage_row(row) for row in rows]

    async def usage_prune(self, before: str) -> int:
        cursor = await self.db.execute("DELETE FROM usage WHERE day < ?", (before,))
        return cursor.rowcount

    async def context_prune(self, older_than: float) -> int:
        cursor = await self.db.execute("DELETE FROM group_context WHERE at < ?", (older_than,))
        return cursor.rowcount

    async def hold_account(self, account: str) -> FileLease:
        return FileLease(self.path.with_name(
            f"{self.path.name}.account-{quote(account, safe='')}.lock"), account)

    async def known_accounts(self) -> set[str]:
        """The accounts with a session or position here, or a lock file next to the file."""
        async with self.db.execute("SELECT account FROM account_state") as cursor:
            known = {row[0] for row in await cursor.fetchall()}
        prefix = f"{self.path.name}.account-"
        locks = await asyncio.to_thread(lambda: [p.name for p in itertools.islice(
            self.path.parent.glob(f"{glob.escape(prefix)}*.lock"), MAX_ACCOUNTS)])
        return known | {unquote(name[len(prefix):-len(".lock")]) for name in locks}


async def _script(db: aiosqlite.Connection, script: str) -> None:
    """Each statement of ``script`` inside the open transaction (``executescript`` would
    commit it first)."""
    for statement in script.split(";"):
        if statement.strip():
            await db.execute(statement)


class FileLease(AccountLease):
    """An exclusive ``flock`` on a lock file, which says who holds it (JSON)."""

    def __init__(self, path: Path, account: str) -> None:
        super().__init__(account)
        self.path = path
        self._fd: int | None = None

    async def _try_acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    async def _record(self, holder: AccountHolder) -> None:
        assert self._fd is not None
        data = json.dumps({"hostname": holder.hostname, "pid": holder.pid,
                           "since": holder.since}).encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    async def _release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # drops the lock

    async def holder(self) -> AccountHolder | None:
        if self._holder is not None:
            return self._holder
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                pass  # held: read who holds it
            else:
                return None
            raw = os.pread(fd, 4096, 0)
        finally:
            os.close(fd)
        try:
            info = json.loads(raw)
            return AccountHolder(self.account, str(info["hostname"]), int(info["pid"]),
                                 float(info["since"]))
        except (ValueError, KeyError, TypeError):  # being written
            return AccountHolder(self.account, "?", 0, 0.0)


def _make_private(path: Path) -> None:
    """An existing store file readable by others is made 0600 (it holds users' messages)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
    except OSError as exc:
        log.warning("%s: cannot make it private: %s", path, exc.strerror)
