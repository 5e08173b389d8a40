"""Flood control: one limiter for every send, edit and draft; FloodWait is waited out and the
message still goes out."""

from __future__ import annotations

import asyncio
import time

import pytest
import tg_test_backends

from tgmux.config import FloodLimits
from tgmux.ratelimit import SlidingWindowLimiter
from tgmux.telegram.sender import FloodControl
from tgmux.testing import TgmuxBot

PLUGINS = [tg_test_backends]
GROUP = -1001234567890

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  echo: {type: echo}
  drip: {type: drip, delay: 0.05}
routes:
  - match: {user_id: 50}
    backend: drip
default: echo
"""


@pytest.fixture
def frozen_clock(monkeypatch):
    """Limiters made from now on read a clock that does not move: whatever would have to wait
    for a slot waits forever (a hold-up is a timeout, however slow or loaded the machine is,
    and a window never runs out behind the test's back)."""
    monkeypatch.setitem(SlidingWindowLimiter.__init__.__kwdefaults__, "clock", lambda: 1000.0)


def times_of(bot, predicate):
    fake = bot.telegram
    return [t for a, t in zip(fake.actions, fake.action_times, strict=True) if predicate(a)]


async def test_flood_wait_on_a_send_is_waited_out_and_the_message_goes_out(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "FLOOD_WAIT_1", chat_id=42)
    started = time.monotonic()
    reply = await bot.send("hello", user_id=42)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": "hello"}]
    refused = [r for r in bot.telegram.requests if r.error == "FLOOD_WAIT_1"]
    assert len(refused) == 1 and refused[0].name == "messages.SendMessage"
    sent_at = times_of(bot, lambda a: a["action"] == "send_message")[0]
    assert sent_at - refused[0].at >= 1.0  # Telegram's wait was honoured
    assert sent_at - started < 10  # and not much more (generous: a loaded machine is slow)


async def test_flood_wait_mid_stream_keeps_the_final_text_exact(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.1)
    bot.telegram.fail("edit_message", "FLOOD_WAIT_1", chat_id=GROUP)
    words = " ".join(f"w{i}" for i in range(20))
    reply = await bot.send(f"@tgmux_bot {words}", user_id=50, chat_id=GROUP)
    assert reply.texts == [words]
    refused = next(r for r in bot.telegram.requests if r.error == "FLOOD_WAIT_1")
    after = times_of(bot, lambda a: a["action"] in ("edit_message", "send_message")
                     and a.get("chat_id") == GROUP)
    # nothing went to the chat during the wait Telegram asked for
    assert not [t for t in after if refused.at < t < refused.at + 0.99]


async def test_one_message_per_second_in_a_private_chat():
    flood = FloodControl(FloodLimits())
    start = time.monotonic()
    for _ in range(2):
        await flood.acquire(42)
    assert time.monotonic() - start >= 0.95


async def test_a_private_chat_that_must_wait_does_not_slow_another(frozen_clock):
    flood = FloodControl(FloodLimits())
    await flood.acquire(42)
    assert flood.for_chat(42).delay() == 1.0  # its next message waits (the clock stands still)
    async with asyncio.timeout(10):  # a wait for chat 42's slot would never end
        await flood.acquire(43)


async def test_twenty_messages_per_minute_in_a_group():
    flood = FloodControl(FloodLimits(group_per_minute=20))
    for _ in range(20):
        await flood.acquire(GROUP)
    assert flood.for_chat(GROUP).delay() > 55  # the 21st waits for the minute to pass
    assert flood.for_chat(-100777).delay() == 0
    assert flood.min_interval(GROUP) == 3.0 and flood.min_interval(42) == 1.0


async def test_the_overall_limit_is_shared_by_all_chats(tgmux_bot):
    config = CONFIG.replace("flood: {", "flood: {global_per_second: 2, ")
    bot = await tgmux_bot(config, plugins=PLUGINS)
    sent = [await bot.send_nowait(f"m{i}", user_id=100 + i) for i in range(3)]
    await asyncio.gather(*(s.reply() for s in sent))
    times = sorted(times_of(bot, lambda a: a["action"] == "send_message"))
    assert len(times) == 3
    # at most two in any second (the limiter stamps a send before it goes: a stall on the
    # first one's way shortens the gap seen here; unlimited, it is a few ms)
    assert times[2] - times[0] >= 0.5


async def test_a_private_chat_long_reply_is_paced_at_one_message_per_second(tgmux_bot):
    config = CONFIG.replace("private_per_second: 100", "private_per_second: 1")
    bot = await tgmux_bot(config, plugins=PLUGINS)
    reply = await bot.send("word " * 1000, user_id=42)  # 5000 chars: two messages
    assert len(reply.messages) == 2
    first, second = times_of(bot, lambda a: a["action"] == "send_message")
    assert second - first >= 0.5  # paced (unpaced: ms); slack for a stall on the first's way


async def test_chat_actions_never_hold_up_messages(frozen_clock):
    flood = FloodControl(FloodLimits(global_per_second=2))
    assert [await flood.acquire_action() for _ in range(3)] == [True, True, False]  # skipped
    async with asyncio.timeout(10):  # a wait for the actions' budget would never end
        await flood.acquire(42)  # messages have their own budget
        await flood.acquire(43)


async def test_a_flood_wait_on_the_command_menu_holds_up_no_start_and_no_reply(caplog):
    """setBotCommands answered FLOOD_WAIT_600: start-up does not wait for it, the messages'
    budget is not touched (Telegram's waits are per method), replies go out at once, and stop
    does not wait either."""
    bot = TgmuxBot(CONFIG.replace("flood: {", "flood: {global_per_second: 2, "),
                   plugins=PLUGINS)
    bot.telegram.fail("set_commands", "FLOOD_WAIT_600")
    started = time.monotonic()
    try:
        # Bounds far below the 600 s, generous for a loaded machine.
        async with asyncio.timeout(60):
            await bot.start()
            assert time.monotonic() - started < 30
            assert bot.app.commands_published is False
            assert "command menu: Telegram asks to wait 600 s" in caplog.text
            sent = [await bot.send_nowait(f"m{i}", user_id=100 + i) for i in range(2)]
            replies = await asyncio.gather(*(s.reply() for s in sent))
            assert [r.text for r in replies] == ["m0", "m1"]
            assert time.monotonic() - started < 30
            assert not [a for a in bot.actions if a["action"] == "set_commands"]
            await bot.stop(5)
            assert time.monotonic() - started < 40
    finally:
        await bot.close()


async def test_the_command_menu_is_published_after_a_short_flood_wait():
    bot = TgmuxBot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("set_commands", "FLOOD_WAIT_1")
    async with bot:
        refused = bot.telegram.requests[-1]
        assert (refused.name, refused.error) == ("bots.SetBotCommands", "FLOOD_WAIT_1")
        # Not held up by the menu's wait: the FLOOD_WAIT_600 test above shows it (a 1 s wait
        # is too short to tell a hold-up from a loaded machine).
        reply = await bot.send("hi", user_id=42)
        assert reply.text == "hi"
        menu = await bot.wait_for(action="set_commands", timeout=30)
        assert menu["commands"][0]["command"] == "start"
        published_at = bot.telegram.action_times[bot.actions.index(menu)]
        assert published_at - refused.at >= 1.0  # Telegram's wait was honoured
        await bot.app.commands_task
        assert bot.app.commands_published is True
