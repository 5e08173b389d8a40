"""Albums and bursts: several messages of one chat answered as one turn.

Telegram sends each item of an album (several photos with one caption) as a message of its
own, all with one ``media_group_id``, within a fraction of a second; and people write one
thought as three quick lines, or the Telegram app splits a long text in two. Each would be a
turn of its own, each answered. Here the chat's worker (:mod:`tgmux.engine`), having taken a
message, takes with it the queued messages of the same chat that belong to it:

- the further items of its album (same ``media_group_id``; at most :data:`ALBUM_MAX`, as on
  Telegram), waiting up to :data:`ALBUM_WAIT` seconds after the last one came for the next;
- with ``engine.merge_window`` > 0, the text messages of the same user (in the same topic)
  that came within the window of the previous one — by tgmux's clock and, where the frontend
  knows when they were sent (Telegram's whole seconds), by that too: messages fetched together
  after an outage, sent minutes apart, stay apart. It waits until the window after the last
  one has passed with nothing new. A media is not merged with texts: a backend that does not
  take its kind would refuse the texts with it.

A command (``/...``) is never merged with anything; a message of someone else (or a command)
ends the merge, so the chat's order is kept. A merge takes at most :data:`MERGE_MAX` messages
and :data:`MERGE_MAX_CHARS` characters of text. The wait happens in the chat's worker before
it takes one of the engine's concurrency slots: other chats are not delayed.

Each merged message was accepted in the store's inbox as it came (restart safety); the merged
turn marks them all dispatched, then done (``IncomingMessage.merged``). After a crash they are
queued again as they were, and merged again the same way (by their received times and dates):
an interrupted album gets one notice, not one per photo.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Protocol, TypeVar

from tgmux.text import utf16_len
from tgmux.types import Entity, IncomingMessage

__all__ = [
    "ALBUM_MAX",
    "ALBUM_WAIT",
    "MERGE_MAX",
    "MERGE_MAX_CHARS",
    "ChatQueue",
    "abandon",
    "finish",
    "joins",
    "merged",
    "message_ids",
    "take_turn",
]

#: seconds waited after an album's latest item for its next one (Telegram sends them within a
#: fraction of a second)
ALBUM_WAIT = 1.0
#: items of an album at most (Telegram's limit)
ALBUM_MAX = 10
#: messages merged into one turn at most
MERGE_MAX = 20
#: characters of a merged turn's text at most (four Telegram messages): the message that would
#: go beyond starts a turn of its own
MERGE_MAX_CHARS = 4 * 4096
#: Telegram dates messages in whole seconds: two sent 0.2 s apart can be a second apart
_DATE_SLACK = 1.0


class Queued(Protocol):
    """A message in its chat's queue, as the engine keeps it."""

    message: IncomingMessage
    ready: asyncio.Event  # accepted in the inbox (or known not to be)
    fresh: bool  # False: a duplicate, handled before
    interrupted: bool  # a backend had it when the process stopped
    done: asyncio.Future[None]


Q = TypeVar("Q", bound=Queued)


class ChatQueue(deque[Q]):
    """A chat's queue of messages; says when one is added (:func:`take_turn` waits for it)."""

    def __init__(self, items: Iterable[Q] = ()) -> None:
        super().__init__(items)
        self.arrived = asyncio.Event()
        #: nothing more will come (the engine stops): a turn waits for nothing
        self.closed = False

    def append(self, item: Q) -> None:
        super().append(item)
        self.arrived.set()

    def close(self) -> None:
        self.closed = True
        self.arrived.set()


def message_ids(message: IncomingMessage) -> list[int]:
    """The message ids a turn answers: its own and those merged into it."""
    first = message.chat.message_id
    return [*([first] if first is not None else []), *message.merged]


def _same_place(a: IncomingMessage, b: IncomingMessage) -> bool:
    return a.chat.message_thread_id == b.chat.message_thread_id


def joins(last: IncomingMessage, candidate: IncomingMessage, *, window: float,
          album_items: int) -> bool:
    """Whether ``candidate``, queued right after ``last``, is part of the same turn.
    ``album_items``: the items of ``last``'s album taken so far."""
    if candidate.command is not None or last.command is not None or \
            not _same_place(last, candidate):
        return False
    if candidate.media_group_id is not None and candidate.media_group_id == last.media_group_id:
        return album_items < ALBUM_MAX
    if window <= 0 or last.media is not None or candidate.media is not None:
        return False  # a burst is of texts: a backend that takes no such media refuses it all
    user = last.chat.user_id
    if user is None or candidate.chat.user_id != user:
        return False
    if candidate.received_at - last.received_at > window:
        return False
    return (candidate.sent_at is None or last.sent_at is None
            or candidate.sent_at - last.sent_at <= window + _DATE_SLACK)


def _wait_until(last: IncomingMessage, window: float, album_items: int) -> float:
    """Until when (unix time) a message may still come that joins ``last``."""
    bursts = window > 0 and last.command is None and last.media is None
    until = last.received_at + window if bursts else 0.0
    if last.media_group_id is not None and album_items < ALBUM_MAX:
        until = max(until, last.received_at + ALBUM_WAIT)
    return until


async def take_turn(queue: ChatQueue[Q], window: float, *,
                    clock: Callable[[], float] = time.time) -> list[Q]:
    """The queue's first message (ready, fresh) and the ones after it that belong to its
    turn, in order, waiting for more as the rules above say; ``window`` is
    ``engine.merge_window``. Nothing is taken off the queue: the turn is ``queue[:n]``."""
    first = queue[0]
    taken = [first]
    message = first.message
    if message.command is not None:
        return taken
    last, count, chars = message, 1, len(message.text)
    album_items = 1 if message.media_group_id is not None else 0
    loop = asyncio.get_running_loop()
    # the longest wait after each message, by the loop's clock: a wall clock set back (which
    # dates messages) must not make it longer
    longest = loop.time() + max(window, ALBUM_WAIT)
    while count < MERGE_MAX:
        if len(taken) == len(queue):
            if queue.closed:
                break
            queue.arrived.clear()
            left = min(_wait_until(last, window, album_items) - clock(),
                       longest - loop.time())
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await queue.arrived.wait()
            if len(taken) == len(queue):
                continue  # the time is checked again (a clock, not the event, says it is over)
        following = queue[len(taken)]
        candidate = following.message
        if chars + 1 + len(candidate.text) > MERGE_MAX_CHARS or \
                not joins(last, candidate, window=window, album_items=album_items):
            break  # (decided before its inbox accept: a message that cannot join waits for none)
        await following.ready.wait()  # being accepted in the inbox: soon (the store's timeout)
        if not following.fresh:  # a message handled before (a duplicate): passed over
            taken.append(following)
            continue
        if following.interrupted != first.interrupted:
            break
        if candidate.media_group_id is not None and \
                candidate.media_group_id == last.media_group_id:
            album_items += 1
        else:
            album_items = 1 if candidate.media_group_id is not None else 0
        taken.append(following)
        last, count, chars = candidate, count + 1, chars + 1 + len(candidate.text)
        longest = loop.time() + max(window, ALBUM_WAIT)
    return taken


def merged(taken: list[Q]) -> IncomingMessage:
    """One message of the turn's messages (a duplicate passed over is left out): the texts
    (captions too) joined by a line break, the first media as ``media`` and the others as
    ``album``, the further messages' ids as ``merged``; the chat (and the message replied to)
    of the first."""
    messages = [slot.message for slot in taken if slot.fresh]
    first = messages[0]
    if len(messages) == 1:
        return first
    texts: list[str] = []
    entities: list[Entity] = []
    offset = 0
    for message in messages:
        if not message.text:
            continue
        if texts:
            offset += 1  # the line break
        texts.append(message.text)
        entities += [dataclasses.replace(e, offset=e.offset + offset) for e in message.entities]
        offset += utf16_len(message.text)
    media = [each for m in messages
             for each in ((m.media, *m.album) if m.media is not None else m.album)]
    return dataclasses.replace(
        first,
        text="\n".join(texts),
        entities=tuple(entities),
        media=media[0] if media else None,
        album=tuple(media[1:]),
        addressed=any(m.addressed for m in messages),
        reply_to=next((m.reply_to for m in messages if m.reply_to is not None), None),
        merged=tuple(m.chat.message_id for m in messages[1:] if m.chat.message_id is not None),
    )


def finish(queue: ChatQueue[Q], taken: list[Q]) -> None:
    """The turn is over: its messages leave the queue, whoever waits for them is told."""
    for slot in taken:
        queue.popleft()
        if not slot.done.done():
            slot.done.set_result(None)


def abandon(taken: list[Q]) -> None:
    """The turn was cancelled (shutdown, a lost lease): whoever waits for its messages is
    told so (they stay in the inbox)."""
    for slot in taken:
        if not slot.done.done():
            slot.done.cancel()
