"""BambiSleep.Chat backend (``type: bambisleep``): REST or websocket chat, audio replies,
triggers, profile and session commands, signed webhooks. See ``docs/backends/bambisleep.md``.

``client`` is the API client (usable on its own), ``adapter`` the tgmux backend (the reply and
the wiring), ``settings`` its settings models, ``commands`` its chat commands, ``ws`` the
websocket transport, ``webhooks`` the webhook receiver, ``registration`` the webhook's
registration with the provider and ``simulator`` the offline provider.
"""

from __future__ import annotations

from typing import Any

from tgmux.backend import Backend
from tgmux.hooks import hookimpl
from tgmux.types import DemoBackend, StopFn

from .adapter import BambiSleepBackend, BambiSleepSettings

__all__ = ["BambiSleepBackend", "BambiSleepSettings"]


@hookimpl
def tgmux_backend_types() -> list[type[Backend]]:
    return [BambiSleepBackend]


async def _start_demo() -> tuple[dict[str, Any], StopFn]:
    from .simulator import DEMO_API_KEY, DEMO_USER, BambiSleepSimulator

    sim = BambiSleepSimulator()
    await sim.start()
    config = {
        "type": "bambisleep",
        "base_url": sim.base_url,
        "api_key": DEMO_API_KEY,
        "username": DEMO_USER,
    }
    return config, sim.stop


@hookimpl
def tgmux_demo_backends() -> list[DemoBackend]:
    return [DemoBackend("bambisleep", "BambiSleep.Chat (simulated): replies with audio and "
                        "triggers; /profile, /triggers, /sessions", _start_demo)]
