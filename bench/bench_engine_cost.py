"""The engine's own work per message (not a timed test; prints its figures).

20 000 messages over 200 chats, the in-process echo backend, ``memory://``, a frontend that only
reads the parts: everything the engine does per message (inbox, routing, hooks, limits, the
reply stream, circuits, metrics) and nothing else. The baseline, measured in the same run, is
the least that keeps each chat in order and chats concurrent: a queue and a worker per chat
reading the same backend's reply. Figures: microseconds per message, medians of ``--rounds``.

The console variant (issue 24: "the console adds nothing to the hot path of a message"): the
same engine with ``server.listen`` and ``server.console`` set, the process's HTTP server
started as ``tgmux run`` starts it (:func:`tgmux.ops.start_ops_server`: with the console and
its admin API where this build has them; the run says which), nobody signed in. Rounds of the
variants interleaved, their order alternating; the ratio is console on / off, of the wall
clock and of the process's CPU time.

``--store URL`` runs the engine variants on another store (e.g. a PostgreSQL URL: its change
feed's ``LISTEN`` connection is then open and idle too).

Run: python bench/bench_engine_cost.py [--rounds 5] [--store URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import time
from collections.abc import AsyncIterator

import aiohttp

from tgmux.backend import ChatIdentity, ReplyPart, Turn
from tgmux.bootstrap import load_config_text
from tgmux.engine import Engine, IncomingMessage
from tgmux.hooks import build_plugin_manager
from tgmux.ops import start_ops_server
from tgmux.store import open_store

MESSAGES, CHATS = 20_000, 200
CONFIG = "backends:\n  e: {type: echo}\ndefault: e\n"
CONSOLE = ('server: {listen: "127.0.0.1:0", console: {token: "bench-console-token-0123456789"}}'
           "\n")


class ReadingFrontend:
    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        return [part async for part in parts]


def messages() -> list[IncomingMessage]:
    return [IncomingMessage(ChatIdentity("private", 1000 + i % CHATS, 1000 + i % CHATS, None,
                                         i + 1), f"m{i}") for i in range(MESSAGES)]


#: What the console variant found at GET /api/v1/accounts without a token (401: the console
#: is there and refuses; 404: this build has no console, the ops server alone ran).
found: dict[str, int] = {}
#: CPU microseconds per message of each round, by variant: what the process itself spent, less
#: disturbed than the wall clock by other processes on a shared machine.
cpu: dict[str, list[float]] = {"engine": [], "console": []}


async def engine_us(*, console: bool = False, store: str = "memory://") -> float:
    """Wall-clock microseconds per message (the process's CPU time goes to ``cpu``)."""
    pm = build_plugin_manager()
    config = load_config_text(CONFIG + (CONSOLE if console else ""), plugin_manager=pm)
    engine = Engine(config, pm, open_store(store), ReadingFrontend())
    await engine.start()
    server = await start_ops_server(config, engine)
    if server is not None:  # up and answering before the clock starts, then left alone
        async with aiohttp.ClientSession() as http, http.get(
                f"http://127.0.0.1:{server.port}/api/v1/accounts") as response:
            found["GET /api/v1/accounts"] = response.status
    batch = messages()
    started, cpu_started = time.perf_counter(), time.process_time()
    done = [await engine.submit(m) for m in batch]
    await asyncio.gather(*done)
    elapsed = time.perf_counter() - started
    cpu["console" if console else "engine"].append(
        (time.process_time() - cpu_started) / MESSAGES * 1e6)
    if server is not None:
        await server.stop()
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
    parser.add_argument("--store", default="memory://",
                        help="the engine variants' store URL (default memory://)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}")
    bare, ours, console = [], [], []
    for round_ in range(args.rounds):
        bare.append(asyncio.run(bare_us()))
        # the engine variants' order alternates: neither always runs on the other's leavings
        for with_console in (False, True) if round_ % 2 == 0 else (True, False):
            (console if with_console else ours).append(
                asyncio.run(engine_us(console=with_console, store=args.store)))
    b, e, c = (statistics.median(bare), statistics.median(ours), statistics.median(console))
    where = "memory://" if args.store == "memory://" else args.store.partition(":")[0]
    print(f"{MESSAGES} messages over {CHATS} chats, echo backend, {where}; medians of "
          f"{args.rounds} rounds")
    print(f"  bare queue + worker per chat: {b:6.1f} us/message")
    print(f"  engine:                       {e:6.1f} us/message ({e - b:+.1f} us, "
          f"{e / b:.1f}x)")
    status = found.get("GET /api/v1/accounts")
    what = ("console and admin API mounted (401 without a token)" if status == 401 else
            f"ops server only: this build has no console (GET /api/v1/accounts: {status})")
    print(f"  engine, server.listen + server.console, idle: {c:6.1f} us/message "
          f"({c / e:.3f}x the engine alone; {what})")
    spread = [f"{min(v):.1f}-{max(v):.1f}" for v in (ours, console)]
    print(f"  rounds' spread: engine {spread[0]}, with the console {spread[1]} us/message")
    e_cpu, c_cpu = statistics.median(cpu["engine"]), statistics.median(cpu["console"])
    print(f"  CPU time of the process: engine {e_cpu:.1f}, with the console {c_cpu:.1f} "
          f"us/message ({c_cpu / e_cpu:.3f}x)")


if __name__ == "__main__":
    main()
