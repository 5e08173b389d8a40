"""The one rate limiter: "at most N events in any window of T seconds", awaited.

Used by backends for provider quotas (shared per credentials) and by the Telegram frontend for
flood control (global, per chat). A leaky bucket such as ``aiolimiter`` admits up to 2N events
in some window of T seconds (a full burst plus the drained rate), which a provider counting per
minute answers with 429; a sliding log never does.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import deque
from collections.abc import Callable, Hashable

log = logging.getLogger("tgmux.ratelimit")


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
        self._stamps: deque[float] = deque()
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

    async def acquire(self) -> float:
        """Wait for a slot; returns how long it waited."""
        waited = 0.0
        async with self._lock:
            while (pause := self.delay()) > 0:
                await asyncio.sleep(pause)
                waited += pause
            self._stamps.append(self._clock())
        return waited

    def penalize(self, seconds: float) -> None:
        """The other side said "wait": fill the window so nobody goes before ``seconds``."""
        until = self._clock() + seconds - self.period
        self._stamps.clear()
        self._stamps.extend([until] * self.limit)

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
