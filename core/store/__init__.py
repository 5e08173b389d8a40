"""Persistent state behind a narrow async interface (:mod:`tgmux.store.base`): per-chat backend
overrides, each backend's key-value namespace, the inbox (dedup of processed messages, and
messages accepted but not yet answered, which are answered after a restart) and account leases.

What a process keeps in memory of the store hears of changes made elsewhere through
:meth:`Store.changes` (:mod:`~tgmux.store.changes`).

One module per implementation: :mod:`~tgmux.store.memory` (``memory://``),
:mod:`~tgmux.store.sqlite` (``sqlite:///PATH``, the default) and :mod:`~tgmux.store.postgres`
(``postgresql://…``, imported only when used: asyncpg is not loaded for the others).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tgmux.redact import redact_urls
from tgmux.store.base import (
    DEFAULT_ACCOUNT,
    OPEN_TIMEOUT,
    AccountHolder,
    AccountLease,
    Namespace,
    Store,
    StreamPosition,
    Unanswered,
)
from tgmux.store.changes import Change, ChangeFeed, FollowedCache
from tgmux.store.guard import GuardedStore, StoreUnavailable
from tgmux.store.memory import MemoryLease, MemoryStore
from tgmux.store.sqlite import SCHEMA, SCHEMA_V1, SCHEMA_VERSION, FileLease, SQLiteStore

if TYPE_CHECKING:
    from tgmux.store.postgres import PostgresStore

__all__ = [
    "DEFAULT_ACCOUNT",
    "OPEN_TIMEOUT",
    "SCHEMA",
    "SCHEMA_V1",
    "SCHEMA_VERSION",
    "AccountHolder",
    "AccountLease",
    "Change",
    "ChangeFeed",
    "FileLease",
    "FollowedCache",
    "GuardedStore",
    "MemoryLease",
    "MemoryStore",
    "Namespace",
    "PostgresStore",
    "SQLiteStore",
    "Store",
    "StoreUnavailable",
    "StreamPosition",
    "Unanswered",
    "check_store",
    "is_postgres_url",
    "open_store",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresStore":
        from tgmux.store.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def is_postgres_url(url: str) -> bool:
    return url.startswith(("postgresql://", "postgres://"))


def open_store(url: str) -> Store:
    """A store for a config's ``store:`` URL (not opened yet)."""
    if url == "memory://":
        return MemoryStore()
    if url.startswith("sqlite:///"):
        return SQLiteStore(url.removeprefix("sqlite:///"))
    if is_postgres_url(url):
        from tgmux.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(f"unsupported store URL {redact_urls(url)!r} (expected sqlite:///PATH, "
                     "postgresql://USER:PASSWORD@HOST:PORT/DATABASE or memory://)")


async def check_store(url: str) -> str | None:
    """What is wrong with the store at ``url`` (None: it opens). Creates nothing: a SQLite
    file that does not exist yet is only checked for a usable folder, a PostgreSQL database is
    connected to and its schema version read, not migrated."""
    if url.startswith("sqlite:///") and (missing := _not_created(url)) is not None:
        return missing or None
    try:
        store = open_store(url)
        if is_postgres_url(url):
            from tgmux.store.postgres import PostgresStore

            assert isinstance(store, PostgresStore)
            await store.check()
            return None
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
