"""BambiSleep's MP3 audio as a Telegram voice note, end to end: the BambiSleep simulator on
127.0.0.1 serves a real MP3 (made with PyAV), the Telegram frontend transcodes it to OGG/Opus,
the fake Telegram keeps the bytes it got, and PyAV reads them back."""

from __future__ import annotations

import io
import logging

import av
import pytest

from tgmux.backends.bambisleep.simulator import AUDIO_BYTES, BambiSleepSimulator, sample_mp3

FAST = "telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}\n"


@pytest.fixture
async def bambi():
    async with BambiSleepSimulator(api_keys={"bambi-key": "bambi"}) as server:
        yield server


def config(bambi: BambiSleepSimulator, extra: str = "") -> str:
    return FAST + f"""
backends:
  bambi: {{type: bambisleep, api_key: bambi-key, base_url: "{bambi.base_url}"{extra}}}
default: bambi
"""


def media_of(reply, action: str) -> dict:
    (found,) = [a for a in reply.messages if a["action"] in {"send_voice", "send_audio"}]
    assert found["action"] == action, found
    return found


async def test_the_mp3_arrives_as_an_ogg_opus_voice_note_with_its_duration(tgmux_bot,
                                                                           bambi) -> None:
    bot = await tgmux_bot(config(bambi))
    reply = await bot.send("hello bambi", user_id=42)
    assert reply.messages[0]["text"].startswith("Bambi hears you: hello bambi")
    voice = media_of(reply, "send_voice")
    assert voice["mime_type"] == "audio/ogg"
    assert voice["duration"] == 1  # the simulator's tone is one second long
    data = bot.telegram.uploaded(voice)
    assert data != sample_mp3() and data[:4] == b"OggS"
    with av.open(io.BytesIO(data)) as container:
        (stream,) = container.streams.audio
        assert stream.codec_context.name == "opus"
        assert stream.rate == 48_000 and stream.layout.name == "mono"
        decoded = sum(frame.samples for frame in container.decode(stream))
    assert 0.95 <= decoded / 48_000 <= 1.1
    # the audio was fetched once, without the account's key (a public file link)
    (fetch,) = bambi.requests_to("/audio/")
    assert fetch.method == "GET" and "Authorization" not in fetch.headers


async def test_audio_as_audio_sends_the_mp3_by_its_url(tgmux_bot, bambi) -> None:
    bot = await tgmux_bot(config(bambi, ", audio_as: audio"))
    audio = media_of(await bot.send("hello bambi", user_id=42), "send_audio")
    assert audio["media"].startswith(f"{bambi.root_url}/audio/")
    assert audio["media"].endswith(".mp3")
    assert bambi.requests_to("/audio/") == []  # Telegram fetches it, tgmux does not


async def test_a_route_may_choose_audio_as(tgmux_bot, bambi) -> None:
    bot = await tgmux_bot(config(bambi) + """
routes:
  - match: {chat_type: [group, supergroup]}
    backend: bambi
    options: {audio_as: audio}
""")
    private = await bot.send("hi", user_id=42)
    group = await bot.send("@tgmux_bot hi", user_id=42, chat_id=-1001234567890)
    media_of(private, "send_voice")
    media_of(group, "send_audio")


async def test_a_broken_mp3_is_sent_as_it_is_as_an_audio_file(tgmux_bot, bambi,
                                                             caplog) -> None:
    bambi.audio_data = AUDIO_BYTES  # an MPEG frame header and zeros: nothing to decode
    bot = await tgmux_bot(config(bambi))
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        reply = await bot.send("hello bambi", user_id=42)
    audio = media_of(reply, "send_audio")
    assert bot.telegram.uploaded(audio) == AUDIO_BYTES
    assert audio["mime_type"] == "audio/mpeg"
    assert any("could not transcode audio to a voice note" in r.getMessage()
               and "sent as an audio file" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(("cap", "value", "said"), [
    ("voice_max_bytes", 1000, "over the voice note cap of 1000 bytes"),
    ("voice_max_seconds", 0.5, "longer than the voice note cap of 0.5 s"),
])
async def test_audio_over_a_cap_is_sent_as_an_audio_file(tgmux_bot, bambi, caplog, cap, value,
                                                        said) -> None:
    bot = await tgmux_bot(config(bambi))
    await bot.start()
    setattr(bot.app.frontend, cap, value)
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        reply = await bot.send("hello bambi", user_id=42)
    audio = media_of(reply, "send_audio")
    assert bot.telegram.uploaded(audio) == sample_mp3()  # the original, untouched
    assert any(said in r.getMessage() for r in caplog.records), caplog.text


async def test_audio_that_cannot_be_fetched_is_sent_by_url(tgmux_bot, bambi, caplog) -> None:
    bambi.inject(path="/audio/", status=404, body={"error": True, "code": "NOT_FOUND"})
    bot = await tgmux_bot(config(bambi))
    with caplog.at_level(logging.WARNING, logger="tgmux.backends.bambisleep"):
        reply = await bot.send("hello bambi", user_id=42)
    audio = media_of(reply, "send_audio")
    assert audio["media"].startswith(f"{bambi.root_url}/audio/")
    assert "could not fetch the reply's audio" in caplog.text
