"""What the engine keeps about the backends a turn uses while it runs: how many turns use each
instance (so that one a reload removed is closed only once they are over), and the turn's
deadline around each step of a backend's stream."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from tgmux.backend import Backend
from tgmux.types import ReplyPart

__all__ = ["BackendsInUse", "StepDeadline"]


class BackendsInUse:
    """How many turns use each backend instance, so that one a reload removed is closed only
    once its turns are over."""

    def __init__(self) -> None:
        self._counts: dict[int, int] = {}  # by id(): a backend need not be hashable
        self._idle: dict[int, asyncio.Event] = {}

    @contextlib.contextmanager
    def hold(self, backends: list[Backend]) -> Iterator[None]:
        keys = [id(b) for b in backends]
        for key in keys:
            self._counts[key] = self._counts.get(key, 0) + 1
        try:
            yield
        finally:
            for key in keys:
                self._counts[key] -= 1
                if not self._counts[key]:
                    del self._counts[key]
                    if (idle := self._idle.pop(key, None)) is not None:
                        idle.set()

    async def idle(self, backend: Backend, timeout: float) -> bool:
        """Wait until no turn uses ``backend``; False when ``timeout`` passed first."""
        key = id(backend)
        if key not in self._counts:
            return True
        idle = self._idle.setdefault(key, asyncio.Event())
        try:
            async with asyncio.timeout(timeout):
                await idle.wait()
        except TimeoutError:
            return False
        return True


class StepDeadline:
    """``asyncio.timeout_at(deadline)`` around each step of a backend's stream, with one timer
    for the whole stream instead of one per step (a step is most of a reply's parts: the
    per-step timer was a measurable share of the engine's time per message). As with a timeout
    per step, only a step that waits is cut: past the deadline, the next step that has to wait
    raises TimeoutError; time the frontend takes between steps cuts nothing."""

    def __init__(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        self._loop = loop
        self._deadline = deadline
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[Any] | None = None  # the one in a step now
        self._fired = False  # the deadline passed
        self._expired = False  # a step was cut for it

    async def next(self, source: AsyncIterator[ReplyPart]) -> ReplyPart:
        late: asyncio.Handle | None = None
        if self._timer is None:
            self._timer = self._loop.call_at(self._deadline, self._expire)
        elif self._fired:  # past the deadline: a step that has to wait is cut, as a timeout's
            late = self._loop.call_soon(self._expire)
        # the frontend may drive the stream from another task than the last step's
        task = self._task = asyncio.current_task()
        assert task is not None
        cancelling = task.cancelling()
        try:
            return await anext(source)
        except asyncio.CancelledError:
            if self._expired and task.uncancel() <= cancelling:
                raise TimeoutError from None
            raise
        finally:
            self._task = None
            if late is not None:
                late.cancel()

    def _expire(self) -> None:
        self._fired = True
        if self._task is not None and not self._expired:
            self._expired = True
            self._task.cancel()

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
