"""OpenAI-compatible streaming latency through the engine (not a timed test; prints figures).

For each streamed reply: the time from the simulator writing its first SSE event with text to
the first text delta reaching the frontend, and from its last text event to the final text.
The simulator and the engine share one event loop, so both ends read the same clock. Two
kinds of stream: plain, and one that sends reasoning and tool-call deltas before the text
(skipped, never shown). Target for the first token: <= 50 ms, as for Sensay (the Telegram
frontend's own throttle comes on top; that is measured by the Telegram-level benchmark).

A third figure is the conversation memory's cost: with a SQLite store holding 20 remembered
exchanges per chat, the time from submitting a message to the simulator receiving the
request (routing, the store's read of the conversation, building and sending the request).

Run: python bench/bench_openai_stream.py [--replies 100] [--concurrent 20] [--chunk-delay 0.02]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import tempfile

from bench_sensay_stream import TimingFrontend, describe  # a sibling script: same figures

from tgmux.backend import ChatIdentity
from tgmux.backends.openai.simulator import Model, OpenAISimulator
from tgmux.bootstrap import load_config_text
from tgmux.engine import Engine, IncomingMessage
from tgmux.hooks import build_plugin_manager
from tgmux.store import open_store

KEY = "sk-bench"
REMEMBERED = 20


async def run(reasoning: bool, replies: int, concurrent: int, chunk_delay: float,
              store_url: str = "memory://",
              ) -> tuple[list[float], list[float], list[float]]:
    async with OpenAISimulator(api_keys={KEY}, models=[Model("bench", context_tokens=10**6)],
                               chunk_size=6, chunk_delay=chunk_delay,
                               first_token_delay=chunk_delay, reasoning=reasoning) as sim:
        pm = build_plugin_manager()
        config = load_config_text(f"""
store: "{store_url}"
backends:
  gpt: {{type: openai, base_url: "{sim.base_url}", api_key: {KEY}, model: bench}}
default: gpt
""", plugin_manager=pm)
        store = open_store(store_url)
        frontend = TimingFrontend()
        engine = Engine(config, pm, store, frontend)
        await engine.start()
        first: list[float] = []
        tail: list[float] = []
        to_request: list[float] = []
        submitted: dict[int, float] = {}
        loop = asyncio.get_running_loop()
        try:
            if store_url != "memory://":
                for i in range(replies):
                    talk = store.conversation("gpt", ChatIdentity("private", 1000 + i, 1000 + i),
                                              max_turns=20, max_chars=24000)
                    for n in range(REMEMBERED):
                        await talk.append(f"earlier question {n} " + "q" * 200,
                                          f"earlier answer {n} " + "a" * 400)
            for start in range(0, replies, concurrent):
                batch = range(start, min(replies, start + concurrent))
                sim.completions.clear()
                futures = []
                for i in batch:
                    chat = 1000 + i
                    submitted[chat] = loop.time()
                    futures.append(await engine.submit(IncomingMessage(
                        chat=ChatIdentity("private", chat, chat, None, 1),
                        text=f"message {i} " + "x" * 40)))
                await asyncio.gather(*futures)
                for completion in sim.completions:
                    assert completion.first_token_at is not None
                    assert completion.last_token_at is not None
                    text = completion.messages[-1]["content"]
                    chat = 1000 + int(text.split()[1])
                    assert frontend.texts[chat].startswith(f"You said: {text}")
                    first.append(frontend.first_delta[chat] - completion.first_token_at)
                    tail.append(frontend.final[chat] - completion.last_token_at)
                    assert completion.received_at is not None
                    to_request.append(completion.received_at - submitted[chat])
                    if store_url != "memory://":
                        assert len(completion.messages) == 2 * REMEMBERED + 1
        finally:
            await engine.stop()
    return first, tail, to_request


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
    for reasoning in (False, True):
        first, tail, _ = asyncio.run(run(reasoning, args.replies, args.concurrent,
                                         args.chunk_delay))
        how = "reasoning first" if reasoning else "plain"
        print(f"{how:15} first text event -> first delta: {describe(first)}  (target <= 50 ms)")
        print(f"{how:15} last text event  -> final text:  {describe(tail)}")
    with tempfile.TemporaryDirectory() as folder:
        first, _, to_request = asyncio.run(run(False, args.replies, args.concurrent,
                                               args.chunk_delay, f"sqlite:///{folder}/b.db"))
    print(f"sqlite, {REMEMBERED} remembered exchanges: message -> request at the server: "
          f"{describe(to_request)}")
    print(f"sqlite, {REMEMBERED} remembered exchanges: first text event -> first delta: "
          f"{describe(first)}")


if __name__ == "__main__":
    main()
