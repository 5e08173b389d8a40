"""Issue 14, Telegram path: every row side by side with its baseline (not a timed test).

T1 throughput: N incoming messages over C private chats, instant echo backend, through
   ``TelegramApp`` (real Pyrogram client, engine, frontend, SQLite store) on the offline
   Telegram, against a bare Pyrogram handler calling ``send_message`` on the same offline
   Telegram in the same run. Messages/s from the first update pushed to the last reply sent.
   Target: >= 0.75 x the bare handler.
T2 streamed final: last token -> exact final text in a private chat (drafts, then the final
   message), against the group path (edits) in the same run. Target: <= 50 ms, with no more
   requests than the throttle allows.
T3 burst: 10 000 replies queued over 500 private chats with the fake Telegram's flood model
   on (Telegram's limits: 30 messages/s overall, 1/s per private chat with short bursts, 20/min
   per group). Counted: FLOOD_WAITs Telegram answered (target 0), use of the global budget
   (target >= 95 %), typing actions (target: at most one per chat per ``typing_interval``, and
   none for a reply only waiting for its send slot: with an instant backend, none at all).

The simulated provider, tgmux and the fake Telegram share one event loop (one core); figures
are medians of ``--rounds`` rounds, ratios against a baseline measured in the same round.

Run: python bench/bench_telegram.py [--quick] [--rounds 5] [--rows T1,T2,T3]
Import: ``run_rows(quick=True)`` returns the rows as dicts (what, baseline, tgmux, ratio,
target, met) for a combined runner.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyrogram import Client
from pyrogram.handlers import MessageHandler
from pyrogram.types import Message

from tgmux.bootstrap import load_config_text
from tgmux.hooks import build_plugin_manager
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.fake import FakeTelegram, FloodModel, offline_client

__all__ = ["burst", "run_rows", "throughput"]

FIRST_USER = 7_000_001

#: Flood limits far above what the messages need: T1 measures CPU per message, not Telegram.
UNTHROTTLED = "flood: {global_per_second: 1000000, private_per_second: 1000000, " \
              "group_per_minute: 1000000}"


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("the bench did not finish in time")
        await asyncio.sleep(0.002)


def _incoming(fake: FakeTelegram, messages: int, chats: int) -> list[Any]:
    """The raw updates, built before the clock starts (the fake's cost is not measured).
    Full ``Updates``: built ahead, compact ones would each fetch everything logged after
    them through getDifference (the fake delivers compact updates by default)."""
    return [fake.build_incoming(user_id=FIRST_USER + n % chats, text=f"m{n}",
                                delivery="push")[0]
            for n in range(messages)]


def _sent(fake: FakeTelegram) -> int:
    return sum(1 for a in fake.actions if a["action"] == "send_message")


# -- T1 --------------------------------------------------------------------------------------------


async def bare_pyrogram(messages: int, chats: int) -> float:
    """Messages/s of a bare Pyrogram handler answering each message with ``send_message``."""
    fake = FakeTelegram()
    client = offline_client(fake)

    async def echo(client: Client, message: Message) -> None:
        await client.send_message(message.chat.id, message.text)

    client.add_handler(MessageHandler(echo))
    await client.start()
    updates = _incoming(fake, messages, chats)
    started = time.perf_counter()
    for update in updates:
        await client.handle_updates(update)
    await _until(lambda: len(fake.actions) >= messages, 120)
    elapsed = time.perf_counter() - started
    await client.stop()
    assert _sent(fake) == messages
    return messages / elapsed


async def tgmux_telegram(messages: int, chats: int, store: str) -> float:
    """Messages/s of ``TelegramApp`` (echo backend) on the same offline Telegram."""
    pm = build_plugin_manager()
    config = load_config_text(f"""
store: "{store}"
telegram: {{{UNTHROTTLED}}}
backends:
  echo: {{type: echo}}
default: echo
""", plugin_manager=pm)
    fake = FakeTelegram()
    app = TelegramApp(config, pm, offline_client(fake))
    await app.start()
    updates = _incoming(fake, messages, chats)
    mark = len(fake.actions)
    started = time.perf_counter()
    for update in updates:
        await fake.push(update)
    await _until(lambda: len(fake.actions) - mark >= messages, 120)
    elapsed = time.perf_counter() - started
    await app.stop(None)
    assert _sent(fake) == messages, _sent(fake)
    return messages / elapsed


async def throughput(messages: int, chats: int) -> tuple[float, float]:
    """(bare Pyrogram msg/s, tgmux msg/s), one round each."""
    bare = await bare_pyrogram(messages, chats)
    with tempfile.TemporaryDirectory() as tmp:
        ours = await tgmux_telegram(messages, chats, f"sqlite:///{tmp}/bench.db")
    return bare, ours


# -- T2 --------------------------------------------------------------------------------------------


def stream_final(replies: int, concurrent: int) -> dict[str, dict[str, list[float]]]:
    """Last token -> final text, private (drafts) and group (edits), through the Sensay
    simulator (bench_stream_latency.run)."""
    sys.path.insert(0, str(Path(__file__).parent))
    import bench_stream_latency

    return {kind: asyncio.run(bench_stream_latency.run(kind, replies, concurrent, 0.05, 300))
            for kind in ("private", "group")}


# -- T3 --------------------------------------------------------------------------------------------


async def burst(messages: int, chats: int, *, typing_interval: float | None = None,
                ) -> dict[str, float]:
    """``messages`` replies queued over ``chats`` private chats at once, Telegram's limits
    enforced by the fake. Returns flood waits, the global budget used, typing actions and
    the most typing actions one chat got within one ``typing_interval``."""
    pm = build_plugin_manager()
    config = load_config_text("""
store: "memory://"
backends:
  echo: {type: echo}
default: echo
""", plugin_manager=pm)
    fake = FakeTelegram(flood=FloodModel())
    options = {} if typing_interval is None else {"typing_interval": typing_interval}
    app = TelegramApp(config, pm, offline_client(fake), **options)
    await app.start()
    interval = app.frontend.typing_interval
    updates = _incoming(fake, messages, chats)
    mark = len(fake.actions)
    requests_mark = len(fake.requests)
    started = time.monotonic()
    for update in updates:
        await fake.push(update)
    await _until(lambda: _sent(fake) >= messages, messages / 20 + 60)
    elapsed = time.monotonic() - started
    await app.stop(None)
    actions = list(zip(fake.actions[mark:], fake.action_times[mark:], strict=True))
    sends = [t for a, t in actions if a["action"] == "send_message"]
    typing = [(a["chat_id"], t) for a, t in actions if a["action"] == "chat_action"]
    floods = [r for r in fake.requests[requests_mark:]
              if r.error and r.error.startswith("FLOOD_WAIT")]
    per_chat: dict[int, list[float]] = {}
    for chat_id, t in typing:
        per_chat.setdefault(chat_id, []).append(t)
    worst = 0
    for times in per_chat.values():
        for i, t in enumerate(times):
            worst = max(worst, sum(1 for u in times[i:] if u - t < interval))
    # The budget: 30 messages in any second; the burst's first message opens the clock.
    span = (sends[-1] - sends[0]) if len(sends) > 1 else elapsed
    budget = fake.flood.global_per_second * span + fake.flood.global_per_second
    return {"messages": len(sends), "flood_waits": len(floods),
            "budget_used": len(sends) / budget if budget else 0.0,
            "chat_actions": len(typing), "worst_typing_per_interval": worst,
            "seconds": elapsed}


# -- the rows --------------------------------------------------------------------------------------


def run_rows(quick: bool = False, rounds: int | None = None,
             rows: tuple[str, ...] = ("T1", "T2", "T3")) -> list[dict[str, Any]]:
    """Every row of issue 14's Telegram path, measured now; ``quick``: smaller sizes, fewer
    rounds (a minute or so), for a smoke run."""
    rounds = rounds or (2 if quick else 5)
    out: list[dict[str, Any]] = []
    if "T1" in rows:
        messages, chats = (1000, 50) if quick else (5000, 100)
        runs = [asyncio.run(throughput(messages, chats)) for _ in range(rounds)]
        bare = _median([b for b, _ in runs])
        ours = _median([o for _, o in runs])
        ratio = _median([o / b for b, o in runs])
        out.append({"what": f"Telegram path, echo backend, {messages} msgs over {chats} chats",
                    "baseline": f"bare Pyrogram {bare:,.0f} msg/s",
                    "tgmux": f"{ours:,.0f} msg/s", "ratio": f"{ratio:.2f}x",
                    "target": ">= 0.75x", "met": ratio >= 0.75})
    if "T2" in rows:
        replies, concurrent = (10, 10) if quick else (40, 20)
        finals: dict[str, list[float]] = {"private": [], "group": []}
        over = 0
        for _ in range(1 if quick else max(1, rounds // 2)):
            result = stream_final(replies, concurrent)
            for kind, figures in result.items():
                finals[kind].extend(figures["final"])
                over += sum(u > a for u, a in zip(figures["updates"], figures["allowed"],
                                                  strict=True))
        private = sorted(v * 1000 for v in finals["private"])
        group = sorted(v * 1000 for v in finals["group"])
        p95 = private[min(len(private) - 1, round(0.95 * (len(private) - 1)))]
        out.append({"what": "streamed reply, private chat: last token -> exact final text",
                    "baseline": f"group (edits) median {_median(group):.1f} ms",
                    "tgmux": f"median {_median(private):.1f} ms (p95 {p95:.1f} ms); replies "
                             f"over the throttle: {over}",
                    "ratio": f"{_median(private) / max(_median(group), 0.001):.2f}x",
                    "target": "<= 50 ms", "met": p95 <= 50 and over == 0})
    if "T3" in rows:
        messages, chats = (300, 30) if quick else (10_000, 500)
        result = asyncio.run(burst(messages, chats))
        met = (result["flood_waits"] == 0 and result["budget_used"] >= 0.95
               and result["chat_actions"] == 0)
        out.append({"what": f"burst of {messages} replies over {chats} private chats, "
                            "Telegram's flood limits enforced",
                    "baseline": "30 msg/s global budget",
                    "tgmux": f"{result['flood_waits']} FLOOD_WAIT, "
                             f"{result['budget_used']:.1%} of the budget in "
                             f"{result['seconds']:.0f} s, {result['chat_actions']} typing "
                             f"actions (at most {result['worst_typing_per_interval']} per chat"
                             " per typing_interval)",
                    "ratio": f"{result['budget_used']:.2f}",
                    "target": "0 FLOOD_WAIT, >= 95 % budget, no typing for queued replies",
                    "met": met})
    return out


def machine() -> str:
    return (f"{platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {platform.system()} {platform.release()}")


def print_rows(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        print(f"- {row['what']}\n    baseline: {row['baseline']}\n    tgmux:    {row['tgmux']}"
              f"\n    ratio {row['ratio']}, target {row['target']}: "
              f"{'met' if row['met'] else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, two rounds")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--rows", default="T1,T2,T3", help="which rows (T1,T2,T3)")
    args = parser.parse_args()
    print(f"machine: {machine()}")
    print_rows(run_rows(args.quick, args.rounds, tuple(args.rows.split(","))))


if __name__ == "__main__":
    main()
