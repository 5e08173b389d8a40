"""Streamed replies through the Telegram frontend (not a timed test; prints its figures).

The Sensay simulator streams a reply token by token; tgmux (engine, real Pyrogram client,
Telegram frontend) shows it on the offline Telegram. Measured per reply:

- first token -> first text on Telegram: from the simulator writing its first text token to
  the first draft (private chats) or first message (groups) carrying text. Target <= 50 ms
  (the frontend gathers tokens of one burst for 10 ms; flood limits may add more).
- updates per reply versus the throttle: drafts or edits sent, against what
  ``stream_edit_interval`` (and the group flood budget) allows for the stream's duration.
- last token -> final text: until the exact final text is on Telegram (includes waiting for
  the interval since the previous update).

The simulator, tgmux and the fake Telegram share one event loop and one clock.

Run: python bench/bench_stream_latency.py [--replies 40] [--concurrent 20] [--chunk-delay 0.05]
     [--length 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics

import tgmux.backends.sensay as sensay_plugin
from tgmux.backends.sensay.simulator import Replica, SensaySimulator
from tgmux.bootstrap import load_config_text
from tgmux.hooks import build_plugin_manager
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.fake import FakeTelegram, offline_client

SECRET = "bench-secret"
GROUP_BASE = -1001000000000


async def run(chat_kind: str, replies: int, concurrent: int, chunk_delay: float,
              length: int) -> dict[str, list[float]]:
    replica = Replica("bench-replica", "B", reply=lambda content, history: content)
    async with SensaySimulator(organization_secret=SECRET, replicas=[replica], chunk_size=6,
                               chunk_delay=chunk_delay, first_token_delay=chunk_delay) as sim:
        pm = build_plugin_manager()
        pm.register_from(sensay_plugin, "sensay-bench", "bench")
        config = load_config_text(f"""
store: "memory://"
telegram:
  flood: {{global_per_second: 1000, private_per_second: 1, group_per_minute: 20}}
backends:
  s:
    type: sensay
    base_url: "{sim.base_url}"
    organization_secret: {SECRET}
    user_id: "tg_{{user_id}}"
    replica_uuid: bench-replica
routes:
  - match: {{chat_type: supergroup}}
    backend: s
    group_trigger: always
default: s
""", plugin_manager=pm)
        fake = FakeTelegram()
        app = TelegramApp(config, pm, offline_client(fake))
        await app.start()
        interval = app.frontend.edit_interval
        results: dict[str, list[float]] = {"first": [], "final": [], "updates": [],
                                           "allowed": []}
        try:
            for start in range(0, replies, concurrent):
                batch = range(start, min(replies, start + concurrent))
                sim.turns.clear()
                mark = len(fake.actions)
                for i in batch:
                    text = (f"message {i} " + ("lorem ipsum " * length)[:length]).rstrip()
                    if chat_kind == "private":
                        await fake.incoming(user_id=5000 + i, text=text)
                    else:
                        await fake.incoming(user_id=5000 + i, chat_id=GROUP_BASE - i,
                                            text=text)
                while len(sim.turns) < len(batch):  # noqa: ASYNC110 (the simulator's list)
                    await asyncio.sleep(0.01)
                await app.engine.drain()
                actions = list(zip(fake.actions[mark:], fake.action_times[mark:], strict=True))
                for turn in sim.turns:
                    i = int(turn.content.split()[1])
                    chat = 5000 + i if chat_kind == "private" else GROUP_BASE - i
                    shown = [(a, t) for a, t in actions if a.get("chat_id") == chat
                             and a["action"] in ("send_draft", "send_message", "edit_message")]
                    assert shown and shown[-1][0]["text"] == turn.reply, "final text not exact"
                    assert turn.first_token_at is not None and turn.last_token_at is not None
                    results["first"].append(shown[0][1] - turn.first_token_at)
                    results["final"].append(shown[-1][1] - turn.last_token_at)
                    results["updates"].append(len(shown))
                    pace = max(interval, app.frontend.flood.min_interval(chat))
                    duration = turn.last_token_at - turn.first_token_at
                    results["allowed"].append(duration / pace + 2)  # first, final, one per pace
        finally:
            await app.stop(None)
        if fake.unknown:
            raise RuntimeError(f"unknown requests: {fake.unknown}")
    return results


def describe(values: list[float]) -> str:
    ms = sorted(v * 1000 for v in values)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"median {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  max {ms[-1]:7.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--replies", type=int, default=40)
    parser.add_argument("--concurrent", type=int, default=20)
    parser.add_argument("--chunk-delay", type=float, default=0.05)
    parser.add_argument("--length", type=int, default=300, help="characters per reply")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.system()} {platform.release()}")
    print(f"{args.replies} streamed replies of ~{args.length} chars in 6-char tokens, "
          f"{args.chunk_delay * 1000:.0f} ms apart, {args.concurrent} chats at a time")
    for kind in ("private", "group"):
        results = asyncio.run(run(kind, args.replies, args.concurrent, args.chunk_delay,
                                  args.length))
        how = "drafts" if kind == "private" else "edits"
        print(f"{kind:7} first token -> first text: {describe(results['first'])}  "
              f"(target <= 50 ms)")
        print(f"{kind:7} last token  -> final text: {describe(results['final'])}")
        over = sum(u > a for u, a in zip(results["updates"], results["allowed"], strict=True))
        print(f"{kind:7} updates per reply ({how} + final): median "
              f"{statistics.median(results['updates']):.0f}, max {max(results['updates'])}; "
              f"allowed by the throttle: median {statistics.median(results['allowed']):.1f}; "
              f"replies over the throttle: {over}")


if __name__ == "__main__":
    main()
