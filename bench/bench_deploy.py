"""Operations benchmarks (not a timed test; prints its figures).

D1: messages/s through the engine (in-process echo backend: the store is what differs) with
    the memory, SQLite and PostgreSQL stores, measured in the same run: medians of rounds, and
    ratios against memory:// as the bare baseline.
D2: resident memory per idle account: one process with 1 account, one with 50 (the real
    Pyrogram clients on the offline Telegram, engine started, nothing to do), RSS after start;
    (RSS_50 - RSS_1) / 49.

PostgreSQL: a private server on a free port (initdb + pg_ctl as the postgres user, as CI does),
or $TGMUX_TEST_POSTGRES_URL.

Run: python bench/bench_deploy.py [--messages 5000] [--rounds 5] [--accounts 50]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "stores"))

from tgmux.harness import EngineHarness  # noqa: E402

ECHO = 'backends:\n  e: {type: echo, prefix: "echo: "}\ndefault: e\n'


async def throughput(store: str, messages: int, chats: int = 100) -> float:
    """Messages/s for ``messages`` spread over ``chats`` (each awaited at the end)."""
    async with EngineHarness.from_yaml(ECHO, store=store) as h:
        started = time.perf_counter()
        futures = []
        for i in range(messages):
            _, done = await h.submit(f"m{i}", user_id=1 + i % chats)
            futures.append(done)
        await asyncio.gather(*futures)
        elapsed = time.perf_counter() - started
        assert len(h.delivered) == messages
    return messages / elapsed


def postgres_url() -> tuple[str, object | None]:
    if url := os.environ.get("TGMUX_TEST_POSTGRES_URL"):
        return url, None
    import pg_server

    server = pg_server.start()
    return server.url(), server


async def fresh_schema(url: str) -> str:
    import secrets

    import asyncpg

    schema = f"bench_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"CREATE SCHEMA {schema}")
    finally:
        await conn.close()
    joiner = "&" if "?" in url else "?"
    return f"{url}{joiner}search_path={schema}"


IDLE = r'''
import asyncio, os, sys
from tgmux.bootstrap import load_text
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.fake import FakeTelegram, offline_client

n = int(sys.argv[1])
accounts = "".join(
    f"  a{i}:\n    telegram: {{api_id: 1, api_hash: {'0123456789abcdef' * 2}, "
    f"bot_token: \"{i + 1}:{'x' * 35}\", "
    f"session_name: a{i}}}\n" for i in range(n))
config, pm = load_text('store: "memory://"\nbackends:\n  e: {type: echo}\ndefault: e\n'
                       "accounts:\n" + accounts, env={})

def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))

async def main():
    clients = {f"a{i}": offline_client(FakeTelegram(bot_username=f"a{i}_bot"))
               for i in range(n)}
    app = TelegramApp(config, pm, clients)
    await app.start()
    await asyncio.sleep(1.0)
    print(rss_kib())
    await app.stop(None)

asyncio.run(main())
'''


def idle_rss(accounts: int) -> int:
    out = subprocess.run([sys.executable, "-c", IDLE, str(accounts)], capture_output=True,
                         text=True, check=True, timeout=300)
    return int(out.stdout.strip().splitlines()[-1])


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--accounts", type=int, default=50)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    url, server = postgres_url()
    try:
        results: dict[str, list[float]] = {"memory": [], "sqlite": [], "postgresql": []}
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):  # interleaved: the machine's noise hits all alike
                results["memory"].append(await throughput("memory://", args.messages))
                results["sqlite"].append(await throughput(f"sqlite:///{tmp}/r{r}.db",
                                                          args.messages))
                results["postgresql"].append(await throughput(await fresh_schema(url),
                                                              args.messages))
        base = statistics.median(results["memory"])
        print(f"\nD1: {args.messages} messages over 100 chats, echo backend, "
              f"median of {args.rounds} rounds")
        for name, values in results.items():
            median = statistics.median(values)
            print(f"  {name:<11} {median:8.0f} msg/s  (best {max(values):.0f})  "
                  f"{median / base:.2f}x memory")
        pg, sq = (statistics.median(results[k]) for k in ("postgresql", "sqlite"))
        print(f"  postgresql / sqlite: {pg / sq:.2f}x")
    finally:
        if server is not None:
            server.destroy()
    one = statistics.median(idle_rss(1) for _ in range(3))
    many = statistics.median(idle_rss(args.accounts) for _ in range(3))
    print(f"\nD2: RSS with 1 account {one / 1024:.1f} MiB, with {args.accounts} accounts "
          f"{many / 1024:.1f} MiB: {(many - one) / (args.accounts - 1):.0f} KiB per idle account")


if __name__ == "__main__":
    asyncio.run(main())
