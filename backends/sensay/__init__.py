"""The ``sensay`` backend: Sensay replicas answer Telegram chats (JSON or streamed replies).

Registered through the ``tgmux`` entry-point group; ``tgmux demo`` offers it on its simulator.
"""

from __future__ import annotations

from typing import Any

from tgmux.backend import Backend
from tgmux.hooks import hookimpl
from tgmux.types import DemoBackend, StopFn

from .adapter import SensayBackend, SensaySettings
from .client import SensayClient, telegram_data

__all__ = ["SensayBackend", "SensayClient", "SensaySettings", "telegram_data"]


@hookimpl
def tgmux_backend_types() -> list[type[Backend]]:
    return [SensayBackend]


async def _start_demo() -> tuple[dict[str, Any], StopFn]:
    from .simulator import DEMO_REPLICA, DEMO_SECRET, Replica, SensaySimulator

    sim = SensaySimulator(
        organization_secret=DEMO_SECRET,
        replicas=[Replica(DEMO_REPLICA, "Sensay demo replica", flavor="data")],
        chunk_size=3,
        chunk_delay=0.03,
    )
    await sim.start()
    config = {
        "type": "sensay",
        "base_url": sim.base_url,
        "organization_secret": DEMO_SECRET,
        "user_id": "tg_{user_id}",
        "replica_uuid": DEMO_REPLICA,
    }
    return config, sim.stop


@hookimpl
def tgmux_demo_backends() -> list[DemoBackend]:
    return [
        DemoBackend(
            "sensay",
            "A Sensay replica (simulated): streamed replies that remember the conversation; "
            "/fresh asks without history",
            _start_demo,
        )
    ]
