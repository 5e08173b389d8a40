"""Which backend answers a message: a plugin's choice, the chat's override, the chat's persona
(where its route offers it), else the first matching route, else ``default``."""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass

from tgmux.backend import BackendSettings
from tgmux.config import Config, GroupTrigger, RouteConfig
from tgmux.config.schema import PersonaSwitch
from tgmux.route_patterns import compile_route_pattern
from tgmux.types import IncomingMessage


@dataclass(frozen=True)
class RouteDecision:
    backend: str
    options: BackendSettings
    route_index: int | None  # None: override or default
    group_trigger: GroupTrigger
    reason: str  # "override", "route 2", "default", "plugin"
    #: the backends to try, in order, when this one fails (the route's chain, else the
    #: backend's own); flat: their own chains are not followed
    fallback: tuple[str, ...] = ()
    #: the matched route's ``group_context``: group messages kept for the next turn (0: off)
    group_context: int = 0
    #: the chat's persona, when it answers (reason "persona")
    persona: str | None = None


log = logging.getLogger("tgmux.router")


class Router:
    """One account's routing (``account`` None: the first account)."""

    def __init__(self, config: Config, account: str | None = None) -> None:
        self.config = config
        self.account = config.account(account)
        self.routes = self.account.routes
        self._regex = [compile_route_pattern(r.match.text) if r.match.text else None
                       for r in self.routes]
        #: (chat id, persona) whose choice was not followed, said once (bounded)
        self._ignored: OrderedDict[tuple[int, str], None] = OrderedDict()

    def matches(self, index: int, message: IncomingMessage) -> bool:
        route: RouteConfig = self.routes[index]
        m = route.match
        chat = message.chat
        if m.chat_type is not None and chat.chat_type not in m.chat_type:
            return False
        if m.chat_id is not None and chat.chat_id not in m.chat_id:
            return False
        if m.user_id is not None and chat.user_id not in m.user_id:
            return False
        if m.username is not None and (chat.username or "").lower() not in m.username:
            return False
        if m.command is not None and message.command not in m.command:
            return False
        regex = self._regex[index]
        return regex is None or regex.found_in(message.text)

    def first_match(self, message: IncomingMessage) -> int | None:
        for i in range(len(self.routes)):
            if self.matches(i, message):
                return i
        return None

    def decide(self, message: IncomingMessage, override: str | None = None,
               chosen: str | None = None, persona: str | None = None) -> RouteDecision | None:
        """The decision, or None when nothing answers (no route, no default). ``persona``: the
        chat's choice, followed where its route (or ``default``) offers it."""
        index = self.first_match(message)
        trigger: GroupTrigger = self.routes[index].group_trigger if index is not None else "mention"
        # the chat's context follows the chat's route, whichever backend answers
        context = self.routes[index].group_context if index is not None else 0
        for name, reason in ((chosen, "plugin"), (override, "override")):
            if name is not None and name in self.config.backend_settings:
                return RouteDecision(name, self.config.backend_settings[name], index, trigger,
                                     reason, self._chain(name), context)
        if persona is not None and (chosen_persona := self._persona(
                message, index, persona, trigger, context)) is not None:
            return chosen_persona
        if index is not None:
            route = self.routes[index]
            chain = (tuple(route.fallback) if route.fallback is not None
                     else self._chain(route.backend))
            return RouteDecision(route.backend, self.account.route_options[index], index, trigger,
                                 f"route {index}", chain, context)
        default = self.account.default
        if default is None:
            return None
        return RouteDecision(default, self.config.backend_settings[default], None, trigger,
                             "default", self._chain(default))

    #: chats whose ignored persona choice was logged, remembered at most
    IGNORED_KEPT = 10_000

    def offered(self, route_index: int | None) -> dict[str, BackendSettings]:
        """The personas chats of that route (None: that fall to ``default``) may choose, in the
        order listed, with the settings each runs with there."""
        return self.account.personas.get(route_index, {})

    def persona_switch(self, route_index: int | None) -> PersonaSwitch:
        """Who may switch the persona of a group on that route."""
        own = self.routes[route_index].persona_switch if route_index is not None else None
        return own or self.account.persona_switch

    def _persona(self, message: IncomingMessage, index: int | None, name: str,
                 trigger: GroupTrigger, context: int) -> RouteDecision | None:
        settings = self.offered(index).get(name)
        persona = self.config.data.personas.get(name)
        if settings is None or persona is None or persona.backend not in \
                self.config.backend_settings:
            # the config changed since it was chosen: the route answers, said once per chat
            key = (message.chat.chat_id, name)
            if key not in self._ignored:
                self._ignored[key] = None
                if len(self._ignored) > self.IGNORED_KEPT:
                    self._ignored.popitem(last=False)
                log.info("chat %s: persona %r is not offered here any more; the chat's "
                         "route answers", message.chat.chat_id, name)
            return None
        route = self.routes[index] if index is not None else None
        chain = (tuple(route.fallback) if route is not None and route.fallback is not None
                 and route.backend == persona.backend else self._chain(persona.backend))
        return RouteDecision(persona.backend, settings, index, trigger, "persona", chain,
                             context, persona=name)

    def _chain(self, backend: str) -> tuple[str, ...]:
        core = self.config.backend_core.get(backend)
        return tuple(core.fallback) if core is not None else ()

    def personas_shown(self, row: int) -> str:
        """What row ``row`` of :meth:`table` offers, for ``tgmux check`` ("" when nothing)."""
        index = row if row < len(self.routes) else None
        offered = self.offered(index)
        if not offered:
            return ""
        return (f"  personas: {', '.join(offered)} (switch in groups: "
                f"{self.persona_switch(index)})")

    def table(self) -> list[tuple[str, str, str, GroupTrigger]]:
        """(match, backend, options, group trigger) rows for ``tgmux check``."""
        rows = []
        for route in self.routes:
            cond = route.match.model_dump(exclude_none=True)
            shown = ", ".join(f"{k}={v}" for k, v in cond.items()) or "(any)"
            opts = ", ".join(f"{k}={v!r}" for k, v in route.options.items())
            rows.append((shown, route.backend, opts, route.group_trigger))
        if self.account.default:
            rows.append(("(default)", self.account.default, "", "mention"))
        return rows
