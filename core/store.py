"""Persistent state behind a narrow async interface: per-chat backend overrides, each backend's
key-value namespace, and the inbox (dedup of processed messages, and messages accepted but not
yet answered, which are answered after a restart).

SQLite through aiosqlite is the default (WAL, versioned schema). The interface is small on
purpose so that PostgreSQL can implement it later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import stat
import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

from tgmux.redact import redact_urls

log = logging.getLogger("tgmux.store")

SCHEMA_VERSION = 1

#: Seconds opening a store may take (a locked or unreachable store is an error, not a hang).
OPEN_TIMEOUT = 2.0

SCHEMA = """
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


@dataclass(frozen=True)
class Unanswered:
    """A message accepted but never marked done: ``dispatched`` when a backend had already
    been asked (replaying it could duplicate a chat turn at the provider)."""

    payload: dict[str, Any]
    dispatched: bool


class Store(ABC):
    """What tgmux keeps between runs."""

    @abstractmethod
    async def open(self) -> None: ...

    @abstractmethod
    async def close(self) -> None: ...

    # per-chat backend overrides (/backend NAME)
    @abstractmethod
    async def get_override(self, chat_id: int) -> str | None: ...

    @abstractmethod
    async def set_override(self, chat_id: int, backend: str | None) -> None: ...

    # backend key-value namespaces
    @abstractmethod
    async def kv_get(self, namespace: str, key: str) -> str | None: ...

    @abstractmethod
    async def kv_set(self, namespace: str, key: str, value: str) -> None: ...

    @abstractmethod
    async def kv_delete(self, namespace: str, key: str) -> None: ...

    @abstractmethod
    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]: ...

    # inbox: dedup and restart safety
    @abstractmethod
    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any]) -> bool:
        """Record a message as pending; False when this (chat, message) was seen before."""

    @abstractmethod
    async def inbox_dispatched(self, chat_id: int, message_id: int) -> None:
        """The message was handed to a backend (a provider may have received it)."""

    @abstractmethod
    async def inbox_done(self, chat_id: int, message_id: int) -> None: ...

    @abstractmethod
    async def inbox_unanswered(self) -> list[Unanswered]:
        """Messages accepted but never marked done, oldest first."""

    @abstractmethod
    async def inbox_prune(self, older_than: float) -> int:
        """Forget answered messages received before ``older_than`` (a timestamp)."""

    def namespace(self, name: str) -> Namespace:
        return Namespace(self, name)


class Namespace:
    """A backend's view of the key-value table (``tgmux.backend.KeyValue``)."""

    def __init__(self, store: Store, name: str) -> None:
        self.store = store
        self.name = name

    async def get(self, key: str) -> str | None:
        return await self.store.kv_get(self.name, key)

    async def set(self, key: str, value: str) -> None:
        await self.store.kv_set(self.name, key, value)

    async def delete(self, key: str) -> None:
        await self.store.kv_delete(self.name, key)

    async def items(self, prefix: str = "") -> list[tuple[str, str]]:
        return await self.store.kv_items(self.name, prefix)


class MemoryStore(Store):
    """Everything in memory (``store: memory://``): for tests and throwaway runs."""

    #: Answered messages remembered for dedup, at most (oldest forgotten first): memory is
    #: not a place to keep a week of a busy bot's messages.
    MAX_DONE = 100_000

    def __init__(self) -> None:
        self.overrides: dict[int, str] = {}
        self.kv: dict[tuple[str, str], str] = {}
        self.inbox: dict[tuple[int, int], tuple[str, dict[str, Any] | None, float]] = {}
        self._done: deque[tuple[int, int]] = deque()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get_override(self, chat_id: int) -> str | None:
        return self.overrides.get(chat_id)

    async def set_override(self, chat_id: int, backend: str | None) -> None:
        if backend is None:
            self.overrides.pop(chat_id, None)
        else:
            self.overrides[chat_id] = backend

    async def kv_get(self, namespace: str, key: str) -> str | None:
        return self.kv.get((namespace, key))

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        self.kv[(namespace, key)] = value

    async def kv_delete(self, namespace: str, key: str) -> None:
        self.kv.pop((namespace, key), None)

    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        return sorted(
            (k, v) for (ns, k), v in self.kv.items() if ns == namespace and k.startswith(prefix)
        )

    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any]) -> bool:
        if (chat_id, message_id) in self.inbox:
            return False
        self.inbox[(chat_id, message_id)] = ("pending", payload, time.time())
        return True

    async def inbox_dispatched(self, chat_id: int, message_id: int) -> None:
        entry = self.inbox.get((chat_id, message_id))
        if entry is not None and entry[0] == "pending":
            self.inbox[(chat_id, message_id)] = ("dispatched", entry[1], entry[2])

    async def inbox_done(self, chat_id: int, message_id: int) -> None:
        key = (chat_id, message_id)
        entry = self.inbox.get(key)
        if entry is None or entry[0] != "done":
            self._done.append(key)
        self.inbox[key] = ("done", None, entry[2] if entry else time.time())
        while len(self._done) > self.MAX_DONE:
            old = self._done.popleft()
            if (found := self.inbox.get(old)) is not None and found[0] == "done":
                del self.inbox[old]

    async def inbox_unanswered(self) -> list[Unanswered]:
        found = [(t, Unanswered(p, s == "dispatched")) for s, p, t in self.inbox.values()
                 if s != "done" and p is not None]
        return [u for _, u in sorted(found, key=lambda x: x[0])]

    async def inbox_prune(self, older_than: float) -> int:
        old = [k for k, (s, _, t) in self.inbox.items() if s == "done" and t < older_than]
        for key in old:
            del self.inbox[key]
        if old:
            self._done = deque(k for k in self._done if k in self.inbox)
        return len(old)


class SQLiteStore(Store):
    """``store: sqlite:///path/to/tgmux.db`` (WAL; one connection, its own thread)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._db: aiosqlite.Connection | None = None

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
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=NORMAL")
        async with db.execute("PRAGMA user_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(
                f"{self.path}: schema version {version} is newer than this tgmux "
                f"({SCHEMA_VERSION}); upgrade tgmux"
            )
        if version < SCHEMA_VERSION:
            await db.executescript(SCHEMA)
            await db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await db.execute("PRAGMA busy_timeout=5000")

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def _one(self, sql: str, args: tuple[Any, ...]) -> Any:
        async with self.db.execute(sql, args) as cursor:
            row = await cursor.fetchone()
        return row[0] if row else None

    async def get_override(self, chat_id: int) -> str | None:
        return await self._one("SELECT backend FROM chat_override WHERE chat_id=?", (chat_id,))

    async def set_override(self, chat_id: int, backend: str | None) -> None:
        if backend is None:
            await self.db.execute("DELETE FROM chat_override WHERE chat_id=?", (chat_id,))
        else:
            await self.db.execute(
                "INSERT INTO chat_override (chat_id, backend, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT(chat_id) DO UPDATE SET backend=excluded.backend, "
                "updated_at=excluded.updated_at",
                (chat_id, backend, time.time()),
            )

    async def kv_get(self, namespace: str, key: str) -> str | None:
        return await self._one("SELECT value FROM kv WHERE namespace=? AND key=?", (namespace, key))

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        await self.db.execute(
            "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT(namespace, key) DO UPDATE SET value=excluded.value",
            (namespace, key, value),
        )

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self.db.execute("DELETE FROM kv WHERE namespace=? AND key=?", (namespace, key))

    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        async with self.db.execute(
            "SELECT key, value FROM kv WHERE namespace=? AND key LIKE ? ESCAPE '\\' ORDER BY key",
            (namespace, escaped + "%"),
        ) as cursor:
            return [(k, v) for k, v in await cursor.fetchall()]

    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any]) -> bool:
        cursor = await self.db.execute(
            "INSERT OR IGNORE INTO inbox (chat_id, message_id, state, payload, received_at) "
            "VALUES (?, ?, 'pending', ?, ?)",
            (chat_id, message_id, json.dumps(payload), time.time()),
        )
        return cursor.rowcount == 1

    async def inbox_dispatched(self, chat_id: int, message_id: int) -> None:
        await self.db.execute(
            "UPDATE inbox SET state='dispatched' WHERE chat_id=? AND message_id=? "
            "AND state='pending'",
            (chat_id, message_id),
        )

    async def inbox_done(self, chat_id: int, message_id: int) -> None:
        await self.db.execute(
            "UPDATE inbox SET state='done', payload=NULL WHERE chat_id=? AND message_id=?",
            (chat_id, message_id),
        )

    async def inbox_unanswered(self) -> list[Unanswered]:
        async with self.db.execute(
            "SELECT payload, state FROM inbox WHERE state!='done' ORDER BY received_at, rowid"
        ) as cursor:
            return [Unanswered(json.loads(p), state == "dispatched")
                    for p, state in await cursor.fetchall() if p]

    async def inbox_prune(self, older_than: float) -> int:
        cursor = await self.db.execute(
            "DELETE FROM inbox WHERE state='done' AND received_at < ?", (older_than,)
        )
        return cursor.rowcount


def _make_private(path: Path) -> None:
    """An existing store file readable by others is made 0600 (it holds users' messages)."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            path.chmod(0o600)
            log.warning("%s was readable by others (mode %o); made it 0600", path, mode)
    except OSError as exc:
        log.warning("%s: cannot make it private: %s", path, exc.strerror)


def open_store(url: str) -> Store:
    """A store for a config's ``store:`` URL (not opened yet)."""
    if url == "memory://":
        return MemoryStore()
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    raise ValueError(f"unsupported store URL {url!r} (expected sqlite:///PATH or memory://)")


async def check_store(url: str) -> str | None:
    """What is wrong with the store at ``url`` (None: it opens). Creates nothing: a SQLite
    file that does not exist yet is only checked for a usable folder."""
    if url.startswith("sqlite:///") and (missing := _not_created(url)) is not None:
        return missing or None
    store = open_store(url)
    try:
        await store.open()
    except Exception as exc:
        return f"cannot open {redact_urls(url)}: {exc}"
    await store.close()
    return None


def _not_created(url: str) -> str | None:
    """None when the SQLite file exists; else "" when it can be created, or why not."""
    path = Path(url.removeprefix("sqlite:///"))
    if path.exists():
        return None
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if parent is None or not parent.is_dir() or not os.access(parent, os.W_OK):
        return f"cannot create {path}: {parent} is not a writable folder"
    return ""
