"""Sending one request to Telegram: the outgoing limiter, the error policy, delivery errors.

Every request that sends something goes through :class:`Sender`, which owns the one outgoing
limiter (:class:`FloodControl`) and follows :func:`retry_policy`, a pure function from an error
(and what is being sent, and how often it was tried) to a :class:`Decision`: try again, wait
the flood out, give up, or take it as done. In words:

- ``FloodWait``: Telegram refused the request, nothing was done; it is waited out and the same
  call made again (up to :data:`MAX_FLOOD_RETRIES` times and :data:`MAX_FLOOD_WAIT` seconds);
- ``MESSAGE_NOT_MODIFIED`` is success;
- errors that will not go away (bot blocked, chat write forbidden, peer invalid...) become one
  log line with the chat id and :class:`ChatUnavailable`, never a crash;
- Telegram refusing a text's formatting (``ENTITY_BOUNDS_INVALID``, ``ENTITIES_TOO_LONG``...)
  is one warning line and :class:`FormattingRefused`: the same text goes again without its
  entities (the outbox's job), so a reply is never lost to formatting;
- a new message is never sent a second time after a timeout or a server error: Pyrogram's
  session has already retried that very request (same ``random_id``, which Telegram
  deduplicates), and a fresh ``send_message`` would carry a new one, so a message whose answer
  was lost would appear twice. Only idempotent requests (edits, drafts, deletions, the command
  menu) are run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from pyrogram.errors import RPCError

from tgmux.config import FloodLimits
from tgmux.ratelimit import KeyedLimiter, SlidingWindowLimiter

__all__ = ["Attempt", "ChatUnavailable", "Decision", "DeliveryFailed", "FloodControl",
           "FloodWaitRequired", "FormattingRefused", "OutcomeUnknown", "ReplyGone", "Sender",
           "Verdict", "error_id", "retry_policy"]

log = logging.getLogger("tgmux.telegram")

T = TypeVar("T")

#: Errors after which nothing more can be sent to the chat (for now): logged, never retried.
CHAT_GONE = frozenset({
    "USER_IS_BLOCKED", "CHAT_WRITE_FORBIDDEN", "PEER_ID_INVALID", "INPUT_USER_DEACTIVATED",
    "USER_DEACTIVATED", "USER_DEACTIVATED_BAN", "CHANNEL_PRIVATE", "CHANNEL_INVALID",
    "CHAT_ID_INVALID", "CHAT_ADMIN_REQUIRED", "CHAT_RESTRICTED", "CHAT_SEND_PLAIN_FORBIDDEN",
    "CHAT_GUEST_SEND_FORBIDDEN", "USER_BANNED_IN_CHANNEL", "TOPIC_CLOSED", "TOPIC_DELETED",
    "BOT_KICKED", "USER_KICKED", "CHAT_FORBIDDEN", "BOT_BLOCKED",
})
#: The message we reply to is gone: send without the reply.
REPLY_GONE = frozenset({"REPLY_MESSAGE_ID_INVALID", "REPLY_TO_INVALID", "MESSAGE_ID_INVALID"})
FLOOD = frozenset({"FLOOD_WAIT_X", "FLOOD_PREMIUM_WAIT_X", "SLOWMODE_WAIT_X"})
#: Telegram refused a text's entities (ENTITY_BOUNDS_INVALID, ENTITY_TEXTURL_INVALID,
#: ENTITY_MENTION_USER_INVALID, ENTITIES_TOO_LONG...), not the text
FORMATTING_PREFIXES = ("ENTITY_", "ENTITIES_")

MAX_FLOOD_RETRIES = 5
MAX_FLOOD_WAIT = 3600.0  # seconds; beyond that the message is dropped (and logged)
MAX_TRANSIENT_RETRIES = 3


#: an error kurigram has no class for carries it in its value: "[400 ENTITY_TEXTURL_INVALID]"
_UNKNOWN_ID = re.compile(r"\[\d+ ([A-Z][A-Z0-9_]*)\]")


def error_id(exc: BaseException) -> str:
    code = getattr(exc, "ID", None)
    if code is None and isinstance(exc, RPCError):
        found = _UNKNOWN_ID.search(str(getattr(exc, "value", "") or ""))
        code = found.group(1) if found else None
    return str(code or getattr(exc, "NAME", None) or type(exc).__name__)


class ChatUnavailable(Exception):
    """Nothing can be sent to this chat (blocked, kicked, no rights): stop this reply."""


class DeliveryFailed(Exception):
    """This one request failed for good (logged); the reply goes on with its other parts."""


class FormattingRefused(DeliveryFailed):
    """Telegram refused the entities of a text (logged): send it again without them."""


class OutcomeUnknown(DeliveryFailed):
    """No answer (timeout, server error) even after retries: Telegram may or may not have
    done it. Not a refusal: nothing is concluded about the chat or the method."""


class FloodWaitRequired(DeliveryFailed):
    """Telegram asks to wait ``seconds`` before this request (raised instead of waiting when
    the caller said ``wait_floods=False``)."""

    def __init__(self, code: str, seconds: float) -> None:
        super().__init__(code)
        self.seconds = seconds


class ReplyGone(Exception):
    """The message to reply to no longer exists."""


class FloodControl:
    """The one outgoing limiter: overall per second, per private chat per second, per group
    per minute (``telegram.flood``), for every message and edit. Drafts (an ephemeral preview,
    not a message) take only an overall slot: they are paced by the stream, not charged to the
    chat's message limit. Chat actions have a budget of their own (``global_per_second``) and
    are skipped, never queued, when it is spent: "typing…" must never delay a reply."""

    def __init__(self, limits: FloodLimits) -> None:
        self.overall = SlidingWindowLimiter(limits.global_per_second, 1.0)
        self.actions = SlidingWindowLimiter(limits.global_per_second, 1.0)
        self.private = KeyedLimiter(limits.private_per_second, 1.0)
        self.group = KeyedLimiter(limits.group_per_minute, 60.0)
        self.limits = limits
        #: told the seconds of every FLOOD_WAIT (the metric tgmux_flood_wait_seconds_total)
        self.on_wait: Callable[[float], None] | None = None
        #: chat id -> requests waiting for a slot (a reply that only waits shows no "typing…")
        self.queued: dict[int, int] = {}

    def for_chat(self, chat_id: int) -> SlidingWindowLimiter:
        return self.private.get(chat_id) if chat_id > 0 else self.group.get(chat_id)

    def min_interval(self, chat_id: int) -> float:
        """The average spacing the chat's limit allows (edits are paced to it)."""
        if chat_id > 0:
            return 1.0 / self.limits.private_per_second
        return 60.0 / self.limits.group_per_minute

    async def acquire(self, chat_id: int | None) -> None:
        """A slot for a message (or edit) to ``chat_id``. A request to no chat (the command
        menu...) is not a message: it takes nothing from the messages' budget. The chat's
        slot is stamped only once the overall one is granted, when the request really goes:
        a message that waited for the overall budget must not eat into the chat's window."""
        if chat_id is None:
            return
        chat, overall = self.for_chat(chat_id), self.overall
        if chat.free() and overall.free():  # the common case: no waiting, no lock
            chat.take()
            overall.take()
            return
        with self.waiting(chat_id):
            await chat.acquire(then=overall.acquire)

    @contextlib.contextmanager
    def waiting(self, chat_id: int | None) -> Iterator[None]:
        """A request to ``chat_id`` waits for its turn meanwhile (see :attr:`queued`)."""
        if chat_id is None:
            yield
            return
        queued = self.queued
        queued[chat_id] = queued.get(chat_id, 0) + 1
        try:
            yield
        finally:
            left = queued.pop(chat_id) - 1
            if left:
                queued[chat_id] = left

    async def acquire_draft(self) -> None:
        """A slot for a draft: overall only (the bot's request rate stays bounded)."""
        await self.overall.acquire()

    async def acquire_action(self) -> bool:
        """A slot for a chat action if one is free right now (False: skip it)."""
        if self.actions.delay() > 0:
            return False
        await self.actions.acquire()
        return True

    def penalize(self, chat_id: int | None, seconds: float, *, action: bool = False,
                 draft: bool = False) -> None:
        """Telegram said FLOOD_WAIT for a request. Its waits are per method (and chat): a
        chat's wait slows that chat; a draft's slows that chat's drafts (the stream's job); a
        request to no chat (``set_bot_commands``...) slows nothing shared, its caller waits (or
        gives up) by itself."""
        if self.on_wait is not None:
            self.on_wait(seconds)
        if action:
            self.actions.penalize(seconds)
        elif chat_id is not None and not draft:
            self.for_chat(chat_id).penalize(seconds)


# -- the error policy ------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """What is being sent, as the error policy sees it, and how often it was tried."""

    #: an edit, a draft, a deletion, the command menu: running it twice does no harm (a new
    #: message is not: a second one could show up in the chat twice)
    idempotent: bool = False
    #: "typing…": best effort, never waited for, never an error
    chat_action: bool = False
    #: the message quotes another (ReplyGone when that one is gone)
    replying: bool = False
    #: False: a flood wait is the caller's to wait (FloodWaitRequired)
    wait_floods: bool = True
    #: flood waits this request already waited out
    floods: int = 0
    #: times it was run again after a timeout or a server error
    retries: int = 0


class Verdict(enum.Enum):
    WAIT = "wait"  # a flood wait: sleep ``delay`` seconds, then the same call again
    RETRY = "retry"  # no answer: sleep ``delay`` seconds (backoff), then the same call again
    GIVE_UP = "give_up"  # raise ``error``
    DONE = "done"  # nothing to do (MESSAGE_NOT_MODIFIED): as good as sent, returns None
    SKIP = "skip"  # a chat action that did not get through: returns None


class Why(enum.Enum):
    """What happened, for the log line."""

    FLOOD = "flood"  # Telegram asks to wait
    FLOOD_TOO_LONG = "flood_too_long"  # ... too long, or too often: dropped
    NOT_MODIFIED = "not_modified"
    ACTION_FAILED = "action_failed"  # a chat action met an error (logged at debug level)
    CHAT_GONE = "chat_gone"
    REPLY_GONE = "reply_gone"
    SERVER_ERROR = "server_error"  # a 5xx answer
    NO_ANSWER = "no_answer"  # a timeout, a connection error
    FORMATTING = "formatting"  # the text's entities were refused
    REFUSED = "refused"  # any other error Telegram answered with
    BUG = "bug"  # not an error from Telegram at all
    QUIET = "quiet"  # nothing to log


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: Why
    delay: float = 0.0
    error: Exception | None = None
    #: Telegram asked to wait this long: the chat (or the chat actions' budget) is slowed by
    #: it, whatever the verdict
    flood: float | None = None


def _flood_seconds(exc: BaseException) -> float | None:
    if isinstance(exc, RPCError) and error_id(exc) in FLOOD and isinstance(exc.value, int):
        return float(exc.value)
    return None


def retry_policy(exc: Exception, attempt: Attempt) -> Decision:
    """What to do after ``exc`` ended one try of a request (see the module docstring)."""
    best_effort = attempt.chat_action
    if isinstance(exc, RPCError):
        code = error_id(exc)
        seconds = _flood_seconds(exc)
        if seconds is not None:
            if best_effort:
                return Decision(Verdict.SKIP, Why.QUIET, flood=seconds)
            if not attempt.wait_floods:
                return Decision(Verdict.GIVE_UP, Why.QUIET,
                                error=FloodWaitRequired(code, seconds), flood=seconds)
            if attempt.floods + 1 > MAX_FLOOD_RETRIES or seconds > MAX_FLOOD_WAIT:
                return Decision(Verdict.GIVE_UP, Why.FLOOD_TOO_LONG, error=DeliveryFailed(code),
                                flood=seconds)
            return Decision(Verdict.WAIT, Why.FLOOD, delay=seconds, flood=seconds)
        if code == "MESSAGE_NOT_MODIFIED":
            return Decision(Verdict.DONE, Why.QUIET)
        if best_effort:
            return Decision(Verdict.SKIP, Why.ACTION_FAILED)
        if code in CHAT_GONE:
            return Decision(Verdict.GIVE_UP, Why.CHAT_GONE, error=ChatUnavailable(code))
        if attempt.replying and code in REPLY_GONE:
            return Decision(Verdict.GIVE_UP, Why.QUIET, error=ReplyGone(code))
        if code.startswith(FORMATTING_PREFIXES):
            return Decision(Verdict.GIVE_UP, Why.FORMATTING, error=FormattingRefused(code))
        if (exc.CODE or 0) >= 500:
            return _unanswered(exc, attempt, Why.SERVER_ERROR)
        return Decision(Verdict.GIVE_UP, Why.REFUSED, error=DeliveryFailed(code))
    if isinstance(exc, (OSError, TimeoutError, ConnectionError)):
        if best_effort:
            return Decision(Verdict.SKIP, Why.QUIET)
        return _unanswered(exc, attempt, Why.NO_ANSWER)
    if best_effort:  # a bug or an unknown request: logged, never crashes
        return Decision(Verdict.SKIP, Why.BUG)
    return Decision(Verdict.GIVE_UP, Why.BUG, error=DeliveryFailed(type(exc).__name__))


def _unanswered(exc: Exception, attempt: Attempt, why: Why) -> Decision:
    """A request whose outcome is unknown (timeout, server error): only an idempotent one is
    run again (after 1, 2, 4 s)."""
    if attempt.idempotent and attempt.retries < MAX_TRANSIENT_RETRIES:
        return Decision(Verdict.RETRY, why, delay=2.0 ** attempt.retries)
    return Decision(Verdict.GIVE_UP, why, error=OutcomeUnknown(error_id(exc)))


# -- the sender ------------------------------------------------------------------------------


class Sender:
    """Runs one Telegram request at a time through the limiter, with the error policy."""

    def __init__(self, flood: FloodControl, *, sleep: Callable[[float], Awaitable[Any]]
                 = asyncio.sleep) -> None:
        self.flood = flood
        self._sleep = sleep

    async def call(self, chat_id: int | None, what: str, make: Callable[[], Awaitable[T]], *,
                   chat_action: bool = False, replying: bool = False, idempotent: bool = False,
                   wait_floods: bool = True, draft: bool = False) -> T | None:
        """Run ``make()``; returns its result, or None for MESSAGE_NOT_MODIFIED. Raises
        ChatUnavailable, DeliveryFailed, and ReplyGone when ``replying`` and the message
        replied to is gone. A ``chat_action`` never raises and is skipped (None) when its
        budget is spent. A ``draft`` takes an overall slot only (see :class:`FloodControl`).

        ``FloodWait``: Telegram refused the request, nothing was done; it is waited out and the
        same call made again (``wait_floods=False``: FloodWaitRequired is raised instead).
        A timeout or server error (after Pyrogram's own retries of that very request) may
        hide a request Telegram did carry out: ``make()`` is run again only when
        ``idempotent`` (an edit, a draft, a deletion); a new message is given up (logged
        with the chat id), since a second one could show up in the chat twice."""
        attempt = Attempt(idempotent=idempotent, chat_action=chat_action, replying=replying,
                          wait_floods=wait_floods)
        while True:
            if chat_action:
                if not await self.flood.acquire_action():
                    return None
            elif draft:
                await self.flood.acquire_draft()
            else:
                await self.flood.acquire(chat_id)
            try:
                return await make()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                decision = retry_policy(exc, attempt)
                if decision.flood is not None:
                    self.flood.penalize(chat_id, decision.flood, action=chat_action,
                                        draft=draft)
                _log(decision, chat_id, what, exc, idempotent)
                if decision.verdict is Verdict.GIVE_UP:
                    assert decision.error is not None
                    raise decision.error from exc
                if decision.verdict in (Verdict.DONE, Verdict.SKIP):
                    return None
                if decision.verdict is Verdict.WAIT:
                    attempt = dataclasses.replace(attempt, floods=attempt.floods + 1)
                    with self.flood.waiting(None if draft or chat_action else chat_id):
                        await self._sleep(decision.delay)  # a flood wait: a send slot too
                    continue
                attempt = dataclasses.replace(attempt, retries=attempt.retries + 1)
                await self._sleep(decision.delay)


def _log(decision: Decision, chat_id: int | None, what: str, exc: Exception,
         idempotent: bool) -> None:
    """The log line for a decision of :func:`retry_policy`."""
    why = decision.why
    code = error_id(exc)
    if why is Why.FLOOD_TOO_LONG:
        log.error("chat %s: %s dropped: Telegram asks to wait %.0f s (%s)", chat_id, what,
                  decision.flood, code)
    elif why is Why.FLOOD:
        log.warning("chat %s: Telegram asks to wait %.0f s (%s); %s will be sent then",
                    chat_id, decision.delay, code, what)
    elif why is Why.ACTION_FAILED:
        log.debug("chat %s: %s failed: %s", chat_id, what, code)
    elif why is Why.CHAT_GONE:
        log.warning("chat %s: cannot send (%s); the reply is dropped", chat_id, code)
    elif why in (Why.SERVER_ERROR, Why.NO_ANSWER):
        if decision.verdict is Verdict.RETRY:
            log.warning("chat %s: %s: %s; retrying", chat_id, what,
                        code if why is Why.SERVER_ERROR else exc)
            return
        # given up: Telegram may or may not have done it
        cause = str(exc) or type(exc).__name__
        if idempotent:
            log.error("chat %s: %s failed: %s", chat_id, what, cause)
        else:
            log.error("chat %s: %s may or may not have reached the chat (%s); not sent again, "
                      "so that it cannot appear twice", chat_id, what, cause)
    elif why is Why.FORMATTING:
        log.warning("chat %s: %s: Telegram refused the formatting (%s); sending it as "
                    "plain text", chat_id, what, code)
    elif why is Why.REFUSED:
        log.error("chat %s: %s failed: %s", chat_id, what, exc)
    elif why is Why.BUG:
        if decision.verdict is Verdict.SKIP:
            log.debug("chat %s: %s failed", chat_id, what, exc_info=exc)
        else:
            log.error("chat %s: %s failed", chat_id, what, exc_info=exc)
