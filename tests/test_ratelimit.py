from __future__ import annotations

import asyncio
import time

from tgmux.ratelimit import KeyedLimiter, SlidingWindowLimiter


async def test_never_more_than_limit_in_any_window() -> None:
    limiter = SlidingWindowLimiter(5, 0.3)
    stamps: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        stamps.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(15)))
    stamps.sort()
    for i in range(len(stamps) - 5):
        assert stamps[i + 5] - stamps[i] >= 0.3 - 0.01
    assert stamps[-1] - stamps[0] < 0.3 * 2 + 0.2  # and no slower than needed


async def test_penalize_blocks_until_the_wait_is_over() -> None:
    limiter = SlidingWindowLimiter(10, 1.0)
    limiter.penalize(0.2)
    started = time.monotonic()
    await limiter.acquire()
    assert time.monotonic() - started >= 0.19


async def test_keys_are_independent() -> None:
    keyed = KeyedLimiter(1, 10)
    await keyed.acquire("a")
    started = time.monotonic()
    await keyed.acquire("b")
    assert time.monotonic() - started < 0.05


async def test_shared_limiter_is_one_budget_per_key_first_setting_wins() -> None:
    from tgmux.ratelimit import shared_limiter

    a = shared_limiter(("provider", "key-1"), 60, 60)
    assert shared_limiter(("provider", "key-1"), 30, 60) is a  # same credentials: same budget
    assert shared_limiter(("provider", "key-1"), 60, 60) is a
    assert (a.limit, a.period) == (60, 60)
    assert shared_limiter(("provider", "key-2"), 60, 60) is not a


async def test_keyed_limiters_of_idle_keys_are_forgotten() -> None:
    keyed = KeyedLimiter(1, 0.05)
    for chat in range(100):
        await keyed.acquire(chat)
    assert len(keyed) == 100
    await asyncio.sleep(0.06)
    await keyed.acquire("busy")
    assert keyed.sweep() == 100
    assert len(keyed) == 1  # the one still inside its window stays
