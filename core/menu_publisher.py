"""When a command menu is (re)published: at start, for a chat first seen, when a chat's
``/backend`` changes, after a reload, and when a chat used a command its menu should not have
offered. What each menu lists is :mod:`tgmux.command_menus`'s (pure); sending it, paced and
with Telegram's flood waits, is the frontend's (``publish_menus(account, menus)``, which only
frontends with menus have: Telegram bots).

Bounded: the chats whose menus this process published are remembered up to
:attr:`MenuPublisher.CHATS_KEPT` (the oldest forgotten); a chat whose menu is its chat type's
own is not published at all.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from tgmux.chat_commands import BUILTIN_COMMANDS
from tgmux.command_menus import (
    GROUP_TYPES,
    Menu,
    Scope,
    account_menus,
    available_commands,
    chat_menu,
    fallback_menu,
    unavailable_notice,
)
from tgmux.types import ChatType, CommandSpec, IncomingMessage

if TYPE_CHECKING:
    from tgmux.engine import Engine
    from tgmux.router import RouteDecision

__all__ = ["MenuPublisher"]

MenuSink = Callable[[str, list[Menu]], None]


class MenuPublisher:
    """The engine's command menus (see the module docstring)."""

    #: chats (per account) whose menu this process remembers and keeps up to date
    CHATS_KEPT = 10_000

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        #: (account, chat id) -> (chat type, its /backend override, admins seen in it)
        self._chats: OrderedDict[tuple[str, int], tuple[ChatType, str | None, frozenset[int]]] \
            = OrderedDict()
        #: (account, scope) -> what was last handed to the frontend for it
        self._published: dict[tuple[str, Scope], tuple[CommandSpec, ...]] = {}

    def _sink(self) -> MenuSink | None:
        return getattr(self.engine.frontend, "publish_menus", None)

    def commands(self) -> tuple[list[CommandSpec], dict[str, list[CommandSpec]]]:
        """The commands every chat has (built-in, plugins'), and each backend's."""
        common = [*BUILTIN_COMMANDS, *(c.spec for c in self.engine.plugin_commands.values())]
        return common, {name: b.commands() for name, b in self.engine.backends.items()}

    def every_command(self) -> list[CommandSpec]:
        """Every command any chat may use, once each."""
        common, backends = self.commands()
        seen: dict[str, CommandSpec] = {}
        for spec in [*common, *(s for specs in backends.values() for s in specs)]:
            seen.setdefault(spec.name, spec)
        return list(seen.values())

    def account_menus(self, account: str) -> list[Menu]:
        """The account's menus set at start (default, all private chats, all group chats,
        each admin's). An admin's is not taken as published: Telegram refuses it until the
        admin has written to the bot, and then :meth:`seen` publishes it."""
        common, backends = self.commands()
        menus = account_menus(self.engine.router_for(account).account, common, backends)
        for menu in menus:
            if menu.scope.chat_id is None:
                self._published[(account, menu.scope)] = menu.commands
        return menus

    def seen(self, message: IncomingMessage, decision: RouteDecision | None, *,
             force: bool = False) -> None:
        """A message of the chat was answered (``force``: its ``/backend`` just changed, or
        its menu offered what it cannot use): publish its own menus where they differ."""
        chat = message.chat
        sink = self._sink()
        if sink is None or chat.chat_type == "channel":
            return
        key = (chat.account, chat.chat_id)
        # a persona's backend, as a /backend choice, may have commands of its own
        override = decision.backend if decision is not None and decision.reason in (
            "override", "persona") else None
        account = self.engine.router_for(chat.account).account
        known = self._chats.get(key)
        _, _, members = known or (chat.chat_type, None, frozenset())
        if (chat.chat_type in GROUP_TYPES and chat.user_id is not None
                and chat.user_id in account.admins):
            members |= {chat.user_id}
        state = (chat.chat_type, override, members)
        if known == state and not force:  # the common case: nothing changed since
            self._chats.move_to_end(key)
            return
        self._chats.pop(key, None)
        self._chats[key] = state
        if len(self._chats) > self.CHATS_KEPT:
            (old_account, old_chat), (_, _, old_members) = self._chats.popitem(last=False)
            self._forget(old_account, old_chat, old_members)
        self._offer(sink, chat.account, chat.chat_type, chat.chat_id, override, members, force)

    def _forget(self, account: str, chat_id: int, members: frozenset[int]) -> None:
        self._published.pop((account, Scope("chat", chat_id=chat_id)), None)
        for user_id in members:
            self._published.pop((account, Scope("chat_member", chat_id=chat_id,
                                                user_id=user_id)), None)

    def _offer(self, sink: MenuSink, account_name: str, chat_type: ChatType, chat_id: int,
               override: str | None, members: frozenset[int], force: bool) -> None:
        account = self.engine.router_for(account_name).account
        common, backends = self.commands()
        fallback = fallback_menu(account, common, backends, chat_type)
        menus = [chat_menu(account, common, backends, chat_type, chat_id, override),
                 *(chat_menu(account, common, backends, chat_type, chat_id, override, user)
                   for user in sorted(members))]
        due = []
        for menu in menus:
            last = self._published.get((account_name, menu.scope))
            if last is None:
                # never set (by this process): Telegram shows the chat type's menu meanwhile
                last = fallback.commands if menu.scope.kind == "chat" else None
            if not force and last == menu.commands:
                continue
            self._published[(account_name, menu.scope)] = menu.commands
            due.append(menu)
        if due:
            sink(account_name, due)

    def republish(self, accounts: Sequence[str]) -> None:
        """After a reload: the accounts' menus, and each remembered chat's where it changed."""
        sink = self._sink()
        if sink is None:
            return
        for account in accounts:
            sink(account, self.account_menus(account))
        for (account, chat_id), (chat_type, override, members) in list(self._chats.items()):
            if account in accounts:
                self._offer(sink, account, chat_type, chat_id, override, members, False)

    def unavailable(self, message: IncomingMessage, decision: RouteDecision | None) -> str:
        """The answer to a command this chat cannot use: the ones it can."""
        chat = message.chat
        # a persona's backend, as a /backend choice, may have commands of its own
        override = decision.backend if decision is not None and decision.reason in (
            "override", "persona") else None
        common, backends = self.commands()
        available = available_commands(self.engine.router_for(chat.account).account, common,
                                       backends, chat.chat_type, chat.chat_id, chat.user_id,
                                       override)
        offered = message.command in {s.name for s in self.every_command()}
        if offered and (chat.account, Scope("chat", chat_id=chat.chat_id)) not in \
                self._published:
            # a menu this process did not set offered it (one from before a config change):
            # set the chat's own (once: then it is known); a typo costs nothing
            self.seen(message, decision, force=True)
        return unavailable_notice(message.command or "", available, known=offered)
