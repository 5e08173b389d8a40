"""One task per key: concurrent callers asking for the same thing (a provider user created
on first contact) share one attempt instead of racing each other.

Only attempts under way are held: an entry is removed when its task ends, so the map is
bounded by the work in flight. A caller that is cancelled does not cancel the attempt others
wait for (``asyncio.shield``); a failure reaches every caller waiting then, and the next call
tries again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

T = TypeVar("T")


class SingleFlight(Generic[T]):
    def __init__(self) -> None:
        self._running: dict[str, asyncio.Task[T]] = {}

    def __len__(self) -> int:
        return len(self._running)

    async def run(self, key: str, start: Callable[[], Awaitable[T]]) -> T:
        """``await start()``, or the result of the call already under way for ``key``."""
        task = self._running.get(key)
        if task is None:
            task = asyncio.ensure_future(start())
            self._running[key] = task
            task.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(task)

    def _finished(self, key: str, task: asyncio.Task[T]) -> None:
        if self._running.get(key) is task:
            del self._running[key]
        if not task.cancelled():
            task.exception()  # retrieved: waiters get it; no "never retrieved" warning
