"""What changed in the store, told at once to every process that keeps some of it in memory.

A process reads some store data once and keeps it: each chat's ``/backend`` choice
(``Engine.override``), its persona (:mod:`tgmux.personas`), the users the console blocked
(``tgmux.access``). Another process sharing the store (its ``/backend`` command, its console)
may change them; :meth:`Store.changes <tgmux.store.base.Store.changes>` is how this process
hears of it:

* a :class:`Change` names what changed: ``kind`` (``override``, ``persona``, ``blocked``) and
  whom (``account`` and ``chat_id``, or ``user_id``); a field left out means "all of them";
* the store sends one with each write of such data: ``set_override``, and a key-value write in a
  namespace of :data:`FOLLOWED_NAMESPACES` (keys ``ACCOUNT:CHAT_ID`` or ``USER_ID``);
  :meth:`Store.publish <tgmux.store.base.Store.publish>` sends any other;
* memory and SQLite: to the subscribers of the same store object only (:class:`ChangeFeed`).
  SQLite is one process per account by design: a change another process writes to the same
  file (``tgmux chat`` next to ``tgmux run``) is seen after a restart;
* PostgreSQL: ``NOTIFY`` on :data:`CHANNEL` in the write's own statement (it is sent when the
  write commits, and only then), heard through ``LISTEN`` on a connection of its own by every
  process (:mod:`tgmux.store.pg_changes`);
* :class:`FollowedCache` is what a process keeps: it drops what a change names, and keeps
  nothing while the feed is not :attr:`~ChangeFeed.live` (PostgreSQL: no ``LISTEN``
  connection; everything kept is dropped when it goes, and again when it is back).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Generic, TypeVar

__all__ = ["CHANNEL", "EVERYTHING", "FOLLOWED_NAMESPACES", "Change", "ChangeFeed",
           "FollowedCache", "kv_change"]

log = logging.getLogger("tgmux.store")

#: The PostgreSQL ``NOTIFY`` channel (one per database: deployments sharing a database in two
#: schemas hear each other's changes, which only costs each a store read).
CHANNEL = "tgmux_changes"

#: The kind of the change a feed delivers when anything may have changed unheard (PostgreSQL:
#: the ``LISTEN`` connection went, or came back): drop everything. Never sent.
EVERYTHING = "everything"

#: Key-value namespaces whose writes are changes: namespace -> the change's kind.
FOLLOWED_NAMESPACES = {"persona": "persona", "blocked": "blocked"}

#: A payload longer than this is no change of ours (PostgreSQL's limit is 8000 bytes).
MAX_PAYLOAD = 2000

V = TypeVar("V")


@dataclass(frozen=True)
class Change:
    """``kind`` of data changed for ``account`` / ``chat_id`` / ``user_id`` (None: all)."""

    kind: str
    account: str | None = None
    chat_id: int | None = None
    user_id: int | None = None

    def to_payload(self) -> str:
        """The ``NOTIFY`` payload: JSON, without the fields left out."""
        return json.dumps({k: v for k, v in asdict(self).items() if v is not None},
                          separators=(",", ":"))

    @classmethod
    def from_payload(cls, payload: str) -> Change:
        """A payload as :meth:`to_payload` writes it; ValueError says what is wrong."""
        if len(payload) > MAX_PAYLOAD:
            raise ValueError(f"{len(payload)} characters, at most {MAX_PAYLOAD} expected")
        data = json.loads(payload)
        if not isinstance(data, dict) or not isinstance(data.get("kind"), str):
            raise ValueError("a JSON object with a kind expected")
        account, chat_id, user_id = (data.get(k) for k in ("account", "chat_id", "user_id"))
        if not (account is None or isinstance(account, str)) or any(
                not (v is None or type(v) is int) for v in (chat_id, user_id)):
            raise ValueError("account a string, chat_id and user_id integers expected")
        return cls(data["kind"], account, chat_id, user_id)


def kv_change(namespace: str, key: str) -> Change | None:
    """The change a key-value write of ``namespace``/``key`` is (None: nobody keeps it)."""
    kind = FOLLOWED_NAMESPACES.get(namespace)
    if kind is None:
        return None
    account, colon, chat = key.rpartition(":")
    if colon and _integer(chat):
        return Change(kind, account=account, chat_id=int(chat))
    if _integer(key):
        return Change(kind, user_id=int(key))
    return Change(kind)  # a key of another form: all of the kind


def _integer(text: str) -> bool:
    return text.removeprefix("-").isdigit() and len(text) <= 20


Subscriber = Callable[[Change], None]


class ChangeFeed:
    """The changes of one store, delivered to this process's subscribers. In-process only
    (memory, SQLite): always :attr:`live`."""

    def __init__(self) -> None:
        self._subscribers: list[Subscriber] = []

    @property
    def live(self) -> bool:
        """True while every change is heard (False: what was read may be stale, keep none)."""
        return True

    @property
    def followed(self) -> bool:
        """Whether anyone subscribed."""
        return bool(self._subscribers)

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(change)`` for each change from now on (also for :data:`EVERYTHING`);
        returns what unsubscribes. A callback must not block: it runs on the event loop."""
        self._subscribers.append(callback)

        def unsubscribe() -> None:
            if callback in self._subscribers:
                self._subscribers.remove(callback)

        return unsubscribe

    def deliver(self, change: Change) -> None:
        """Tell every subscriber (one that raises is logged, the others are told all the
        same)."""
        for callback in list(self._subscribers):
            try:
                callback(change)
            except Exception:
                log.exception("a subscriber of the store's changes failed on %s", change)

    async def start(self) -> None:
        """Hear other processes' changes (nothing to do in-process)."""

    async def stop(self) -> None:
        """Hear them no more."""


class FollowedCache(Generic[V]):
    """What a process keeps of one ``kind`` of store data, keyed by ``(account, chat_id)``:
    bounded (``limit``; the oldest read goes first), emptied as ``feed`` says.

    A value read (:meth:`get`) or written (:meth:`put`) is kept only when no change of its kind
    came while the store was asked (the read may predate the change), the feed is
    :attr:`~ChangeFeed.live`, and ``usable()`` (e.g. the store is not in an outage)."""

    def __init__(self, feed: ChangeFeed, kind: str, limit: int, *,
                 usable: Callable[[], bool] = lambda: True) -> None:
        self.feed = feed
        self.kind = kind
        self.limit = limit
        self.usable = usable
        self._kept: dict[tuple[str, int], V] = {}
        self._generation = 0  # counts the changes heard of this kind
        feed.subscribe(self._changed)

    def __len__(self) -> int:
        return len(self._kept)

    def __contains__(self, key: object) -> bool:
        return key in self._kept

    def __iter__(self) -> Iterator[tuple[str, int]]:
        """The keys kept, the oldest read first."""
        return iter(list(self._kept))

    async def get(self, key: tuple[str, int], read: Callable[[], Awaitable[V]]) -> V:
        """The kept value, else ``read()``'s (kept if it may be)."""
        try:
            return self._kept[key]
        except KeyError:
            pass
        generation = self._generation
        value = await read()
        self._keep(key, value, generation)
        return value

    async def put(self, key: tuple[str, int], write: Callable[[], Awaitable[Any]],
                  value: V) -> None:
        """``write()`` ``value`` to the store, then keep it (nothing kept when it fails)."""
        self._kept.pop(key, None)
        generation = self._generation
        await write()
        self._keep(key, value, generation)

    def forget(self, account: str) -> None:
        """Drop what is kept of ``account``'s chats."""
        for key in [k for k in self._kept if k[0] == account]:
            del self._kept[key]

    def clear(self) -> None:
        self._kept.clear()

    def _keep(self, key: tuple[str, int], value: V, generation: int) -> None:
        if generation != self._generation or not self.feed.live or not self.usable():
            return
        if key not in self._kept and len(self._kept) >= self.limit:
            self._kept.pop(next(iter(self._kept)))  # the oldest read
        self._kept[key] = value

    def _changed(self, change: Change) -> None:
        if change.kind not in (self.kind, EVERYTHING):
            return
        self._generation += 1
        if change.kind == EVERYTHING or change.account is None:
            self._kept.clear()
        elif change.chat_id is None:
            self.forget(change.account)
        else:
            self._kept.pop((change.account, change.chat_id), None)

