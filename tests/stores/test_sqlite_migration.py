"""SQLite schema v1 (before accounts) is migrated to the current one at open: the rows are kept,
as account "main"; v2 gains the rate-limit tables (v3), v3 the conversation memory (v4), ...,
v6 the usage table (v7)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tgmux.store import (
    SCHEMA,
    SCHEMA_V1,
    SCHEMA_VERSION,
    SQLiteStore,
    StreamPosition,
    Unanswered,
)
from tgmux.store.sqlite import (
    _ACCOUNT_STATE_V5,
    _GROUP_CONTEXT_V6,
    _HISTORY_V4,
    _RATE_V3,
    _USAGE_V7,
)
from tgmux.types import ChatLine, Exchange, UsageRow


def make_v1(path: Path) -> None:
    db = sqlite3.connect(path)
    db.executescript(SCHEMA_V1)
    db.executemany("INSERT INTO chat_override VALUES (?, ?, ?)", [(5, "lucy", 1.0),
                                                                 (6, "sensay", 2.0)])
    db.executemany("INSERT INTO kv VALUES (?, ?, ?)", [("backend:a", "k", "v")])
    rows = [(1, 1, "done", None, 100.0), (1, 3, "pending", json.dumps({"n": 3}), 300.0),
            (1, 2, "dispatched", json.dumps({"n": 2}), 200.0),
            (2, 1, "pending", json.dumps({"n": 4}), 300.0)]
    db.executemany("INSERT INTO inbox VALUES (?, ?, ?, ?, ?)", rows)
    db.execute("PRAGMA user_version=1")
    db.commit()
    db.close()


async def test_a_v1_file_is_migrated_keeping_everything_as_account_main(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_v1(path)
    store = SQLiteStore(path)
    await store.open()
    try:
        assert (store.schema_version, store.migrated) == (SCHEMA_VERSION, (1, 7))
        assert await store.get_override(5) == "lucy"
        assert await store.get_override(6) == "sensay"
        assert await store.get_override(5, account="other") is None
        assert await store.kv_get("backend:a", "k") == "v"
        assert await store.inbox_unanswered() == [
            Unanswered({"n": 2}, True), Unanswered({"n": 3}, False), Unanswered({"n": 4}, False)]
        assert await store.inbox_unanswered(account="other") == []
        assert await store.inbox_accept(1, 1, {}) is False  # answered before: still known
        assert await store.inbox_accept(1, 1, {}, account="other") is True
        assert await store.inbox_backlog() == 3
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,) == (7,)
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"chat_override", "kv", "inbox", "rate_event", "rate_block", "history",
                      "account_state", "group_context", "usage"}
    assert db.execute("PRAGMA index_list(inbox)").fetchall()  # the index is back
    db.close()
    again = SQLiteStore(path)
    await again.open()
    assert again.migrated is None  # up to date now
    await again.close()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RuntimeError, match="newer than this tgmux"):
        await SQLiteStore(path).open()


def test_store_migrate_migrates_a_v1_file_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    make_v1(path)
    config = tmp_path / "config.yaml"
    config.write_text(f'store: "sqlite:///{path}"\nbackends:\n  e: {{type: echo}}\ndefault: e\n')
    run = [sys.executable, "-m", "tgmux", "store", "migrate", "-c", str(config)]
    first = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert first.stdout == f"store: sqlite:///{path}: schema version 7 (migrated from 1)\n"
    second = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert second.stdout == f"store: sqlite:///{path}: schema version 7\n"


async def test_a_v2_file_gains_the_rate_tables(tmp_path: Path) -> None:
    path = tmp_path / "v2.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(_RATE_V3, "").replace(_HISTORY_V4, "")
                     .replace(_ACCOUNT_STATE_V5, "").replace(_GROUP_CONTEXT_V6, "")
                     .replace(_USAGE_V7, ""))
    db.execute("INSERT INTO kv VALUES ('backend:a', 'k', 'v')")
    db.execute("PRAGMA user_version=2")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.migrated == (2, 7)
        assert await store.kv_get("backend:a", "k") == "v"
        now = time.time()  # one instant: a second between the two takes would empty the window
        assert await store.rate_take("k", 1, 1.0, now=now) == 0.0
        assert await store.rate_take("k", 1, 1.0, now=now) > 0
    finally:
        await store.close()


async def test_a_v3_file_gains_the_conversation_memory(tmp_path: Path) -> None:
    path = tmp_path / "v3.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(_HISTORY_V4, "").replace(_ACCOUNT_STATE_V5, "")
                     .replace(_GROUP_CONTEXT_V6, "").replace(_USAGE_V7, ""))
    db.execute("INSERT INTO rate_block VALUES ('k', 1.0)")
    db.execute("PRAGMA user_version=3")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.migrated == (3, 7)
        await store.history_append("gpt/main/1", Exchange("q", "a"), max_turns=2, max_chars=99)
        assert await store.history_read("gpt/main/1", max_turns=2, max_chars=99) == \
            [Exchange("q", "a")]
    finally:
        await store.close()


async def test_a_v4_file_gains_the_account_state(tmp_path: Path) -> None:
    path = tmp_path / "v4.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(_ACCOUNT_STATE_V5, "").replace(_GROUP_CONTEXT_V6, "")
                     .replace(_USAGE_V7, ""))
    db.execute("INSERT INTO kv VALUES ('backend:a', 'k', 'v')")
    db.execute("PRAGMA user_version=4")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.migrated == (4, 7)
        assert await store.kv_get("backend:a", "k") == "v"
        assert await store.session_read("main") is None
        await store.position_write(StreamPosition(1, "{}"), account="main")
        assert await store.position_read("main") == StreamPosition(1, "{}")
    finally:
        await store.close()


async def test_a_v5_file_gains_the_group_context(tmp_path: Path) -> None:
    path = tmp_path / "v5.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(_GROUP_CONTEXT_V6, "").replace(_USAGE_V7, ""))
    db.execute("INSERT INTO kv VALUES ('backend:a', 'k', 'v')")
    db.execute("PRAGMA user_version=5")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.migrated == (5, 7)
        assert await store.kv_get("backend:a", "k") == "v"
        await store.context_add("main", -5, None, ChatLine("Anna", "hi", 1.0), keep=3)
        assert await store.context_take("main", -5, None) == [ChatLine("Anna", "hi", 1.0)]
    finally:
        await store.close()


async def test_a_v6_file_gains_the_usage_table(tmp_path: Path) -> None:
    path = tmp_path / "v6.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA.replace(_USAGE_V7, ""))
    db.execute("INSERT INTO kv VALUES ('backend:a', 'k', 'v')")
    db.execute("PRAGMA user_version=6")
    db.commit()
    db.close()
    store = SQLiteStore(path)
    await store.open()
    try:
        assert store.migrated == (6, 7)
        assert await store.kv_get("backend:a", "k") == "v"
        row = UsageRow("2026-01-02", "main", 5, 5, "gpt", "gpt-4o", 1, 10, 20, cost=0.5)
        await store.usage_add(row)
        assert await store.usage_rows(since="2026-01-01") == [row]
    finally:
        await store.close()
    db = sqlite3.connect(path)
    assert ("usage_user",) in {(r[1],) for r in db.execute("PRAGMA index_list(usage)")}
    db.close()
