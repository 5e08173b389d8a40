"""The one rate limiter: "at most N events in any window of T seconds", awaited.

Used by backends for provider quotas (shared per credentials) and by the Telegram frontend for
flood control (global, per chat). A leaky bucket such as ``aiolimiter`` admits up to 2N events
in some window of T seconds (a full burst plus the drained rate), which a provider counting per
minute answers with 429; a sliding log never does.

:class:`StoreLimiter` is the same budget kept in the store (:meth:`tgmux.store.Store.rate_take`),
so that it holds across every process sharing the store; it falls back to a local
:class:`SlidingWindowLimiter` while the store fails.

A slot is stamped when it is granted, but a provider counts a request when it *arrives*: a
request held up on its way out (a slow connect, a starved process) by more than a backend's
padding would let the request reusing its slot arrive within the provider's period of it, a
429. So the transport says when the request of a slot went out — its headers written (an
aiohttp trace, :data:`SENT_TRACE`), or it failed before — and the stamp of the oldest grant not
yet sent moves to then (:meth:`SlidingWindowLimiter.sent`): the slot is free a period after its
request left, the network's own jitter being what the padding is for. Only the multiset of
stamps matters to a sliding window, so no handle is needed, and moving the oldest is never less
strict than moving the right one. A grant nobody reports keeps its grant time (the old rule).
Counting from the answer instead would be strict even against the network, but a reply that
takes 10 s to generate would cost a budget of 60 a minute 14 % of its throughput.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

import aiohttp

from tgmux.types import delay_notifier

if TYPE_CHECKING:
    from tgmux.store.base import Store

log = logging.getLogger("tgmux.ratelimit")


class Limiter(Protocol):
    """What a provider transport needs of a limiter (:func:`acquire_slot`)."""

    def delay(self) -> float: ...

    async def acquire(self) -> float: ...

    def penalize(self, seconds: float) -> None: ...

    def sent(self) -> None: ...


#: The limiter whose slot, just granted in this task, waits for its request to go out.
_granted: ContextVar[Limiter | None] = ContextVar("tgmux_rate_slot_granted", default=None)


def slot_granted(limiter: Limiter) -> None:
    """``limiter`` granted this task a slot: :func:`slot_sent` reports its request."""
    _granted.set(limiter)


def slot_sent(limiter: Limiter | None) -> None:
    """The request of the slot ``limiter`` granted this task went out now (or failed before):
    its slot counts from now. Once per grant: later calls do nothing until the next grant."""
    if limiter is not None and _granted.get() is limiter:
        _report_sent()


def _report_sent() -> None:
    limiter = _granted.get()
    if limiter is not None:
        _granted.set(None)
        if (sent := getattr(limiter, "sent", None)) is not None:  # (a limiter of old)
            sent()


async def acquire_slot(limiter: Limiter | None, notify_after: float) -> None:
    """Wait for the limiter; when the wait is ``notify_after`` seconds or more, tell the user
    first (through :data:`delay_notifier`). For any provider transport, HTTP or not."""
    if limiter is None:
        return
    pause = limiter.delay()
    if pause >= notify_after and (notify := delay_notifier.get()) is not None:
        await notify(pause)
    await limiter.acquire()
    slot_granted(limiter)  # its slot counts from when the request goes out (module doc)


async def _headers_sent(*_: object) -> None:
    _report_sent()


#: For a provider's aiohttp session: a request's slot counts from when its headers went out
#: (the trace runs in the task that sends it, where :func:`slot_granted` was said).
SENT_TRACE = aiohttp.TraceConfig()
SENT_TRACE.on_request_headers_sent.append(_headers_sent)
SENT_TRACE.freeze()


class SlidingWindowLimiter:
    """Admits at most ``limit`` acquisitions in any ``period``-second window, FIFO."""

    def __init__(
        self, limit: int, period: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._stamps: deque[float] = deque()  # sorted
        # The stamps of grants not yet sent, oldest first, bounded: a user that never calls
        # sent() (Telegram's flood limits) leaves them at their grant time, as before; room
        # for a request held up while 16 more were granted and sent
        self._pending: deque[float] = deque(maxlen=limit + 16)
        self._lock = asyncio.Lock()  # FIFO: waiters are admitted in arrival order

    def _prune(self, now: float) -> None:
        while self._stamps and self._stamps[0] <= now - self.period:
            self._stamps.popleft()

    def idle(self) -> bool:
        """Nothing in the window and nobody waiting: forgetting it changes nothing."""
        self._prune(self._clock())
        return not self._stamps and not self._lock.locked()

    def delay(self) -> float:
        """Seconds an acquisition made now would wait (0 when a slot is free)."""
        now = self._clock()
        self._prune(now)
        if len(self._stamps) < self.limit:
            return 0.0
        return max(0.0, self._stamps[len(self._stamps) - self.limit] + self.period - now)

    def free(self) -> bool:
        """A slot is free right now and nobody waits for one (:meth:`take` it at once)."""
        return not self._lock.locked() and self.delay() <= 0

    def take(self) -> None:
        """Take the slot :meth:`free` said is free (synchronously: nobody came between)."""
        self._stamp()

    def _stamp(self) -> None:
        now = self._clock()
        self._stamps.append(now)
        self._pending.append(now)

    def sent(self) -> None:
        """A request of a granted slot went out (or failed) now: it arrives about now, so its
        slot counts from now (module doc). Moves the oldest grant not yet sent; one already
        out of the window (a request held up longer than the period) counts from now all
        the same."""
        if not self._pending:
            return
        granted = self._pending.popleft()
        with contextlib.suppress(ValueError):  # (gone: a request slower than the period;
            self._stamps.remove(granted)  # it still arrives now and counts from now)
        bisect.insort(self._stamps, max(granted, self._clock()))

    async def acquire(self, then: Callable[[], Awaitable[object]] | None = None) -> float:
        """Wait for a slot; returns how long it waited. ``then``: awaited once the slot is
        free, still holding the place in the queue; the slot is stamped after it (e.g. a
        second limiter's slot: this one counts the event when it really happens)."""
        waited = 0.0
        async with self._lock:
            while (pause := self.delay()) > 0:
                await asyncio.sleep(pause)
                waited += pause
            if then is not None:
                await then()
                while (pause := self.delay()) > 0:  # a penalty came meanwhile
                    await asyncio.sleep(pause)
                    waited += pause
            self._stamp()
        return waited

    def penalize(self, seconds: float) -> None:
        """The other side said "wait": fill the window so nobody goes before ``seconds``."""
        until = self._clock() + seconds - self.period
        self._stamps.clear()
        self._stamps.extend([until] * self.limit)
        self._pending.clear()  # their stamps are gone: the penalty counts for them

    def note(self) -> None:
        """Record an acquisition made elsewhere (e.g. granted by the store) now, without
        waiting."""
        self._prune(self._clock())
        self._stamp()
        while len(self._stamps) > self.limit:
            self._stamps.popleft()

    async def __aenter__(self) -> SlidingWindowLimiter:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


class KeyedLimiter:
    """One :class:`SlidingWindowLimiter` per key, made on first use (e.g. per chat); limiters
    idle for a whole window are dropped now and then, so memory follows the active keys."""

    SWEEP_EVERY = 1024  # gets between sweeps

    def __init__(self, limit: int, period: float) -> None:
        self.limit = limit
        self.period = period
        self._limiters: dict[Hashable, SlidingWindowLimiter] = {}
        self._gets = 0

    def get(self, key: Hashable) -> SlidingWindowLimiter:
        self._gets += 1
        if self._gets % self.SWEEP_EVERY == 0:
            self.sweep()
        limiter = self._limiters.get(key)
        if limiter is None:
            limiter = self._limiters[key] = SlidingWindowLimiter(self.limit, self.period)
        return limiter

    def sweep(self) -> int:
        """Forget limiters with nothing in their window and nobody waiting."""
        idle = [key for key, limiter in self._limiters.items() if limiter.idle()]
        for key in idle:
            del self._limiters[key]
        return len(idle)

    def __len__(self) -> int:
        return len(self._limiters)

    async def acquire(self, key: Hashable) -> float:
        return await self.get(key).acquire()


# Per event loop: a limiter's asyncio lock belongs to the loop that first waited on it, so a
# second loop in the same process (tests, a restarted runner) must never get an old one.
_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                   dict[Hashable, SlidingWindowLimiter]] = (
    weakref.WeakKeyDictionary()
)


def shared_limiter(key: Hashable, limit: int, period: float) -> SlidingWindowLimiter:
    """A limiter shared by everything in this event loop that uses ``key`` (e.g. a provider's
    credentials): every backend instance using the same credentials shares one budget, set by
    the first caller. Call it from async code (it needs the running loop)."""
    per_loop = _shared.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get(key)
    if limiter is None:
        limiter = per_loop[key] = SlidingWindowLimiter(limit, period)
    elif (limiter.limit, limiter.period) != (limit, period):
        # One budget per key, whatever each user of it asks: the first setting wins.
        log.warning("rate limit for %s already set to %d per %gs; ignoring %d per %gs",
                    key[0] if isinstance(key, tuple) and key else "a shared key",
                    limiter.limit, limiter.period, limit, period)
    return limiter


class StoreLimiter:
    """"At most ``limit`` in any ``period`` seconds" for ``key``, counted in the store: every
    process sharing the store shares the budget (:meth:`~tgmux.store.Store.rate_take`).

    Same interface as :class:`SlidingWindowLimiter` (``delay``, ``acquire``, ``penalize``,
    ``sent``).
    When the store fails (or takes longer than :attr:`store_timeout`), a warning is logged once
    per outage and a local :class:`SlidingWindowLimiter` with the same limits admits instead
    (it knows this process's own recent acquisitions); the store is tried again after
    :attr:`retry_store` seconds. Acquiring never hangs on the store."""

    #: Seconds one store call may take before it counts as a failure.
    store_timeout = 2.0
    #: Seconds the local limiter is used after a store failure before the store is tried again.
    retry_store = 10.0

    def __init__(self, store: Store, key: str, limit: int, period: float, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("limit must be >= 1 and period > 0")
        self.store = store
        self.key = key
        self.limit = limit
        self.period = period
        self._clock = clock
        self.local = SlidingWindowLimiter(limit, period, clock=clock)
        self._lock = asyncio.Lock()  # FIFO within this process
        self._free_at = 0.0  # (clock) when the store's last answered wait ends
        self._failing_until: float | None = None  # (clock) use the local limiter until then
        self._tasks: set[asyncio.Task[None]] = set()
        # Per grant not yet sent, oldest first: the wall time before the store granted it
        # (its event is the oldest taken since), or None when the local limiter granted it.
        self._unsent: deque[float | None] = deque(maxlen=limit + 16)  # (as the local one)

    @property
    def failing(self) -> bool:
        return self._failing_until is not None

    def delay(self) -> float:
        """A local estimate of the wait: the rest of the store's last answered wait, or what
        this process alone has used of the budget, whichever is longer."""
        return max(0.0, self._free_at - self._clock(), self.local.delay())

    async def acquire(self) -> float:
        """Wait for a slot in the store's budget; returns how long it waited."""
        start = self._clock()
        async with self._lock:
            while True:
                if self._failing_until is not None and self._clock() < self._failing_until:
                    await self.local.acquire()
                    self._unsent.append(None)
                    break
                if self._tasks:  # this process's moves of sent slots land before it takes
                    await asyncio.gather(*list(self._tasks), return_exceptions=True)
                since = time.time()
                try:
                    async with asyncio.timeout(self.store_timeout):
                        wait = await self.store.rate_take(self.key, self.limit, self.period)
                except Exception as exc:
                    self._failed(exc)
                    continue
                if self._failing_until is not None:
                    log.warning("rate limit %s: the store answers again", self.key)
                    self._failing_until = None
                if wait <= 0:
                    self.local.note()
                    self._unsent.append(since)
                    break
                self._free_at = self._clock() + wait
                await asyncio.sleep(wait)
        return self._clock() - start

    def _failed(self, exc: BaseException) -> None:
        if self._failing_until is None:  # once per outage
            log.warning("rate limit %s: the store fails (%s); limiting in this process alone "
                        "meanwhile", self.key, str(exc) or type(exc).__name__)
        self._failing_until = self._clock() + self.retry_store

    def penalize(self, seconds: float) -> None:
        """The provider said "wait ``seconds``": locally at once, and in the store for the
        other processes (in the background)."""
        self.local.penalize(seconds)
        self._free_at = max(self._free_at, self._clock() + seconds)
        self._in_background(self.store.rate_block(self.key, time.time() + seconds))

    def sent(self) -> None:
        """A request of a granted slot went out (or failed) now: locally at once,
        and in the store for the other processes (in the background): the oldest event taken
        since its grant began counts from now (:meth:`~tgmux.store.Store.rate_restamp`)."""
        self.local.sent()
        if not self._unsent:
            return
        since = self._unsent.popleft()
        if since is not None:
            self._in_background(self.store.rate_restamp(self.key, since, time.time()))

    def _in_background(self, write: Coroutine[object, object, None]) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            write.close()
            return
        task = loop.create_task(self._write(write))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _write(self, write: Coroutine[object, object, None]) -> None:
        try:
            async with asyncio.timeout(self.store_timeout):
                await write
        except Exception as exc:
            self._failed(exc)

    async def written(self) -> None:
        """Wait for the store writes begun so far (penalties, answers): each is bounded by
        :attr:`store_timeout`."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> StoreLimiter:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None


_shared_store: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                         dict[tuple[int, str], StoreLimiter]] = (
    weakref.WeakKeyDictionary()
)


def shared_store_limiter(store: Store, key: str, limit: int, period: float) -> StoreLimiter:
    """A :class:`StoreLimiter` shared by everything in this event loop that uses ``key`` on
    ``store`` (as :func:`shared_limiter`: the first setting wins)."""
    per_loop = _shared_store.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get((id(store), key))
    if limiter is None or limiter.store is not store:
        limiter = per_loop[(id(store), key)] = StoreLimiter(store, key, limit, period)
    elif (limiter.limit, limiter.period) != (limit, period):
        log.warning("rate limit %s already set to %d per %gs; ignoring %d per %gs",
                    key, limiter.limit, limiter.period, limit, period)
    return limiter
