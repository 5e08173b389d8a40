"""The store as a message's path uses it: every call has a deadline (``store.timeout``), and a
store that fails or hangs does not stop a message from being answered.

:class:`GuardedStore` wraps any :class:`~tgmux.store.base.Store`. When a call fails or passes
its deadline, an *outage* starts: one WARNING, ``/readyz`` says degraded (:attr:`degraded`), and
until the store is back calls do not wait for it:

* the inbox's writes (accepted, handed to a backend, answered) are kept in memory, in order,
  and written when the store is back — bounded (:data:`MAX_PENDING` messages; one line when
  full: the messages beyond are answered all the same, without restart safety);
* a message accepted during the outage is still deduplicated (against those kept here);
* the chat's ``/backend`` override reads as none, shared rate limits are not counted, the
  conversation memory reads empty and is not appended to, nor is the group context (a
  group's messages are not kept, the next turn gets none: one DEBUG line each);
* a backend's key-value namespace answers from the values last read or written here, and its
  writes are kept and written when the store is back (bounded as the inbox's);
* everything else (a key never seen here, ``/backend NAME``, ``/usage``) raises
  :class:`StoreUnavailable` at once.

A probe (every :attr:`GuardedStore.probe_interval` seconds) writes the kept inbox states and
one key; when all succeeds the outage ends: one INFO. Leases and opening/closing are not
guarded (they have their own bounds).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tgmux.store.base import (
    DEFAULT_ACCOUNT,
    AccountHolder,
    AccountLease,
    Store,
    StreamPosition,
    Unanswered,
)
from tgmux.store.changes import Change, ChangeFeed, FollowedCache
from tgmux.types import ChatLine, Exchange, UsageRow

__all__ = ["MAX_PENDING", "GuardedStore", "StoreUnavailable"]

log = logging.getLogger("tgmux.store")

#: Messages whose inbox state is kept in memory during an outage, at most.
MAX_PENDING = 10_000
#: The key the probe writes (namespace, key): a write, so a read-only database stays "down".
PROBE_KEY = ("tgmux", "store-probe")

T = TypeVar("T")


class StoreUnavailable(Exception):
    """The store failed or did not answer in time (or an outage is under way)."""


@dataclass
class _InboxState:
    """What the store has not been told about one message yet."""

    payload: dict[str, Any] | None = None  # accepted (not written yet)
    dispatched: bool = False
    done: bool = False


def _some(names: Iterable[str], shown: int = 100) -> str:
    """The first ``shown`` names, and how many more (a log line stays bounded)."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


class GuardedStore(Store):
    """``store`` with a deadline on every call and the outage bookkeeping (module docstring)."""

    #: Seconds between two probes during an outage.
    probe_interval = 1.0

    def __init__(self, store: Store, *, timeout: float = 5.0,
                 max_pending: int = MAX_PENDING) -> None:
        self.inner = store
        self.timeout = timeout
        self.max_pending = max_pending
        self._opened = False
        self._down_since: float | None = None
        self._why = ""
        self._pending: OrderedDict[tuple[str, int, int], _InboxState] = OrderedDict()
        self._full = False
        self._probe: asyncio.Task[None] | None = None
        #: key-value writes made during an outage (None: a delete), and the values last known
        self._kv_pending: OrderedDict[tuple[str, str], str | None] = OrderedDict()
        self._kv_known: OrderedDict[tuple[str, str], str | None] = OrderedDict()

    # -- state ---------------------------------------------------------------------------

    @property
    def degraded(self) -> str | None:
        """None while the store answers; else why not (for ``/readyz``)."""
        if self._down_since is None:
            return None
        kept = f"; {len(self._pending)} message(s)' inbox state kept in memory" \
            if self._pending else ""
        down = time.monotonic() - self._down_since
        return f"degraded: the store has not answered for {down:.0f} s ({self._why}){kept}"

    @property
    def schema_version(self) -> int | None:  # type: ignore[override]
        return self.inner.schema_version

    @property
    def migrated(self) -> tuple[int, int] | None:  # type: ignore[override]
        return self.inner.migrated

    def _outage(self, exc: BaseException) -> None:
        why = (f"no answer within {self.timeout:g} s" if isinstance(exc, TimeoutError)
               else f"{type(exc).__name__}: {exc}")
        if self._down_since is not None:
            log.debug("store still down: %s", why)
            return
        self._down_since, self._why = time.monotonic(), why
        log.warning("store: %s; messages are answered all the same (their inbox state is kept "
                    "in memory and written when it is back), /readyz says degraded", why)
        self._probe = asyncio.create_task(self._probe_until_back(), name="tgmux-store-probe")

    async def _call(self, call: Callable[[], Awaitable[T]], *, try_anyway: bool = False) -> T:
        """``call()`` within the deadline; StoreUnavailable (and an outage) when it fails, or
        at once during an outage (unless ``try_anyway``: not on a message's path)."""
        if self._down_since is not None and not try_anyway:
            raise StoreUnavailable(self._why)
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except NotImplementedError:  # a store without this feature: not an outage
            raise
        except (Exception, TimeoutError) as exc:
            self._outage(exc)
            raise StoreUnavailable(self._why) from exc

    async def _probe_until_back(self) -> None:
        while True:
            await asyncio.sleep(self.probe_interval)
            try:
                async with asyncio.timeout(self.timeout):
                    written = await self._replay()
                    await self.inner.kv_set(*PROBE_KEY, str(time.time()))
            except (Exception, TimeoutError) as exc:
                log.debug("store probe: still down: %s", exc)
                continue
            down = time.monotonic() - (self._down_since or time.monotonic())
            self._down_since, self._probe, self._full = None, None, False
            log.info("store: back after %.0f s%s", down,
                     f"; {written} write(s) kept in memory made" if written else "")
            return

    async def _replay(self) -> int:
        """Write the kept inbox states, oldest first (each one forgotten once written)."""
        written = 0
        while self._pending:
            (account, chat_id, message_id), state = next(iter(self._pending.items()))
            if state.payload is not None:
                await self.inner.inbox_accept(chat_id, message_id, state.payload,
                                              account=account)
                state.payload = None
            if state.dispatched:
                await self.inner.inbox_dispatched(chat_id, message_id, account=account)
                state.dispatched = False
            if state.done:
                await self.inner.inbox_done(chat_id, message_id, account=account)
            self._pending.pop((account, chat_id, message_id), None)  # (two replays at once)
            written += 1
        while self._kv_pending:
            (namespace, key), value = next(iter(self._kv_pending.items()))
            if value is None:
                await self.inner.kv_delete(namespace, key)
            else:
                await self.inner.kv_set(namespace, key, value)
            if self._kv_pending.get((namespace, key), ...) == value:  # not set again meanwhile
                del self._kv_pending[(namespace, key)]
            written += 1
        return written

    def _keep(self, account: str, chat_id: int, message_id: int) -> _InboxState | None:
        """The kept state of a message (made when new; None when the memory is full)."""
        key = (account, chat_id, message_id)
        state = self._pending.get(key)
        if state is None:
            if len(self._pending) >= self.max_pending:
                if not self._full:
                    self._full = True
                    log.error("store: %d messages' inbox state kept in memory, no room for "
                              "more: the next ones are answered without restart safety nor "
                              "dedup until the store is back", self.max_pending)
                return None
            state = self._pending[key] = _InboxState()
        return state

    # -- lifecycle (not guarded: bounded on their own) ------------------------------------

    async def open(self) -> None:
        """Open the store (once: the Telegram side opens it before its accounts connect, to
        read their sessions and positions, the engine's start then finds it open)."""
        if self._opened:
            return
        await self.inner.open()
        self._opened = True

    async def close(self) -> None:
        self._opened = False
        if self._probe is not None:
            self._probe.cancel()
            await asyncio.gather(self._probe, return_exceptions=True)
            self._probe = None
        if self._pending or self._kv_pending:  # a last chance to write them
            try:
                async with asyncio.timeout(self.timeout):
                    await self._replay()
            except (Exception, TimeoutError):
                pass
        if self._kv_pending:
            log.error("store: closed during an outage; %d backend key-value write(s) lost: %s",
                      len(self._kv_pending), _some(f"{n}/{k}" for n, k in self._kv_pending))
        if self._pending:
            log.error("store: closed during an outage; the inbox state of %d message(s) "
                      "(account/chat/message) was not written (they may be answered again, or "
                      "not, after a restart): %s", len(self._pending),
                      _some(f"{a}/{c}/{m}" for a, c, m in self._pending))
        await self.inner.close()

    def unanswered_in_memory(self) -> list[tuple[str, int, int]]:
        """(account, chat, message) of each accepted message not answered whose inbox state
        lives only here (the store did not answer): after a stop nothing keeps it pending."""
        return [key for key, state in self._pending.items()
                if state.payload is not None and not state.done]

    async def hold_account(self, account: str) -> AccountLease:
        return await self.inner.hold_account(account)

    # -- changes and holders: the inner store's ------------------------------------------

    def changes(self) -> ChangeFeed:
        return self.inner.changes()

    def followed(self, kind: str, limit: int) -> FollowedCache[Any]:
        """What a process keeps of ``kind`` of store data (at most ``limit`` chats), dropped
        as the store's changes say; nothing is kept during an outage (it is not known)."""
        return FollowedCache(self.changes(), kind, limit, usable=lambda: self.degraded is None)

    async def publish(self, change: Change) -> None:
        await self._call(lambda: self.inner.publish(change))

    async def holders(self, accounts: Iterable[str] = ()) -> dict[str, AccountHolder | None]:
        return await self._call(lambda: self.inner.holders(accounts))

    async def known_accounts(self) -> set[str]:
        return await self._call(self.inner.known_accounts)

    # -- the inbox: never fails a message ------------------------------------------------

    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any], *,
                           account: str = DEFAULT_ACCOUNT,
                           position: StreamPosition | None = None) -> bool:
        key = (account, chat_id, message_id)
        if key in self._pending:
            return False  # accepted during this outage already
        if any(state.payload is not None for state in self._pending.values()):
            position = None  # not past an accept kept in memory only: it would be lost
        try:
            return await self._call(lambda: self.inner.inbox_accept(
                chat_id, message_id, payload, account=account, position=position))
        except StoreUnavailable:
            state = self._keep(account, chat_id, message_id)
            if state is not None:
                state.payload = payload
            return True

    async def inbox_dispatched(self, chat_id: int, message_id: int, *,
                               account: str = DEFAULT_ACCOUNT) -> None:
        if (account, chat_id, message_id) not in self._pending:
            try:
                return await self._call(lambda: self.inner.inbox_dispatched(
                    chat_id, message_id, account=account))
            except StoreUnavailable:
                pass
        if (state := self._keep(account, chat_id, message_id)) is not None:
            state.dispatched = True

    async def inbox_done(self, chat_id: int, message_id: int, *,
                         account: str = DEFAULT_ACCOUNT) -> None:
        if (account, chat_id, message_id) not in self._pending:
            try:
                return await self._call(lambda: self.inner.inbox_done(
                    chat_id, message_id, account=account))
            except StoreUnavailable:
                pass
        if (state := self._keep(account, chat_id, message_id)) is not None:
            state.done = True

    async def inbox_unanswered(self, *, account: str = DEFAULT_ACCOUNT) -> list[Unanswered]:
        """Tried even during an outage (an account taken over or back needs it), once what is
        kept in memory is written: answered messages are not answered again."""
        async def read() -> list[Unanswered]:
            await self._replay()
            return await self.inner.inbox_unanswered(account=account)

        return await self._call(read, try_anyway=True)

    async def inbox_backlog(self, *, account: str = DEFAULT_ACCOUNT) -> int:
        return await self._call(lambda: self.inner.inbox_backlog(account=account))

    async def inbox_prune(self, older_than: float, *, account: str | None = None) -> int:
        return await self._call(lambda: self.inner.inbox_prune(older_than, account=account))

    # -- overrides -----------------------------------------------------------------------

    # -- the account's session and position: off a message's path (the position lags safely)

    async def session_read(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        return await self._call(lambda: self.inner.session_read(account), try_anyway=True)

    async def session_write(self, session: str | None, *, account: str = DEFAULT_ACCOUNT
                            ) -> None:
        await self._call(lambda: self.inner.session_write(session, account=account),
                         try_anyway=True)

    async def position_read(self, account: str = DEFAULT_ACCOUNT) -> StreamPosition | None:
        return await self._call(lambda: self.inner.position_read(account), try_anyway=True)

    async def position_write(self, position: StreamPosition | None, *,
                             account: str = DEFAULT_ACCOUNT) -> None:
        if any(state.payload is not None for state in self._pending.values()):
            return  # not past an accept kept in memory only
        await self._call(lambda: self.inner.position_write(position, account=account))

    async def get_override(self, chat_id: int, *, account: str = DEFAULT_ACCOUNT) -> str | None:
        """None (the route's backend) while the store is down: check :attr:`degraded` before
        keeping the answer."""
        try:
            return await self._call(lambda: self.inner.get_override(chat_id, account=account))
        except StoreUnavailable:
            return None

    async def set_override(self, chat_id: int, backend: str | None, *,
                           account: str = DEFAULT_ACCOUNT) -> None:
        await self._call(lambda: self.inner.set_override(chat_id, backend, account=account))

    # -- key-value: the last values known here serve during an outage ---------------------

    def _known(self, namespace: str, key: str, value: str | None) -> None:
        self._kv_known[(namespace, key)] = value
        self._kv_known.move_to_end((namespace, key))
        if len(self._kv_known) > self.max_pending:
            self._kv_known.popitem(last=False)

    async def kv_get(self, namespace: str, key: str) -> str | None:
        try:
            value = await self._call(lambda: self.inner.kv_get(namespace, key))
        except StoreUnavailable:
            if (namespace, key) in self._kv_known:  # a backend's ids, known before or since
                return self._kv_known[(namespace, key)]
            raise
        self._known(namespace, key, value)
        return value

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        await self._kv_write(namespace, key, value)

    async def kv_delete(self, namespace: str, key: str) -> None:
        await self._kv_write(namespace, key, None)

    async def _kv_write(self, namespace: str, key: str, value: str | None) -> None:
        """Set (None: delete); during an outage kept here and written when the store is back
        (bounded as the inbox's states: past that, StoreUnavailable)."""
        try:
            await self._call(lambda: self.inner.kv_set(namespace, key, value) if value is not None
                             else self.inner.kv_delete(namespace, key))
        except StoreUnavailable:
            if (namespace, key) not in self._kv_pending and \
                    len(self._kv_pending) >= self.max_pending:
                raise
            self._kv_pending[(namespace, key)] = value
        self._known(namespace, key, value)

    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        return await self._call(lambda: self.inner.kv_items(namespace, prefix))

    # -- shared rate limits: not counted while down --------------------------------------

    async def rate_take(self, key: str, limit: int, window: float, *,
                        now: float | None = None) -> float:
        try:
            return await self._call(lambda: self.inner.rate_take(key, limit, window, now=now))
        except StoreUnavailable:
            return 0.0

    async def rate_count(self, key: str, window: float, *, now: float | None = None) -> int:
        return await self._call(lambda: self.inner.rate_count(key, window, now=now))

    async def rate_block(self, key: str, until: float) -> None:
        try:
            await self._call(lambda: self.inner.rate_block(key, until))
        except StoreUnavailable:
            pass

    async def rate_restamp(self, key: str, since: float, at: float) -> None:
        try:
            await self._call(lambda: self.inner.rate_restamp(key, since, at))
        except StoreUnavailable:
            pass

    # -- conversation memory: empty while down -------------------------------------------

    async def history_append(self, conversation: str, exchange: Exchange, *, max_turns: int,
                             max_chars: int) -> None:
        try:
            await self._call(lambda: self.inner.history_append(
                conversation, exchange, max_turns=max_turns, max_chars=max_chars))
        except StoreUnavailable:
            pass

    async def history_read(self, conversation: str, *, max_turns: int,
                           max_chars: int) -> list[Exchange]:
        try:
            return await self._call(lambda: self.inner.history_read(
                conversation, max_turns=max_turns, max_chars=max_chars))
        except StoreUnavailable:
            return []

    async def history_trim(self, conversation: str, *, max_turns: int, max_chars: int) -> int:
        return await self._call(lambda: self.inner.history_trim(
            conversation, max_turns=max_turns, max_chars=max_chars))

    async def history_clear(self, conversation: str) -> int:
        return await self._call(lambda: self.inner.history_clear(conversation))

    # -- group context: not kept while down, none given ----------------------------------

    async def context_add(self, account: str, chat_id: int, thread_id: int | None,
                          line: ChatLine, *, keep: int) -> None:
        try:
            await self._call(lambda: self.inner.context_add(account, chat_id, thread_id, line,
                                                            keep=keep))
        except StoreUnavailable:
            log.debug("chat %s: a group message not kept as context: the store is down",
                      chat_id)

    async def context_take(self, account: str, chat_id: int,
                           thread_id: int | None) -> list[ChatLine]:
        try:
            return await self._call(lambda: self.inner.context_take(account, chat_id,
                                                                    thread_id))
        except StoreUnavailable:
            log.debug("chat %s: no group context given: the store is down", chat_id)
            return []

    async def context_prune(self, older_than: float) -> int:
        return await self._call(lambda: self.inner.context_prune(older_than))

    async def usage_add(self, row: UsageRow) -> None:
        await self._call(lambda: self.inner.usage_add(row))

    async def usage_rows(self, *, since: str, until: str | None = None,
                         account: str | None = None,
                         user_id: int | None = None) -> list[UsageRow]:
        return await self._call(lambda: self.inner.usage_rows(
            since=since, until=until, account=account, user_id=user_id))

    async def usage_prune(self, before: str) -> int:
        return await self._call(lambda: self.inner.usage_prune(before))
