"""An account's Telegram session and update position in tgmux's store (no session file).

:class:`StoreSession` is kurigram's ``Storage`` for ``tgmux run``: the session (auth key, data
centre, user id, …) lives in the store (:meth:`tgmux.store.Store.session_read`), so with
PostgreSQL a standby on another node takes an account over with nothing but the database. The
peers Pyrogram learns are a cache in memory (bounded: :data:`MAX_PEERS`, the least recently
seen forgotten first). A session file of an earlier tgmux under ``telegram.data_dir`` is taken
over once, when the store has no session for the account: its session and update position go
to the store, the file is renamed ``NAME.session.imported`` and is no longer read.

:class:`StorePositions` keeps where the account is in Telegram's update stream (the
:class:`~tgmux.telegram.updates.PositionStore` of its :class:`~tgmux.telegram.updates.UpdateStream`)
in the store, *with the inbox*: a position is written only once every message before it is in
the store, and in the same round trip as the accept of the last of them
(:meth:`~tgmux.store.Store.inbox_accept` with ``position``). How:

- the stream saves its position after each batch of updates it handed to Pyrogram's dispatcher;
  the save goes into the dispatcher's queue behind that batch (:class:`PositionMark`), so it is
  reached once every message of the batch is in the intake;
- the intake numbers the messages it takes (:meth:`StorePositions.taken`) and says when each
  is in the store or given up (:meth:`StorePositions.settled`); a position whose messages are
  all settled but the one being accepted rides with that accept
  (:meth:`StorePositions.carry`); one that no accept carries (updates with no message for the
  engine: our own sends, edits) is written on its own within :data:`IDLE_WRITE` seconds;
- a message the intake could not hand to the store (a stop that ran out of time) freezes the
  position: the next start fetches it again from Telegram (messages already in the store are
  recognised as duplicates: nothing is answered twice).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import heapq
import json
import logging
import sqlite3
from collections import deque
from pathlib import Path
from typing import Any

from pyrogram import Client, utils
from pyrogram.storage import SQLiteStorage

from tgmux.config import Config
from tgmux.errors import ConfigError
from tgmux.redact import redact_urls
from tgmux.store import Store, StreamPosition, open_store
from tgmux.telegram.position import SessionPosition, UpdatePosition

__all__ = ["IDLE_WRITE", "MAX_PEERS", "PositionMark", "StorePositions", "StoreSession",
           "decode_position", "encode_position", "token_digest", "write_session"]

log = logging.getLogger("tgmux.telegram")

#: Peers (users, chats) kept in memory at most; the least recently seen are forgotten.
MAX_PEERS = 20_000
#: Seconds within which a position no accept carried is written on its own.
IDLE_WRITE = 0.5
#: The session fields kept in the store (kurigram's ``sessions`` table).
SESSION_FIELDS = ("dc_id", "server_address", "port", "api_id", "test_mode", "auth_key",
                  "date", "user_id", "is_bot")


def token_digest(bot_token: str) -> str:
    """What a session remembers of the bot token it was authorized with."""
    return hashlib.sha256(b"tgmux bot token\0" + bot_token.encode()).hexdigest()


def encode_position(position: UpdatePosition) -> str:
    return json.dumps({"pts": position.pts, "qts": position.qts, "date": position.date,
                       "seq": position.seq,
                       "channels": {str(k): v for k, v in position.channels.items()}},
                      separators=(",", ":"))


def decode_position(text: str) -> UpdatePosition:
    data = json.loads(text)
    return UpdatePosition(int(data["pts"]), int(data["qts"]), int(data["date"]),
                          int(data["seq"]),
                          {int(k): int(v) for k, v in data.get("channels", {}).items()})


def _file_position(conn: sqlite3.Connection) -> UpdatePosition | None:
    """The update position in a kurigram session file (None: it has none)."""
    try:
        rows = conn.execute("SELECT id, pts, qts, date, seq FROM update_state").fetchall()
    except sqlite3.Error:
        return None
    common = next((r for r in rows if r[0] == 0), None)
    if common is None or common[1] is None:
        return None
    channels = {utils.get_raw_peer_id(r[0]): r[1] for r in rows
                if r[0] != 0 and r[1] is not None}
    return UpdatePosition(common[1], common[2] or 0, common[3] or 0, common[4] or 0, channels)


def _read_session_file(path: Path) -> tuple[dict[str, Any], UpdatePosition | None,
                                             list[tuple[Any, ...]]] | None:
    """(session fields, update position, peers) of a kurigram session file; None when it
    holds no session."""
    uri = f"{path.resolve().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as conn:
        row = conn.execute(f"SELECT {', '.join(SESSION_FIELDS)} FROM sessions").fetchone()
        if row is None:
            return None
        fields = dict(zip(SESSION_FIELDS, row, strict=True))
        if fields["auth_key"] is not None:
            fields["auth_key"] = base64.b64encode(fields["auth_key"]).decode()
        with contextlib.suppress(sqlite3.Error):  # (a file from before tgmux remembered it)
            digest = conn.execute("SELECT value FROM tgmux_session WHERE key = 'bot_token'"
                                  ).fetchone()
            if digest is not None:
                fields["bot_token_digest"] = str(digest[0])
        peers: list[tuple[Any, ...]] = []
        with contextlib.suppress(sqlite3.Error):
            peers = conn.execute("SELECT id, access_hash, type, phone_number FROM peers "
                                 "ORDER BY last_update_on DESC LIMIT ?", (MAX_PEERS,)).fetchall()
        return fields, _file_position(conn), peers


def _set_aside(path: Path) -> str:
    """Rename a session file taken over to ``NAME.session.imported``; what was done."""
    imported = path.with_name(path.name + ".imported")
    try:
        path.rename(imported)
    except OSError as exc:
        return f"left in place: cannot rename it: {exc.strerror}"
    return f"renamed to {imported.name}"


class StoreSession(SQLiteStorage):
    """kurigram's storage with the session in tgmux's store (module docstring). Pyrogram's own
    tables live in memory; the session fields are written to the store as they change.

    ``session_string`` seeds the session (replacing one of another account), ``bot_token``
    and ``expected_user_id`` reset one that belongs to another bot, as the session file did:
    :class:`tgmux.telegram.client.SessionFileStorage`."""

    def __init__(self, store: Store, account: str, *, session_file: Path | None = None,
                 session_string: str | None = None, expected_user_id: int | None = None,
                 bot_token: str | None = None) -> None:
        super().__init__(f"tgmux-{account}", workdir=Path("."), in_memory=True)
        self.store = store
        self.account = account
        self.session_file = session_file
        self.seed = session_string
        self.expected_user_id = expected_user_id
        self.bot_token = bot_token
        self._forget_next_open: str | None = None
        self._written: str | None = None  # the session as last read from / written to the store
        self._loading = False
        self._peers_added = 0

    # -- the session fields: written to the store as they change -------------------------------

    def _fields(self) -> dict[str, Any]:
        row = self.conn.execute(f"SELECT {', '.join(SESSION_FIELDS)} FROM sessions").fetchone()
        fields = dict(zip(SESSION_FIELDS, row, strict=True))
        if fields["auth_key"] is not None:
            fields["auth_key"] = base64.b64encode(fields["auth_key"]).decode()
        if self.bot_token_digest is not None:
            fields["bot_token_digest"] = self.bot_token_digest
        return fields

    bot_token_digest: str | None = None

    async def _persist(self) -> None:
        if self._loading:
            return
        text = json.dumps(self._fields(), sort_keys=True)
        if text != self._written:
            await self.store.session_write(text, account=self.account)
            self._written = text

    async def _set(self, table: str, attr: str, value: Any) -> None:
        await super()._set(table, attr, value)
        if table == "sessions" and attr != "date":  # the date moves at every save()
            await self._persist()

    def _load(self, fields: dict[str, Any]) -> None:
        values = dict(fields)
        if values.get("auth_key") is not None:
            values["auth_key"] = base64.b64decode(values["auth_key"])
        self.bot_token_digest = values.pop("bot_token_digest", None)
        with self.conn:
            self.conn.execute(
                f"UPDATE sessions SET {', '.join(f'{f} = ?' for f in SESSION_FIELDS)}",
                [values.get(f, 0 if f == "date" else None) for f in SESSION_FIELDS])

    async def save(self) -> None:
        await super().save()
        await self._persist()

    async def close(self) -> None:
        with contextlib.suppress(Exception):  # best effort: every change was written already
            await self._persist()
        await super().close()

    async def delete(self) -> None:
        await self.store.session_write(None, account=self.account)
        self._written = None

    # -- peers: a bounded cache ----------------------------------------------------------------

    async def update_peers(self, peers: Any) -> None:
        peers = list(peers)
        await super().update_peers(peers)
        self._peers_added += len(peers)
        if self._peers_added > MAX_PEERS // 10:  # checked now and then, not at every update
            self._peers_added = 0
            with self.conn:
                self.conn.execute(
                    "DELETE FROM peers WHERE id NOT IN (SELECT id FROM peers ORDER BY "
                    "last_update_on DESC, rowid DESC LIMIT ?)", (MAX_PEERS,))
                self.conn.execute("DELETE FROM usernames WHERE id NOT IN (SELECT id FROM peers)")

    # -- opening ---------------------------------------------------------------------------------

    def forget_authorization(self, why: str) -> None:
        """At the next :meth:`open`, drop the authorization (auth key, account id), keep the
        rest: Pyrogram then authorizes again (bots: with the token)."""
        self._forget_next_open = why

    async def open(self) -> None:
        await super().open()  # Pyrogram's tables, in memory
        self._loading = True
        try:
            text = await self.store.session_read(self.account)
            if text is None and self.session_file is not None and self.session_file.exists():
                await self._take_over(self.session_file)
            elif text is not None:
                self._load(json.loads(text))
                self._written = text
        finally:
            self._loading = False
        await self._check()
        await self._persist()

    async def _take_over(self, path: Path) -> None:
        """The session (and update position) of an earlier tgmux's session file, once."""
        try:
            found = _read_session_file(path)
        except sqlite3.Error as exc:
            log.warning("%s: session file %s cannot be read (%s); it is not taken over",
                        self.account, path, exc)
            return
        if found is None:
            return
        fields, position, peers = found
        await SQLiteStorage.update_peers(self, peers)
        self._load(fields)
        self._loading = False
        await self._persist()
        if position is not None and await self.store.position_read(self.account) is None:
            await self.store.position_write(StreamPosition(1, encode_position(position)),
                                            account=self.account)
        log.warning("%s: session file %s taken over into the store; it is no longer read (%s)",
                    self.account, path, _set_aside(path))

    async def _check(self) -> None:
        """The seed, the expected account and the bot token (see the class docstring)."""
        if self.seed:
            probe = SQLiteStorage("tgmux-probe", workdir=Path("."), session_string=self.seed,
                                  in_memory=True)
            await probe.open()
            try:
                fields = {key: await getattr(probe, key)() for key in
                          ("dc_id", "api_id", "test_mode", "auth_key", "user_id", "is_bot",
                           "server_address", "port")}
            finally:
                await probe.close()
            if await self.auth_key() != fields["auth_key"]:
                if await self.user_id() not in (None, fields["user_id"]):
                    self._reset("the session string belongs to another account")
                for key, value in fields.items():
                    if value is not None:
                        await getattr(self, key)(value)
                await self.date(0)
        elif self.expected_user_id is not None:
            stored = await self.user_id()
            if stored is not None and stored != self.expected_user_id:
                self._reset("the bot token belongs to another bot")
        if self._forget_next_open is not None:
            why, self._forget_next_open = self._forget_next_open, None
            self._forget(why)
        if self.bot_token:
            digest = token_digest(self.bot_token)
            # a session from before tgmux remembered tokens is taken to match
            if self.bot_token_digest not in (None, digest) and await self.auth_key() is not None:
                self._forget("the bot token changed")
            self.bot_token_digest = digest

    def _forget(self, why: str) -> None:
        log.warning("%s: the session in the store: %s; authorizing again", self.account, why)
        with self.conn:
            self.conn.execute("UPDATE sessions SET auth_key = NULL, user_id = NULL, date = 0")

    def _reset(self, why: str) -> None:
        log.warning("%s: the session in the store: %s; starting a fresh session",
                    self.account, why)
        with self.conn:
            for table in ("peers", "usernames", "update_state"):
                self.conn.execute(f"DELETE FROM {table}")
            self.conn.execute("UPDATE sessions SET auth_key = NULL, user_id = NULL, "
                              "is_bot = NULL, date = 0")
        self.reset_position = True

    #: set when the session was reset: the update position belongs to the old account
    reset_position = False


async def write_session(config: Config, account: str, session_string: str) -> None:
    """``tgmux login --config``: the session of ``session_string`` into the config's store,
    for ``account`` (replacing the one there; the update position of another account's
    session is forgotten). A store that cannot be opened is a ConfigError naming it."""
    store = open_store(config.data.store.url)
    try:
        await store.open()
    except Exception as exc:
        raise ConfigError(redact_urls(f"{config.where(('store',))}: cannot open "
                                      f"{config.data.store.url}: {exc}")) from exc
    try:
        session = StoreSession(store, account, session_string=session_string)
        await session.open()
        await session.close()
        if session.reset_position:
            await store.position_write(None, account=account)
    finally:
        await store.close()


_NONE: dict[int, Any] = {}  # (the users and chats of a mark: none)


class PositionMark:
    """A position saved by the stream, in the dispatcher's queue behind the updates before it."""

    __slots__ = ("position",)

    def __init__(self, position: UpdatePosition) -> None:
        self.position = position


class StorePositions:
    """The update position of one account in the store, with the inbox (module docstring)."""

    def __init__(self, store: Store, account: str, client: Client, *,
                 new_telegram: bool = False) -> None:
        self.store = store
        self.account = account
        self.client = client
        #: the client meets a Telegram other than the one the kept position is from (the
        #: offline one of `tgmux simulate` without --telegram-state): it is forgotten
        self.new_telegram = new_telegram
        self.frozen = False
        self._order = 0
        self._taken = 0  # the number of the last message the intake took
        # taken, not in the store yet: a heap of numbers (those settled since are dropped
        # from the top as they are met) and the set of those still open
        self._heap: list[int] = []
        self._open: set[int] = set()
        self._marks: deque[tuple[int, UpdatePosition]] = deque()
        self._due: UpdatePosition | None = None  # settled, not written yet
        self._last: UpdatePosition | None = None  # the last one written (or handed out)
        #: channels first seen in this run → where each starts: in every position written
        #: (one marked before a channel was seen does not know it)
        self._seen: dict[int, int] = {}
        self._writer: asyncio.Task[None] | None = None
        client.dispatcher.update_parsers[PositionMark] = self._reached

    # -- the stream's side (PositionStore) -----------------------------------------------------

    async def load(self) -> UpdatePosition | None:
        """The position kept in the store; else the one the client took at its start."""
        kept = None
        if self.new_telegram or getattr(self.client.storage, "reset_position", False):
            await self.store.position_write(None, account=self.account)  # another's
        else:
            kept = await self.store.position_read(self.account)
        if kept is not None:
            self._order = max(self._order, kept.order)
            try:
                self._last = decode_position(kept.value)
                return self._last
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("%s: the update position in the store is unreadable (%s); "
                            "starting from Telegram's current state", self.account, exc)
        self._last = await SessionPosition(self.client).load()
        return self._last

    async def save(self, position: UpdatePosition) -> None:
        """Behind what the stream handed to the dispatcher so far (reached: :meth:`_reached`);
        at once when nothing is handed (the dispatcher is not running)."""
        # (the stream hands a copy of its position over: kept as it is)
        dispatcher = self.client.dispatcher
        tasks = dispatcher.handler_worker_tasks
        if tasks and not tasks[-1].done():
            dispatcher.updates_queue.put_nowait((PositionMark(position), _NONE, _NONE))
        else:
            self.mark(position)

    async def _reached(self, mark: PositionMark, users: Any, chats: Any) -> tuple[None, type]:
        self.mark(mark.position)
        return None, type(None)

    async def channel_seen(self, channel: int, pts: int) -> None:
        """Written at once over the last position written (or settled): nothing else moves,
        so it passes no message the store lacks."""
        self._seen[channel] = pts
        base = self._due or self._last
        if self.frozen or base is None:
            return
        self._last = self._with_seen(base)
        self._order += 1
        await self.store.position_write(
            StreamPosition(self._order, encode_position(self._last)), account=self.account)

    def _with_seen(self, position: UpdatePosition) -> UpdatePosition:
        missing = {c: p for c, p in self._seen.items() if c not in position.channels}
        if not missing:
            return position
        position = position.copy()
        position.channels.update(missing)
        return position

    # -- the intake's side ---------------------------------------------------------------------

    def taken(self) -> int:
        """A message went into the intake: its number."""
        self._taken += 1
        self._open.add(self._taken)
        heapq.heappush(self._heap, self._taken)
        return self._taken

    def _lowest(self, besides: int = 0) -> int | None:
        """The lowest number still open (other than ``besides``)."""
        heap, open_ = self._heap, self._open
        while heap and heap[0] not in open_:
            heapq.heappop(heap)
        if not heap:
            return None
        if heap[0] != besides:
            return heap[0]
        heapq.heappop(heap)
        low = self._lowest()
        heapq.heappush(heap, besides)
        return low

    def mark(self, position: UpdatePosition) -> None:
        """Every message the stream handed out before ``position`` was taken (or ignored)."""
        self._marks.append((self._taken, position))
        self._release()

    def carry(self, number: int) -> StreamPosition | None:
        """The position to write with the accept of message ``number`` (None: none yet)."""
        if self.frozen:
            return None
        low = self._lowest(besides=number)
        best = self._due
        while self._marks and (low is None or self._marks[0][0] < low):
            best = self._marks.popleft()[1]
        if best is None:
            return None
        self._due = None
        self._order += 1
        self._last = best = self._with_seen(best)
        return StreamPosition(self._order, encode_position(best))

    def settled(self, number: int) -> None:
        """Message ``number`` is in the store (or was a duplicate)."""
        self._open.discard(number)
        self._release()

    def freeze(self, why: str) -> None:
        """A message taken could not be handed to the store: the position stays where it is
        (the next start fetches the message again)."""
        if not self.frozen:
            log.warning("%s: the update position is not moved any more in this run (%s): "
                        "the next start fetches again what came after it", self.account, why)
        self.frozen = True
        self._marks.clear()
        self._due = None

    def _release(self) -> None:
        low = self._lowest()
        while self._marks and (low is None or self._marks[0][0] < low):
            self._due = self._marks.popleft()[1]
        if self._due is not None and not self.frozen and (
                self._writer is None or self._writer.done()):
            self._writer = asyncio.get_running_loop().create_task(
                self._write_soon(), name=f"tgmux-position-{self.account}")

    async def _write_soon(self) -> None:
        await asyncio.sleep(IDLE_WRITE)  # an accept meanwhile carries it instead
        await self.flush()

    async def flush(self) -> None:
        """Write the position that is due now (a stop: before the store closes)."""
        while self._due is not None and not self.frozen:
            due, self._due = self._with_seen(self._due), None
            self._order += 1
            self._last = due
            try:
                await self.store.position_write(StreamPosition(self._order, encode_position(due)),
                                                account=self.account)
            except Exception as exc:  # the next one is written later: it only lags
                log.debug("%s: the update position was not written: %s", self.account, exc)
                return

    async def close(self) -> None:
        """Write what is due and stop the background write. The client's own session storage
        gets the last position too (a session file keeps it where the store is memory://,
        as before the store kept it)."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
            self._writer = None
        await self.flush()
        if self._last is not None and not isinstance(self.client.storage, StoreSession):
            with contextlib.suppress(Exception):
                await SessionPosition(self.client).save(self._last)
