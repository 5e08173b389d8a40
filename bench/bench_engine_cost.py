"""The engine's own work per message (not a timed test; prints its figures).

20 000 messages over 200 chats, the in-process echo backend, ``memory://``, a frontend that only
reads the parts: everything the engine does per message (inbox, routing, hooks, limits, the
reply stream, circuits, metrics) and nothing else. The baseline, measured in the same run, is
the least that keeps each chat in order and chats concurrent: a queue and a worker per chat
reading the same backend's reply. Figures: microseconds per message, medians of ``--rounds``.

Run: python bench/bench_engine_cost.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator

from tgmux.backend import ChatIdentity, ReplyPart, Turn
from tgmux.bootstrap import load_config_text
from tgmux.engine import Engine, IncomingMessage
from tgmux.hooks import build_plugin_manager
from tgmux.store import open_store

MESSAGES, CHATS = 20_000, 200
CONFIG = "backends:\n  e: {type: echo}\ndefault: e\n"


class ReadingFrontend:
    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        return [part async for part in parts]


def messages() -> list[IncomingMessage]:
    return [IncomingMessage(ChatIdentity("private", 1000 + i % CHATS, 1000 + i % CHATS, None,
                                         i + 1), f"m{i}") for i in range(MESSAGES)]


async def engine_us() -> float:
    pm = build_plugin_manager()
    engine = Engine(load_config_text(CONFIG, plugin_manager=pm), pm, open_store("memory://"),
                    ReadingFrontend())
    await engine.start()
    batch = messages()
    started = time.perf_counter()
    done = [await engine.submit(m) for m in batch]
    await asyncio.gather(*done)
    elapsed = time.perf_counter() - started
    await engine.stop()
    return elapsed / MESSAGES * 1e6


async def bare_us() -> float:
    pm = build_plugin_manager()
    config = load_config_text(CONFIG, plugin_manager=pm)
    backend = config.backend_classes["e"]("e", config.backend_settings["e"],
                                          open_store("memory://").namespace("backend:e"))
    frontend = ReadingFrontend()
    queues: dict[int, asyncio.Queue[IncomingMessage | None]] = {}

    async def worker(queue: asyncio.Queue[IncomingMessage | None]) -> None:
        while (message := await queue.get()) is not None:
            turn = Turn(text=message.text, chat=message.chat, options=backend.settings,
                        kv=backend.kv, backend_name="e")
            await frontend.deliver(message.chat, backend.reply(turn), reply_to_message_id=None)

    batch = messages()
    started = time.perf_counter()
    workers = []
    for message in batch:
        queue = queues.get(message.chat.chat_id)
        if queue is None:
            queue = queues[message.chat.chat_id] = asyncio.Queue()
            workers.append(asyncio.create_task(worker(queue)))
        queue.put_nowait(message)
    for queue in queues.values():
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return (time.perf_counter() - started) / MESSAGES * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    bare, ours = [], []
    for _ in range(args.rounds):
        bare.append(asyncio.run(bare_us()))
        ours.append(asyncio.run(engine_us()))
    b, e = statistics.median(bare), statistics.median(ours)
    print(f"{MESSAGES} messages over {CHATS} chats, echo backend, memory://; medians of "
          f"{args.rounds} rounds")
    print(f"  bare queue + worker per chat: {b:6.1f} us/message")
    print(f"  engine:                       {e:6.1f} us/message ({e - b:+.1f} us, "
          f"{e / b:.1f}x)")


if __name__ == "__main__":
    main()
