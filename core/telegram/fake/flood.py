"""Telegram's flood limits, as the fake Telegram enforces them when asked to
(``FakeTelegram(flood=FloodModel())``, ``tgmux simulate --strict-flood``, on by default in
``tgmux.testing``).

What counts is what shows up in a chat: a new message (text or media) and an edit. Drafts,
chat actions and everything else do not (Telegram documents drafts as an ephemeral preview
and names no limit for them). A request over a limit is refused with ``FLOOD_WAIT_X`` and
does not count; X is the whole seconds until it would be admitted.

- overall: at most ``global_per_second`` messages in any second;
- a private chat: ``private_per_second`` on average, with short bursts of up to
  ``private_burst`` (Telegram: "we may allow short bursts that go over this limit");
- a group: at most ``group_per_minute`` messages in any minute.

The sliding windows forgive ``jitter`` seconds at their edge: a client that spaces its sends
exactly by the limit sees them arrive a little unevenly (scheduling, the network).
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tgmux.config import FloodLimits

__all__ = ["FloodModel"]


class _Window:
    """At most ``limit`` events in any ``period`` seconds (less ``jitter``)."""

    def __init__(self, limit: int, period: float, jitter: float) -> None:
        self.limit = limit
        self.span = max(period - jitter, period / 2)
        self.stamps: deque[float] = deque()

    def wait(self, now: float) -> float:
        stamps = self.stamps
        while stamps and stamps[0] <= now - self.span:
            stamps.popleft()
        if len(stamps) < self.limit:
            return 0.0
        return stamps[len(stamps) - self.limit] + self.span - now

    def take(self, now: float) -> None:
        self.stamps.append(now)


class _Bucket:
    """``rate`` events per second on average, bursts of up to ``capacity``."""

    def __init__(self, rate: float, capacity: int, now: float) -> None:
        self.rate = rate
        self.capacity = float(capacity)
        self.tokens = float(capacity)
        self.at = now

    def wait(self, now: float) -> float:
        self.tokens = min(self.capacity, self.tokens + (now - self.at) * self.rate)
        self.at = now
        return 0.0 if self.tokens >= 1.0 else (1.0 - self.tokens) / self.rate

    def take(self, now: float) -> None:
        self.tokens -= 1.0


@dataclass
class FloodModel:
    """Telegram's limits for one bot (the defaults are Telegram's; see the module docstring)."""

    global_per_second: int = 30
    private_per_second: int = 1
    private_burst: int = 3
    group_per_minute: int = 20
    jitter: float = 0.05
    clock: Callable[[], float] = time.monotonic
    #: how many requests were refused (FLOOD_WAIT) so far
    refused: int = 0
    _overall: _Window | None = field(default=None, repr=False)
    _chats: dict[int, _Window | _Bucket] = field(default_factory=dict, repr=False)

    @classmethod
    def at_least(cls, limits: FloodLimits) -> FloodModel:
        """Telegram's limits, raised to ``limits`` where those are higher: a test config that
        raises ``telegram.flood`` (to run faster) says Telegram allows that much."""
        return cls(global_per_second=max(30, limits.global_per_second),
                   private_per_second=max(1, limits.private_per_second),
                   group_per_minute=max(20, limits.group_per_minute))

    def _chat(self, chat_id: int, now: float) -> _Window | _Bucket:
        limiter = self._chats.get(chat_id)
        if limiter is None:
            if len(self._chats) > 100_000:  # long simulations: forget chats quiet for long
                self._chats = {k: v for k, v in self._chats.items()
                               if isinstance(v, _Window) and v.wait(now) > 0}
            limiter = self._chats[chat_id] = (
                _Bucket(self.private_per_second, self.private_burst, now) if chat_id > 0
                else _Window(self.group_per_minute, 60.0, self.jitter))
        return limiter

    def admit(self, chat_id: int) -> int:
        """A message or edit to ``chat_id`` arrives: 0 when admitted (and counted), else the
        seconds of the FLOOD_WAIT Telegram answers with (nothing counted)."""
        now = self.clock()
        if self._overall is None:
            self._overall = _Window(self.global_per_second, 1.0, self.jitter)
        chat = self._chat(chat_id, now)
        wait = max(self._overall.wait(now), chat.wait(now))
        if wait > 0:
            self.refused += 1
            return max(1, math.ceil(wait))
        self._overall.take(now)
        chat.take(now)
        return 0
