"""Private chats with topics (threaded mode, Bot API 9.3+): a user's message carries its topic,
and the reply — typing, drafts, the message — stays in that topic."""

from __future__ import annotations

import json

import pytest
import tg_test_backends

from tgmux.telegram.simulate import parse_input_line

PLUGINS = [tg_test_backends]

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  drip: {type: drip, delay: 0.08}
  slow: {type: slow, delay: 0.5}
routes:
  - match: {user_id: 88}
    backend: slow
default: drip
"""

WORDS = "one two three four five six seven eight"


async def test_a_streamed_reply_stays_in_the_private_topic(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.2)
    reply = await bot.send(WORDS, user_id=42, thread_id=7)
    drafts = reply.of("send_draft")
    assert drafts and all(d["message_thread_id"] == 7 for d in drafts)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": WORDS, "message_thread_id": 7}]
    # another topic of the same chat, and the main chat, keep theirs
    other = await bot.send("alpha beta", user_id=42, thread_id=9)
    assert [m.get("message_thread_id") for m in other.messages] == [9]
    main = await bot.send("gamma delta", user_id=42)
    assert [m.get("message_thread_id") for m in main.messages] == [None]


async def test_typing_in_a_private_topic_names_the_topic(tgmux_bot):
    tg_test_backends.HELD.clear()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, typing_interval=5)
    # held until "typing…" is shown (a 2 s reply could go out first on a stalled machine)
    sent = await bot.send_nowait("hold topic", user_id=88, thread_id=3)
    await bot.wait_for(action="chat_action", chat_id=88, timeout=30)
    tg_test_backends.let_go("topic")
    reply = await sent.reply(timeout=30)
    typing = reply.of("chat_action")
    assert typing and all(a == {"action": "chat_action", "chat_id": 88, "chat_action": "typing",
                                "message_thread_id": 3} for a in typing)
    assert reply.messages == [{"action": "send_message", "chat_id": 88, "message_id": 1001,
                               "text": "slow: hold topic", "message_thread_id": 3}]


def test_simulate_takes_a_thread_id_in_a_private_chat():
    line = json.dumps({"user_id": 42, "text": "hi", "thread_id": 3})
    assert parse_input_line(line) == {"user_id": 42, "text": "hi", "thread_id": 3}
    # basic groups have no topics
    with pytest.raises(ValueError, match=r"thread_id: .*supergroups and private chats"):
        parse_input_line(json.dumps({"user_id": 1, "chat_id": -5, "thread_id": 3,
                                     "text": "x"}))
