"""LucyDream (my.lucydream.ai): ``type: lucydream``. See docs/backends/lucydream.md."""

from __future__ import annotations

from typing import Any

from tgmux.hooks import hookimpl
from tgmux.types import DemoBackend, StopFn

from .adapter import LucyDreamBackend, LucyDreamSettings
from .client import LucyDreamClient

__all__ = ["LucyDreamBackend", "LucyDreamClient", "LucyDreamSettings"]

DEMO_API_KEY = "demo-key"


@hookimpl
def tgmux_backend_types() -> list[type[LucyDreamBackend]]:
    return [LucyDreamBackend]


async def _start_demo() -> tuple[dict[str, Any], StopFn]:
    from .simulator import LucyDreamSimulator

    sim = LucyDreamSimulator(api_keys={DEMO_API_KEY}, free_messages=None)
    await sim.start()
    config = {"type": "lucydream", "api_key": DEMO_API_KEY, "base_url": sim.base_url}
    return config, sim.stop


@hookimpl
def tgmux_demo_backends() -> list[DemoBackend]:
    return [
        DemoBackend(
            name="lucydream",
            description="LucyDream companion chat (simulated): text, /image, /history",
            start=_start_demo,
        )
    ]
