"""tgmux.telegram.menus: menus on their way to Telegram are coalesced per scope, bounded, and
sent one at a time; flood waits are waited out."""

from __future__ import annotations

import asyncio
import logging

from tgmux.command_menus import Menu, Scope
from tgmux.telegram import menus as menus_module
from tgmux.telegram.menus import MenuQueue
from tgmux.telegram.sender import FloodWaitRequired
from tgmux.types import CommandSpec


class Frontend:
    def __init__(self) -> None:
        self.sent: list[tuple[Scope, list[str]]] = []
        self.release = asyncio.Event()
        self.floods: list[float] = []

    async def publish_commands(self, specs: list[CommandSpec], scope: Scope) -> bool:
        await self.release.wait()
        if self.floods:
            raise FloodWaitRequired("FLOOD_WAIT_X", self.floods.pop(0))
        self.sent.append((scope, [s.name for s in specs]))
        return True


def menu(chat_id: int, *names: str) -> Menu:
    return Menu(Scope("chat", chat_id=chat_id), tuple(CommandSpec(n, n) for n in names))


async def test_menus_waiting_are_coalesced_per_scope_and_bounded(monkeypatch, caplog) -> None:
    monkeypatch.setattr(menus_module, "MAX_PENDING", 2)
    frontend = Frontend()
    queue = MenuQueue(frontend, "main", is_bot=lambda: True)  # type: ignore[arg-type]
    queue.put([menu(1, "a")])
    await asyncio.sleep(0)  # the worker takes chat 1's menu and waits for Telegram
    queue.put([menu(2, "old"), menu(3, "c"), menu(2, "new"), menu(4, "d")])
    assert queue.pending == 2  # chat 2's older menu replaced; the oldest waiting dropped
    assert "command menu for chat 3 not published: more than 2 menus wait" in caplog.text
    frontend.release.set()
    async with asyncio.timeout(10):
        await queue._task  # done when nothing waits any more
    assert frontend.sent == [(Scope("chat", chat_id=1), ["a"]), (Scope("chat", chat_id=2),
                                                                 ["new"]),
                             (Scope("chat", chat_id=4), ["d"])]
    await queue.close()


async def test_a_flood_wait_is_waited_out_and_nothing_is_sent_for_user_accounts(caplog) -> None:
    caplog.set_level(logging.WARNING)
    frontend = Frontend()
    frontend.release.set()
    frontend.floods = [3.0]
    waited: list[float] = []

    async def sleep(seconds: float) -> None:
        waited.append(seconds)

    queue = MenuQueue(frontend, "main", is_bot=lambda: True, sleep=sleep)  # type: ignore[arg-type]
    assert await queue.publish(menu(1, "a")) is True
    assert waited == [3.0] and frontend.sent == [(Scope("chat", chat_id=1), ["a"])]
    assert "command menu: Telegram asks to wait 3 s; the menu for chat 1" in caplog.text
    user = MenuQueue(frontend, "main", is_bot=lambda: False)  # type: ignore[arg-type]
    user.put([menu(2, "b")])
    assert user.pending == 0
