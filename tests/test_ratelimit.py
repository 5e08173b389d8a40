from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

import tgmux.ratelimit
from tgmux.ratelimit import (
    KeyedLimiter,
    SlidingWindowLimiter,
    StoreLimiter,
    acquire_slot,
    slot_sent,
)
from tgmux.store import MemoryStore


class VirtualTime:
    """A clock that moves only when the one sleeper (behind a limiter's lock) sleeps, by
    exactly what it asked: the limiter's arithmetic, untouched by a loaded machine's stalls."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def virtual_time(monkeypatch: pytest.MonkeyPatch) -> VirtualTime:
    """Limiters made from now on read :class:`VirtualTime`, and their sleeps advance it."""
    clock = VirtualTime()
    monkeypatch.setitem(SlidingWindowLimiter.__init__.__kwdefaults__, "clock", clock)

    class Asyncio:
        sleep = staticmethod(clock.sleep)

        def __getattr__(self, name: str) -> object:
            return getattr(asyncio, name)

    monkeypatch.setattr(tgmux.ratelimit, "asyncio", Asyncio())
    return clock


async def test_never_more_than_limit_in_any_window(virtual_time: VirtualTime) -> None:
    limiter = SlidingWindowLimiter(5, 0.3)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        stamps.append(virtual_time())

    await asyncio.gather(*(one() for _ in range(15)))
    stamps.sort()
    for i in range(len(stamps) - 5):
        assert stamps[i + 5] - stamps[i] >= 0.3
    assert stamps[-1] - stamps[0] == pytest.approx(0.3 * 2)  # and no slower than needed


async def test_penalize_blocks_until_the_wait_is_over() -> None:
    limiter = SlidingWindowLimiter(10, 1.0)
    limiter.penalize(0.2)
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started >= 0.19


async def test_keys_are_independent() -> None:
    keyed = KeyedLimiter(1, 10)
    await keyed.acquire("a")
    async with asyncio.timeout(30):
        assert await keyed.acquire("b") == 0  # not the 10 s "a" must wait


async def test_shared_limiter_is_one_budget_per_key_first_setting_wins() -> None:
    from tgmux.ratelimit import shared_limiter

    a = shared_limiter(("provider", "key-1"), 60, 60)
    assert shared_limiter(("provider", "key-1"), 30, 60) is a  # same credentials: same budget
    assert shared_limiter(("provider", "key-1"), 60, 60) is a
    assert (a.limit, a.period) == (60, 60)
    assert shared_limiter(("provider", "key-2"), 60, 60) is not a


async def test_keyed_limiters_of_idle_keys_are_forgotten(virtual_time: VirtualTime) -> None:
    keyed = KeyedLimiter(1, 0.05)
    for chat in range(100):
        await keyed.acquire(chat)
    assert len(keyed) == 100
    virtual_time.now += 0.06  # their windows passed ("busy"'s, taken now, did not)
    await keyed.acquire("busy")
    assert keyed.sweep() == 100
    assert len(keyed) == 1  # the one still inside its window stays


class FailingStore(MemoryStore):
    """A store whose rate calls fail (or, with ``hang``, never answer)."""

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang
        self.broken = True
        self.calls = 0

    async def rate_take(self, key: str, limit: int, window: float, *,
                        now: float | None = None) -> float:
        self.calls += 1
        if not self.broken:
            return await super().rate_take(key, limit, window, now=now)
        if self.hang:
            await asyncio.Event().wait()
        raise ConnectionError("database is gone")

    async def rate_block(self, key: str, until: float) -> None:
        if not self.broken:
            return await super().rate_block(key, until)
        raise ConnectionError("database is gone")


async def test_a_store_limiter_shares_the_budget_through_the_store() -> None:
    store = MemoryStore()
    one = StoreLimiter(store, "k", 3, 60)
    two = StoreLimiter(store, "k", 3, 60)  # another process's, on the same data
    async with asyncio.timeout(30):  # 3 at once: none waits for the minute's window
        for n in range(3):
            await (one, two)[n % 2].acquire()
    # the 4th waits for the window, even through "two", which took only one of them itself
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.3):
            await two.acquire()


async def test_a_penalty_reaches_the_store_for_everyone() -> None:
    store = MemoryStore()
    one, two = StoreLimiter(store, "k", 10, 1.0), StoreLimiter(store, "k", 10, 1.0)
    one.penalize(60)
    assert one.delay() > 50
    await asyncio.sleep(0)  # the block is written in the background
    await asyncio.sleep(0)
    with pytest.raises(TimeoutError):  # "two" waits for the penalty too
        async with asyncio.timeout(0.3):
            await two.acquire()


async def test_a_failing_store_falls_back_to_a_local_limit_with_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    store = FailingStore()
    limiter = StoreLimiter(store, "k", 2, 0.3)
    started = time.monotonic()
    async with asyncio.timeout(5):
        for _ in range(4):
            await limiter.acquire()
        limiter.penalize(0.01)
        await asyncio.sleep(0.05)
    elapsed = time.monotonic() - started
    assert 0.29 <= elapsed < 4.5  # limited locally: 2, then 2 more a window later (not stuck)
    assert store.calls == 1  # not asked again until retry_store passed
    warnings = [r for r in caplog.records if "store fails" in r.getMessage()]
    assert len(warnings) == 1 and "database is gone" in warnings[0].getMessage()


async def test_a_store_that_never_answers_does_not_hang_acquire() -> None:
    limiter = StoreLimiter(FailingStore(hang=True), "k", 5, 1.0)
    limiter.store_timeout = 0.1
    started = time.monotonic()
    async with asyncio.timeout(10):
        await limiter.acquire()
    assert time.monotonic() - started < 5  # the store's 0.1 s, not its hang (CI is loaded)


async def test_the_store_is_tried_again_after_a_failure() -> None:
    store = FailingStore()
    limiter = StoreLimiter(store, "k", 5, 1.0)
    limiter.retry_store = 0.05
    await limiter.acquire()
    await asyncio.sleep(0.06)
    store.broken = False  # the database is back
    await limiter.acquire()
    assert not limiter.failing
    assert len(store.rate_events["k"]) == 1


# -- arrival: a slot counts from when its request went out ---------------------------------------
#
# The provider counts a request when it arrives, the limiter when it grants the slot. A request
# held up between the two (a slow connect, a starved process) by more than the padding would let
# the request that reuses its slot arrive within the provider's period of it: a 429.


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def serve(limiter: SlidingWindowLimiter, clock: Clock, delays: list[float]) -> list[float]:
    """Requests one after another as fast as ``limiter`` grants them (time is ``clock``'s): the
    i-th goes out (and arrives) ``delays[i]`` after its grant, and the transport says so
    (``sent``). Returns when each arrived."""
    arrivals: list[float] = []
    unanswered: list[float] = []  # answer times still to come
    for delay in delays:
        while True:
            wait = limiter.delay()
            if unanswered and min(unanswered) <= clock.now + wait:
                clock.now = max(clock.now, min(unanswered))
                unanswered.remove(min(unanswered))
                limiter.sent()
                continue
            clock.now += wait
            if limiter.delay() <= 0:
                break
        limiter.take()
        arrivals.append(clock.now + delay)
        unanswered.append(clock.now + delay)
    return sorted(arrivals)


def most_in_a_window(arrivals: list[float], period: float) -> int:
    """The most arrivals in any window of ``period`` seconds, as the provider counts them."""
    return max(sum(1 for b in arrivals if a <= b < a + period) for a in arrivals)


# (late by more than the whole period is not covered: the grant has left the window before its
# answer, and holding it longer would stall a user that never says sent())
@pytest.mark.parametrize("late", [0.2, 0.6, 1.0])
async def test_a_late_arrival_does_not_let_the_next_window_in_within_its_period(
        late: float) -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(2, 1.05, clock=clock)  # 2 per 1 s, padded as a backend does
    # every third request is held up on its way by more than the padding
    delays = [late if n % 3 == 0 else 0.0 for n in range(30)]
    arrivals = serve(limiter, clock, delays)
    assert most_in_a_window(arrivals, 1.0) <= 2


async def test_a_late_request_moves_the_oldest_unsent_stamp() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(2, 1.0, clock=clock)
    await limiter.acquire()
    await limiter.acquire()
    limiter.sent()  # one answered at once
    clock.now += 0.3
    limiter.sent()  # the other 0.3 s after its grant
    clock.now += 0.7
    assert limiter.delay() == 0.0  # the first slot is free a period after its grant
    limiter.take()
    assert limiter.delay() == pytest.approx(0.3)  # the second a period after its answer
    limiter.sent()
    limiter.sent()  # nothing left unanswered: no stamp moves
    assert limiter.delay() == pytest.approx(0.3)


async def test_unsent_grants_are_bounded_and_change_nothing() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(3, 1.0, clock=clock)
    for _ in range(100):  # a user that never says (the Telegram flood limits)
        clock.now += 1.0
        await limiter.acquire()
    assert len(limiter._pending) == 3 + 16
    assert limiter.delay() == 0.0


async def test_a_request_held_up_longer_than_the_period_counts_from_when_it_went_out() -> None:
    clock = Clock()
    limiter = SlidingWindowLimiter(1, 1.0, clock=clock)
    await limiter.acquire()  # A, granted and held up
    clock.now += 1.0
    await limiter.acquire()  # B, granted (A's stamp is a period old) and sent at once
    limiter.sent()  # (the oldest grant not yet sent is A's: moved, never less strict)
    clock.now += 0.5
    limiter.sent()  # A goes out at last
    assert limiter.delay() == pytest.approx(1.0)  # C waits a period after A, not after B


async def test_a_slot_is_reported_once_and_only_to_the_limiter_that_granted_it() -> None:
    clock = Clock()
    granting, other = SlidingWindowLimiter(1, 1.0, clock=clock), SlidingWindowLimiter(1, 1.0)
    await acquire_slot(granting, notify_after=10)
    clock.now += 0.5
    slot_sent(other)  # another client's report (its own grant was never said): not this one
    slot_sent(None)
    assert granting.delay() == pytest.approx(0.5)  # still counted from its grant
    slot_sent(granting)
    slot_sent(granting)  # once a grant
    assert granting.delay() == pytest.approx(1.0)


async def test_a_limiter_without_sent_still_works() -> None:
    """A transport's limiter from before ``sent`` (a plugin's own) is paced as it was."""

    class Old:
        def __init__(self) -> None:
            self.window = SlidingWindowLimiter(1, 60.0)

        def delay(self) -> float:
            return self.window.delay()

        async def acquire(self) -> float:
            return await self.window.acquire()

        def penalize(self, seconds: float) -> None:
            self.window.penalize(seconds)

    old = Old()
    await acquire_slot(old, notify_after=10)  # type: ignore[arg-type]
    slot_sent(old)  # type: ignore[arg-type]
    assert old.delay() > 59


async def test_a_store_limiter_takes_only_after_its_moves_of_sent_slots_landed() -> None:
    """A slot's move to when its request went out is written in the background; this
    process's next take waits for it (a take before it would see the slot's older stamp:
    after a stall, a request too many in the provider's window)."""
    calls: list[str] = []
    gate = asyncio.Event()

    class Slow(MemoryStore):
        async def rate_take(self, *args: object, **kwargs: object) -> float:
            calls.append("take")
            return await super().rate_take(*args, **kwargs)  # type: ignore[arg-type]

        async def rate_restamp(self, key: str, since: float, at: float) -> None:
            calls.append("move")
            await gate.wait()
            await super().rate_restamp(key, since, at)
            calls.append("moved")

    limiter = StoreLimiter(Slow(), "k", 1, 60.0)
    await limiter.acquire()
    limiter.sent()
    second = asyncio.create_task(limiter.acquire())
    for _ in range(50):  # as far as it goes without the move (no time passes: loop turns)
        await asyncio.sleep(0)
    assert calls == ["take", "move"]
    gate.set()
    for _ in range(50):
        await asyncio.sleep(0)
    second.cancel()  # (it waits the minute of the slot)
    with contextlib.suppress(asyncio.CancelledError):
        await second
    assert calls == ["take", "move", "moved", "take"]


async def test_a_store_limiter_moves_its_local_stamp_too_while_the_store_fails() -> None:
    store = FailingStore()
    clock = Clock()
    limiter = StoreLimiter(store, "k", 1, 1.0, clock=clock)
    await limiter.acquire()  # the store fails: the local limiter grants
    clock.now += 0.4
    limiter.sent()
    await limiter.written()
    clock.now += 0.7
    assert limiter.delay() == pytest.approx(0.3)
