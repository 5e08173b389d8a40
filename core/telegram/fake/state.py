"""The fake Telegram's server side in a file (``tgmux simulate --telegram-state FILE``), so
that it outlives a process as Telegram's servers do: users, chats, messages, the update log
with its pts, files, and whether the session was revoked or the account banned.

The file is SQLite (a maintained store made for this: each change is one transaction, so a
process killed at any moment leaves the last complete state, and a write costs what changed,
not the whole file). Only what changed since the last write is written
(:attr:`World.dirty`, and log entries past the pts last written). It is bounded: the update
log keeps what :class:`~tgmux.telegram.fake.log.Box` keeps (older updates are gone, as on
Telegram: a difference from before them is too long), at most :data:`MESSAGES_PER_CHAT`
messages per chat and :data:`FILE_BYTES` bytes of files (the oldest go first).
"""

from __future__ import annotations

import json
import sqlite3
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyrogram.raw.core import TLObject

from tgmux.telegram.fake.log import Box, Entry

if TYPE_CHECKING:
    from tgmux.telegram.fake.updates import ChatState, World

__all__ = ["FILE_BYTES", "MESSAGES_PER_CHAT", "StateFile"]

MESSAGES_PER_CHAT = 1000
FILE_BYTES = 64 * 1024 * 1024
_BOT_MESSAGES = 100  # a chat's latest bot messages remembered (reply_to_bot)
_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, tl BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS chats (chat_id INTEGER PRIMARY KEY, data TEXT NOT NULL,
                                  tl BLOB);
CREATE TABLE IF NOT EXISTS messages (chat_id INTEGER NOT NULL, id INTEGER NOT NULL,
                                     tl BLOB NOT NULL, thread INTEGER,
                                     PRIMARY KEY (chat_id, id));
CREATE TABLE IF NOT EXISTS boxes (box INTEGER PRIMARY KEY, pts INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS log (box INTEGER NOT NULL, pts INTEGER NOT NULL,
                                pts_count INTEGER NOT NULL, date INTEGER NOT NULL,
                                tl BLOB NOT NULL, PRIMARY KEY (box, pts));
CREATE TABLE IF NOT EXISTS files (id INTEGER PRIMARY KEY, data BLOB NOT NULL);
"""


def _read(blob: bytes) -> TLObject:
    return TLObject.read(BytesIO(blob))


class StateFile:
    """One state file, read into a fake Telegram (:meth:`load`) and kept up to date with it
    (:meth:`save`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.executescript(_SCHEMA)
            version = self._meta("version")
        except sqlite3.DatabaseError as exc:
            raise ValueError(f"{self.path}: not a telegram state file ({exc})") from None
        if version is not None and version != _VERSION:
            raise ValueError(f"{self.path}: a telegram state file of version {version}; "
                             f"this tgmux reads version {_VERSION}")
        self._saved_pts: dict[int, int] = {}  # box (0: common) → last pts written
        self._written: dict[str, str] = {}  # meta as last written
        self._writes = 0

    def close(self) -> None:
        self.db.close()

    def _meta(self, key: str) -> Any:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    # -- reading ---------------------------------------------------------------------------------

    def load(self, world: World) -> bool:
        """Fill ``world`` from the file; False when the file is new (nothing to read)."""
        from tgmux.telegram.fake.updates import ChatState

        if self._meta("version") is None:
            return False
        me_id = self._meta("me")
        if me_id is not None and me_id != world.me.id:
            raise ValueError(f"{self.path}: the state of another account (user id {me_id}, "
                             f"not {world.me.id})")
        log = world.log
        log.qts, log.seq, log.date = (self._meta("qts") or 0, self._meta("seq") or 0,
                                      self._meta("date") or 0)
        world.account_error = self._meta("account_error")
        world.undelivered = {(c, m): None for c, m in self._meta("undelivered") or []}
        for user_id, blob in self.db.execute("SELECT id, tl FROM users"):
            if user_id != world.me.id:
                world._users[user_id] = _read(blob)
        for chat_id, data, blob in self.db.execute("SELECT chat_id, data, tl FROM chats"):
            fields = json.loads(data)
            fields["topics"] = set(fields.get("topics", []))
            state = ChatState(chat_id=chat_id, raw_chat=_read(blob) if blob else None,
                              **fields)
            world._chats[chat_id] = state
        for chat_id, message_id, blob, thread in self.db.execute(
                "SELECT chat_id, id, tl, thread FROM messages"):
            world._messages[(chat_id, message_id)] = _read(blob)
            if thread is not None:
                world._thread_of[(chat_id, message_id)] = thread
        for box_id, pts in self.db.execute("SELECT box, pts FROM boxes"):
            box = log.common if box_id == 0 else log.channel(box_id)
            box.pts = pts
            self._saved_pts[box_id] = pts
        for box_id, pts, count, date, blob in self.db.execute(
                "SELECT box, pts, pts_count, date, tl FROM log ORDER BY box, pts"):
            box = log.common if box_id == 0 else log.channel(box_id)
            box.entries.append(Entry(pts, count, date, _read(blob)))
        for file_id, data in self.db.execute("SELECT id, data FROM files"):
            world._files[file_id] = data
        world.next_media_id = max(world.next_media_id, self._meta("next_media_id") or 0)
        world.dirty.clear()
        return True

    # -- writing ---------------------------------------------------------------------------------

    def save(self, world: World) -> None:
        """Write what changed since the last save, in one transaction."""
        boxes: list[tuple[int, Box]] = [(0, world.log.common), *world.log.channels.items()]
        meta = {"version": _VERSION, "me": world.me.id, "qts": world.log.qts,
                "seq": world.log.seq, "date": world.log.date,
                "account_error": world.account_error, "next_media_id": world.next_media_id,
                "undelivered": [list(k) for k in world.undelivered]}
        changed_meta = {k: json.dumps(v) for k, v in meta.items()
                        if self._written.get(k) != json.dumps(v)}
        if not world.dirty and not changed_meta and all(
                box.pts == self._saved_pts.get(box_id, 0) for box_id, box in boxes):
            return  # nothing changed (a chat action, a draft)
        dirty = list(world.dirty)
        world.dirty.clear()
        saved_pts: dict[int, int] = {}
        db = self.db
        db.execute("BEGIN")
        try:
            db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                           list(changed_meta.items()))
            for kind, key in dirty:
                self._save_one(world, kind, key)
            for box_id, box in boxes:
                saved = self._saved_pts.get(box_id, 0)
                if box.pts == saved:
                    continue
                db.executemany("INSERT OR REPLACE INTO log VALUES (?, ?, ?, ?, ?)",
                               [(box_id, e.pts, e.pts_count, e.date, e.update.write())
                                for e in box.entries if e.pts > saved])
                db.execute("DELETE FROM log WHERE box = ? AND pts <= ?",
                           (box_id, box.floor))
                db.execute("INSERT OR REPLACE INTO boxes VALUES (?, ?)", (box_id, box.pts))
                saved_pts[box_id] = box.pts
            self._writes += 1
            if self._writes % 200 == 1:
                self._trim()
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            world.dirty.update(dirty)
            raise
        self._written.update(changed_meta)
        self._saved_pts.update(saved_pts)

    def _save_one(self, world: World, kind: str, key: Any) -> None:
        db = self.db
        if kind == "user":
            user = world._users.get(key)
            if user is not None:
                db.execute("INSERT OR REPLACE INTO users VALUES (?, ?)", (key, user.write()))
        elif kind == "chat":
            state = world._chats.get(key)
            if state is not None:
                db.execute("INSERT OR REPLACE INTO chats VALUES (?, ?, ?)",
                           (key, json.dumps(_chat_fields(state)),
                            state.raw_chat.write() if state.raw_chat is not None else None))
        elif kind == "message":
            message = world._messages.get(key)
            if message is None:
                db.execute("DELETE FROM messages WHERE chat_id = ? AND id = ?", key)
            else:
                db.execute("INSERT OR REPLACE INTO messages VALUES (?, ?, ?, ?)",
                           (*key, message.write(), world._thread_of.get(key)))
        elif kind == "file":
            data = world._files.get(key)
            if data is not None:
                db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (key, data))

    def _trim(self) -> None:
        """Keep the file bounded: the latest messages of each chat, the latest files."""
        self.db.execute(
            "DELETE FROM messages WHERE rowid IN (SELECT rowid FROM (SELECT rowid, "
            "ROW_NUMBER() OVER (PARTITION BY chat_id ORDER BY id DESC) AS n FROM messages) "
            "WHERE n > ?)", (MESSAGES_PER_CHAT,))
        self.db.execute(
            "DELETE FROM files WHERE id IN (SELECT id FROM (SELECT id, SUM(LENGTH(data)) "
            "OVER (ORDER BY id DESC) AS total FROM files) WHERE total > ?)", (FILE_BYTES,))


def _chat_fields(state: ChatState) -> dict[str, Any]:
    return {"chat_type": state.chat_type, "last_incoming": state.last_incoming,
            "next_outgoing": state.next_outgoing,
            "bot_messages": state.bot_messages[-_BOT_MESSAGES:],
            "topics": sorted(state.topics), "title": state.title, "known": state.known}
