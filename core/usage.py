"""What each reply used, recorded: one store write per reply (:meth:`Store.usage_add`), into the
row of its (UTC day, account, user, chat, backend, model), with its cost at today's price.

Called by the engine once per backend reply (:meth:`UsageRecorder.settle`), after the
backend's last part, with the :class:`Usage` parts the reply carried
(:attr:`tgmux.reply.ReplyShaper.usage`: after the ``tgmux_after_backend`` hooks). A reply without
usage counts as a message only, under the backend's configured model. Recording never fails a
reply: a store error is logged. Rows older than ``usage_retention`` days are forgotten by the
engine's periodic prune.

A reply cut at ``engine.max_reply_chars`` before any usage came is read on in the background
(:meth:`UsageRecorder.settle`): a stream's usage comes after its text (OpenAI's last chunk,
Sensay's finish), and a reply that is not paid for would let a user past their budget by
asking for long replies. The chat does not wait for it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from tgmux.backend import Backend, Turn
from tgmux.backend_use import BackendsInUse
from tgmux.config import Config
from tgmux.errors import BackendError
from tgmux.metrics import Metrics
from tgmux.prices import Prices
from tgmux.store.base import Store
from tgmux.store.guard import StoreUnavailable
from tgmux.types import Usage, UsageRow

__all__ = ["UsageRecorder", "reply_row", "utc_day"]

log = logging.getLogger("tgmux.usage")

#: A read of a cut reply's rest holds a connection: at most a backend's ``max_connections``
#: (default ``engine.concurrency``) divided by this run at once, so answering does not wait
#: for a connection; past it, a cut reply is recorded without its usage.
READS_SHARE = 2

#: (/metrics kind, Usage field) of each token count
TOKEN_KINDS = (("input", "input_tokens"), ("output", "output_tokens"),
               ("cached_input", "cached_input_tokens"), ("reasoning", "reasoning_tokens"))


def utc_day(now: float | None = None) -> str:
    """``YYYY-MM-DD`` of ``now`` (a timestamp; default: now) in UTC."""
    return time.strftime("%Y-%m-%d", time.gmtime(time.time() if now is None else now))


def configured_model(turn: Turn, backend: Backend) -> str:
    """The model a backend is set to use for ``turn`` (the route's, else its own), or ""."""
    for settings in (getattr(turn, "options", None), getattr(backend, "settings", None)):
        model = getattr(settings, "model", None)
        if isinstance(model, str) and model:
            return model
    return ""


def reply_row(turn: Turn, backend: Backend, usage: list[Usage], prices: Prices, *,
              replied: bool, day: str | None = None) -> UsageRow:
    """The row of one reply: ``usage`` summed (its model: the last part's that names one,
    else the configured one), its cost (None when a part's price is not known and it used
    tokens), ``messages`` 1 when it ``replied``."""
    model = next((u.model for u in reversed(usage) if u.model), None)
    if model is None:
        model = configured_model(turn, backend)
    cost: float | None = 0.0 if usage else None
    for part in usage:
        priced = prices.cost(part if part.model else Usage(
            model, part.input_tokens, part.output_tokens, part.cached_input_tokens,
            part.reasoning_tokens))
        if priced is None and (part.input_tokens or part.output_tokens):
            cost = None
            break
        cost = (cost or 0.0) + (priced or 0.0)
    chat = turn.chat
    return UsageRow(
        day=day or utc_day(), account=chat.account, user_id=chat.user_id, chat_id=chat.chat_id,
        backend=backend.name, model=model, messages=1 if replied else 0,
        input_tokens=sum(u.input_tokens for u in usage),
        output_tokens=sum(u.output_tokens for u in usage),
        cached_input_tokens=sum(u.cached_input_tokens for u in usage),
        reasoning_tokens=sum(u.reasoning_tokens for u in usage), cost=cost)


class UsageRecorder:
    """Records replies' usage in ``store`` and counts it in ``metrics``. A backend whose cut
    reply is read on counts as in use (``in_use``: a reload closes it after the read)."""

    def __init__(self, store: Store, metrics: Metrics,
                 in_use: BackendsInUse | None = None) -> None:
        self.store = store
        self.metrics = metrics
        self.in_use = in_use or BackendsInUse()
        self._prices: tuple[Any, Prices] | None = None
        self._unsupported_said = False
        #: cut replies read on for their usage: (backend, chat) of each
        self._reads: dict[asyncio.Task[None], tuple[str, tuple[str, int, int | None]]] = {}
        self._reading: set[asyncio.Task[None]] = set()  # those still reading (not recording)
        self._stopped = False

    def prices(self, config: Config) -> Prices:
        """The prices of ``config`` (made again when a reload changed them)."""
        if self._prices is None or self._prices[0] is not config.data:
            self._prices = (config.data, Prices.of(config))
        return self._prices[1]

    async def settle(self, config: Config, turn: Turn, backend: Backend, usage: list[Usage],
                     failure: BaseException | None, moved_on: bool, *, source: Any, cut: bool,
                     after_backend: Callable[[Usage], Awaitable[Any]]) -> None:
        """The end of one backend reply: its ``source`` (the backend's stream, None if it
        was not made) closed and the reply recorded (:meth:`record`). A reply ``cut`` at
        ``engine.max_reply_chars`` (its source not ended) without usage yet, by a backend that
        :attr:`~tgmux.backend.Backend.reports_usage`, is read on for its :class:`Usage` parts
        only, each passed through ``after_backend`` (the ``tgmux_after_backend`` hooks), the
        text dropped; bounded by ``engine.turn_timeout`` from the cut and by what the HTTP
        layer reads of a response; then recorded once, with the usage found. It is read in
        the background (the chat does not wait), one per chat and at most half of the
        backend's connections at once (``max_connections``, else ``engine.concurrency``);
        a chat's second is read in its own turn (a chat asking for endless replies waits
        for them, nobody else does); past the backend's bound, or once :meth:`stop` began,
        the reply is recorded without its usage."""
        if cut and failure is None and not usage and source is not None and \
                backend.reports_usage:
            chat = _chat_of(turn)
            room = _room(config, backend)
            if self._stopped:
                pass
            elif chat in {c for _, c in self._reads.values()}:
                await self._read_rest(config, turn, backend, source, after_backend)
                return
            elif sum(b == backend.name for b, _ in self._reads.values()) < room:
                hold = self.in_use.hold([backend])  # from now: the turn's own hold ends next
                hold.__enter__()
                task = asyncio.create_task(
                    self._read_rest(config, turn, backend, source, after_backend),
                    name=f"tgmux-usage-{turn.chat.account}-{turn.chat.chat_id}")
                self._reads[task] = (backend.name, chat)
                self._reading.add(task)
                # however it ends (even cancelled before its first step): the hold ends
                task.add_done_callback(lambda done: (self._reads.pop(done, None),
                                                     self._reading.discard(done),
                                                     hold.__exit__(None, None, None)))
                return
            else:
                log.info("chat %s: %s: the reply was cut with %d cut replies of the backend "
                         "read on for their usage already, the most at once (half of its "
                         "connections): recorded without its usage", turn.chat.chat_id,
                         backend.name, room)
        await self._close(turn, source)
        await self.record(config, turn, backend, usage, failure, moved_on)

    async def _read_rest(self, config: Config, turn: Turn, backend: Backend, source: Any,
                         after_backend: Callable[[Usage], Awaitable[Any]]) -> None:
        usage: list[Usage] = []
        timeout = config.data.engine.turn_timeout
        stopped = False
        try:
            async with asyncio.timeout(timeout):
                async for part in source:
                    if isinstance(part, Usage):
                        passed = await after_backend(part)
                        usage += [p for p in (passed if isinstance(passed, list) else [passed])
                                  if isinstance(p, Usage)]
        except asyncio.CancelledError:  # the engine stops: recorded with what came
            stopped = True
        except TimeoutError:
            log.info("chat %s: %s: the cut reply did not end within %g s (turn_timeout); "
                     "recorded with the usage it had", turn.chat.chat_id, backend.name, timeout)
        except BackendError as exc:
            log.info("chat %s: %s: the cut reply's rest was not read (%s); recorded with the "
                     "usage it had", turn.chat.chat_id, backend.name, exc.log_text())
        except Exception:  # a hook's fault, say: the reply is recorded all the same
            log.exception("chat %s: %s: reading the cut reply's rest failed",
                          turn.chat.chat_id, backend.name)
        task = asyncio.current_task()
        if task is not None:
            self._reading.discard(task)  # from here on, stop() lets it record
        await self._close(turn, source)
        await self.record(config, turn, backend, usage, None)
        if stopped:
            raise asyncio.CancelledError

    @staticmethod
    async def _close(turn: Turn, source: Any) -> None:
        try:
            if (aclose := getattr(source, "aclose", None)) is not None:
                await aclose()
        except Exception:  # the reply is recorded all the same
            log.warning("chat %s: closing the backend's reply failed", turn.chat.chat_id,
                        exc_info=True)

    async def settled(self) -> None:
        """Wait for the reads of cut replies under way (each bounded by its deadline)."""
        while self._reads:
            await asyncio.gather(*self._reads, return_exceptions=True)

    async def stop(self) -> None:
        """End the reads of cut replies at once: each records its reply with the usage it
        found (none, mostly); cut replies after this are recorded without reading on."""
        self._stopped = True
        # each read begins first: a task cancelled before its first step never runs its
        # body, which closes the stream and records the reply
        await asyncio.sleep(0)
        for task in list(self._reading):  # (one closing or recording is let finish)
            task.cancel()
        await self.settled()

    async def record(self, config: Config, turn: Turn, backend: Backend, usage: list[Usage],
                     failure: BaseException | None, moved_on: bool = False) -> None:
        """Record one backend reply: one that was given (``failure`` None; not one that
        ``moved_on`` to a fallback), or one that reported usage anyway. A command of the
        backend (/history) that reported none is not a reply of the AI: not recorded."""
        replied = failure is None and not moved_on
        if not usage and (not replied or turn.command):
            return
        try:
            prices = self.prices(config)
            if usage:  # (a reply without usage has no price to look up: no library import
                await prices.load()  # between the reply and its inbox state)
            row = reply_row(turn, backend, usage, prices, replied=replied)
            self._count(row)
            await self.store.usage_add(row)
        except StoreUnavailable as exc:  # the outage was said by the guard
            log.debug("chat %s: usage not recorded: %s", turn.chat.chat_id, exc)
        except NotImplementedError as exc:  # a store that keeps no usage: said once
            if not self._unsupported_said:
                self._unsupported_said = True
                log.warning("usage is not recorded: %s", exc)
        except Exception:  # the user has the reply: usage is not worth failing it
            log.exception("chat %s: usage not recorded", turn.chat.chat_id)

    def _count(self, row: UsageRow) -> None:
        of, metrics = self.metrics.of, self.metrics
        for kind, field in TOKEN_KINDS:
            if count := getattr(row, field):
                of(metrics.tokens, row.backend, row.model, kind).inc(count)
        if row.cost:
            of(metrics.cost, row.backend, row.model).inc(row.cost)

    async def prune(self, config: Config, now: float | None = None) -> int:
        """Forget the rows older than ``usage_retention`` days; how many."""
        today = datetime.fromtimestamp(time.time() if now is None else now, UTC).date()
        before = today - timedelta(days=config.data.usage_retention)
        return await self.store.usage_prune(before.isoformat())



def _chat_of(turn: Turn) -> tuple[str, int, int | None]:
    return turn.chat.account, turn.chat.chat_id, turn.chat.topic


def _room(config: Config, backend: Backend) -> int:
    """How many cut replies of ``backend`` are read on at once: half its connections (a
    read holds one), at least one."""
    connections = getattr(backend.settings, "max_connections", None)
    return max(1, (connections or config.data.engine.concurrency) // READS_SHARE)
