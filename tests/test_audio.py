"""tgmux.audio: audio made into a voice note (OGG/Opus and its duration), with its caps and its
fallbacks, and PyAV loaded only when a transcode runs."""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import threading

import av
import pytest

from tgmux import audio
from tgmux.audio import (
    VoiceNote,
    is_ogg_opus,
    ogg_opus_seconds,
    to_voice_note,
    tone_mp3,
    transcode_to_voice_note,
)
from tgmux.plugins.audio_simulator import with_last_granule


@pytest.fixture(scope="module")
def mp3() -> bytes:
    return tone_mp3(2.0)


def read_back(data: bytes) -> tuple[str, int, str, float]:
    """(codec, sample rate, layout, seconds decoded) of audio bytes, as PyAV reads them."""
    with av.open(io.BytesIO(data)) as container:
        (stream,) = container.streams.audio
        samples = sum(frame.samples for frame in container.decode(stream))
        return stream.codec_context.name, stream.rate, stream.layout.name, samples / stream.rate


def test_tone_mp3_is_a_real_mp3() -> None:
    codec, rate, layout, seconds = read_back(tone_mp3(1.5, rate=22_050))
    assert codec.startswith("mp3") and rate == 22_050 and layout == "mono"
    assert 1.45 <= seconds <= 1.6  # plus the encoder's padding


async def test_an_mp3_becomes_48_khz_mono_opus_in_ogg(mp3, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        note = await to_voice_note(mp3)
    assert note is not None and is_ogg_opus(note.data) and not is_ogg_opus(mp3)
    codec, rate, layout, seconds = read_back(note.data)
    assert (codec, rate, layout) == ("opus", 48_000, "mono")
    assert 1.95 <= seconds <= 2.1
    assert note.seconds == pytest.approx(2.0, abs=0.05) and note.whole_seconds == 2
    assert caplog.records == []


async def test_ogg_opus_is_kept_as_it_is_with_its_duration(mp3, monkeypatch) -> None:
    ogg = transcode_to_voice_note(mp3).data
    monkeypatch.setattr(audio, "transcode_to_voice_note", None)  # not called
    note = await to_voice_note(ogg, max_bytes=10)  # no work to bound: the caps do not apply
    assert note is not None and note.data is ogg
    assert note.seconds == pytest.approx(2.0, abs=0.05) == ogg_opus_seconds(ogg)


async def test_the_transcode_runs_off_the_event_loop(mp3, monkeypatch) -> None:
    threads: list[str] = []
    real = audio.transcode_to_voice_note

    def watched(data: bytes, max_seconds: float) -> VoiceNote:
        threads.append(threading.current_thread().name)
        return real(data, max_seconds)

    monkeypatch.setattr(audio, "transcode_to_voice_note", watched)
    assert await to_voice_note(mp3) is not None
    assert len(threads) == 1 and threads[0].startswith("tgmux-audio")


async def test_the_size_cap_refuses_before_any_work(mp3, monkeypatch, caplog) -> None:
    monkeypatch.setattr(audio, "transcode_to_voice_note", None)  # never reached
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        assert await to_voice_note(mp3, max_bytes=len(mp3) - 1, name="chat 42") is None
    assert caplog.messages == [f"chat 42: audio of {len(mp3)} bytes is over the voice note cap "
                               f"of {len(mp3) - 1} bytes; sent as an audio file"]
    monkeypatch.undo()
    assert await to_voice_note(mp3, max_bytes=len(mp3)) is not None  # the cap itself is fine


async def test_the_duration_cap_counts_decoded_audio(mp3, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        assert await to_voice_note(mp3, max_seconds=1.5, name="chat 42") is None
    assert caplog.messages == ["chat 42: audio is longer than the voice note cap of 1.5 s; "
                               "sent as an audio file"]
    assert await to_voice_note(mp3, max_seconds=2.5) is not None



@pytest.mark.parametrize("granule", [2**62, 0, 100], ids=["2^62", "zero", "below-pre-skip"])
async def test_an_ogg_whose_last_page_lies_about_its_length_is_transcoded(
        mp3, granule) -> None:
    ogg = transcode_to_voice_note(mp3).data
    hostile = with_last_granule(ogg, granule)
    assert is_ogg_opus(hostile) and ogg_opus_seconds(hostile) is None
    note = await to_voice_note(hostile)  # what it holds is counted, not what it claims
    assert note is not None and is_ogg_opus(note.data)
    assert note.seconds == pytest.approx(ogg_opus_seconds(ogg), abs=0.05)
    assert note.whole_seconds in (2, 3)  # about 2 s (FFmpeg trims the end by the granule)


@pytest.mark.parametrize("granule", [2**63 - 1, -1], ids=["int64-max", "minus-one"])
async def test_an_ogg_ffmpeg_refuses_is_sent_as_an_audio_file(mp3, granule, caplog) -> None:
    hostile = with_last_granule(transcode_to_voice_note(mp3).data, granule)
    assert ogg_opus_seconds(hostile) is None
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        assert await to_voice_note(hostile, name="chat 7") is None  # no absurd duration
    (message,) = caplog.messages
    assert message.startswith("chat 7: could not transcode audio to a voice note (")


async def test_an_ogg_over_the_cap_is_not_believed_past_it(mp3, caplog) -> None:
    ogg = transcode_to_voice_note(mp3).data  # 2 s
    assert ogg_opus_seconds(ogg, max_seconds=1.5) is None
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        assert await to_voice_note(ogg, max_seconds=1.5, name="chat 42") is None
    assert caplog.messages == ["chat 42: audio is longer than the voice note cap of 1.5 s; "
                               "sent as an audio file"]
    # a claim the bytes cannot hold (more than 120 ms per two bytes) is not believed either
    assert ogg_opus_seconds(with_last_granule(ogg, 312 + len(ogg) * 2880 + 1)) is None
    # nor a last "page" that is not one: cut short, or bytes after it
    assert ogg_opus_seconds(ogg[:-1]) is None and ogg_opus_seconds(ogg + b"\0") is None


@pytest.mark.parametrize("data", [b"", b"not audio at all" * 50,
                                  b"ID3\x03\x00\x00\x00\x00\x00\x00\xff\xfb\x90\x64" + bytes(413)])
async def test_what_is_not_audio_gives_none_and_says_why(data, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        assert await to_voice_note(data, name="chat 7") is None
    (message,) = caplog.messages
    assert message.startswith("chat 7: could not transcode audio to a voice note (")
    assert message.endswith("sent as an audio file")


async def test_without_pyav_audio_is_not_transcoded_and_that_is_said_once(
        mp3, monkeypatch, caplog) -> None:
    monkeypatch.setattr(audio, "pyav_available", lambda: False)
    monkeypatch.setattr(audio, "_missing_logged", False)
    with caplog.at_level(logging.WARNING, logger="tgmux.audio"):
        assert await to_voice_note(mp3) is None
        assert await to_voice_note(mp3) is None
    assert caplog.messages == ["PyAV is not installed (pip install 'tgmux[voice]'): voice "
                               "replies are sent as audio files, not transcoded to voice notes"]


def test_whole_seconds_round_up_and_are_at_least_one() -> None:
    assert [VoiceNote(b"", s).whole_seconds for s in (0.0, 0.2, 1.0, 1.01, 59.5)] == \
        [1, 1, 1, 2, 60]


def test_pyav_is_loaded_only_when_a_transcode_runs() -> None:
    code = ("import sys, tgmux.audio, tgmux.telegram.frontend, tgmux.backends.bambisleep; "
            "print('av' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, check=True)
    assert result.stdout.strip() == "False"
