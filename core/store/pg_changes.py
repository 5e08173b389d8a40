"""PostgreSQL's change feed: ``LISTEN`` :data:`~tgmux.store.changes.CHANNEL` on a connection of
its own (not from the pool: a pooled connection is shared, and ``LISTEN`` is per session).

Every process hears every change, its own included (one store read more, after its own write).
It listens while the store is open and someone subscribed. When the connection goes (the
server restarts, a network partition noticed by a probe every :attr:`PostgresFeed.probe_interval`
seconds or by TCP keepalives), the feed is not :attr:`~PostgresFeed.live`: subscribers are told
:data:`~tgmux.store.changes.EVERYTHING` (drop what you keep) and keep nothing until it is back,
so nothing stale is served meanwhile, each use reads the store. It connects again after 0.5 s,
then waiting twice as long each time, up to :data:`RETRY_MAX` seconds; once ``LISTEN`` is in
place again, subscribers are told :data:`~tgmux.store.changes.EVERYTHING` once more (what was
read while nobody listened may have changed since).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from tgmux.store.changes import CHANNEL, EVERYTHING, Change, ChangeFeed

__all__ = ["RETRY_MAX", "RETRY_MIN", "PostgresFeed"]

log = logging.getLogger("tgmux.store")

#: Seconds before the first try to listen again, doubled after each failure up to RETRY_MAX.
RETRY_MIN = 0.5
RETRY_MAX = 30.0
#: Seconds without listening after which it is a WARNING (a shorter gap is the store's outage,
#: which the store's guard reports, or a restart of the server).
WARN_AFTER = 60.0


class PostgresFeed(ChangeFeed):
    """``LISTEN`` on a connection made by ``connect`` (bounded in time, errors explained)."""

    #: Seconds between two probes of a quiet connection (``SELECT 1``, answered within as long).
    probe_interval = 10.0

    def __init__(self, connect: Callable[[], Awaitable[asyncpg.Connection]],
                 keep_alive: Callable[[asyncpg.Connection], None], *,
                 store_open: Callable[[], bool]) -> None:
        super().__init__()
        self._connect = connect
        self._store_open = store_open
        self._keep_alive = keep_alive
        self._conn: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._tried: asyncio.Future[None] | None = None
        self._live = asyncio.Event()
        self._warned = False  # of a foreign notification (once: another program may flood)

    @property
    def live(self) -> bool:
        return self._live.is_set()

    @property
    def server_pid(self) -> int | None:
        """The server process of the ``LISTEN`` connection (None: not listening)."""
        return self._conn.get_server_pid() if self._conn is not None else None

    def subscribe(self, callback: Callable[[Change], None]) -> Callable[[], None]:
        unsubscribe = super().subscribe(callback)
        if self._store_open():  # (subscribed before the store opened: it starts at open)
            self._begin()
        return unsubscribe

    async def start(self) -> None:
        """Listen from now on: the first try is waited for (bounded by the store's connect
        timeout); when it fails, the next ones go on in the background."""
        tried = self._begin()
        assert self._task is not None
        await asyncio.wait([tried, self._task], return_when=asyncio.FIRST_COMPLETED)

    def _begin(self) -> asyncio.Future[None]:
        """The listening task started (once); what is done when its first try is."""
        if self._task is None or self._tried is None:
            self._tried = tried = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(tried), name="tgmux-store-changes")
        return self._tried

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._lost()

    async def _run(self, tried: asyncio.Future[None]) -> None:
        delay = RETRY_MIN
        deaf_since: float | None = None  # not listening since (monotonic), after a loss
        warned = False
        while True:
            try:
                conn = await self._listen()
            except Exception as exc:
                now = time.monotonic()
                first = not tried.done()
                if first:
                    tried.set_result(None)
                deaf_since = now if deaf_since is None else deaf_since
                # at once when it never listened; else not for a short outage (the store's
                # guard says that one)
                loud = not warned and (first or now - deaf_since >= WARN_AFTER)
                (log.warning if loud else log.debug)(
                    "store: not listening to other processes' changes (%s); what a process "
                    "keeps of the store is read again at each use until it listens; trying "
                    "again, every %g s at most", exc, RETRY_MAX)
                warned = warned or loud
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if deaf_since is not None:
                log.info("store: listening to other processes' changes again")
            delay, deaf_since, warned = RETRY_MIN, None, False
            if not tried.done():
                tried.set_result(None)
            try:
                await self._watch(conn)
            finally:
                self._lost()
                conn.terminate()
            log.info("store: the connection listening to other processes' changes was lost; "
                     "listening again (meanwhile what a process keeps of the store is read "
                     "again at each use)")
            deaf_since = time.monotonic()

    async def _listen(self) -> asyncpg.Connection:
        conn = await self._connect()
        try:
            self._keep_alive(conn)
            await conn.add_listener(CHANNEL, self._notified)
        except BaseException:
            conn.terminate()
            raise
        self._conn = conn
        self._live.set()
        self.deliver(Change(EVERYTHING))  # what was read while nobody listened may be stale
        return conn

    async def _watch(self, conn: asyncpg.Connection) -> None:
        """Returns when ``conn`` is gone or does not answer a probe."""
        gone = asyncio.Event()
        conn.add_termination_listener(lambda _conn: gone.set())
        while not conn.is_closed():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.probe_interval):
                    await gone.wait()
                    return
            try:
                async with asyncio.timeout(self.probe_interval):
                    await conn.fetchval("SELECT 1")
            except (Exception, TimeoutError) as exc:
                log.debug("store: the listening connection failed a probe: %s", exc)
                return

    def _lost(self) -> None:
        self._conn = None
        if self._live.is_set():
            self._live.clear()
            self.deliver(Change(EVERYTHING))  # nothing kept is known to be current now

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            change = Change.from_payload(payload)
        except ValueError as exc:  # not ours (another program on the channel): all may change
            (log.debug if self._warned else log.warning)(
                "store: a notification on %s that is no change of tgmux's (%s); dropping what "
                "is kept", CHANNEL, exc)
            self._warned = True
            change = Change(EVERYTHING)
        self.deliver(change)
