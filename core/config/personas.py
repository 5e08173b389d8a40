"""Checking ``personas:`` (named presets: a backend and options a user may choose with
``/persona NAME``) and the lists of them routes and ``default_personas`` offer.

A persona's options are checked as a route's are (:func:`tgmux.config.options.overridden`);
where a route offers a persona of its own backend, the persona's options go over the route's.
"""

from __future__ import annotations

from collections.abc import Sequence

from tgmux.backend import Backend, BackendSettings
from tgmux.config.options import overridden
from tgmux.config.parse import KeyPath, ParsedConfig
from tgmux.config.schema import PersonaConfig, RouteConfig

#: Per route index (None: the chats that fall to ``default``): the personas offered there, in
#: the order listed, each with the settings its backend runs with for those chats.
PersonaSettings = dict[int | None, dict[str, BackendSettings]]


def check_personas(parsed: ParsedConfig, personas: dict[str, PersonaConfig],
                   settings: dict[str, BackendSettings], classes: dict[str, type[Backend]]
                   ) -> tuple[dict[str, BackendSettings], list[str]]:
    """Each persona's backend with its options over the backend's settings (a persona with a
    problem is left out), and the problems."""
    defined = ", ".join(sorted(settings)) or "none"
    found: dict[str, BackendSettings] = {}
    problems: list[str] = []
    for name, persona in personas.items():
        path: KeyPath = ("personas", name)
        if persona.backend not in settings:
            if persona.backend not in _raw_backends(parsed):  # else its own section says why
                problems.append(f"{parsed.where((*path, 'backend'))}: unknown backend "
                                f"{persona.backend!r} (defined: {defined})")
            continue
        resolved, more = overridden(parsed, (*path, "options"), settings[persona.backend],
                                    classes[persona.backend], persona.options)
        problems += more
        if resolved is not None and not more:
            found[name] = resolved
    return found, problems


def offered_on_routes(parsed: ParsedConfig, prefix: KeyPath, routes: Sequence[RouteConfig],
                      route_options: Sequence[BackendSettings],
                      personas: dict[str, PersonaConfig],
                      resolved: dict[str, BackendSettings],
                      classes: dict[str, type[Backend]]) -> tuple[PersonaSettings, list[str]]:
    """What each route at ``prefix`` offers (a persona of the route's own backend: the
    persona's options over the route's), and the problems (an unknown name)."""
    offered: PersonaSettings = {}
    problems: list[str] = []
    for i, route in enumerate(routes):
        names = _known(parsed, (*prefix, i, "personas"), route.personas, personas, problems)
        here: dict[str, BackendSettings] = {}
        for j, name in names:
            if name not in resolved:
                continue  # its own problem is reported under personas:
            persona = personas[name]
            if (persona.backend == route.backend and route.options
                    and i < len(route_options)):
                merged, more = overridden(parsed, (*prefix, i, "personas", j),
                                          route_options[i], classes[persona.backend],
                                          persona.options)
                problems += more
                if merged is not None:
                    here[name] = merged
            else:
                here[name] = resolved[name]
        if here:
            offered[i] = here
    return offered, problems


def offered_by_default(parsed: ParsedConfig, path: KeyPath, names: Sequence[str],
                       default: str | None, personas: dict[str, PersonaConfig],
                       resolved: dict[str, BackendSettings]
                       ) -> tuple[dict[str, BackendSettings], list[str]]:
    """``default_personas`` (written at ``path``): what chats that fall to ``default`` may
    choose, and the problems."""
    problems: list[str] = []
    if names and default is None:
        return {}, [f"{parsed.where(path)}: no chat falls to default: set default: (a "
                    "backend), or list the personas on routes"]
    known = _known(parsed, path, names, personas, problems)
    return {name: resolved[name] for _, name in known if name in resolved}, problems


def _known(parsed: ParsedConfig, path: KeyPath, names: Sequence[str],
           personas: dict[str, PersonaConfig], problems: list[str]) -> list[tuple[int, str]]:
    """(index, name) of the listed names that ``personas:`` defines; each other one is a
    problem."""
    known = []
    for j, name in enumerate(names):
        if name in personas:
            known.append((j, name))
        else:
            choices = ", ".join(personas) if personas else "none: define it under personas:"
            problems.append(f"{parsed.where((*path, j))}: unknown persona {name!r} "
                            f"(defined: {choices})")
    return known


def _raw_backends(parsed: ParsedConfig) -> dict[str, object]:
    backends = parsed.data.get("backends")
    return backends if isinstance(backends, dict) else {}
