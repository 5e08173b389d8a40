"""tgmux's own sequencing of Telegram's update stream (core.telegram.org/api/updates).

kurigram saves a new pts before it has the message, fetches the message with
``updates.getDifference`` inside its update handler (one FLOOD_WAIT there loses it; with
latency two messages come out reordered and doubled), only logs ``updatesTooLong`` /
``updateChannelTooLong``, and commits the position at start and stop only. :class:`UpdateStream`
takes its place as the client's ``handle_updates``:

- every push (and the updates in a request's answer) goes into one bounded queue, read by one
  task: the account's pts and qts and each channel's pts are checked in order (seq and date
  are kept, not checked: every message moves a pts);
  an update is applied when ``local_pts + pts_count == pts``, skipped when already applied,
  and held as a gap otherwise: if the missing update does not come within :data:`GAP_WAIT`
  seconds, the difference is fetched (``getDifference`` / ``getChannelDifference``, slice
  after slice);
- ``updatesTooLong`` and ``updateChannelTooLong`` fetch the difference at once; a compact
  ``updateShortMessage`` / ``updateShortChatMessage`` is made a full message from the peers
  already seen (or fetched by the difference when they are not);
- difference calls run under their own flood handling: a FLOOD_WAIT is waited out, other
  errors are retried with a bounded backoff; nothing is given up and the client keeps going;
- ``differenceTooLong`` is never silent: one log line, ``tgmux_updates_skipped_total``; a user
  account fetches the skipped messages from its chats' history (``messages.getHistory``);
- full messages go to Pyrogram's dispatcher in order; the position applied is committed through
  a :class:`PositionStore` after each batch (:class:`SessionPosition`: the session storage);
- a revoked session or banned account (401) is reported once through ``on_revoked``; an idle
  account is probed (``updates.getState``) every :attr:`UpdateStream.probe_interval` seconds,
  so that this is known within seconds even when nothing is sent, and so that pushes lost with
  nothing after them (a reconnection) are fetched too.

Catch-up at start (:meth:`UpdateStream.start`) runs in the same task, after the account is
up, paced, under the same flood handling: a FLOOD_WAIT never fails a start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from typing import Any

from pyrogram import Client, raw, utils
from pyrogram.errors import (
    ChannelInvalid,
    ChannelPrivate,
    FloodWait,
    PersistentTimestampInvalid,
    PersistentTimestampOutdated,
    RPCError,
)
from pyrogram.raw.core import TLObject

from tgmux.telegram.position import PositionStore, SessionPosition, UpdatePosition
from tgmux.telegram.revoked import AccountRevoked, error_code, is_account_error

__all__ = ["GAP_WAIT", "UpdateStream"]

log = logging.getLogger("tgmux.telegram")

#: Seconds a gap waits for the missing update before the difference is fetched (Telegram's
#: advice: updates may arrive slightly out of order).
GAP_WAIT = 0.5
#: Most pushes held in the queue; past it a push is dropped and the difference fetched instead
#: (nothing is lost: Telegram keeps it).
MAX_QUEUED = 10_000
#: Most queue items handled before the position is committed (a burst: once at its end).
COMMIT_EVERY = 100
#: Most updates held per box while a gap is open; past it the difference is fetched at once.
MAX_HELD = 1_000
#: Most users and chats remembered to complete compact updates.
MAX_PEERS = 10_000
#: Seconds between a failed difference call and the next attempt: doubling, capped.
RETRY_FIRST, RETRY_MAX = 1.0, 60.0
#: The longest FLOOD_WAIT waited at once (then asked again).
MAX_FLOOD_SLEEP = 3600.0
#: Seconds between two channel differences at catch-up (many supergroups: paced).
CATCH_UP_PACE = 0.05
#: Messages a user account fetches per chat from history after a ``differenceTooLong``, and
#: the most chats it reads.
HISTORY_LIMIT, HISTORY_CHATS = 100, 100
_COMMON = 0  # the box key of the account's own sequence; a channel's is its raw id (> 0)


def _wire(obj: TLObject) -> TLObject:
    """As if it came off the network (lists, not None)."""
    return TLObject.read(BytesIO(obj.write()))


def _channel_of(update: TLObject) -> int | None:
    """The raw channel id an update's pts belongs to (None: the account's box)."""
    message = getattr(update, "message", None)
    peer = getattr(message, "peer_id", None)
    if isinstance(peer, raw.types.PeerChannel):
        return int(peer.channel_id)
    if isinstance(message, TLObject) and not isinstance(message, raw.types.MessageEmpty):
        return None
    channel = getattr(update, "channel_id", None)
    return int(channel) if channel is not None else None


@dataclass
class _Held:
    """An update waiting for a gap before it to be filled."""

    pts: int
    count: int
    update: TLObject
    users: dict[int, TLObject]
    chats: dict[int, TLObject]
    dispatch: bool  # False: from a request's answer (our own message): state only


class UpdateStream:
    """One account's update stream: see the module docstring.

    ``positions``: where the position is loaded from and committed to (default: the session
    storage). ``on_revoked(code)``: called once when Telegram refuses the account.
    ``on_skipped(count)``: updates a ``differenceTooLong`` skipped. ``on_flood_wait(seconds)``:
    a flood wait the difference calls waited out."""

    #: seconds without any answer from Telegram after which it is asked (``updates.getState``)
    #: whether the account is still usable (None: never)
    probe_interval: float | None = 3.0

    def __init__(self, client: Client, *, account: str = "main",
                 positions: PositionStore | None = None,
                 on_revoked: Callable[[str], None] | None = None,
                 on_skipped: Callable[[int], None] | None = None,
                 on_flood_wait: Callable[[float], None] | None = None,
                 gap_wait: float = GAP_WAIT) -> None:
        self.client = client
        self.account = account
        self.positions: PositionStore = positions or SessionPosition(client)
        self.on_revoked = on_revoked
        self.on_skipped = on_skipped
        self.on_flood_wait = on_flood_wait
        self.gap_wait = gap_wait
        self.position: UpdatePosition | None = None
        self.revoked: str | None = None
        #: the last time Telegram answered a request or pushed something (monotonic)
        self.last_heard = time.monotonic()
        self._queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(MAX_QUEUED)
        self._held: dict[int, dict[int, _Held]] = {}  # box → pts → update
        #: the catch-up at start is under way (what arrived while down is still being fetched)
        self._catching_up = False
        self._deadlines: dict[int, float] = {}  # box → when its gap is fetched
        #: boxes whose difference is due whatever is held (a qts gap, Telegram's state ahead,
        #: an update that could not be read): kept until fetched
        self._forced: set[int] = set()
        self._users: OrderedDict[int, TLObject] = OrderedDict()
        self._chats: OrderedDict[int, TLObject] = OrderedDict()
        self._last_incoming: OrderedDict[int, int] = OrderedDict()  # chat → last message id
        self._task: asyncio.Task[None] | None = None
        self._probe: asyncio.Task[None] | None = None
        self._dirty = False
        self._uncommitted = 0
        self._invoke = client.invoke
        client.invoke = self._invoke_watched  # type: ignore[method-assign]

    # -- the client's side ---------------------------------------------------------------------

    async def handle(self, updates: TLObject) -> None:
        """The client's ``handle_updates``: queue a push (never waits)."""
        self.last_heard = time.monotonic()
        self._put(("push", updates))

    def _put(self, item: tuple[str, Any]) -> None:
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:  # Telegram keeps it: fetched by the difference
            log.warning("%s: more than %d updates queued; fetching the difference instead",
                        self.account, MAX_QUEUED)
            self._force(_COMMON, 0.0)

    def _force(self, box: int, delay: float) -> None:
        """Fetch ``box``'s difference in ``delay`` seconds (or sooner if already due)."""
        due = time.monotonic() + delay
        self._deadlines[box] = min(self._deadlines.get(box, due), due)
        self._forced.add(box)

    async def _invoke_watched(self, query: TLObject, *args: Any, **kwargs: Any) -> Any:
        """The client's ``invoke``: an account error is reported, and the updates in an answer
        move the position (they are ours: not dispatched)."""
        try:
            result = await self._invoke(query, *args, **kwargs)
        except Exception as exc:
            # (while starting, the caller says what went wrong: tgmux run may authorize again)
            if self._task is not None and is_account_error(exc):
                self._revoke(error_code(exc) or type(exc).__name__)
            raise
        self.last_heard = time.monotonic()
        if self._task is not None:
            if isinstance(result, (raw.types.Updates, raw.types.UpdatesCombined,
                                   raw.types.UpdateShortSentMessage)):
                self._put(("answer", result))
            elif isinstance(result, (raw.types.messages.AffectedMessages,
                                     raw.types.messages.AffectedHistory)):
                channel = getattr(getattr(query, "channel", None), "channel_id", None)
                self._put(("affected", (channel, result.pts, result.pts_count)))
        return result

    def _revoke(self, code: str) -> None:
        if self.revoked is not None:
            return
        self.revoked = code
        if self.on_revoked is not None:
            self.on_revoked(code)

    # -- start and stop ------------------------------------------------------------------------

    async def start(self, *, catch_up: bool = True) -> None:
        """Load the position and start reading the stream (catching up first, in the
        background, when ``catch_up``; else from Telegram's current state)."""
        position = await self.positions.load()
        if position is None or not catch_up:
            state = await self._invoke(raw.functions.updates.GetState())
            channels = position.channels if position is not None and catch_up else {}
            position = UpdatePosition(state.pts, state.qts, state.date, state.seq, channels)
            await self.positions.save(position)
            catch_up = False
        self.position = position
        self._catching_up = catch_up
        self._task = asyncio.create_task(self._run(catch_up), name=f"tgmux-updates-{self.account}")
        if self.probe_interval is not None:
            self._probe = asyncio.create_task(self._watch(), name=f"tgmux-probe-{self.account}")

    async def stop(self) -> None:
        """Stop reading: what is queued is left on Telegram's side (the position is not moved
        past it: the next start fetches it again)."""
        for task in (self._task, self._probe):
            if task is not None:
                task.cancel()
        await asyncio.gather(*(t for t in (self._task, self._probe) if t is not None),
                             return_exceptions=True)
        self._task = self._probe = None
        if self._dirty and self.position is not None:
            with contextlib.suppress(Exception):
                await self.positions.save(self.position)
            self._dirty = False

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def _watch(self) -> None:
        """Ask Telegram now and then, when nothing was heard, whether the account still is."""
        assert self.probe_interval is not None
        while self.revoked is None:
            idle = time.monotonic() - self.last_heard
            if idle < self.probe_interval:
                await asyncio.sleep(self.probe_interval - idle)
                continue
            try:
                state = await self.client.invoke(raw.functions.updates.GetState())
            except asyncio.CancelledError:
                raise
            except Exception:  # the account errors were seen by invoke; others: next time
                self.last_heard = time.monotonic()
                continue
            position = self.position
            if position is not None and (state.pts > position.pts or state.qts > position.qts):
                # pushes were lost (a reconnection) and nothing came after them: a gap, seen
                self._put(("state", state))

    # -- the task ------------------------------------------------------------------------------

    async def _run(self, catch_up: bool) -> None:
        try:
            if catch_up:
                try:
                    await self._catch_up()
                except (AccountRevoked, asyncio.CancelledError):
                    raise
                except Exception:  # a bug or an object we cannot read: asked again
                    log.exception("%s: the catch-up failed; asking again", self.account)
                    self._force(_COMMON, RETRY_FIRST)
                finally:
                    self._catching_up = False
            while True:
                await self._step()
        except AccountRevoked:
            return  # reported by invoke

    async def _step(self) -> None:
        due = min(self._deadlines.values(), default=None)
        item: tuple[str, Any] | None = None
        if due is None:
            item = await self._queue.get()
        else:
            wait = due - time.monotonic()
            if wait > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        item = await self._queue.get()
        try:
            if item is None:
                await self._fill_due_gaps()
            else:
                await self._process(*item)
        except (AccountRevoked, asyncio.CancelledError):
            raise
        except Exception:  # a bug or an object we cannot read: Telegram still has it
            log.exception("%s: an update could not be handled; fetching the difference",
                          self.account)
            self._force(_COMMON, RETRY_FIRST)  # (a pause: no busy loop)
        # a batch: what came in together (a burst is committed once, at its end or every
        # COMMIT_EVERY updates)
        self._uncommitted += 1
        if self._queue.empty() or self._uncommitted >= COMMIT_EVERY:
            await self._commit()

    async def _commit(self) -> None:
        if not self._dirty or self.position is None:
            return
        try:
            await self.positions.save(self.position.copy())
            self._dirty = False
            self._uncommitted = 0
        except Exception as exc:  # the next batch commits it again
            log.warning("%s: the update position could not be saved: %s", self.account, exc)

    async def _catch_up(self) -> None:
        """What arrived while down: the account's difference, then each channel's, paced."""
        assert self.position is not None
        log.info("%s: catching up on what arrived while tgmux was down", self.account)
        state = await self._call(raw.functions.updates.GetState())
        if state.pts < self.position.pts:  # not this account's sequence (a reused session)
            log.warning("%s: the saved update position (pts %d) is past Telegram's (pts %d): "
                        "continuing from Telegram's", self.account, self.position.pts,
                        state.pts)
            self.position.pts, self.position.qts = state.pts, state.qts
            self._dirty = True
        await self._difference()
        for channel in list(self.position.channels):
            await self._channel_difference(channel)
            await self._commit()
            await asyncio.sleep(CATCH_UP_PACE)
        log.info("%s: caught up", self.account)

    async def _fill_due_gaps(self) -> None:
        now = time.monotonic()
        for box, due in list(self._deadlines.items()):
            if due > now:
                continue
            if box == _COMMON:
                await self._difference()
            else:
                await self._channel_difference(box)

    # -- one item of the queue -----------------------------------------------------------------

    async def _process(self, kind: str, payload: Any) -> None:
        assert self.position is not None
        dispatch = kind == "push"
        if kind == "state":  # Telegram's state is past ours: missed unless they arrive now
            if payload.pts > self.position.pts or payload.qts > self.position.qts:
                self._force(_COMMON, self.gap_wait)
            return
        if kind == "affected":
            channel, pts, count = payload
            box = _COMMON if channel is None else int(channel)
            update = raw.types.UpdateDeleteMessages(messages=[], pts=pts, pts_count=count)
            await self._apply(box, pts, count, update, {}, {}, dispatch=False)
            return
        updates = payload
        if isinstance(updates, (raw.types.Updates, raw.types.UpdatesCombined)):
            await self.client.fetch_peers(updates.users)
            await self.client.fetch_peers(updates.chats)
            users = {u.id: u for u in updates.users}
            chats = {c.id: c for c in updates.chats}
            self._remember(users, chats)
            for update in updates.updates:
                await self._update(update, users, chats, dispatch=dispatch)
            self.position.date = max(self.position.date, updates.date)
            if updates.seq:
                self.position.seq = max(self.position.seq, updates.seq)
            self._dirty = True
        elif isinstance(updates, (raw.types.UpdateShortMessage,
                                  raw.types.UpdateShortChatMessage)):
            await self._apply(_COMMON, updates.pts, updates.pts_count, updates, {}, {},
                              dispatch=dispatch)
        elif isinstance(updates, raw.types.UpdateShortSentMessage):
            await self._apply(_COMMON, updates.pts, updates.pts_count, updates, {}, {},
                              dispatch=False)
        elif isinstance(updates, raw.types.UpdateShort):
            await self._update(updates.update, {}, {}, dispatch=dispatch)
        elif isinstance(updates, raw.types.UpdatesTooLong):
            log.info("%s: Telegram says too many updates to push; fetching the difference",
                     self.account)
            await self._difference()

    async def _update(self, update: TLObject, users: dict[int, TLObject],
                      chats: dict[int, TLObject], *, dispatch: bool) -> None:
        """One update of a container (or a difference's other updates)."""
        assert self.position is not None
        if isinstance(update, raw.types.UpdateChannelTooLong):
            log.info("%s: Telegram says too many updates in channel %s; fetching its "
                     "difference", self.account, update.channel_id)
            channel = int(update.channel_id)
            if channel not in self.position.channels and isinstance(update.pts, int):
                self.position.channels[channel] = update.pts  # first seen: from there on
            await self._new_channel(channel)
            await self._channel_difference(channel)
            return
        if isinstance(update, raw.types.UpdateChannel):
            # Telegram's word that something changed in a channel (joined, or news while we
            # were away: a difference's other_updates). A channel we know needs nothing (its
            # pushes and the catch-up move its pts); one we never saw is fetched now.
            channel = int(update.channel_id)
            if await self._new_channel(channel):
                log.info("%s: channel %s is new to this account; fetching its messages",
                         self.account, channel)
                await self._channel_difference(channel)
            if dispatch:
                self._dispatch(update, users, chats)
            return
        pts, count = getattr(update, "pts", None), getattr(update, "pts_count", None)
        if isinstance(pts, int) and isinstance(count, int):
            channel = _channel_of(update)
            await self._apply(_COMMON if channel is None else channel, pts, count, update,
                              users, chats, dispatch=dispatch)
            return
        qts = getattr(update, "qts", None)
        if isinstance(qts, int) and qts > 0:
            if qts <= self.position.qts:
                return  # already applied
            if self.position.qts and qts > self.position.qts + 1:  # a gap: the difference
                self._force(_COMMON, self.gap_wait)
                return
            self.position.qts = qts
            self._dirty = True
        if dispatch:
            self._dispatch(update, users, chats)

    async def _apply(self, box: int, pts: int, count: int, update: TLObject,
                     users: dict[int, TLObject], chats: dict[int, TLObject], *,
                     dispatch: bool, release: bool = True) -> None:
        """An update that moves a box's pts: applied, skipped (seen) or held (a gap)."""
        assert self.position is not None
        local = self._pts(box)
        if local is None:
            # A channel not seen before: its first push may have been overtaken by a later
            # one. Held like a gap; after the gap wait the channel starts before the lowest.
            held = self._held.setdefault(box, {})
            if not held or pts - count < min(h.pts - h.count for h in held.values()):
                await self._channel_seen(box, pts - count)
            held[pts] = _Held(pts, count, update, users, chats, dispatch)
            self._deadlines.setdefault(box, time.monotonic() + self.gap_wait)
            return
        if local + count > pts:
            return  # already applied
        if local + count < pts:
            held = self._held.setdefault(box, {})
            held[pts] = _Held(pts, count, update, users, chats, dispatch)
            if len(held) > MAX_HELD:
                self._deadlines[box] = 0.0
            else:
                self._deadlines.setdefault(box, time.monotonic() + self.gap_wait)
            return
        if dispatch and isinstance(update, (raw.types.UpdateShortMessage,
                                            raw.types.UpdateShortChatMessage)):
            full = self._complete(update)
            if full is None:  # peers not seen yet: the difference brings them
                await self._difference()
                return
            update, users, chats = full
        self._set_pts(box, pts)
        if dispatch:
            self._dispatch(update, users, chats)
        if release:
            await self._release(box)

    async def _release(self, box: int) -> None:
        """Apply the held updates that now follow; drop those already covered."""
        held = self._held.get(box)
        while held:
            local = self._pts(box) or 0
            for pts in [p for p, h in held.items() if local + h.count > p]:
                del held[pts]
            following = next((h for h in held.values() if local + h.count == h.pts), None)
            if following is None:
                break
            del held[following.pts]
            await self._apply(box, following.pts, following.count, following.update,
                              following.users, following.chats, dispatch=following.dispatch,
                              release=False)
        if not held:
            self._held.pop(box, None)
            if box not in self._forced:
                self._deadlines.pop(box, None)

    async def _new_channel(self, channel: int) -> bool:
        """Start a channel the stream has no pts for (and no held push to start from) at
        pts 1, and say so. Telegram numbers a channel's updates from 1 at its creation:
        ``getChannelDifference`` from 1 answers its messages from the start, or (a long
        history) ``channelDifferenceTooLong`` with the latest ones; both are read in order.
        Nothing is skipped, which a start from Telegram's current pts would do to the messages
        that came while we were away. What was answered before is not answered again: the
        inbox dedups by chat and message id, and messages older than
        ``telegram.catch_up_max_age`` only get the offline notice. The start is stored
        before any of its messages is accepted (a crash in between fetches them again)."""
        assert self.position is not None
        if channel in self.position.channels or self._held.get(channel):
            return False
        await self._channel_seen(channel, 1)
        self._set_pts(channel, 1)
        return True

    async def _channel_seen(self, channel: int, pts: int) -> None:
        try:
            await self.positions.channel_seen(channel, pts)
        except Exception as exc:  # kept with the next position instead
            log.warning("%s: where channel %s starts could not be saved: %s", self.account,
                        channel, exc)

    @property
    def holding(self) -> bool:
        """Updates wait for a gap (or a new channel's start) to be filled, or the catch-up at
        start is still fetching what arrived while the account was down."""
        return bool(self._held) or self._catching_up

    def _pts(self, box: int) -> int | None:
        assert self.position is not None
        return self.position.pts if box == _COMMON else self.position.channels.get(box)

    def _set_pts(self, box: int, pts: int) -> None:
        assert self.position is not None
        if box == _COMMON:
            self.position.pts = pts
        else:
            self.position.channels[box] = pts
        self._dirty = True

    def _remember(self, users: dict[int, TLObject], chats: dict[int, TLObject]) -> None:
        for cache, peers in ((self._users, users), (self._chats, chats)):
            for peer_id, peer in peers.items():
                if getattr(peer, "min", False) and peer_id in cache:
                    continue  # a "min" peer lacks what the full one had
                cache[peer_id] = peer
                cache.move_to_end(peer_id)
                while len(cache) > MAX_PEERS:
                    cache.popitem(last=False)

    def _complete(self, short: TLObject
                  ) -> tuple[TLObject, dict[int, TLObject], dict[int, TLObject]] | None:
        """The full ``updateNewMessage`` a compact update stands for, with its peers; None
        when a peer it names was not seen yet."""
        me = self.client.me.id if self.client.me is not None else None
        if isinstance(short, raw.types.UpdateShortMessage):
            sender = me if short.out else short.user_id
            peer: TLObject = raw.types.PeerUser(user_id=short.user_id)
            needed_users, needed_chats = {short.user_id}, set()
        else:
            sender = short.from_id
            peer = raw.types.PeerChat(chat_id=short.chat_id)
            needed_users, needed_chats = {short.from_id}, {short.chat_id}
        if any(u not in self._users for u in needed_users - {me}) or \
                any(c not in self._chats for c in needed_chats):
            return None
        message = raw.types.Message(
            id=short.id, peer_id=peer, date=short.date, message=short.message, out=short.out,
            mentioned=short.mentioned, media_unread=short.media_unread, silent=short.silent,
            from_id=raw.types.PeerUser(user_id=sender) if sender is not None else None,
            fwd_from=short.fwd_from, via_bot_id=short.via_bot_id, reply_to=short.reply_to,
            entities=short.entities, ttl_period=short.ttl_period)
        users = {u: self._users[u] for u in needed_users if u in self._users}
        chats = {c: self._chats[c] for c in needed_chats}
        update = raw.types.UpdateNewMessage(message=_wire(message), pts=short.pts,
                                            pts_count=short.pts_count)
        return update, users, chats

    def _dispatch(self, update: TLObject, users: dict[int, TLObject],
                  chats: dict[int, TLObject]) -> None:
        message = getattr(update, "message", None)
        if isinstance(message, raw.types.Message) and not message.out:
            chat_id = utils.get_peer_id(message.peer_id)
            self._last_incoming[chat_id] = max(self._last_incoming.get(chat_id, 0), message.id)
            self._last_incoming.move_to_end(chat_id)
            while len(self._last_incoming) > MAX_PEERS:
                self._last_incoming.popitem(last=False)
        self.client.dispatcher.updates_queue.put_nowait((update, users, chats))

    # -- differences ---------------------------------------------------------------------------

    async def _call(self, query: TLObject) -> Any:
        """``query``, until Telegram answers it: flood waits waited out, other errors retried
        after a growing (bounded) pause. An account error ends the stream."""
        delay = RETRY_FIRST
        name = type(query).__name__
        while True:
            try:
                return await self.client.invoke(query, sleep_threshold=0)
            except asyncio.CancelledError:
                raise
            except FloodWait as exc:
                seconds = float(exc.value if isinstance(exc.value, int) else 1)
                log.warning("%s: %s: Telegram asks to wait %.0f s; waiting, then asking again "
                            "(nothing is lost)", self.account, name, seconds)
                if self.on_flood_wait is not None:
                    self.on_flood_wait(seconds)
                await asyncio.sleep(min(seconds, MAX_FLOOD_SLEEP))
            except (ChannelPrivate, ChannelInvalid):
                raise
            except Exception as exc:
                if is_account_error(exc):
                    raise AccountRevoked(error_code(exc) or type(exc).__name__) from exc
                log.warning("%s: %s failed (%s); asking again in %.0f s", self.account, name,
                            exc or type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)

    async def _difference(self) -> None:
        """``updates.getDifference`` from the position, slice after slice, until caught up."""
        assert self.position is not None
        self._deadlines.pop(_COMMON, None)
        self._forced.discard(_COMMON)
        while True:
            position = self.position
            diff = await self._call(raw.functions.updates.GetDifference(
                pts=position.pts, date=position.date, qts=position.qts))
            if isinstance(diff, raw.types.updates.DifferenceEmpty):
                position.date, position.seq = diff.date, diff.seq
                self._dirty = True
                break
            if isinstance(diff, raw.types.updates.DifferenceTooLong):
                await self._too_long(diff.pts - position.pts, diff.pts)
                continue
            state = (diff.intermediate_state
                     if isinstance(diff, raw.types.updates.DifferenceSlice) else diff.state)
            await self._deliver_difference(diff.new_messages, diff.other_updates, diff.users,
                                           diff.chats)
            position.pts, position.qts = state.pts, max(position.qts, state.qts)
            position.date, position.seq = state.date, state.seq
            self._dirty = True
            await self._commit()
            if isinstance(diff, raw.types.updates.Difference):
                break
        await self._release(_COMMON)

    async def _deliver_difference(self, messages: list[TLObject], others: list[TLObject],
                                  users_list: list[TLObject], chats_list: list[TLObject],
                                  *, channel: int | None = None) -> None:
        await self.client.fetch_peers(users_list)
        await self.client.fetch_peers(chats_list)
        users = {u.id: u for u in users_list}
        chats = {c.id: c for c in chats_list}
        self._remember(users, chats)
        for message in messages:
            if isinstance(message, raw.types.MessageEmpty):
                continue
            if isinstance(message.peer_id, raw.types.PeerChannel):
                wrapper: TLObject = raw.types.UpdateNewChannelMessage(message=message, pts=0,
                                                                     pts_count=0)
            else:
                wrapper = raw.types.UpdateNewMessage(message=message, pts=0, pts_count=0)
            self._dispatch(wrapper, users, chats)
        for update in others:
            box = _channel_of(update)
            if isinstance(update, raw.types.UpdateChannelTooLong) or (
                    box is not None and box != channel):
                await self._update(update, users, chats, dispatch=True)
            else:  # of the box this difference covers: in it already
                self._dispatch(update, users, chats)

    async def _channel_difference(self, channel: int) -> None:
        """``updates.getChannelDifference`` for one channel, until final."""
        assert self.position is not None
        self._deadlines.pop(channel, None)
        self._forced.discard(channel)
        limit = 100_000 if self.client.me is not None and self.client.me.is_bot else 100
        while True:
            pts = self.position.channels.get(channel)
            if pts is None:
                held = self._held.get(channel)
                if not held:
                    break
                # first seen in these pushes: from just before the lowest of them
                pts = min(h.pts - h.count for h in held.values())
                self._set_pts(channel, pts)
            try:
                peer = await self.client.resolve_peer(utils.get_channel_id(channel))
                diff = await self._call(raw.functions.updates.GetChannelDifference(
                    channel=peer, filter=raw.types.ChannelMessagesFilterEmpty(), pts=pts,
                    limit=limit, force=False))
            except (ChannelPrivate, ChannelInvalid, KeyError, ValueError,
                    PersistentTimestampInvalid) as exc:
                log.info("%s: channel %s is not reachable any more (%s); forgetting it",
                         self.account, channel, exc or type(exc).__name__)
                self.position.channels.pop(channel, None)
                self._held.pop(channel, None)
                self._dirty = True
                return
            except PersistentTimestampOutdated:
                await asyncio.sleep(RETRY_FIRST)
                continue
            if isinstance(diff, raw.types.updates.ChannelDifferenceEmpty):
                self.position.channels[channel] = diff.pts
                self._dirty = True
                break
            if isinstance(diff, raw.types.updates.ChannelDifferenceTooLong):
                new_pts = diff.dialog.pts
                self._skipped(new_pts - pts - len(diff.messages), f"channel {channel}")
                await self._deliver_difference(
                    [m for m in diff.messages if getattr(m, "id", 0) > self._last_incoming.get(
                        utils.get_channel_id(channel), 0)], [], diff.users, diff.chats,
                    channel=channel)
                self.position.channels[channel] = new_pts
                self._dirty = True
                await self._commit()
                if diff.final:
                    break
                continue
            await self._deliver_difference(diff.new_messages, diff.other_updates, diff.users,
                                           diff.chats, channel=channel)
            self.position.channels[channel] = diff.pts
            self._dirty = True
            await self._commit()
            if diff.final:
                break
        await self._release(channel)

    def _skipped(self, count: int, where: str) -> None:
        count = max(count, 0)
        log.warning("%s: Telegram no longer has %d update(s) of %s (differenceTooLong after a "
                    "long outage): their messages are not answered%s", self.account, count,
                    where, "; fetching them from the chats' history"
                    if self._is_user() else " (a bot cannot fetch them)")
        if self.on_skipped is not None:
            self.on_skipped(count)

    def _is_user(self) -> bool:
        return self.client.me is not None and not self.client.me.is_bot

    async def _too_long(self, count: int, new_pts: int) -> None:
        """The account's backlog is gone: say so, count it, and (a user account) fetch the
        known chats' recent messages from history; continue from ``new_pts``."""
        assert self.position is not None
        self._skipped(count, "the account")
        if self._is_user():
            since = self.position.date
            for chat_id in dict.fromkeys([*reversed(self._last_incoming),
                                          *self._recent_chats()]):
                if utils.get_peer_type(chat_id) == "channel":
                    continue  # channels have their own difference
                await self._history(chat_id, since)
                await asyncio.sleep(CATCH_UP_PACE)
        self.position.pts = new_pts
        self._dirty = True
        await self._commit()

    def _recent_chats(self) -> list[int]:
        """The chats the session storage saw most recently (a SQLite session: its peers)."""
        conn = getattr(self.client.storage, "conn", None)
        if conn is None:
            return []
        try:
            rows = conn.execute("SELECT id FROM peers ORDER BY last_update_on DESC LIMIT ?",
                                (HISTORY_CHATS,)).fetchall()
        except Exception:  # another layout: the chats seen in this run only
            return []
        return [int(row[0]) for row in rows]

    async def _history(self, chat_id: int, since: int) -> None:
        """A user account's missed messages of one chat (``messages.getHistory``), oldest
        first: after the last one handled, and not before ``since`` (the position's date)."""
        last = self._last_incoming.get(chat_id, 0)
        try:
            peer = await self.client.resolve_peer(chat_id)
            found = await self._call(raw.functions.messages.GetHistory(
                peer=peer, offset_id=0, offset_date=0, add_offset=0, limit=HISTORY_LIMIT,
                max_id=0, min_id=last, hash=0))
        except (ChannelPrivate, ChannelInvalid, KeyError, ValueError, RPCError) as exc:
            if isinstance(exc, RPCError) and is_account_error(exc):
                raise
            log.warning("%s: chat %s: its history could not be read (%s)", self.account,
                        chat_id, exc or type(exc).__name__)
            return
        messages = [m for m in getattr(found, "messages", [])
                    if isinstance(m, raw.types.Message) and m.id > last and not m.out
                    and m.date >= since]
        messages.sort(key=lambda m: m.id)
        await self._deliver_difference(messages, [], getattr(found, "users", []),
                                       getattr(found, "chats", []))
