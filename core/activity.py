"""What the operator's console shows of the last hour, counted in this process's memory: the
messages received per minute, each backend's replies and errors per minute (and its last
error), and the chats seen recently.

Fed where the engine already counts (:class:`tgmux.metrics.Metrics` holds one): a message is
one slot increment and one bounded map update (O(1), no store write, nothing awaited), so the
console costs a message nothing measurable, on or off. Everything here is bounded: 60 slots per
counter, :data:`RECENT_CHATS` chats.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from tgmux.redact import redact
from tgmux.types import ChatIdentity, IncomingMessage

__all__ = ["RECENT_CHATS", "Activity", "BackendActivity", "MinuteCounter", "SeenChat"]

#: Chats remembered at most (the least recently seen are forgotten first).
RECENT_CHATS = 10_000
#: Characters of a last error's text kept.
ERROR_CHARS = 300
MINUTES = 60


class MinuteCounter:
    """Counts per minute for the last :data:`MINUTES` minutes (a ring of slots)."""

    __slots__ = ("_minute", "_slots")

    def __init__(self) -> None:
        self._slots = [0] * MINUTES
        self._minute = 0  # the minute (unix time // 60) of the last slot

    def _roll(self, minute: int) -> None:
        if minute <= self._minute:
            return
        gone = min(minute - self._minute, MINUTES)
        self._slots = self._slots[gone:] + [0] * gone
        self._minute = minute

    def add(self, at: float, amount: int = 1) -> None:
        minute = int(at // 60)
        if minute != self._minute:
            self._roll(minute)  # (a clock that stepped back: counted in the last slot)
        self._slots[-1] += amount

    def last_hour(self, now: float | None = None) -> list[int]:
        """The counts of the last 60 minutes, oldest first (the current minute last)."""
        self._roll(int((time.time() if now is None else now) // 60))
        return list(self._slots)


@dataclass
class BackendActivity:
    replies: MinuteCounter
    errors: MinuteCounter
    last_error: str | None = None  # "kind: text", redacted
    last_error_at: float | None = None  # unix time


@dataclass(frozen=True)
class SeenChat:
    chat: ChatIdentity  # as the chat's last message had it (title, username, topic)
    at: float  # unix time of that message


class Activity:
    def __init__(self) -> None:
        self.messages = MinuteCounter()
        self.backends: dict[str, BackendActivity] = {}
        self.chats: OrderedDict[tuple[str, int], SeenChat] = OrderedDict()

    def seen(self, message: IncomingMessage) -> None:
        """A message was received (the engine's intake: keep it O(1))."""
        at = message.received_at
        self.messages.add(at)
        chat = message.chat
        key = (chat.account, chat.chat_id)
        chats = self.chats
        if key in chats:
            chats.move_to_end(key)
        elif len(chats) >= RECENT_CHATS:
            chats.popitem(last=False)
        chats[key] = SeenChat(chat, at)

    def replied(self, backend: str, outcome: str, failure: BaseException | None,
                kind_of: Callable[[BaseException], str]) -> None:
        """A backend's reply ended: ``outcome`` as ``tgmux_replies`` counts it; ``kind_of``
        names a failure's error kind."""
        entry = self.backends.get(backend)
        if entry is None:
            entry = self.backends[backend] = BackendActivity(MinuteCounter(), MinuteCounter())
        now = time.time()
        if outcome == "ok":
            entry.replies.add(now)
        elif outcome in ("error", "fell_back"):
            entry.errors.add(now)
            kind = kind_of(failure) if failure is not None else outcome
            text = next(iter(str(failure or "").strip().splitlines()), "")
            said = f"{kind}: {text}" if text else kind
            # redacted whole, then cut: a secret the cut split would no longer be known
            entry.last_error = redact(said)[:ERROR_CHARS]
            entry.last_error_at = now
