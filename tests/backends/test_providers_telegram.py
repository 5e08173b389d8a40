"""LucyDream and BambiSleep end to end through the offline Telegram: what a chat shows."""

from __future__ import annotations

import pytest

from tgmux.backends.bambisleep.simulator import BambiSleepSimulator
from tgmux.backends.lucydream.simulator import LucyDreamSimulator

FAST = "telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}\n"


@pytest.fixture
async def lucy():
    async with LucyDreamSimulator(api_keys=["lucy-key"], free_messages=None) as server:
        yield server


@pytest.fixture
async def bambi():
    async with BambiSleepSimulator(api_keys={"bambi-key": "bambi"}) as server:
        yield server


async def test_lucydream_text_image_and_history_in_telegram(tgmux_bot, lucy) -> None:
    bot = await tgmux_bot(FAST + f"""
backends:
  lucy: {{type: lucydream, api_key: lucy-key, base_url: "{lucy.base_url}"}}
default: lucy
""")
    reply = await bot.send("Hello Lucy", user_id=42, username="alice")
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": "You said: Hello Lucy"}]
    # one sub-user, created on first contact, named after the Telegram user
    assert [r.json for r in lucy.requests_to("create-sub-user")] == [{"username": "tg_42"}]

    (photo,) = (await bot.send("/image", user_id=42)).messages
    assert photo["action"] == "send_photo"
    assert photo["media"].startswith(f"{lucy.root_url}/") and photo["media"].endswith(".png")
    assert photo["text"] == "I've created this image just for you!"

    history = await bot.send("/history", user_id=42)
    assert history.texts == ["user: Hello Lucy\nassistant: You said: Hello Lucy\n"
                             "assistant: I've created this image just for you!"]


async def test_bambisleep_reply_triggers_and_voice_in_telegram(tgmux_bot, bambi) -> None:
    bot = await tgmux_bot(FAST + f"""
backends:
  bambi: {{type: bambisleep, api_key: bambi-key, base_url: "{bambi.base_url}"}}
default: bambi
""")
    reply = await bot.send("hello bambi", user_id=42)
    text, voice = reply.messages
    assert text["action"] == "send_message"
    assert text["text"].startswith("Bambi hears you: hello bambi")
    # The MP3 is fetched and sent as a voice note: transcoded to OGG/Opus, with its duration
    # (tests/backends/test_bambisleep_voice.py reads the bytes back).
    assert voice["action"] == "send_voice"
    assert voice["mime_type"] == "audio/ogg" and voice["duration"] == 1
    assert bot.telegram.uploaded(voice)[:4] == b"OggS"
    voice_requests = [r for r in bot.telegram.requests
                      if type(r.query).__name__ == "SendMedia"]
    assert len(voice_requests) == 1
    # what BambiSleep was asked
    (generate,) = bambi.requests_to("/ai/generate")
    assert generate.header("Authorization") == "Bearer bambi-key"
    assert generate.json["prompt"] == "hello bambi"
