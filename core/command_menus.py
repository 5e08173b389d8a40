"""Which commands Telegram's command menu lists, by scope: pure, from the config.

Telegram shows a viewer the first menu set for the most specific scope that covers them (Bot
API "Determining list of commands"): in a private chat ``chat`` → ``all_private_chats`` →
``default``; in a group ``chat_member`` → ``chat_administrators`` → ``chat`` →
``all_chat_administrators`` → ``all_group_chats`` → ``default``. Menus are not merged: each
one lists everything its viewers may use. So:

- ``default``, ``all_private_chats``, ``all_group_chats``: the built-in and plugin commands
  everyone may use, and a backend's commands only where every chat of that kind reaches that
  backend with them (the config's routes and default; a route on a ``command`` counts);
- one ``chat`` menu per admin (their private chat with the bot): the admin-only commands too;
- a chat whose backend differs (a route on its ``chat_id``, a ``/backend`` override): its own
  ``chat`` menu with that backend's commands; an admin seen in a group: a ``chat_member``
  menu with the admin-only commands too.

tgmux's admins are users listed in the config, not a group's administrators: the
``*_administrators`` scopes are not used. :mod:`tgmux.menu_publisher` decides when a menu is
sent; the frontend only sends it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tgmux.config import Account
from tgmux.text import shorten
from tgmux.types import ChatType, CommandSpec

__all__ = ["GROUP_TYPES", "Menu", "Scope", "account_menus", "available_commands",
           "chat_menu", "fallback_menu", "unavailable_notice"]

#: Chat types whose menu is the group one (``all_group_chats``)
GROUP_TYPES: tuple[ChatType, ...] = ("group", "supergroup")


@dataclass(frozen=True)
class Scope:
    """A Bot API command scope: ``kind`` is its name there (``default``,
    ``all_private_chats``, ``all_group_chats``, ``chat``, ``chat_member``...)."""

    kind: str
    chat_id: int | None = None
    user_id: int | None = None
    language_code: str | None = None


@dataclass(frozen=True)
class Menu:
    scope: Scope
    commands: tuple[CommandSpec, ...]


def _reached(account: Account, chat_type: ChatType, chat_id: int | None,
             user_id: int | None, command: str) -> set[int | None]:
    """The routes (their index; None: ``default``) that may answer ``/command`` in such a
    chat, following them as :class:`tgmux.router.Router` does. ``chat_id`` / ``user_id``
    None: any chat of that type / any member. A condition on what cannot be known here (a
    text pattern, a username, another member) makes a route a maybe: it is possible, and so
    is what comes after it."""
    found: set[int | None] = set()
    for index, route in enumerate(account.routes):
        m = route.match
        if m.chat_type is not None and chat_type not in m.chat_type:
            continue
        if m.command is not None and command not in m.command:
            continue
        certain = m.text is None and m.username is None
        # a private chat's id is its user's (positive); a group's is negative
        chat_ids = (None if m.chat_id is None else
                    [c for c in m.chat_id if (c > 0) == (chat_type == "private")])
        for wanted, known in ((chat_ids, chat_id), (m.user_id, user_id)):
            if wanted is None:
                continue
            if not wanted or (known is not None and known not in wanted):
                break
            if known is None:
                certain = False
        else:
            found.add(index)
            if certain:
                return found
    found.add(None)
    return found


def _outcomes(account: Account, chat_type: ChatType, chat_id: int | None,
              user_id: int | None, command: str) -> set[str | None]:
    """The backends that may answer ``/command`` in such a chat (None: nothing answers)."""
    return {account.default if index is None else account.routes[index].backend
            for index in _reached(account, chat_type, chat_id, user_id, command)}


def _offers_personas(account: Account, chat_type: ChatType, chat_id: int | None,
                     user_id: int | None) -> bool:
    """Whether every route such a chat may be on offers personas (``/persona`` is listed)."""
    return all(account.personas.get(index)
               for index in _reached(account, chat_type, chat_id, user_id, "persona"))


def _commands(common: Sequence[CommandSpec], backends: Mapping[str, Sequence[CommandSpec]],
              account: Account, chat_type: ChatType, chat_id: int | None, user_id: int | None,
              override: str | None, admin: bool) -> tuple[CommandSpec, ...]:
    """``common`` (built-in and plugin commands), then each backend command that works in
    every such chat; admin-only ones only for an admin."""
    seen: dict[str, CommandSpec] = {}
    for spec in common:
        if spec.name != "persona" or _offers_personas(account, chat_type, chat_id, user_id):
            seen.setdefault(spec.name, spec)
    names = dict.fromkeys(spec.name for specs in backends.values() for spec in specs)
    for name in names:
        if name in seen:
            continue
        reached = ({override} if override is not None and override in backends
                   else _outcomes(account, chat_type, chat_id, user_id, name))
        specs = [next((s for s in backends.get(b or "", ()) if s.name == name), None)
                 for b in reached]
        if specs and all(s is not None for s in specs):
            seen[name] = specs[0]  # type: ignore[assignment]
    return tuple(s for s in seen.values() if admin or not s.admin_only)


def _chat_types(kind: str) -> tuple[ChatType, ...]:
    return {"all_private_chats": ("private",), "all_group_chats": GROUP_TYPES}.get(
        kind, ("private", *GROUP_TYPES))


def _everywhere(common: Sequence[CommandSpec], backends: Mapping[str, Sequence[CommandSpec]],
                account: Account, kind: str) -> tuple[CommandSpec, ...]:
    """What every chat of the scope's kinds may use (not admins' extras)."""
    per_type = [_commands(common, backends, account, t, None, None, None, False)
                for t in _chat_types(kind)]
    names = set.intersection(*({s.name for s in specs} for specs in per_type))
    return tuple(s for s in per_type[0] if s.name in names)


def account_menus(account: Account, common: Sequence[CommandSpec],
                  backends: Mapping[str, Sequence[CommandSpec]]) -> list[Menu]:
    """The menus set once per bot (at start, after a reload): ``default``,
    ``all_private_chats``, ``all_group_chats`` (each set, so that none left from before
    shows), and one ``chat`` menu per admin."""
    menus = [Menu(Scope(kind), _everywhere(common, backends, account, kind))
             for kind in ("default", "all_private_chats", "all_group_chats")]
    for admin in dict.fromkeys(account.admins):
        menus.append(chat_menu(account, common, backends, "private", admin, None))
    return menus


def fallback_menu(account: Account, common: Sequence[CommandSpec],
                  backends: Mapping[str, Sequence[CommandSpec]], chat_type: ChatType) -> Menu:
    """The menu a chat of that type shows when it has none of its own."""
    kind = "all_private_chats" if chat_type == "private" else "all_group_chats"
    return Menu(Scope(kind), _everywhere(common, backends, account, kind))


def chat_menu(account: Account, common: Sequence[CommandSpec],
              backends: Mapping[str, Sequence[CommandSpec]], chat_type: ChatType, chat_id: int,
              override: str | None, member: int | None = None) -> Menu:
    """One chat's own menu: ``chat`` (a private chat: its user's, with the admin-only commands
    when that user is an admin), or ``chat_member`` for ``member`` in a group (an admin)."""
    if chat_type == "private":
        user, admin = chat_id, chat_id in account.admins
        scope = Scope("chat", chat_id=chat_id)
    else:
        user, admin = member, member is not None and member in account.admins
        scope = (Scope("chat", chat_id=chat_id) if member is None
                 else Scope("chat_member", chat_id=chat_id, user_id=member))
    return Menu(scope, _commands(common, backends, account, chat_type, chat_id, user, override,
                                 admin))


def available_commands(account: Account, common: Sequence[CommandSpec],
                       backends: Mapping[str, Sequence[CommandSpec]], chat_type: ChatType,
                       chat_id: int, user_id: int | None,
                       override: str | None) -> tuple[CommandSpec, ...]:
    """What ``user_id`` may use in that chat (an unavailable command's answer lists them)."""
    admin = user_id is not None and user_id in account.admins
    return _commands(common, backends, account, chat_type, chat_id,
                     chat_id if chat_type == "private" else user_id, override, admin)


def unavailable_notice(command: str, available: Sequence[CommandSpec], *,
                       known: bool = True) -> str:
    """The answer to ``/command`` where it cannot be used (``known``: some chat can): the
    commands that can."""
    shown = shorten(command, 40)
    listing = "\n".join(f"/{s.name}{' ' + s.usage if s.usage else ''} — {s.description}"
                        for s in available)
    said = (f"/{shown} is not available in this chat." if known
            else f"Unknown command /{shown}.")
    return f"{said} Commands here:\n{listing}"
