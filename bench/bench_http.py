"""S1 on the HTTP path, side by side with bare aiohttp (not a timed test; prints its figures).

N chats send one message each; the provider (its own process, 127.0.0.1, HTTP/1.1 keep-alive)
answers every POST after 300 ms. Three variants run in the same round against the same
provider process, each with its own pool of N connections:

- ``aiohttp``: the baseline, a bare ``aiohttp.ClientSession`` doing the same N concurrent POSTs;
- ``HttpClient``: ``tgmux.http.HttpClient.request_json`` alone (no engine);
- ``engine``: the whole engine through the console frontend, with an HTTP backend built the way
  the bundled ones are (``max_connections: N`` set explicitly, ``engine.concurrency: N``).

Each variant runs a cold wave (opening its connections) and then a warm wave (keep-alive, as a
running bot has); the warm wave is what is compared. Figures are medians over the rounds:
wall time, the ratio to the baseline's wall time in the same round, the client process's CPU
per message above the baseline's, time spent in the garbage collector, and failed requests
(cold waves included).

Run: python bench/bench_http.py [--n 100,1000,3000,10000] [--rounds 5] [--quick] [--uvloop]
For a combined runner: ``run_rows(ns, rounds)`` returns the rows, ``print_rows`` prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_engine import http_engine, slow_provider

from tgmux.backend import ChatIdentity
from tgmux.engine import IncomingMessage
from tgmux.http import HttpClient

VARIANTS = ("aiohttp", "HttpClient", "engine")
DEFAULT_NS = (100, 1000, 3000, 10_000)
QUICK_NS = (100, 1000)


@dataclass
class Wave:
    """One wave of N concurrent messages."""

    wall: float
    cpu: float  # this process's CPU seconds
    gc_seconds: float
    gc_collections: int
    failed: int


@dataclass
class Run:
    """A variant in one round: its cold and warm waves."""

    cold: Wave
    warm: Wave


class GcClock:
    """Time spent in the garbage collector (gc.callbacks), per generation."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = 0
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started
            self.collections += 1

    def __enter__(self) -> GcClock:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


async def wave(n: int, send: Callable[[int], Awaitable[object]]) -> Wave:
    gc.collect()  # each wave starts from the same heap state
    with GcClock() as clock:
        cpu, started = time.process_time(), time.perf_counter()
        results = await asyncio.gather(*(send(i) for i in range(n)), return_exceptions=True)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    failures = [r for r in results if isinstance(r, BaseException)]
    if failures:
        print(f"  {len(failures)} of {n} failed, e.g. {failures[0]!r}", file=sys.stderr)
    return Wave(wall, cpu, clock.seconds, clock.collections, len(failures))


async def two_waves(n: int, send: Callable[[int], Awaitable[object]]) -> Run:
    return Run(cold=await wave(n, send), warm=await wave(n, send))


async def run_aiohttp(base_url: str, n: int) -> Run:
    connector = aiohttp.TCPConnector(limit=n, limit_per_host=n)
    async with aiohttp.ClientSession(connector=connector) as session:
        url = f"{base_url}/reply"

        async def send(i: int) -> None:
            async with session.post(url, json={"text": f"m{i}"}) as response:
                data = await response.json()
            assert data["reply"] == f"re: m{i}", data

        return await two_waves(n, send)


async def run_http_client(base_url: str, n: int) -> Run:
    async with HttpClient(base_url, max_connections=n, name="bench") as http:

        async def send(i: int) -> None:
            data = await http.request_json("POST", "/reply", json={"text": f"m{i}"})
            assert data["reply"] == f"re: m{i}", data

        return await two_waves(n, send)


async def run_engine(base_url: str, n: int) -> Run:
    engine = http_engine(base_url, n)
    await engine.start()
    out = engine.frontend.out  # type: ignore[attr-defined]
    wave_number = 0

    async def send(i: int) -> None:
        # A chat id per wave and message: the second wave is new messages, not duplicates.
        chat = 10_000 + wave_number * n + i
        done = await engine.submit(IncomingMessage(
            chat=ChatIdentity("private", chat, chat, None, None), text=f"m{i}"))
        await done

    def answered_with_an_error(wave: Wave, seen: int) -> int:
        # A failed turn is answered with an error text, not raised: count those too.
        lines = out.getvalue().splitlines()
        wave.failed += sum(1 for line in lines[seen:] if not line.startswith("re: m"))
        return len(lines)

    try:
        cold = await wave(n, send)
        seen = answered_with_an_error(cold, 0)
        wave_number = 1
        warm = await wave(n, send)
        answered_with_an_error(warm, seen)
    finally:
        await engine.stop()
    return Run(cold, warm)


RUNNERS: dict[str, Callable[[str, int], Awaitable[Run]]] = {
    "aiohttp": run_aiohttp, "HttpClient": run_http_client, "engine": run_engine,
}


@dataclass
class Row:
    """One N: medians over the rounds, per variant."""

    n: int
    rounds: int
    wall: dict[str, float] = field(default_factory=dict)  # warm wave, seconds
    ratio: dict[str, float] = field(default_factory=dict)  # warm wall / baseline's, same round
    cpu_per_message_ms: dict[str, float] = field(default_factory=dict)  # warm wave
    cpu_above_bare_ms: dict[str, float] = field(default_factory=dict)  # same round, median
    gc_ms: dict[str, float] = field(default_factory=dict)  # warm wave
    failed: dict[str, int] = field(default_factory=dict)  # all waves, all rounds
    cold_wall: dict[str, float] = field(default_factory=dict)


def row_for(n: int, runs: list[dict[str, Run]]) -> Row:
    row = Row(n, len(runs))
    for variant in runs[0]:
        warm = [r[variant].warm for r in runs]
        bare = [r["aiohttp"].warm for r in runs]
        row.wall[variant] = statistics.median(w.wall for w in warm)
        row.cold_wall[variant] = statistics.median(r[variant].cold.wall for r in runs)
        row.ratio[variant] = statistics.median(w.wall / b.wall for w, b in zip(warm, bare,
                                                                                strict=True))
        row.cpu_per_message_ms[variant] = statistics.median(w.cpu / n * 1000 for w in warm)
        row.cpu_above_bare_ms[variant] = statistics.median(
            (w.cpu - b.cpu) / n * 1000 for w, b in zip(warm, bare, strict=True))
        row.gc_ms[variant] = statistics.median(w.gc_seconds * 1000 for w in warm)
        row.failed[variant] = sum(r[variant].cold.failed + r[variant].warm.failed
                                  for r in runs)
    return row


async def one_round(base_url: str, n: int, variants: tuple[str, ...]) -> dict[str, Run]:
    return {variant: await RUNNERS[variant](base_url, n) for variant in variants}


def run_rows(ns: tuple[int, ...] = DEFAULT_NS, rounds: int = 5,
             variants: tuple[str, ...] = VARIANTS, uvloop: bool = False) -> list[Row]:
    """Every N, ``rounds`` rounds each (the variants of a round back to back, in the same
    order, against one provider process); one :class:`Row` per N."""
    rows = []
    for n in ns:
        runs = []
        with slow_provider() as base_url:
            for _ in range(rounds):
                runs.append(run_loop(one_round(base_url, n, variants), uvloop))
        rows.append(row_for(n, runs))
    return rows


def run_loop(coro: Awaitable[dict[str, Run]], uvloop: bool) -> dict[str, Run]:
    if uvloop:
        import uvloop as uv

        return uv.run(coro)  # type: ignore[arg-type]
    return asyncio.run(coro)  # type: ignore[arg-type]


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def print_rows(rows: list[Row]) -> None:
    print("S1 fan-in, N chats x 1 message, provider answers in 300 ms, warm pool; medians of "
          f"{rows[0].rounds} rounds; ratio = warm wall / bare aiohttp's in the same round")
    print(f"{'N':>6} {'variant':<11} {'warm s':>7} {'ratio':>6} {'cold s':>7} "
          f"{'CPU ms/msg':>10} {'above bare':>10} {'GC ms':>6} {'failed':>6}")
    for row in rows:
        for variant in row.wall:
            print(f"{row.n:>6} {variant:<11} {row.wall[variant]:>7.3f} "
                  f"{row.ratio[variant]:>5.2f}x {row.cold_wall[variant]:>7.3f} "
                  f"{row.cpu_per_message_ms[variant]:>10.3f} "
                  f"{row.cpu_above_bare_ms[variant]:>+10.3f} {row.gc_ms[variant]:>6.1f} "
                  f"{row.failed[variant]:>6}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", default=",".join(map(str, DEFAULT_NS)),
                        help="comma-separated chat counts")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help=f"N={','.join(map(str, QUICK_NS))}, 3 rounds")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--uvloop", action="store_true", help="every variant on uvloop")
    args = parser.parse_args()
    ns = QUICK_NS if args.quick else tuple(int(n) for n in args.n.split(","))
    rounds = 3 if args.quick else args.rounds
    variants = tuple(args.variants.split(","))
    if variants[0] != "aiohttp":
        variants = ("aiohttp", *(v for v in variants if v != "aiohttp"))
    print(f"machine: {machine()}{', uvloop' if args.uvloop else ''}")
    print_rows(run_rows(ns, rounds, variants, args.uvloop))


if __name__ == "__main__":
    main()
