"""``tgmux demo``: the console chat on embedded defaults, offline, with no credentials."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

StopFn = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class DemoBackend:
    """A backend the demo can offer: ``start()`` starts its simulator and returns the backend
    config (as under ``backends:``, with ``base_url`` pointing at the simulator) and a stop
    function."""

    name: str
    description: str
    start: Callable[[], Awaitable[tuple[dict[str, Any], StopFn]]]
