"""The hot-path cost of recording usage (issue 23; not a timed test; prints its figures).

The engine's path per message as in bench_engine_cost.py (20 000 messages over 200 chats,
the in-process echo backend, a frontend that only reads the parts), with each reply carrying a
``Usage`` part (added by a ``tgmux_after_backend`` hook, in every variant): recording off
(the recorder replaced by a no-op), recording with a configured price, recording with the
built-in genai-prices price (gpt-4o-mini). Store: ``memory://`` (the recorder's own work and
one ``usage_add``; a SQL store adds its write). Figures: microseconds per message, medians of
``--rounds``, rounds of the variants interleaved.

Run: python bench/bench_usage.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator
from typing import Any

from tgmux.backend import ChatIdentity, ReplyPart, Text
from tgmux.bootstrap import load_config_text
from tgmux.engine import Engine, IncomingMessage
from tgmux.hooks import build_plugin_manager, hookimpl
from tgmux.store import open_store
from tgmux.store.memory import MemoryStore
from tgmux.types import Usage

MESSAGES, CHATS = 20_000, 200
CONFIG = ("backends:\n  e: {type: echo}\ndefault: e\n"
          "prices: {local-model: {input: 0.2, output: 0.8, cached_input: 0.1}}\n")


class ReadingFrontend:
    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        return [part async for part in parts]


class WithUsage:
    """Adds a Usage part after each reply text (what an OpenAI reply carries)."""

    def __init__(self, model: str) -> None:
        self.model = model

    @hookimpl
    def tgmux_after_backend(self, part: ReplyPart) -> Any:
        if isinstance(part, Text):
            return [part, Usage(self.model, input_tokens=1200, output_tokens=300,
                                cached_input_tokens=1024, reasoning_tokens=0)]
        return part


def messages() -> list[IncomingMessage]:
    return [IncomingMessage(ChatIdentity("private", 1000 + i % CHATS, 1000 + i % CHATS, None,
                                         i + 1), f"m{i}") for i in range(MESSAGES)]


async def engine_us(model: str, record: bool) -> float:
    pm = build_plugin_manager()
    pm.register(WithUsage(model))
    store = open_store("memory://")
    engine = Engine(load_config_text(CONFIG, plugin_manager=pm), pm, store, ReadingFrontend())
    if not record:
        async def nothing(*args: Any) -> None:
            return None

        engine.usage.record = nothing  # type: ignore[method-assign]
    await engine.start()
    await engine.usage.prices(engine.config).load()  # the import, once, before the clock
    batch = messages()
    started = time.perf_counter()
    done = [await engine.submit(m) for m in batch]
    await asyncio.gather(*done)
    elapsed = time.perf_counter() - started
    await engine.stop()
    assert isinstance(store, MemoryStore)
    if record:
        assert sum(row.messages for row in store.usage.values()) == MESSAGES
        assert all(row.cost for row in store.usage.values())
    return elapsed / MESSAGES * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    variants = {"recording off": ("local-model", False),
                "configured price": ("local-model", True),
                "genai-prices price": ("gpt-4o-mini", True)}
    figures: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, (model, record) in variants.items():
            figures[name].append(asyncio.run(engine_us(model, record)))
    base = statistics.median(figures["recording off"])
    print(f"{MESSAGES} messages over {CHATS} chats, echo backend + a Usage part, memory://; "
          f"medians of {args.rounds} rounds")
    for name, values in figures.items():
        value = statistics.median(values)
        print(f"  {name:20} {value:6.1f} us/message ({value - base:+.1f} us, "
              f"{value / base:.2f}x)")


if __name__ == "__main__":
    main()
