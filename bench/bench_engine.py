"""Engine benchmarks through the console path (not a timed test; prints its figures).

S1: 1000 chats send one message each; the backend is an HTTP provider on 127.0.0.1 that takes
    300 ms per request. Ideal wall time 0.30 s; target <= 0.45 s on 2 cores.
S2: messages per second through the engine with the in-process echo backend, SQLite store
    writes included (inbox accept + done per message). Target >= 3000 msg/s.

Run: python bench/bench_engine.py [--chats 1000] [--messages 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from typing import Literal

from tgmux.backend import Backend, ChatIdentity, HttpBackendSettings, ReplyPart, Text, Turn
from tgmux.bootstrap import load_config_text
from tgmux.console import ConsoleFrontend
from tgmux.engine import Engine, IncomingMessage
from tgmux.hooks import build_plugin_manager, hookimpl
from tgmux.http import HttpClient
from tgmux.store import open_store

PROVIDER = r"""
import asyncio, json, sys

class Provider(asyncio.Protocol):
    # HTTP/1.1 keep-alive, one POST at a time per connection: answers after 300 ms.
    def connection_made(self, transport):
        self.transport, self.buffer = transport, b""

    def data_received(self, data):
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            head, rest = self.buffer.split(b"\r\n\r\n", 1)
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(rest) < length:
                return
            body, self.buffer = rest[:length], rest[length:]
            text = json.loads(body)["text"]
            asyncio.get_running_loop().call_later(0.3, self.answer, text)

    def answer(self, text):
        body = json.dumps({"reply": "re: " + text}).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))

async def main():
    server = await asyncio.get_running_loop().create_server(Provider, "127.0.0.1", 0,
                                                            backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def slow_provider() -> Iterator[str]:
    """The provider runs in its own process (its own core), as a real one would."""
    proc = subprocess.Popen([sys.executable, "-c", PROVIDER], stdout=subprocess.PIPE, text=True)
    try:
        port = int(proc.stdout.readline())  # type: ignore[union-attr]
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()


class HttpSettings(HttpBackendSettings):
    type: Literal["bench-http"] = "bench-http"


class HttpBench(Backend):
    """A minimal HTTP backend, built the way real ones are (tgmux.http.HttpClient)."""

    type_name = "bench-http"
    Settings = HttpSettings

    async def start(self) -> None:
        self.http = HttpClient(self.settings.base_url, name=self.name,
                               **self.settings.http_options())

    async def close(self) -> None:
        await self.http.aclose()

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        data = await self.http.request_json("POST", "/reply", json={"text": turn.text})
        yield Text(data["reply"])


class BenchPlugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [HttpBench]


def engine_for(config_text: str) -> Engine:
    pm = build_plugin_manager()
    pm.register(BenchPlugin(), name="bench")
    config = load_config_text(config_text, plugin_manager=pm)
    frontend = ConsoleFrontend(io.StringIO(), interactive=False)
    return Engine(config, pm, open_store(config.data.store.url), frontend)


def http_engine(base_url: str, chats: int) -> Engine:
    """An engine answering ``chats`` at once through ``bench-http``, one connection each."""
    return engine_for(f"""
store: "memory://"
engine: {{concurrency: {chats}}}
backends:
  slow: {{type: bench-http, base_url: "{base_url}", max_connections: {chats}}}
default: slow
""")


async def s1(chats: int) -> tuple[float, float]:
    """Two waves on one engine: the first opens every connection (cold), the second reuses
    the pool (warm, as a running bot would)."""
    with slow_provider() as base_url:
        engine = http_engine(base_url, chats)
        await engine.start()
        times = []
        for _wave in range(2):  # cold, then warm
            started = time.perf_counter()
            futures = [
                await engine.submit(IncomingMessage(
                    chat=ChatIdentity("private", 10_000 + i, 10_000 + i, None, None),
                    text=f"m{i}"))
                for i in range(chats)
            ]
            await asyncio.gather(*futures)
            times.append(time.perf_counter() - started)
        out = engine.frontend.out.getvalue().splitlines()  # type: ignore[attr-defined]
        await engine.stop()
    wrong = [line for line in out if not line.startswith("re: m")]
    assert len(out) == 2 * chats and not wrong, (len(out), wrong[:3])
    return times[0], times[1]


async def s2(messages: int, chats: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        engine = engine_for(f"""
store: "sqlite:///{tmp}/bench.db"
backends:
  echo: {{type: echo}}
default: echo
""")
        await engine.start()
        started = time.perf_counter()
        futures = []
        for n in range(messages):
            chat = n % chats
            futures.append(await engine.submit(IncomingMessage(
                chat=ChatIdentity("private", chat + 1, chat + 1, None, n // chats + 1),
                text=f"m{n}")))
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
        lines = engine.frontend.out.getvalue().count("\n")  # type: ignore[attr-defined]
        await engine.stop()
    assert lines == messages
    return messages / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chats", type=int, default=1000)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    runs = [asyncio.run(s1(args.chats)) for _ in range(args.rounds)]
    for label, times in (("cold pool", [c for c, _ in runs]), ("warm pool", [w for _, w in runs])):
        print(f"S1 {args.chats} chats x 1 message, provider 300 ms, {label}: wall best "
              f"{min(times):.3f} s, median {sorted(times)[len(times) // 2]:.3f} s "
              "(ideal 0.300 s, target <= 0.45 s)")
    s2_rates = [asyncio.run(s2(args.messages, 100)) for _ in range(args.rounds)]
    print(f"S2 {args.messages} messages over 100 chats, echo + SQLite store: "
          f"best {max(s2_rates):,.0f} msg/s, median {sorted(s2_rates)[len(s2_rates) // 2]:,.0f}"
          f" msg/s (target >= 3000)")


if __name__ == "__main__":
    main()
