"""Per-chat order holds while chats are answered concurrently."""

from __future__ import annotations

import asyncio

import tg_test_backends
from jitter import with_latency_jitter

PLUGINS = [tg_test_backends]

#: each test also with network latency jitter (pushes overtake each other)
tgmux_bot = with_latency_jitter()

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
engine: {concurrency: 64}
backends:
  slow: {type: slow, delay: 0}
default: slow
"""


async def test_each_chat_in_order_all_chats_at_once(tgmux_bot):
    tg_test_backends.STARTED.clear()
    tg_test_backends.Running.reset()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    # per chat: a slow message first, then quick ones that would overtake it if allowed
    delays = ["0.4", "0", "0.15", "0", "0.05", "0"]
    chats = {
        100: {"user_id": 100},
        -4005: {"user_id": 7, "chat_id": -4005},
        -1001000000001: {"user_id": 8, "chat_id": -1001000000001, "thread_id": 2},
        101: {"user_id": 101},
    }
    pending = []
    for i, delay in enumerate(delays):
        for chat_id, fields in chats.items():
            text = f"wait {delay} #{i}"
            if chat_id < 0:
                text = "@tgmux_bot " + text
            pending.append((chat_id, i, await bot.send_nowait(text, **fields)))
    replies = await asyncio.gather(*(sent.reply(timeout=15) for _, _, sent in pending))

    for (_chat, i, _), reply in zip(pending, replies, strict=True):
        assert reply.text == f"slow: wait {delays[i]} #{i}"
    for chat_id in chats:
        shown = [t.rsplit("#", 1)[1] for t in bot.texts(chat_id)]
        assert shown == [str(i) for i in range(len(delays))], chat_id
        # each chat's backend calls started in order too (none started before the previous
        # one in the same chat finished)
        calls = [t for _, c, t in tg_test_backends.STARTED if c == chat_id]
        assert [c.rsplit("#", 1)[1] for c in calls] == [str(i) for i in range(len(delays))]
    # the chats ran side by side, not one after another (a wall-clock bound could not tell:
    # a loaded machine can take as long as running them in turn would)
    assert tg_test_backends.Running.most > 1


async def test_a_quick_chat_is_not_held_up_by_a_slow_one(tgmux_bot):
    tg_test_backends.HELD.clear()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    # chat 1's turn waits until let go (a timer could run out first on a stalled machine)
    slow = await bot.send_nowait("hold slow", user_id=1)
    quick = await bot.send("wait 0", user_id=2)
    assert quick.text == "slow: wait 0"
    tg_test_backends.let_go("slow")
    assert not (await slow.reply(timeout=30)).ignored
    order = [a["chat_id"] for a in bot.actions if a["action"] == "send_message"]
    assert order == [2, 1]


async def test_the_client_dispatches_with_one_worker(tgmux_bot):
    # Pyrogram's workers would run handlers of one chat concurrently and out of order; tgmux
    # uses one (its handler only queues) and answers concurrently in the engine instead.
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    assert bot.client.workers == 1
