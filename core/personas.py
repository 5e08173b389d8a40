"""Personas a chat chooses with ``/persona NAME``: the choice kept per (account, chat) in the
store's key-value table (namespace ``persona``), read once and kept in memory (bounded), and
the ``/persona`` command. Which personas a chat may choose, and what a choice decides, is the
router's (:meth:`tgmux.router.Router.offered`); where a persona ranks: a plugin's choice, then
the ``/backend`` override, then the persona, then the routes.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from tgmux.config import Config
from tgmux.config.schema import PERSONA_OFF
from tgmux.store import FollowedCache, GuardedStore, StoreUnavailable
from tgmux.text import shorten
from tgmux.types import IncomingMessage, Notice, ReplyPart, Text

if TYPE_CHECKING:
    from tgmux.engine import Engine
    from tgmux.router import RouteDecision

__all__ = ["NAMESPACE", "PersonaChoices", "offers_personas", "persona_command", "persona_status"]

log = logging.getLogger("tgmux.personas")

#: The store's key-value namespace the choices are kept in (key ``ACCOUNT:CHAT_ID``).
NAMESPACE = "persona"


class PersonaChoices:
    """Each chat's persona choice. Kept in memory once read (bounded; a store round trip per
    message saved, as for ``/backend``: ``Engine.override``), dropped when any process changes
    it (:mod:`tgmux.store.changes`)."""

    #: Chats whose choice is kept in memory at most (the oldest read is forgotten).
    KEPT = 100_000

    def __init__(self, store: GuardedStore) -> None:
        self.store = store
        self.kv = store.namespace(NAMESPACE)
        self._known: FollowedCache[str | None] = store.followed("persona", self.KEPT)

    async def choice(self, account: str, chat_id: int, config: Config) -> str | None:
        """The chat's persona (None: none chosen, or not known while the store is down). No
        store call at all with no ``personas:`` in the config."""
        if not config.data.personas:
            return None
        try:
            return await self._known.get((account, chat_id),
                                         lambda: self.kv.get(f"{account}:{chat_id}"))
        except StoreUnavailable:  # the route answers meanwhile (the guard said it once)
            return None

    async def choose(self, account: str, chat_id: int, name: str | None) -> None:
        """Set (None: clear) the chat's persona, in the store and here (StoreUnavailable: it
        could not be kept)."""
        key = f"{account}:{chat_id}"
        await self._known.put((account, chat_id), lambda: self.kv.delete(key) if name is None
                              else self.kv.set(key, name), name)

    def forget(self, account: str) -> None:
        """Forget what is kept of ``account``'s chats (another process ran it meanwhile)."""
        self._known.forget(account)


def offers_personas(engine: Engine, decision: RouteDecision | None, account: str) -> bool:
    """Whether the chat (decided as ``decision``) may choose a persona."""
    return decision is not None and bool(
        engine.router_for(account).offered(decision.route_index))


def persona_status(engine: Engine, message: IncomingMessage,
                   decision: RouteDecision | None) -> str:
    """``/status``'s line on the chat's persona ("" where none is offered nor chosen)."""
    if decision is not None and decision.persona is not None:
        return f"This chat's persona: {decision.persona} ({decision.backend})"
    if offers_personas(engine, decision, message.chat.account):
        return "This chat's persona: none (/persona lists the choices)"
    return ""


async def persona_command(engine: Engine, message: IncomingMessage,
                          decision: RouteDecision | None) -> list[ReplyPart]:
    """``/persona``: the chat's choices and its current one; ``/persona NAME`` chooses one,
    ``/persona default`` goes back to the chat's usual backend. StoreUnavailable: the choice
    could not be kept."""
    chat = message.chat
    router = engine.router_for(chat.account)
    offered = list(router.offered(decision.route_index)) if decision is not None else []
    if not offered:
        return [Notice("This chat has no personas to choose from.")]
    personas = engine.config.data.personas
    current = decision.persona if decision is not None else None
    wanted = message.args.strip()
    if not wanted:
        lines = [f"Current persona: {current or 'none'}", "", "Personas here:"]
        for name in offered:
            mark = " (current)" if name == current else ""
            about = f" — {personas[name].description}" if personas[name].description else ""
            lines.append(f"{name}{about}{mark}")
        lines += ["", f"Choose with /persona NAME; /persona {PERSONA_OFF} goes back to "
                  "this chat's usual AI."]
        if decision is not None and decision.reason in ("override", "plugin"):
            lines.append(f"For now {decision.backend} answers this chat (an admin's /backend "
                         "choice), whatever the persona.")
        return [Text("\n".join(lines))]
    if chat.chat_type != "private" and router.persona_switch(
            decision.route_index if decision else None) == "admins" \
            and not engine.is_admin(chat.user_id, chat.account):
        return [Notice("Only the bot's admins can switch the persona in this chat.")]
    if wanted.lower() == PERSONA_OFF:
        await engine.personas.choose(chat.account, chat.chat_id, None)
        after = await engine.decide(message)
        engine.menus.seen(message, after, force=True)  # the chat's menu follows its backend
        return [Text(f"No persona: this chat talks to {after.backend if after else '-'} "
                     "again.")]
    name = next((n for n in offered if n.lower() == wanted.lower()), None)
    if name is None:
        defined = any(n.lower() == wanted.lower() for n in personas)
        said = (f"The persona {shorten(wanted, 40)!r} is not available in this chat."
                if defined else f"There is no persona {shorten(wanted, 40)!r}.")
        return [Notice(f"{said} Choose one of: {', '.join(offered)}")]
    await engine.personas.choose(chat.account, chat.chat_id, name)
    after = await engine.decide(message)
    engine.menus.seen(message, after, force=True)
    said = f"This chat now talks to {name}."
    if after is not None and after.persona != name:
        said += f" For now {after.backend} answers it (an admin's /backend choice)."
    return [Text(said)]
