"""How replies reach Telegram: long texts, media and captions, typing actions, notices,
errors from Telegram that must not stop tgmux."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest
import tg_test_backends
from jitter import with_latency_jitter
from pyrogram.errors import RpcCallFail

from tgmux.config import FloodLimits
from tgmux.telegram.sender import DeliveryFailed, FloodControl, Sender
from tgmux.telegram.textsplit import utf16_len

PLUGINS = [tg_test_backends]

#: each test also with network latency jitter (pushes overtake each other)
tgmux_bot = with_latency_jitter()
GROUP = -1001234567890

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  echo: {type: echo}
  media: {type: media}
  slow: {type: slow, delay: 0.5}
routes:
  - match: {user_id: 77}
    backend: media
  - match: {user_id: 88}
    backend: slow
default: echo
"""


async def test_long_text_is_split_at_4096_utf16_units(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    paragraph = "Sentence with emoji 😀 in it. " * 100  # 3100 chars, 3200 UTF-16 units
    text = paragraph.strip() + "\n\n" + paragraph.strip()
    reply = await bot.send(text, user_id=42)
    sent = [a["text"] for a in reply.messages]
    assert sent == [paragraph.strip(), paragraph.strip()]
    assert all(utf16_len(t) <= 4096 for t in sent)
    assert [a["message_id"] for a in reply.messages] == [1001, 1002]


async def test_only_the_first_message_of_a_reply_quotes_in_groups(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    text = "@tgmux_bot " + "word " * 1000  # 5000 chars after the mention
    reply = await bot.send(text, user_id=42, chat_id=GROUP, thread_id=9)
    first, second = reply.messages
    assert first["reply_to_message_id"] == reply.message_id
    assert "reply_to_message_id" not in second
    assert first["message_thread_id"] == second["message_thread_id"] == 9


async def test_photos_voice_and_audio(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    by_url = await bot.send("photo url", user_id=77)
    assert by_url.messages == [{"action": "send_photo", "chat_id": 77, "message_id": 1001,
                                "text": "a cat", "media": "https://example.com/cat.jpg"}]
    by_bytes = await bot.send("photo bytes", user_id=77)
    png = tg_test_backends.PNG
    assert by_bytes.messages[0]["media"] == f"bytes:{hashlib.sha256(png).hexdigest()}:{len(png)}"
    assert by_bytes.messages[0]["text"] == "a png"
    voice = await bot.send("voice", user_id=77)
    ogg = tg_test_backends.OGG
    assert voice.messages == [{"action": "send_voice", "chat_id": 77, "message_id": 1003,
                               "media": f"bytes:{hashlib.sha256(ogg).hexdigest()}:{len(ogg)}",
                               "mime_type": "audio/ogg", "duration": 1}]
    assert bot.telegram.uploaded(voice.messages[0]) == ogg  # OGG/Opus already: not transcoded
    voice_url = await bot.send("voice url", user_id=77)
    assert voice_url.messages[0]["action"] == "send_voice"
    assert voice_url.messages[0]["media"] == "https://example.com/hello.ogg"
    audio = await bot.send("audio url", user_id=77)
    assert audio.messages[0]["action"] == "send_audio"
    assert audio.messages[0]["text"] == "a song"


async def test_a_long_caption_continues_as_text(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("long caption", user_id=77)
    photo, rest = reply.messages
    assert photo["action"] == "send_photo" and rest["action"] == "send_message"
    assert utf16_len(photo["text"]) <= 1024
    assert (photo["text"] + " " + rest["text"]).split() == ["word"] * 400


async def test_text_then_photo_in_one_reply(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    reply = await bot.send("@tgmux_bot text and photo", user_id=77, chat_id=GROUP)
    assert [a["action"] for a in reply.messages] == ["send_message", "send_photo"]
    assert reply.messages[0]["reply_to_message_id"] == reply.message_id
    assert "reply_to_message_id" not in reply.messages[1]


async def test_typing_is_shown_and_repeated_until_the_reply_is_sent(tgmux_bot):
    tg_test_backends.HELD.clear()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, typing_interval=0.15)
    # the reply is held until "typing…" was shown twice (a 1 s reply stalled as long as that
    # by a loaded machine went out before any typing action)
    sent = await bot.send_nowait("hold typing", user_id=88)
    first = await bot.wait_for(action="chat_action", chat_id=88, timeout=30)
    await bot.wait_for(action="chat_action", chat_id=88, start=bot.actions.index(first) + 1,
                       timeout=30)
    tg_test_backends.let_go("typing")
    reply = await sent.reply(timeout=30)
    kinds = [a["action"] for a in reply.actions]
    assert kinds[-1] == "send_message" and reply.text == "slow: hold typing"
    typing = reply.of("chat_action")
    assert len(typing) >= 2  # shown after a short grace, then repeated every 0.15 s
    assert all(a == {"action": "chat_action", "chat_id": 88, "chat_action": "typing"}
               for a in typing)
    # nothing more once the reply is out (three intervals later; a stall only lets a typing
    # loop left running show more)
    count = len(bot.actions)
    await asyncio.sleep(0.15 * 3)
    assert bot.actions[count:] == []


async def test_typing_in_a_forum_topic_names_the_topic(tgmux_bot):
    tg_test_backends.HELD.clear()
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, typing_interval=5)
    # held until it is shown (a 0.6 s reply could go out first on a stalled machine)
    sent = await bot.send_nowait("@tgmux_bot hold topic", user_id=88, chat_id=GROUP,
                                 thread_id=3)
    typing = await bot.wait_for(action="chat_action", chat_id=GROUP, timeout=30)
    assert typing == {"action": "chat_action", "chat_id": GROUP, "chat_action": "typing",
                      "message_thread_id": 3}
    tg_test_backends.let_go("topic")
    assert (await sent.reply(timeout=30)).text == "slow: hold topic"


async def test_a_blocked_bot_logs_the_chat_and_carries_on(tgmux_bot, caplog):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "USER_IS_BLOCKED", chat_id=42)
    with caplog.at_level(logging.WARNING, logger="tgmux.telegram"):
        reply = await bot.send("hello", user_id=42)
    assert tg_test_backends.untimed(reply.actions) == []
    assert any("chat 42" in r.getMessage() and "USER_IS_BLOCKED" in r.getMessage()
               for r in caplog.records)
    # tried once, not again and again
    assert [r.name for r in bot.telegram.requests if r.error] == ["messages.SendMessage"]
    # the next message gets through
    assert (await bot.send("again", user_id=42)).text == "again"
    # and other chats never noticed
    assert (await bot.send("hi", user_id=43)).text == "hi"


async def test_write_forbidden_in_a_group_drops_the_rest_of_the_reply(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "CHAT_WRITE_FORBIDDEN", chat_id=GROUP, times=None)
    reply = await bot.send("@tgmux_bot " + "long " * 2000, user_id=42, chat_id=GROUP)
    assert tg_test_backends.untimed(reply.actions) == []
    failed = [r for r in bot.telegram.requests if r.error == "CHAT_WRITE_FORBIDDEN"]
    assert len(failed) == 1  # the second chunk was not even tried


async def test_a_deleted_message_is_answered_without_quoting_it(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "REPLY_MESSAGE_ID_INVALID", chat_id=GROUP)
    reply = await bot.send("@tgmux_bot hi", user_id=42, chat_id=GROUP)
    assert reply.messages == [{"action": "send_message", "chat_id": GROUP, "message_id": 1001,
                               "text": "hi"}]


async def test_a_photo_telegram_cannot_fetch_is_sent_as_a_link(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_photo", "WEBPAGE_CURL_FAILED")
    reply = await bot.send("photo url", user_id=77)
    assert reply.messages == [{"action": "send_message", "chat_id": 77, "message_id": 1001,
                               "text": "a cat\nhttps://example.com/cat.jpg",
                               "link_preview": False}]


async def test_provider_errors_reach_the_user_as_plain_messages(tgmux_bot):
    config = CONFIG.replace("  slow: {type: slow, delay: 0.5}",
                            "  drip: {type: drip, delay: 0, error_after: 0}")
    config = config.replace("backend: slow", "backend: drip")
    bot = await tgmux_bot(config, plugins=PLUGINS)
    reply = await bot.send("hello", user_id=88)
    assert tg_test_backends.untimed(reply.actions) == [
        {"action": "send_message", "chat_id": 88, "message_id": 1001,
         "text": "The AI provider is unavailable right now."}]


async def test_a_message_whose_answer_is_lost_is_not_sent_again(tgmux_bot, caplog):
    """Telegram sends the message but its answer never arrives: Pyrogram's session retries
    that very request (same random_id: Telegram sends it once), then gives up; tgmux must not
    send it anew (a new random_id: a second copy in the chat)."""
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "TIMEOUT", chat_id=42, delivered=True, times=None)
    with caplog.at_level(logging.ERROR, logger="tgmux.telegram"):
        reply = await bot.send("hello", user_id=42)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": "hello"}]
    tries = [r for r in bot.telegram.requests if r.name == "messages.SendMessage"]
    assert len(tries) == 10 and len({r.query.random_id for r in tries}) == 1  # the session's
    assert "chat 42: send_message may or may not have reached the chat" in caplog.text
    # other chats carry on
    assert (await bot.send("hi", user_id=43)).text == "hi"


async def test_a_photo_met_by_server_errors_is_not_sent_again(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_photo", "RPC_CALL_FAIL", delivered=True, times=None)
    reply = await bot.send("photo url", user_id=77)
    assert [a["action"] for a in reply.messages] == ["send_photo"]


async def test_a_server_error_once_is_retried_by_the_session_as_the_same_message(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS)
    bot.telegram.fail("send_message", "RPC_CALL_FAIL", chat_id=GROUP, delivered=True)
    reply = await bot.send("@tgmux_bot hi", user_id=42, chat_id=GROUP, message_id=9)
    assert reply.messages == [{"action": "send_message", "chat_id": GROUP, "message_id": 1001,
                               "text": "hi", "reply_to_message_id": 9}]
    assert [r.error for r in bot.telegram.requests[-2:]] == ["RPC_CALL_FAIL", None]


@pytest.mark.parametrize("error", [
    TimeoutError("Request timed out"),
    RpcCallFail(),
])
async def test_only_idempotent_requests_are_made_again_after_an_unknown_outcome(error):
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    sender = Sender(FloodControl(FloodLimits(private_per_second=100)), sleep=sleep)
    calls = 0

    async def flaky() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise error
        return "done"

    assert await sender.call(42, "edit_message", flaky, idempotent=True) == "done"
    assert calls == 2 and slept == [1.0]
    calls = 0
    with pytest.raises(DeliveryFailed):
        await sender.call(42, "send_message", flaky)
    assert calls == 1
