"""The fake Telegram's update log: the account's update state (pts, qts, seq, date), each
channel's pts, and the answers to ``updates.getState``, ``updates.getDifference`` and
``updates.getChannelDifference`` read from it (core.telegram.org/api/updates).

Every update that moves a pts is kept as an :class:`Entry` in its :class:`Box` (the account's
common box, or one channel's): a new message, an edit, a deletion (``pts_count`` = the number
of messages deleted). A box keeps at most ``keep`` entries; a difference asked from before the
oldest one kept, or with more than ``too_long`` updates pending, is ``differenceTooLong`` /
``channelDifferenceTooLong``, as Telegram answers after a long outage.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from pyrogram import raw
from pyrogram.raw.core import TLObject

__all__ = ["DIFFERENCE_LIMIT", "Box", "Entry", "UpdateLog"]

#: Telegram's most messages (updates) in one ``differenceSlice`` / channel difference
DIFFERENCE_LIMIT = 100
#: entries a box keeps by default (older ones are gone: a difference from before is too long)
DEFAULT_KEEP = 10_000


@dataclass
class Entry:
    """One update of a box: ``pts`` is the box's pts after it."""

    pts: int
    pts_count: int
    date: int
    update: TLObject  # UpdateNewMessage, UpdateEditChannelMessage, UpdateDeleteMessages...

    @property
    def message(self) -> TLObject | None:
        """The new message, for a new-message update (else None: an "other update")."""
        if isinstance(self.update, (raw.types.UpdateNewMessage,
                                    raw.types.UpdateNewChannelMessage)):
            return self.update.message
        return None


@dataclass
class Box:
    """One pts sequence (the account's common box, or a channel's)."""

    pts: int = 1
    keep: int = DEFAULT_KEEP
    entries: deque[Entry] = field(default_factory=deque)

    @property
    def floor(self) -> int:
        """The lowest pts a difference can start from (updates before it are gone)."""
        if not self.entries:
            return self.pts
        first = self.entries[0]
        return first.pts - first.pts_count

    def add(self, update: TLObject, pts_count: int, date: int) -> Entry:
        """Log ``update`` (its ``pts``/``pts_count`` fields are set here)."""
        self.pts += pts_count
        update.pts = self.pts
        update.pts_count = pts_count
        entry = Entry(self.pts, pts_count, date, update)
        self.entries.append(entry)
        while len(self.entries) > self.keep:
            self.entries.popleft()
        return entry

    def since(self, pts: int) -> list[Entry]:
        return [e for e in self.entries if e.pts > pts]


class UpdateLog:
    """The account's update state and every box's log."""

    def __init__(self, *, keep: int = DEFAULT_KEEP, too_long: int | None = None) -> None:
        self.keep = keep
        #: more updates pending than this: the difference is too long (None: only past
        #: what is kept)
        self.too_long = too_long
        self.common = Box(keep=keep)
        self.channels: dict[int, Box] = {}  # raw channel id → its box
        self.qts = 0
        self.seq = 0
        self.date = 0

    def channel(self, channel_id: int) -> Box:
        box = self.channels.get(channel_id)
        if box is None:
            box = self.channels[channel_id] = Box(keep=self.keep)
        return box

    def box_of(self, channel_id: int | None) -> Box:
        return self.common if channel_id is None else self.channel(channel_id)

    def add(self, update: TLObject, *, channel_id: int | None, date: int,
            pts_count: int = 1) -> Entry:
        """Log an update of the common box (``channel_id`` None) or a channel's. A channel's
        entry is dated when it is logged (not older than now: a message can carry an old
        date), so that a difference can tell which channels have news since the client's
        date."""
        self.date = max(self.date, date)
        if channel_id is not None:
            date = max(date, int(time.time()))
        return self.box_of(channel_id).add(update, pts_count, date)

    def next_seq(self) -> int:
        """The ``seq`` of the next ``Updates`` container of the account."""
        self.seq += 1
        return self.seq

    def state(self, pts: int | None = None, date: int | None = None) -> TLObject:
        return raw.types.updates.State(pts=self.common.pts if pts is None else pts,
                                       qts=self.qts, date=self.date if date is None else date,
                                       seq=self.seq, unread_count=0)

    def _is_too_long(self, box: Box, pts: int) -> bool:
        pending = box.pts - pts
        return pts < box.floor or (self.too_long is not None and pending > self.too_long)

    def channel_news(self, date: int, told: Collection[int] = ()) -> list[TLObject]:
        """An ``updateChannel`` for each channel with entries logged at or after ``date``
        (the client's date), or with entries at all when not in ``told`` (channels the client
        fetched the difference of since it connected: pushes in flight when a client went
        away are not known to have arrived). As Telegram does in a difference's
        ``other_updates``, so that a client learns of a channel whose messages all came while
        it was away (a channel it already knows is told again: harmless)."""
        return [raw.types.UpdateChannel(channel_id=channel)
                for channel, box in self.channels.items()
                if box.entries and (channel not in told or box.entries[-1].date >= date)]

    def difference(self, pts: int, peers: Callable[[list[TLObject]], tuple[list, list]],
                   date: int = 0, told: Collection[int] = ()) -> TLObject:
        """``updates.getDifference`` from ``pts`` and ``date``: empty, whole, a slice of at
        most :data:`DIFFERENCE_LIMIT` updates, or too long. ``peers`` gives the (users, chats)
        the messages name. The whole (last) answer names the channels with news since
        ``date`` (:meth:`channel_news`)."""
        box = self.common
        news = self.channel_news(date, told)
        if pts >= box.pts and not news:
            return raw.types.updates.DifferenceEmpty(date=self.date, seq=self.seq)
        if pts < box.pts and self._is_too_long(box, pts):
            return raw.types.updates.DifferenceTooLong(pts=box.pts)
        pending = box.since(pts)
        part = pending[:DIFFERENCE_LIMIT]
        messages = [e.message for e in part if e.message is not None]
        others = [e.update for e in part if e.message is None]
        if len(part) == len(pending):
            others += news
        users, chats = peers(messages + others)
        if len(part) < len(pending):
            last = part[-1]
            return raw.types.updates.DifferenceSlice(
                new_messages=messages, new_encrypted_messages=[], other_updates=others,
                chats=chats, users=users, intermediate_state=self.state(last.pts, last.date))
        return raw.types.updates.Difference(
            new_messages=messages, new_encrypted_messages=[], other_updates=others,
            chats=chats, users=users, state=self.state())

    def channel_difference(self, channel_id: int, pts: int, limit: int,
                           peers: Callable[[list[TLObject]], tuple[list, list]],
                           dialog: Callable[[Box], TLObject],
                           ranges: list[tuple[int, int]] | None = None) -> TLObject:
        """``updates.getChannelDifference`` from ``pts`` (at most ``limit`` updates, and
        :data:`DIFFERENCE_LIMIT`); ``ranges``: only messages with ids in them (a
        ``channelMessagesFilter``)."""
        box = self.channel(channel_id)
        if pts >= box.pts:
            return raw.types.updates.ChannelDifferenceEmpty(final=True, pts=box.pts)
        limit = max(1, min(limit, DIFFERENCE_LIMIT))
        if self._is_too_long(box, pts):
            recent = [e.message for e in box.entries if e.message is not None][-limit:]
            users, chats = peers(recent)
            return raw.types.updates.ChannelDifferenceTooLong(
                final=True, dialog=dialog(box), messages=recent, chats=chats, users=users)
        pending = box.since(pts)
        part = pending[:limit]
        final = len(part) == len(pending)

        def wanted(entry: Entry) -> bool:
            message = entry.message
            return ranges is None or message is None or any(
                low <= message.id <= high for low, high in ranges)

        chosen = [e for e in part if wanted(e)]
        messages = [e.message for e in chosen if e.message is not None]
        others = [e.update for e in chosen if e.message is None]
        users, chats = peers(messages + others)
        return raw.types.updates.ChannelDifference(
            final=final or None, pts=part[-1].pts, new_messages=messages,
            other_updates=others, chats=chats, users=users)
