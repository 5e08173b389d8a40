"""Publishing a bot's command menus: one request at a time, paced, flood waits waited out.

The menus come from the core (:class:`tgmux.menu_publisher.MenuPublisher`); this only sends
them, in the background: no message waits for a menu. Menus for the same scope that are still
waiting are replaced by the newest; at most :data:`MAX_PENDING` wait (more: the oldest are
dropped, with a log line). User accounts have no menus: nothing is sent for them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

from tgmux.command_menus import Menu, Scope
from tgmux.ratelimit import SlidingWindowLimiter
from tgmux.telegram.frontend import TelegramFrontend
from tgmux.telegram.sender import MAX_FLOOD_RETRIES, MAX_FLOOD_WAIT, FloodWaitRequired

__all__ = ["MAX_PENDING", "MenuQueue", "describe"]

log = logging.getLogger("tgmux.telegram")

#: menus waiting to be sent, at most (one per scope)
MAX_PENDING = 10_000
#: menu requests: a burst of this many, then one per PACE_PERIOD / PACE_BURST seconds
PACE_BURST = 20
PACE_PERIOD = 60.0


def describe(scope: Scope) -> str:
    """``chat 42``, ``chat_member -100 / 7``, ``default``: for log lines."""
    where = [str(v) for v in (scope.chat_id, scope.user_id) if v is not None]
    return " ".join([scope.kind, " / ".join(where)]).strip()


class MenuQueue:
    """One bot account's menus on their way to Telegram (see the module docstring)."""

    def __init__(self, frontend: TelegramFrontend, account: str, *,
                 is_bot: Callable[[], bool],
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        self.frontend = frontend
        self.account = account
        self.is_bot = is_bot
        self.limiter = SlidingWindowLimiter(PACE_BURST, PACE_PERIOD)
        self._sleep = sleep
        self._pending: OrderedDict[Scope, Menu] = OrderedDict()
        self._task: asyncio.Task[None] | None = None
        #: a task to let finish first (the menus set at start)
        self.after: asyncio.Task[None] | None = None

    def put(self, menus: list[Menu]) -> None:
        """Send these menus in the background (nothing for a user account)."""
        if not self.is_bot():
            return
        for menu in menus:
            self._pending.pop(menu.scope, None)
            self._pending[menu.scope] = menu
        while len(self._pending) > MAX_PENDING:
            scope, _ = self._pending.popitem(last=False)
            log.warning("%s: command menu for %s not published: more than %d menus wait (it "
                        "is published when the chat is next seen)", self.account,
                        describe(scope), MAX_PENDING)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(),
                                             name=f"tgmux-command-menus-{self.account}")

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def _drain(self) -> None:
        if self.after is not None:
            await asyncio.gather(self.after, return_exceptions=True)
        while self._pending:
            _, menu = self._pending.popitem(last=False)
            await self.limiter.acquire()
            try:
                await self.publish(menu)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug: the next menus still go out
                log.exception("%s: command menu for %s not published", self.account,
                              describe(menu.scope))

    async def publish(self, menu: Menu, on_flood: Callable[[], None] | None = None) -> bool:
        """Send one menu; Telegram's flood waits are waited out here (a wait over an hour or a
        sixth one gives up: Telegram keeps the menu it had). False: not published (logged).
        ``on_flood``: called when Telegram first asks to wait."""
        scope = menu.scope
        for attempt in range(MAX_FLOOD_RETRIES + 1):
            try:
                published = await self.frontend.publish_commands(list(menu.commands), scope)
                if not published:  # why: logged where it was refused
                    log.debug("%s: command menu for %s not published", self.account,
                              describe(scope))
                return published
            except FloodWaitRequired as exc:
                if on_flood is not None:
                    on_flood()
                if exc.seconds > MAX_FLOOD_WAIT or attempt == MAX_FLOOD_RETRIES:
                    log.error("%s: command menu for %s not published: Telegram asks to wait "
                              "%.0f s; it keeps the menu it had", self.account, describe(scope),
                              exc.seconds)
                    return False
                log.warning("%s: command menu: Telegram asks to wait %.0f s; the menu for %s "
                            "will be published then (chats are answered meanwhile)",
                            self.account, exc.seconds, describe(scope))
                self.limiter.penalize(exc.seconds)
                await self._sleep(exc.seconds)
        return False

    async def close(self) -> None:
        """Stop sending (what waits is dropped: published again when its chat is next seen)."""
        self._pending.clear()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
