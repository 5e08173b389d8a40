"""The store interface: what tgmux keeps between runs, behind a narrow async API.

* per-chat backend overrides (``/backend NAME``), per account;
* each backend's key-value namespace (:class:`Namespace`, ``tgmux.backend.KeyValue``);
* the inbox, per account: dedup of processed messages, and messages accepted but not yet
  answered, which are answered after a restart;
* account leases (:meth:`Store.hold_account`): one process at a time runs an account, a standby
  waits for the lease;
* rate limits shared by every process on the store (:meth:`Store.rate_take`): a provider's
  quota per credential holds however many processes use the credential;
* conversation memory (:meth:`Store.history_append`, :class:`Conversation`): the last
  exchanges of a chat, for backends whose providers remember nothing (bounded: the oldest are
  forgotten as new ones come);
* group context (:meth:`Store.context_add`): a group's recent messages not addressed to the
  bot, per (account, chat, topic), kept until the next turn there takes them (bounded: the
  newest ``keep``; pruned by age);
* usage (:meth:`Store.usage_add`): messages, tokens and cost per (day, account, user, chat,
  backend, model), one row each, added to; read for budgets and reports, pruned by age;
* per account, its Telegram session (:meth:`Store.session_read`) and where it is in Telegram's
  update stream (:meth:`Store.position_read`; written with the inbox accept that moves it,
  :meth:`Store.inbox_accept`): a standby takes an account over with nothing but the store;
* changes (:meth:`Store.changes`): what a process keeps in memory of the store (``/backend``
  and persona choices, blocked users) is dropped at once when another process changes it
  (:mod:`tgmux.store.changes`; PostgreSQL: ``LISTEN``/``NOTIFY``);
* who holds each account of the deployment (:meth:`Store.holders`).

Implementations: :mod:`~tgmux.store.memory`, :mod:`~tgmux.store.sqlite`,
:mod:`~tgmux.store.postgres`. Every method that takes ``account`` defaults it to ``"main"``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from tgmux.store.changes import Change, ChangeFeed, kv_change
from tgmux.types import ChatIdentity, ChatLine, Exchange, StreamPosition, UsageRow

log = logging.getLogger("tgmux.store")

#: Seconds opening a store may take (a locked or unreachable store is an error, not a hang).
OPEN_TIMEOUT = 2.0

#: The account of single-account configs (and of everything stored before accounts existed).
DEFAULT_ACCOUNT = "main"


@dataclass(frozen=True)
class Unanswered:
    """A message accepted but never marked done: ``dispatched`` when a backend had already
    been asked (replaying it could duplicate a chat turn at the provider)."""

    payload: dict[str, Any]
    dispatched: bool


@dataclass(frozen=True)
class AccountHolder:
    """Who holds an account's lease (for ``tgmux status``)."""

    account: str
    hostname: str
    pid: int
    since: float  # a timestamp

    @classmethod
    def here(cls, account: str) -> AccountHolder:
        return cls(account, socket.gethostname(), os.getpid(), time.time())


class AccountLease(ABC):
    """The right to run one account, held by at most one process at a time (for a hot
    standby: the second process waits in :meth:`acquire` until the first is gone).

    Made by :meth:`Store.hold_account`, not yet acquired. Usable as ``async with``
    (acquire, waiting; release at the end)."""

    #: Seconds between two tries while waiting.
    poll_interval = 1.0
    #: Seconds within which a lost lease is noticed (``store.lease_timeout``), where the store
    #: can lose one (PostgreSQL: a probe on the lease's connection).
    timeout = 10.0

    def __init__(self, account: str) -> None:
        self.account = account
        self._holder: AccountHolder | None = None
        self._lost = asyncio.Event()

    @property
    def held(self) -> bool:
        """True from a successful :meth:`acquire` until :meth:`release` (or the lease is
        lost: see :meth:`wait_lost`)."""
        return self._holder is not None

    async def acquire(self, *, wait: bool = True, timeout: float | None = None) -> bool:
        """Take the lease. ``wait``: try every :attr:`poll_interval` seconds until it is free
        (or ``timeout`` seconds passed: False); else try once. True when held."""
        if self.held:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        failing = False
        while True:
            try:
                if await self._try_acquire():
                    holder = AccountHolder.here(self.account)
                    await self._record(holder)  # on failure, gives the lock up again
                    self._lost = asyncio.Event()
                    self._holder = holder
                    return True
            except Exception as exc:
                if not wait:
                    raise
                if not failing:  # once per outage, not every second
                    log.warning("account %s: cannot try the lease (trying again every %g s): "
                                "%s", self.account, self.poll_interval, exc)
                failing = True
            else:
                failing = False
            if not wait or (deadline is not None and time.monotonic() >= deadline):
                return False
            delay = self.poll_interval
            if deadline is not None:
                delay = max(0.0, min(delay, deadline - time.monotonic()))
            await asyncio.sleep(delay)

    async def release(self) -> None:
        """Give the lease up (nothing when not held)."""
        self._holder = None
        await self._release()

    async def wait_lost(self) -> None:
        """Returns when a held lease is lost without :meth:`release` (its database connection
        died): another process may take the account now, so this one must stop running it."""
        await self._lost.wait()

    def _mark_lost(self) -> None:
        if self._holder is not None:
            log.error("account %s: the lease was lost", self.account)
            self._holder = None
            self._lost.set()

    @abstractmethod
    async def holder(self) -> AccountHolder | None:
        """Who holds the lease now (this process or another), None when no one."""

    @abstractmethod
    async def _try_acquire(self) -> bool: ...

    async def _record(self, holder: AccountHolder) -> None:
        """Write who holds the lease where others can read it (:meth:`holder`)."""

    @abstractmethod
    async def _release(self) -> None: ...

    async def __aenter__(self) -> AccountLease:
        await self.acquire(wait=True)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.release()


class Store(ABC):
    """What tgmux keeps between runs."""

    #: The schema version in use once open (None before, or for a store without one).
    schema_version: int | None = None
    #: Set by :meth:`open` when it created (from 0) or migrated the schema: (from, to).
    migrated: tuple[int, int] | None = None
    _feed: ChangeFeed | None = None

    @abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date (bounded in time: an unreachable or
        locked store raises)."""

    @abstractmethod
    async def close(self) -> None: ...

    # per-chat backend overrides (/backend NAME)
    @abstractmethod
    async def get_override(self, chat_id: int, *, account: str = DEFAULT_ACCOUNT) -> str | None:
        ...

    @abstractmethod
    async def set_override(self, chat_id: int, backend: str | None, *,
                           account: str = DEFAULT_ACCOUNT) -> None:
        """Set (or with None, remove) a chat's backend override."""

    # backend key-value namespaces
    @abstractmethod
    async def kv_get(self, namespace: str, key: str) -> str | None: ...

    @abstractmethod
    async def kv_set(self, namespace: str, key: str, value: str) -> None: ...

    @abstractmethod
    async def kv_delete(self, namespace: str, key: str) -> None: ...

    @abstractmethod
    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        """The keys starting with ``prefix`` (literally: ``%`` and ``_`` are no wildcards),
        sorted by code point."""

    # inbox: dedup and restart safety
    @abstractmethod
    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any], *,
                           account: str = DEFAULT_ACCOUNT,
                           position: StreamPosition | None = None) -> bool:
        """Record a message as pending; False when this (chat, message) was seen before.
        Atomic: of several processes accepting the same message, one gets True.

        ``position``: the account's update position past this message, written in the same
        round trip and transaction (as :meth:`position_write`; also when the message is a
        duplicate)."""

    @abstractmethod
    async def inbox_dispatched(self, chat_id: int, message_id: int, *,
                               account: str = DEFAULT_ACCOUNT) -> None:
        """The message was handed to a backend (a provider may have received it)."""

    @abstractmethod
    async def inbox_done(self, chat_id: int, message_id: int, *,
                         account: str = DEFAULT_ACCOUNT) -> None: ...

    @abstractmethod
    async def inbox_unanswered(self, *, account: str = DEFAULT_ACCOUNT) -> list[Unanswered]:
        """Messages accepted but never marked done, oldest first."""

    @abstractmethod
    async def inbox_backlog(self, *, account: str = DEFAULT_ACCOUNT) -> int:
        """How many messages are accepted but not answered yet (pending or dispatched)."""

    @abstractmethod
    async def inbox_prune(self, older_than: float, *, account: str | None = None) -> int:
        """Forget answered messages received before ``older_than`` (a timestamp), of one
        account or (None) of all."""

    # an account's Telegram session and update position
    @abstractmethod
    async def session_read(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        """The account's Telegram session (the frontend's JSON), None when there is none."""

    @abstractmethod
    async def session_write(self, session: str | None, *, account: str = DEFAULT_ACCOUNT
                            ) -> None:
        """Keep (None: forget) the account's session."""

    @abstractmethod
    async def position_read(self, account: str = DEFAULT_ACCOUNT) -> StreamPosition | None:
        """Where the account is in its update stream, None when nowhere yet."""

    @abstractmethod
    async def position_write(self, position: StreamPosition | None, *,
                             account: str = DEFAULT_ACCOUNT) -> None:
        """Keep ``position`` unless the stored one has a higher or equal ``order``; None
        forgets it (the next write of any order is kept)."""

    # account leases
    @abstractmethod
    async def hold_account(self, account: str) -> AccountLease:
        """A lease on ``account`` (not acquired yet: call :meth:`AccountLease.acquire`)."""

    # shared rate limits
    @abstractmethod
    async def rate_take(self, key: str, limit: int, window: float, *,
                        now: float | None = None) -> float:
        """Take one event of ``key`` from a budget of ``limit`` per ``window`` seconds, atomically
        across every process sharing the store (a sliding log: never more than ``limit`` events in
        any ``window`` seconds).

        When fewer than ``limit`` events of ``key`` lie in the last ``window`` seconds (and no
        :meth:`rate_block` is in force), one is recorded at ``now`` and 0.0 is returned; else
        nothing is recorded and the result is the seconds until a take could succeed: the rest
        of the block, else until the oldest event that matters leaves the window.

        ``now`` is a wall-clock timestamp (default :func:`time.time`: processes compare their
        clocks). Old events are deleted as it goes: what is kept stays bounded."""

    @abstractmethod
    async def rate_count(self, key: str, window: float, *, now: float | None = None) -> int:
        """How many events of ``key`` lie in the last ``window`` seconds (taking none: for
        ``/usage``)."""

    @abstractmethod
    async def rate_block(self, key: str, until: float) -> None:
        """Nobody takes from ``key`` before the timestamp ``until`` (a provider's Retry-After);
        a block ending later is kept. :meth:`rate_take` returns the rest of it first."""

    @abstractmethod
    async def rate_restamp(self, key: str, since: float, at: float) -> None:
        """The request counted by an event of ``key`` went out at ``at`` (a timestamp), so
        it arrives about then: the oldest event taken at or after ``since`` (and before ``at``)
        now counts from ``at`` (its expiry moves with it); none such: nothing changes. Called
        with ``since`` read before the :meth:`rate_take` that granted the request, the event
        moved is that one or an older one: never less strict (:mod:`tgmux.ratelimit`)."""

    # conversation memory
    @abstractmethod
    async def history_append(self, conversation: str, exchange: Exchange, *, max_turns: int,
                             max_chars: int) -> None:
        """Remember ``exchange`` as the newest of ``conversation``, then forget what
        :meth:`history_read` with these limits would no longer return (the store stays
        bounded)."""

    @abstractmethod
    async def history_read(self, conversation: str, *, max_turns: int,
                           max_chars: int) -> list[Exchange]:
        """The newest exchanges of ``conversation``, oldest first: at most ``max_turns``, and
        only as many as fit in ``max_chars`` characters together, counted from the newest (the
        first that does not fit ends the list: no gaps)."""

    @abstractmethod
    async def history_trim(self, conversation: str, *, max_turns: int, max_chars: int) -> int:
        """Forget every exchange of ``conversation`` that :meth:`history_read` with these
        limits would not return; how many were forgotten."""

    @abstractmethod
    async def history_clear(self, conversation: str) -> int:
        """Forget the whole conversation; how many exchanges it had."""

    # group context: messages of a group the bot was not asked to answer
    @abstractmethod
    async def context_add(self, account: str, chat_id: int, thread_id: int | None,
                          line: ChatLine, *, keep: int) -> None:
        """Keep ``line`` as the newest of (account, chat, topic ``thread_id``; None: none),
        then forget all but the newest ``keep`` of them: one round trip."""

    @abstractmethod
    async def context_take(self, account: str, chat_id: int,
                           thread_id: int | None) -> list[ChatLine]:
        """The lines kept for (account, chat, topic), oldest first, forgotten as they are read
        (each is given once): one round trip."""

    @abstractmethod
    async def context_prune(self, older_than: float) -> int:
        """Forget lines written before ``older_than`` (a timestamp); how many."""

    # usage: what each user used, per day, backend and model
    @abstractmethod
    async def usage_add(self, row: UsageRow) -> None:
        """Add ``row`` to the stored row of its key (:attr:`UsageRow.key`), creating it: its
        counts and cost are added (a cost of None adds nothing). One round trip."""

    @abstractmethod
    async def usage_rows(self, *, since: str, until: str | None = None,
                         account: str | None = None,
                         user_id: int | None = None) -> list[UsageRow]:
        """The stored rows of days ``since`` to ``until`` (``YYYY-MM-DD``, both included;
        None: to the last), of ``account`` and ``user_id`` when given, ordered by day. One
        round trip."""

    @abstractmethod
    async def usage_prune(self, before: str) -> int:
        """Forget the rows of days before ``before`` (``YYYY-MM-DD``); how many."""

    # changes: what other processes (and this one) change of what a process keeps in memory
    def changes(self) -> ChangeFeed:
        """The store's changes (:mod:`tgmux.store.changes`): ``changes().subscribe(callback)``
        hears each ``/backend`` choice, persona choice and block written from now on, by this
        process or (PostgreSQL) any other."""
        if self._feed is None:
            self._feed = self._new_feed()
        return self._feed

    def _new_feed(self) -> ChangeFeed:
        return ChangeFeed()  # in-process: memory, SQLite

    def _told(self, change: Change | None) -> None:
        """Deliver ``change`` in-process (memory, SQLite: after the write)."""
        if change is not None and self._feed is not None:
            self._feed.deliver(change)

    def _kv_told(self, namespace: str, key: str) -> None:
        self._told(kv_change(namespace, key))

    async def publish(self, change: Change) -> None:
        """Tell every process sharing the store (this one too) of ``change``: for data kept
        in memory whose write the store does not announce itself (``set_override`` and the
        key-value writes of :data:`~tgmux.store.changes.FOLLOWED_NAMESPACES` do)."""
        self._told(change)

    # who holds each account
    async def holders(self, accounts: Iterable[str] = ()) -> dict[str, AccountHolder | None]:
        """Every account the store knows of (:meth:`known_accounts`) and each of ``accounts``
        (a config's), sorted, with who holds its lease now (None: no one)."""
        names = sorted({*accounts, *await self.known_accounts()})
        return {name: await (await self.hold_account(name)).holder() for name in names}

    async def known_accounts(self) -> set[str]:
        """The accounts the store keeps a Telegram session, update position or lease of."""
        return set()

    def namespace(self, name: str) -> Namespace:
        return Namespace(self, name)

    def conversation(self, backend: str, chat: ChatIdentity, *, max_turns: int, max_chars: int,
                     scope: Literal["chat", "user"] = "chat") -> Conversation:
        """The memory of ``chat``'s conversation with ``backend`` (of its topic, in one;
        ``scope="user"``: of its sender's, in a group)."""
        return Conversation(self, conversation_key(backend, chat, scope),
                            max_turns=max_turns, max_chars=max_chars)


def conversation_key(backend: str, chat: ChatIdentity,
                     scope: Literal["chat", "user"] = "chat") -> str:
    """``BACKEND/ACCOUNT/CHAT`` (``…/CHAT/USER`` for one user in a group with ``scope="user"``):
    each backend remembers its own conversations; the same chat with two accounts is two. A
    topic (a forum's, a private chat's) is a conversation of its own: ``…/CHAT/topic:N[/USER]``;
    a chat without topics keeps the key it always had."""
    key = f"{backend}/{chat.account}/{chat.chat_id}"
    if chat.topic is not None:
        key += f"/topic:{chat.topic}"
    if scope == "user" and chat.chat_type in ("group", "supergroup") and chat.user_id is not None:
        key += f"/{chat.user_id}"
    return key


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


class Conversation:
    """One conversation's memory with its limits (``tgmux.backend.History``): what a backend
    reads, what the engine appends once a reply was delivered."""

    def __init__(self, store: Store, key: str, *, max_turns: int, max_chars: int) -> None:
        self.store = store
        self.key = key
        self.max_turns = max_turns
        self.max_chars = max_chars

    async def read(self) -> list[Exchange]:
        """The remembered exchanges within the limits, oldest first."""
        if self.max_turns <= 0:
            return []
        return await self.store.history_read(self.key, max_turns=self.max_turns,
                                             max_chars=self.max_chars)

    async def append(self, user: str, reply: str) -> None:
        """Remember one exchange (the oldest beyond the limits are forgotten)."""
        if self.max_turns <= 0:
            return
        await self.store.history_append(self.key, Exchange(user, reply),
                                        max_turns=self.max_turns, max_chars=self.max_chars)

    async def keep_newest(self, count: int) -> int:
        """Forget all but the newest ``count`` exchanges; how many were forgotten."""
        return await self.store.history_trim(self.key, max_turns=max(0, count),
                                             max_chars=self.max_chars)

    async def clear(self) -> int:
        """Forget everything; how many exchanges there were."""
        return await self.store.history_clear(self.key)


def usage_values(row: UsageRow) -> tuple[Any, ...]:
    """``row`` as the usage table's columns (no user: 0, a key column cannot be NULL)."""
    return (row.day, row.account, row.user_id or 0, row.chat_id, row.backend, row.model,
            row.messages, row.input_tokens, row.output_tokens, row.cached_input_tokens,
            row.reasoning_tokens, row.cost)


def usage_row(values: Any) -> UsageRow:
    """A usage table row (its columns in the order of :func:`usage_values`) as a UsageRow."""
    (day, account, user_id, chat_id, backend, model, messages, input_tokens, output_tokens,
     cached, reasoning, cost) = tuple(values)
    return UsageRow(day, account, user_id or None, chat_id, backend, model, messages,
                    input_tokens, output_tokens, cached, reasoning,
                    None if cost is None else float(cost))
