"""Restart safety: catch-up on what arrived while down, never an answer twice, graceful
shutdown that finishes replies (bounded) and loses nothing."""

from __future__ import annotations

import asyncio
import os
import stat

import tg_test_backends
from jitter import with_latency_jitter

PLUGINS = [tg_test_backends]

#: each test also with network latency jitter (pushes overtake each other)
tgmux_bot = with_latency_jitter()
SUPERGROUP = -1001234567890

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  echo: {type: echo, prefix: "echo: "}
  slow: {type: slow, delay: 0.5}
routes:
  - match: {user_id: 88}
    backend: slow
default: echo
"""


async def started() -> None:
    """Until the slow backend began its turn."""
    async with asyncio.timeout(5):
        while not tg_test_backends.STARTED:  # noqa: ASYNC110 (a test backend's plain list)
            await asyncio.sleep(0.01)


def answers(bot, chat_id):
    return bot.texts(chat_id)


async def test_messages_sent_while_down_are_answered_after_start(tgmux_bot, tmp_path):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, store=f"sqlite:///{tmp_path}/tgmux.db")
    assert (await bot.send("before", user_id=42)).text == "echo: before"
    assert (await bot.send("@tgmux_bot before", user_id=42, chat_id=SUPERGROUP)).text == \
        "echo: before"
    await bot.stop()

    private = await bot.send_nowait("while down", user_id=42)
    group = await bot.send_nowait("@tgmux_bot while down", user_id=42, chat_id=SUPERGROUP)
    new_chat = await bot.send_nowait("first time", user_id=43)
    await bot.start()  # Pyrogram catches up (getDifference), the engine answers
    assert (await private.reply()).text == "echo: while down"
    assert (await group.reply()).text == "echo: while down"
    assert (await new_chat.reply()).text == "echo: first time"
    names = {r.name for r in bot.telegram.requests}
    assert {"updates.GetDifference", "updates.GetChannelDifference"} <= names
    assert answers(bot, 42) == ["echo: before", "echo: while down"]
    assert answers(bot, SUPERGROUP) == ["echo: before", "echo: while down"]


async def test_nothing_is_answered_twice(tgmux_bot, tmp_path):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, store=f"sqlite:///{tmp_path}/tgmux.db")
    first = await bot.send("hello", user_id=42, message_id=5)
    assert first.text == "echo: hello"
    # Telegram delivers the same message again (a reconnect, a replayed difference)
    again = await bot.send("hello", user_id=42, message_id=5)
    assert again.actions == [] and not again.ignored
    await bot.restart()
    after_restart = await bot.send("hello", user_id=42, message_id=5)
    assert after_restart.actions == []
    assert answers(bot, 42) == ["echo: hello"]
    assert (await bot.send("new", user_id=42)).text == "echo: new"


async def test_shutdown_finishes_replies_in_flight(tgmux_bot, tmp_path):
    tg_test_backends.STARTED.clear()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, store=f"sqlite:///{tmp_path}/tgmux.db")
    sent = await bot.send_nowait("in flight", user_id=88)
    await started()
    account = bot.app.first
    stopping = asyncio.create_task(bot.stop(timeout=5))
    async with asyncio.timeout(10):  # the stop took its first step: no more updates taken
        while account.taking_updates:  # noqa: ASYNC110 (a plain attribute)
            await asyncio.sleep(0.01)
    # arrives while stopping: left on Telegram's side, not lost
    late = await bot.send_nowait("late", user_id=42)
    await stopping
    assert answers(bot, 88) == ["slow: in flight"]  # finished before stop returned
    assert answers(bot, 42) == []
    await bot.start()
    assert (await late.reply()).text == "echo: late"
    assert (await sent.reply()).text == "slow: in flight"
    assert answers(bot, 88) == ["slow: in flight"]  # and only once


async def test_a_reply_cut_off_by_the_shutdown_timeout_is_not_replayed_but_flagged(
        tgmux_bot, tmp_path):
    # The backend had the message when the process stopped: the provider may have it already,
    # so replaying would duplicate the turn there. The user is told and asked to resend.
    tg_test_backends.STARTED.clear()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, store=f"sqlite:///{tmp_path}/tgmux.db",
                          typing_interval=0.1)
    # 30 s: far past the 0.6 s a stop waits (with 1.5 s, a stall of a second between the turn's
    # start and the stop let it finish first)
    await bot.send_nowait("wait 30", user_id=88)
    await started()
    # it shows "typing…" (waited for: the stop's 0.6 s and the 0.4 s grace are both timers, a
    # stall let the stop cut the first typing action off before it reached Telegram)
    await bot.wait_for(action="chat_action", chat_id=88, timeout=30)
    await bot.stop(timeout=0.6)
    assert answers(bot, 88) == []
    assert bot.chat(88)[-1]["action"] == "chat_action"  # and nothing else went
    count = len(bot.actions)
    await asyncio.sleep(0.3)
    assert len(bot.actions) == count  # and stopped doing so with the reply
    calls = len(tg_test_backends.STARTED)
    await bot.start()  # the engine finds it unanswered in the store
    await bot.wait_for(action="send_message", chat_id=88, timeout=30)
    await bot.settle()
    assert answers(bot, 88) == [
        "I was restarted while answering your message “wait 30” and may not have finished. "
        "Please send it again if you still need an answer."
    ]
    assert len(tg_test_backends.STARTED) == calls  # the backend was not asked again


async def test_the_session_file_is_private(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    path = bot.client.storage.path
    assert path.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
