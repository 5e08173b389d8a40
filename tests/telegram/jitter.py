"""Run a test module also with network latency jitter (issue 21 §3): in the module,
``tgmux_bot = with_latency_jitter()`` runs each of its tests twice, as written and with each
push and answer of the fake Telegram delayed by a random 0..30 ms (seeded: the same delays on
every run), so pushes overtake each other as on a real network."""

from __future__ import annotations

from typing import Any

import pytest

JITTER = 0.03  # seconds: at most this much per push and per answer
SEED = 21


def with_latency_jitter(latency: float = JITTER) -> Any:
    @pytest.fixture(params=[0.0, latency], ids=["", "latency"])
    def tgmux_bot(request: pytest.FixtureRequest, tgmux_bot: Any) -> Any:
        async def make(config: str, **options: Any) -> Any:
            if request.param:
                options.setdefault("latency", request.param)
                options.setdefault("seed", SEED)
            return await tgmux_bot(config, **options)

        return make

    return tgmux_bot
