"""Sensay streaming latency through the engine (not a timed test; prints its figures).

For each streamed reply: the time from the simulator writing its first text token to the first
text delta reaching the frontend, and from the last token to the final text. The simulator and
the engine share one event loop, so both ends read the same clock. Every stream flavor (v4 data
stream, v5 UI message stream, plain text), with or without the flavor header. Target for the
first token: <= 50 ms (the Telegram frontend's own throttle comes on top; that is measured by
the Telegram-level benchmark).

Run: python bench/bench_sensay_stream.py [--replies 100] [--concurrent 20] [--chunk-delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
from collections.abc import AsyncIterator

import tgmux.backends.sensay as sensay_plugin
from tgmux.backend import ChatIdentity, ReplyPart, Text, TextDelta
from tgmux.backends.sensay.simulator import Replica, SensaySimulator
from tgmux.bootstrap import load_config_text
from tgmux.engine import Engine, IncomingMessage
from tgmux.hooks import build_plugin_manager
from tgmux.store import open_store

SECRET = "bench-secret"


class TimingFrontend:
    """Records, per chat, when the first delta and the final text arrived."""

    def __init__(self) -> None:
        self.first_delta: dict[int, float] = {}
        self.final: dict[int, float] = {}
        self.texts: dict[int, str] = {}

    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        loop = asyncio.get_running_loop()
        sent: list[ReplyPart] = []
        async for part in parts:
            if isinstance(part, TextDelta) and chat.chat_id not in self.first_delta:
                self.first_delta[chat.chat_id] = loop.time()
            if isinstance(part, Text):
                self.final[chat.chat_id] = loop.time()
                self.texts[chat.chat_id] = part.text
            sent.append(part)
        return sent


async def run(flavor: str, headers: bool, replies: int, concurrent: int,
              chunk_delay: float) -> tuple[list[float], list[float]]:
    replica = Replica("bench-replica", "B", flavor=flavor, headers=headers)
    async with SensaySimulator(organization_secret=SECRET, replicas=[replica], chunk_size=6,
                               chunk_delay=chunk_delay, first_token_delay=chunk_delay) as sim:
        pm = build_plugin_manager()
        pm.register_from(sensay_plugin, "sensay-bench", "bench")
        config = load_config_text(f"""
store: "memory://"
backends:
  s:
    type: sensay
    base_url: "{sim.base_url}"
    organization_secret: {SECRET}
    user_id: "tg_{{user_id}}"
    replica_uuid: bench-replica
default: s
""", plugin_manager=pm)
        frontend = TimingFrontend()
        engine = Engine(config, pm, open_store("memory://"), frontend)
        await engine.start()
        first: list[float] = []
        tail: list[float] = []
        try:
            for start in range(0, replies, concurrent):
                batch = range(start, min(replies, start + concurrent))
                sim.turns.clear()
                futures = []
                for i in batch:
                    chat = 1000 + i
                    futures.append(await engine.submit(IncomingMessage(
                        chat=ChatIdentity("private", chat, chat, None, 1),
                        text=f"message {i} " + "x" * 40)))
                await asyncio.gather(*futures)
                for turn in sim.turns:
                    assert turn.first_token_at is not None and turn.last_token_at is not None
                    chat = 1000 + int(turn.content.split()[1])
                    assert frontend.texts[chat] == f"[B] {turn.content} (history: 0)"
                    first.append(frontend.first_delta[chat] - turn.first_token_at)
                    tail.append(frontend.final[chat] - turn.last_token_at)
        finally:
            await engine.stop()
    return first, tail


def describe(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (f"median {statistics.median(ms):6.2f} ms  p95 {p95:6.2f} ms  "
            f"max {ms[-1]:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=100)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.02)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    print(f"{args.replies} streamed replies, {args.concurrent} at a time, "
          f"{args.chunk_delay * 1000:.0f} ms between tokens")
    for flavor in ("data", "ui", "text"):
        for headers in (True, False):
            if flavor == "text" and not headers:
                continue  # plain text has no flavor header
            first, tail = asyncio.run(run(flavor, headers, args.replies, args.concurrent,
                                          args.chunk_delay))
            how = "header" if headers else "sniffed"
            print(f"{flavor:4} ({how:7}) first token -> first delta: {describe(first)}"
                  f"  (target <= 50 ms)")
            print(f"{flavor:4} ({how:7}) last token  -> final text:  {describe(tail)}")


if __name__ == "__main__":
    main()
