"""``store: memory://``: everything in memory, for tests and throwaway runs."""

from __future__ import annotations

import bisect
import dataclasses
import time
from collections import OrderedDict, deque
from typing import Any

from tgmux.store.base import (
    DEFAULT_ACCOUNT,
    AccountHolder,
    AccountLease,
    Store,
    StreamPosition,
    Unanswered,
)
from tgmux.store.changes import Change
from tgmux.types import ChatLine, Exchange, UsageRow

_Key = tuple[str, int, int]  # (account, chat_id, message_id)


class MemoryStore(Store):
    """Everything in memory (``store: memory://``): for tests and throwaway runs. Account
    leases are local to this store object (nothing else can see them)."""

    #: Answered messages remembered for dedup, at most (oldest forgotten first): memory is
    #: not a place to keep a week of a busy bot's messages.
    MAX_DONE = 100_000
    #: Conversations remembered at most (the least recently written forgotten first).
    MAX_CONVERSATIONS = 10_000
    #: Chats (topics) whose group context is kept at most (the least recently written
    #: forgotten first).
    MAX_CONTEXT_CHATS = 10_000

    schema_version = None

    def __init__(self) -> None:
        self.overrides: dict[tuple[str, int], str] = {}
        self.kv: dict[tuple[str, str], str] = {}
        self.inbox: dict[_Key, tuple[str, dict[str, Any] | None, float]] = {}
        self._done: deque[_Key] = deque()
        self._seq = 0
        self._order: dict[_Key, int] = {}
        self.leases: dict[str, MemoryLease] = {}
        self.rate_events: dict[str, deque[float]] = {}
        self.rate_blocks: dict[str, float] = {}
        self._rate_windows: dict[str, float] = {}
        self.histories: OrderedDict[str, list[Exchange]] = OrderedDict()
        self.sessions: dict[str, str] = {}
        self.positions: dict[str, StreamPosition] = {}
        self.context: OrderedDict[tuple[str, int, int], deque[ChatLine]] = OrderedDict()
        #: usage rows by key (bounded by days x users x chats x models; pruned by age)
        self.usage: dict[tuple[str, str, int | None, int, str, str], UsageRow] = {}

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def get_override(self, chat_id: int, *, account: str = DEFAULT_ACCOUNT) -> str | None:
        return self.overrides.get((account, chat_id))

    async def set_override(self, chat_id: int, backend: str | None, *,
                           account: str = DEFAULT_ACCOUNT) -> None:
        if backend is None:
            self.overrides.pop((account, chat_id), None)
        else:
            self.overrides[(account, chat_id)] = backend
        self._told(Change("override", account=account, chat_id=chat_id))

    async def kv_get(self, namespace: str, key: str) -> str | None:
        return self.kv.get((namespace, key))

    async def kv_set(self, namespace: str, key: str, value: str) -> None:
        self.kv[(namespace, key)] = value
        self._kv_told(namespace, key)

    async def kv_delete(self, namespace: str, key: str) -> None:
        self.kv.pop((namespace, key), None)
        self._kv_told(namespace, key)

    async def kv_items(self, namespace: str, prefix: str = "") -> list[tuple[str, str]]:
        return sorted(
            (k, v) for (ns, k), v in self.kv.items() if ns == namespace and k.startswith(prefix)
        )

    async def inbox_accept(self, chat_id: int, message_id: int, payload: dict[str, Any], *,
                           account: str = DEFAULT_ACCOUNT,
                           position: StreamPosition | None = None) -> bool:
        key = (account, chat_id, message_id)
        if position is not None:
            await self.position_write(position, account=account)
        if key in self.inbox:
            return False
        self.inbox[key] = ("pending", payload, time.time())
        self._seq += 1
        self._order[key] = self._seq
        return True

    async def session_read(self, account: str = DEFAULT_ACCOUNT) -> str | None:
        return self.sessions.get(account)

    async def session_write(self, session: str | None, *, account: str = DEFAULT_ACCOUNT
                            ) -> None:
        if session is None:
            self.sessions.pop(account, None)
        else:
            self.sessions[account] = session

    async def position_read(self, account: str = DEFAULT_ACCOUNT) -> StreamPosition | None:
        return self.positions.get(account)

    async def position_write(self, position: StreamPosition | None, *,
                             account: str = DEFAULT_ACCOUNT) -> None:
        if position is None:
            self.positions.pop(account, None)
        elif (kept := self.positions.get(account)) is None or kept.order < position.order:
            self.positions[account] = position

    async def inbox_dispatched(self, chat_id: int, message_id: int, *,
                               account: str = DEFAULT_ACCOUNT) -> None:
        key = (account, chat_id, message_id)
        entry = self.inbox.get(key)
        if entry is not None and entry[0] == "pending":
            self.inbox[key] = ("dispatched", entry[1], entry[2])

    async def inbox_done(self, chat_id: int, message_id: int, *,
                         account: str = DEFAULT_ACCOUNT) -> None:
        key = (account, chat_id, message_id)
        entry = self.inbox.get(key)
        if entry is None or entry[0] != "done":
            self._done.append(key)
        self.inbox[key] = ("done", None, entry[2] if entry else time.time())
        self._order.pop(key, None)
        while len(self._done) > self.MAX_DONE:
            old = self._done.popleft()
            if (found := self.inbox.get(old)) is not None and found[0] == "done":
                del self.inbox[old]

    async def inbox_unanswered(self, *, account: str = DEFAULT_ACCOUNT) -> list[Unanswered]:
        found = [((t, self._order.get(k, 0)), Unanswered(p, s == "dispatched"))
                 for k, (s, p, t) in self.inbox.items()
                 if k[0] == account and s != "done" and p is not None]
        return [u for _, u in sorted(found, key=lambda x: x[0])]

    async def inbox_backlog(self, *, account: str = DEFAULT_ACCOUNT) -> int:
        return sum(1 for k, (s, _, _) in self.inbox.items() if k[0] == account and s != "done")

    async def inbox_prune(self, older_than: float, *, account: str | None = None) -> int:
        old = [k for k, (s, _, t) in self.inbox.items()
               if s == "done" and t < older_than and account in (None, k[0])]
        for key in old:
            del self.inbox[key]
        if old:
            self._done = deque(k for k in self._done if k in self.inbox)
        return len(old)

    async def history_append(self, conversation: str, exchange: Exchange, *, max_turns: int,
                             max_chars: int) -> None:
        self.histories.setdefault(conversation, []).append(exchange)
        self.histories.move_to_end(conversation)
        while len(self.histories) > self.MAX_CONVERSATIONS:
            self.histories.popitem(last=False)
        await self.history_trim(conversation, max_turns=max_turns, max_chars=max_chars)

    async def history_read(self, conversation: str, *, max_turns: int,
                           max_chars: int) -> list[Exchange]:
        kept: list[Exchange] = []
        total = 0
        for exchange in reversed(self.histories.get(conversation, [])[-max_turns:]
                                 if max_turns > 0 else []):
            total += exchange.chars
            if total > max_chars:
                break
            kept.append(exchange)
        return kept[::-1]

    async def history_trim(self, conversation: str, *, max_turns: int, max_chars: int) -> int:
        exchanges = self.histories.get(conversation)
        if exchanges is None:
            return 0
        kept = await self.history_read(conversation, max_turns=max_turns, max_chars=max_chars)
        forgotten = len(exchanges) - len(kept)
        if kept:
            self.histories[conversation] = kept
        else:
            del self.histories[conversation]
        return forgotten

    async def history_clear(self, conversation: str) -> int:
        return len(self.histories.pop(conversation, []))

    async def context_add(self, account: str, chat_id: int, thread_id: int | None,
                          line: ChatLine, *, keep: int) -> None:
        key = (account, chat_id, thread_id or 0)
        lines = self.context.get(key)
        if lines is None or lines.maxlen != keep:
            lines = self.context[key] = deque(lines or (), maxlen=max(1, keep))
        lines.append(line)
        self.context.move_to_end(key)
        while len(self.context) > self.MAX_CONTEXT_CHATS:
            self.context.popitem(last=False)

    async def context_take(self, account: str, chat_id: int,
                           thread_id: int | None) -> list[ChatLine]:
        return list(self.context.pop((account, chat_id, thread_id or 0), ()))

    async def context_prune(self, older_than: float) -> int:
        pruned = 0
        for key in list(self.context):
            lines = self.context[key]
            while lines and lines[0].at < older_than:
                lines.popleft()
                pruned += 1
            if not lines:
                del self.context[key]
        return pruned

    async def usage_add(self, row: UsageRow) -> None:
        old = self.usage.get(row.key)
        if old is not None:
            cost = row.cost if old.cost is None else old.cost + (row.cost or 0.0)
            row = dataclasses.replace(
                row, messages=old.messages + row.messages,
                input_tokens=old.input_tokens + row.input_tokens,
                output_tokens=old.output_tokens + row.output_tokens,
                cached_input_tokens=old.cached_input_tokens + row.cached_input_tokens,
                reasoning_tokens=old.reasoning_tokens + row.reasoning_tokens, cost=cost)
        self.usage[row.key] = row

    async def usage_rows(self, *, since: str, until: str | None = None,
                         account: str | None = None,
                         user_id: int | None = None) -> list[UsageRow]:
        return sorted((r for r in self.usage.values()
                       if since <= r.day and (until is None or r.day <= until)
                       and (account is None or r.account == account)
                       and (user_id is None or r.user_id == user_id)),
                      key=lambda r: (r.day, r.account, r.chat_id, r.backend, r.model))

    async def usage_prune(self, before: str) -> int:
        old = [key for key, row in self.usage.items() if row.day < before]
        for key in old:
            del self.usage[key]
        return len(old)

    async def hold_account(self, account: str) -> MemoryLease:
        return MemoryLease(self, account)

    async def known_accounts(self) -> set[str]:
        return {*self.leases, *self.sessions, *self.positions}

    #: Keys kept before the rate events of every key are swept (idle keys forgotten).
    RATE_SWEEP_KEYS = 1024

    async def rate_take(self, key: str, limit: int, window: float, *,
                        now: float | None = None) -> float:
        now = time.time() if now is None else now
        until = self.rate_blocks.get(key)
        if until is not None:
            if until > now:
                return until - now
            del self.rate_blocks[key]
        events = self.rate_events.get(key)
        if events is None:
            if len(self.rate_events) >= self.RATE_SWEEP_KEYS:
                self._rate_sweep(now)
            events = self.rate_events[key] = deque()
        self._rate_windows[key] = window
        while events and events[0] <= now - window:
            events.popleft()
        if len(events) < limit:
            events.append(now)
            return 0.0
        return max(0.0, events[len(events) - limit] + window - now)

    async def rate_count(self, key: str, window: float, *, now: float | None = None) -> int:
        now = time.time() if now is None else now
        return sum(1 for at in self.rate_events.get(key, ()) if at > now - window)

    def _rate_sweep(self, now: float) -> None:
        windows = self._rate_windows
        for key in [k for k, ev in self.rate_events.items()
                    if not ev or ev[-1] <= now - windows.get(k, 0.0)]:
            del self.rate_events[key]
            windows.pop(key, None)
        for key in [k for k, until in self.rate_blocks.items() if until <= now]:
            del self.rate_blocks[key]

    async def rate_block(self, key: str, until: float) -> None:
        self.rate_blocks[key] = max(until, self.rate_blocks.get(key, until))

    async def rate_restamp(self, key: str, since: float, at: float) -> None:
        events = self.rate_events.get(key)
        if not events:
            return
        index = bisect.bisect_left(events, since)  # the events are in time order
        if index < len(events) and events[index] < at:
            del events[index]
            bisect.insort(events, at)


class MemoryLease(AccountLease):
    """Held in the :class:`MemoryStore` object: excludes other leases on the same store."""

    def __init__(self, store: MemoryStore, account: str) -> None:
        super().__init__(account)
        self.store = store

    async def _try_acquire(self) -> bool:
        current = self.store.leases.get(self.account)
        if current is not None and current is not self and current.held:
            return False
        self.store.leases[self.account] = self
        return True

    async def _release(self) -> None:
        if self.store.leases.get(self.account) is self:
            del self.store.leases[self.account]

    async def holder(self) -> AccountHolder | None:
        current = self.store.leases.get(self.account)
        return current._holder if current is not None else None
