"""Voice in and out for every backend: plugin settings sections, ``tgmux.plugins.transcribe``
and ``tgmux.plugins.speak``, against the LucyDream and audio simulators on 127.0.0.1."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import sys
import textwrap
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tgmux.backend import Backend, BackendSettings, ReplyPart, Strict, Text, TextDelta, Turn
from tgmux.backends.lucydream.simulator import LucyDreamSimulator
from tgmux.bootstrap import load, load_text
from tgmux.errors import ConfigError
from tgmux.hooks import build_plugin_manager, hookimpl
from tgmux.plugins import transcribe
from tgmux.plugins.audio_simulator import AudioSimulator, _ogg_crc, ogg_opus, with_last_granule
from tgmux.reload import Reloader, applicable

FAST = "telegram: {flood: {private_per_second: 100, group_per_minute: 6000}}\n"
SPOKEN = "What is the weather like in Paris?"


@pytest.fixture
async def lucy():
    async with LucyDreamSimulator(api_keys=["lucy-key"], free_messages=None) as server:
        yield server


@pytest.fixture
async def audio():
    async with AudioSimulator(api_keys={"audio-key"}) as server:
        yield server


@pytest.fixture
def voice_file(tmp_path: Path) -> Path:
    """A "voice message" whose bytes say what the simulator hears."""
    path = tmp_path / "voice.ogg"
    path.write_bytes(SPOKEN.encode())
    return path


def config(lucy: LucyDreamSimulator, audio: AudioSimulator, *, plugins: str,
           sections: str) -> str:
    return FAST + f"""
plugins: [{plugins}]
backends:
  lucy: {{type: lucydream, api_key: lucy-key, base_url: "{lucy.base_url}"}}
  echo: {{type: echo, prefix: "echo: "}}
default: lucy
""" + textwrap.dedent(sections).replace("BASE_URL", audio.base_url)


TRANSCRIBE = """
transcribe:
  base_url: BASE_URL
  api_key: audio-key
  model: whisper-1
  echo_transcript: true
"""


# -- transcribe ------------------------------------------------------------------------------


async def test_a_voice_message_is_transcribed_and_answered_by_lucydream(
        tgmux_bot, lucy, audio, voice_file) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                 sections=TRANSCRIBE))
    reply = await bot.send(user_id=42, voice=str(voice_file))
    # the user first sees what was heard, then LucyDream's answer to it
    assert reply.messages == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001,
         "text": f"🎤 {SPOKEN}"},
        {"action": "send_message", "chat_id": 42, "message_id": 1002,
         "text": f"You said: {SPOKEN}"},
    ]
    (upload,) = audio.requests_to("/v1/audio/transcriptions", "POST")
    assert upload.header("Authorization") == "Bearer audio-key"
    form = upload.form()
    assert sorted(form) == ["file", "model"]
    assert form["model"].text == "whisper-1" and form["model"].filename is None
    assert (form["file"].filename, form["file"].content_type, form["file"].value) == \
        ("voice.ogg", "audio/ogg", SPOKEN.encode())
    (asked,) = lucy.requests_to("send-message")
    assert asked.json["message"] == SPOKEN


async def test_without_echo_the_user_sees_only_the_answer(tgmux_bot, lucy, audio,
                                                          voice_file) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                 sections=TRANSCRIBE.replace("true", "false")))
    reply = await bot.send(user_id=42, voice=str(voice_file))
    assert reply.texts == [f"You said: {SPOKEN}"]


@pytest.mark.parametrize("fault", [{"status": 500}, {"status": 401}, {"drop": True}])
async def test_a_failed_transcription_is_one_clear_line(tgmux_bot, lucy, audio, voice_file,
                                                        fault) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                 sections=TRANSCRIBE))
    audio.inject(path="/audio/transcriptions", body={"error": {"message": "x"}}, **fault)
    reply = await bot.send(user_id=42, voice=str(voice_file))
    assert reply.texts == [transcribe.COULD_NOT_UNDERSTAND]
    assert lucy.requests_to("send-message") == []


async def test_silence_is_not_sent_to_the_backend(tgmux_bot, lucy, audio, tmp_path) -> None:
    silent = tmp_path / "silent.ogg"
    silent.write_bytes(b"   ")
    audio.hear = lambda data: ""
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                 sections=TRANSCRIBE))
    reply = await bot.send(user_id=42, voice=str(silent))
    assert reply.texts == [transcribe.COULD_NOT_UNDERSTAND]
    assert lucy.requests_to("send-message") == []


async def test_voice_nobody_will_answer_is_not_transcribed(tgmux_bot, lucy, audio,
                                                           voice_file) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                 sections=TRANSCRIBE) + "access: {deny_users: [13]}\n")
    group = await bot.send(user_id=42, chat_id=-1001234567890, voice=str(voice_file))
    denied = await bot.send(user_id=13, voice=str(voice_file))
    assert group.messages == [] and denied.texts == ["This bot is private."]
    assert audio.requests == []  # not fetched, not paid for
    typed = await bot.send("hello", user_id=42)
    assert typed.texts == ["You said: hello"]
    assert audio.requests == []


async def test_a_limited_users_voice_is_not_transcribed(tgmux_bot, lucy, audio,
                                                        voice_file) -> None:
    # limits hold before any provider is asked, the transcription service included
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                 sections=TRANSCRIBE.replace("true", "false"))
                          + "limits: {per_user: {messages: 1, per: 1m}}\n")
    first = await bot.send(user_id=42, voice=str(voice_file))
    assert first.texts == [f"You said: {SPOKEN}"]
    limited = await bot.send(user_id=42, voice=str(voice_file))
    assert limited.texts[0].startswith("You are sending messages too fast")
    assert len(audio.requests_to("/v1/audio/transcriptions", "POST")) == 1


# -- speak -----------------------------------------------------------------------------------


SPEAK = """
speak:
  base_url: BASE_URL
  api_key: audio-key
  model: tts-1
  voice: nova
  backends: [lucy]
"""


def shown(data: bytes) -> str:
    return f"bytes:{hashlib.sha256(data).hexdigest()}:{len(data)}"


async def test_a_reply_is_also_spoken_as_a_voice_note(tgmux_bot, lucy, audio) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.speak", sections=SPEAK)
                          + "routes:\n  - {match: {text: '^echo'}, backend: echo}\n")
    reply = await bot.send("Hello Lucy", user_id=42)
    assert reply.messages == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001,
         "text": "You said: Hello Lucy"},
        {"action": "send_voice", "chat_id": 42, "message_id": 1002, "media": shown(ogg_opus()),
         "mime_type": "audio/ogg", "duration": 1},
    ]
    (asked,) = audio.requests_to("/v1/audio/speech", "POST")
    assert asked.json == {"model": "tts-1", "input": "You said: Hello Lucy", "voice": "nova",
                          "response_format": "opus"}
    assert asked.header("Authorization") == "Bearer audio-key"
    # a backend not listed is not spoken
    assert (await bot.send("echo hi", user_id=42)).texts == ["echo: echo hi"]
    assert len(audio.requests) == 1


async def test_only_mode_sends_the_voice_note_alone(tgmux_bot, lucy, audio) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.speak",
                                 sections=SPEAK + "  mode: only\n"))
    reply = await bot.send("Hello Lucy", user_id=42)
    assert [m["action"] for m in reply.messages] == ["send_voice"]


async def test_mp3_goes_as_audio_and_a_failure_as_text(tgmux_bot, lucy, audio) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.speak",
                                 sections=SPEAK + "  mode: only\n"))
    audio.answer_mp3 = True
    mp3 = await bot.send("one", user_id=42)
    assert [m["action"] for m in mp3.messages] == ["send_audio"]
    audio.inject(path="/audio/speech", status=503, body={"error": {"message": "down"}})
    failed = await bot.send("two", user_id=42)
    assert failed.texts == ["You said: two"]



async def test_a_spoken_reply_whose_ogg_claims_2_62_samples_still_reaches_the_user(
        tgmux_bot, lucy, audio) -> None:
    pytest.importorskip("av")  # the voice extra: the lying file is transcoded
    audio.speech_bytes = with_last_granule(ogg_opus(0.2), 2**62)
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.speak",
                                 sections=SPEAK + "  mode: only\n"))
    reply = await bot.send("Hello Lucy", user_id=42)
    (voice,) = reply.messages
    assert (voice["action"], voice["mime_type"], voice["duration"]) == \
        ("send_voice", "audio/ogg", 1)  # the 0.2 s it holds, not the 3 million years it claims


async def test_only_mode_sends_the_text_when_the_voice_note_is_refused(
        tgmux_bot, lucy, audio) -> None:
    bot = await tgmux_bot(config(lucy, audio, plugins="tgmux.plugins.speak",
                                 sections=SPEAK + "  mode: only\n"))
    bot.telegram.fail("send_voice", "CHAT_SEND_VOICES_FORBIDDEN")
    reply = await bot.send("Hello Lucy", user_id=42)
    assert [(m["action"], m.get("text")) for m in reply.messages] == [
        ("send_message", "You said: Hello Lucy")]


class StreamsSettings(BackendSettings):
    type: str = "streams"


class StreamsBackend(Backend):
    """A backend that streams its reply, then says it whole."""

    type_name = "streams"
    Settings = StreamsSettings

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield TextDelta("You said: ")
        yield TextDelta(turn.text)
        yield Text(f"You said: {turn.text}")


class StreamsPlugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [StreamsBackend]


async def test_a_streamed_reply_is_not_shown_twice_when_its_voice_note_is_refused(
        tgmux_bot, audio) -> None:
    bot = await tgmux_bot(FAST + "plugins: [tgmux.plugins.speak]\n"
                          "backends:\n  lucy: {type: streams}\ndefault: lucy\n"
                          + textwrap.dedent(SPEAK + "  mode: only\n").replace(
                              "BASE_URL", audio.base_url), plugins=[StreamsPlugin()])
    bot.telegram.fail("send_voice", "CHAT_SEND_VOICES_FORBIDDEN")
    reply = await bot.send("Hello", user_id=42)
    assert reply.texts == ["You said: Hello"]  # streamed; not sent again for the voice note
    assert len(audio.requests_to("/v1/audio/speech", "POST")) == 1


def test_speak_names_an_unknown_backend_at_startup(lucy_free_config) -> None:
    cfg, _ = load_text(lucy_free_config + "plugins: [tgmux.plugins.speak]\n"
                       "speak: {backends: [lucy, nobody]}\n", source="c.yaml")
    engine = types.SimpleNamespace(config=cfg)
    from tgmux.plugins import speak
    with pytest.raises(ConfigError) as info:
        speak.tgmux_startup(engine)
    assert info.value.problems == [
        "c.yaml:5: speak.backends[1]: unknown backend 'nobody' (defined: lucy)"]


@pytest.fixture
def lucy_free_config() -> str:
    return "backends:\n  lucy: {type: echo}\ndefault: lucy\n"


# -- settings sections -----------------------------------------------------------------------


def test_a_typo_in_a_plugin_section_is_one_error_with_its_line(lucy_free_config) -> None:
    text = lucy_free_config + textwrap.dedent("""\
        plugins: [tgmux.plugins.transcribe]
        transcribe:
          model: whisper-1
          echo_transcrip: true
        """)
    with pytest.raises(ConfigError) as info:
        load_text(text, source="c.yaml")
    assert info.value.problems == [
        "c.yaml:7: transcribe.echo_transcrip: unknown key 'echo_transcrip'"]


def test_a_section_validates_with_its_plugin_and_is_refused_without_it(
        lucy_free_config) -> None:
    section = "transcribe: {base_url: 'http://127.0.0.1:9/v1/', model: whisper-1}\n"
    cfg, _ = load_text(lucy_free_config + "plugins: [tgmux.plugins.transcribe]\n" + section)
    settings = cfg.plugin_section("transcribe", transcribe.TranscribeSettings)
    assert (settings.base_url, settings.model, settings.echo_transcript) == \
        ("http://127.0.0.1:9/v1", "whisper-1", False)
    assert cfg.plugin_settings == {"transcribe": settings}
    with pytest.raises(ConfigError) as info:
        load_text(lucy_free_config + section, source="c.yaml")
    assert info.value.problems == ["c.yaml:4: transcribe: unknown key 'transcribe'"]


@pytest.mark.parametrize(("body", "problem"), [
    ("{model: whisper-1, base_url: 'https://api.openai.com/v1/audio/transcriptions'}",
     "c.yaml:5: transcribe.base_url: give the API root (…/v1): tgmux adds "
     "/audio/transcriptions (got 'https://api.openai.com/v1/audio/transcriptions')"),
    ("{echo_transcript: true}", "c.yaml:5: transcribe.model: required key is missing"),
    ("[whisper-1]", "c.yaml:5: transcribe: expected a mapping of settings"),
])
def test_a_plugin_section_is_checked_by_its_model(lucy_free_config, body, problem) -> None:
    with pytest.raises(ConfigError) as info:
        load_text(lucy_free_config + f"plugins: [tgmux.plugins.transcribe]\ntranscribe: {body}\n",
                  source="c.yaml")
    assert info.value.problems == [problem]


class StoreSettings(Strict):
    path: str = "x"


class SettingsPlugin:
    def __init__(self, sections: Any) -> None:
        self.sections = sections

    @hookimpl
    def tgmux_plugin_settings(self) -> Any:
        return self.sections


def test_a_section_named_like_a_core_key_is_refused_when_the_plugin_loads() -> None:
    pm = build_plugin_manager()
    plugin = SettingsPlugin({"store": StoreSettings})
    with pytest.raises(ConfigError) as info:
        pm.register(plugin, name="greedy")
    assert str(info.value) == ("plugin greedy: cannot register a settings section named "
                               "'store': that is a core config key; choose another name")
    assert not pm.is_registered(plugin)
    assert "store" not in pm.plugin_settings_models()


def test_a_core_key_section_named_in_plugins_is_an_error_at_its_line(tmp_path, monkeypatch,
                                                                     lucy_free_config) -> None:
    (tmp_path / "greedy_plugin.py").write_text(textwrap.dedent("""\
        from tgmux.backend import Backend, BackendSettings, ReplyPart, Strict, Text, TextDelta, Turn
        from tgmux.hooks import hookimpl

        class Settings(Strict):
            path: str = "x"

        @hookimpl
        def tgmux_plugin_settings():
            return {"store": Settings}
        """))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "greedy_plugin", raising=False)
    with pytest.raises(ConfigError) as info:
        load_text(lucy_free_config + "plugins: [greedy_plugin]\n", source="c.yaml")
    assert info.value.problems == [
        "c.yaml:4: plugins[0]: plugin greedy_plugin: cannot register a settings section named "
        "'store': that is a core config key; choose another name"]


@pytest.mark.parametrize(("sections", "refusal"), [
    ({"transcribe": StoreSettings}, "is already registered by plugin tgmux.plugins.transcribe"),
    ({"loose": dict}, "the model must be a tgmux.backend.Strict subclass"),
    (["loose"], "must return a dict"),
])
def test_other_bad_sections_are_refused(sections, refusal) -> None:
    pm = build_plugin_manager()
    pm.load_modules(["tgmux.plugins.transcribe"], "config")
    with pytest.raises(ConfigError, match=refusal.replace(".", r"\.")):
        pm.register(SettingsPlugin(sections), name="other")
    assert pm.plugin_settings_models() == {"transcribe": transcribe.TranscribeSettings}


def test_a_reload_validates_plugin_sections_and_a_change_needs_a_restart(
        tmp_path, lucy_free_config) -> None:
    path = tmp_path / "config.yaml"
    head = lucy_free_config + "plugins: [tgmux.plugins.transcribe]\n"
    path.write_text(head + "transcribe: {model: whisper-1}\n")
    old, pm = load(path)
    reloader = Reloader(types.SimpleNamespace(config=old), pm, path)  # type: ignore[arg-type]
    path.write_text(head + "transcribe: {model: whisper-1, echo_transcript: true}\n")
    written, running = reloader._load(old.data.engine.concurrency)
    assert running.plugin_section("transcribe", transcribe.TranscribeSettings).echo_transcript
    new, restart = applicable(old, running, written=written)
    assert restart == ["transcribe"]
    assert new.plugin_settings == old.plugin_settings  # kept until the restart
    path.write_text(head + "transcribe: {model: whisper-1, echo: true}\n")
    with pytest.raises(ConfigError) as info:
        reloader._load(old.data.engine.concurrency)
    assert info.value.problems == [f"{path}:5: transcribe.echo: unknown key 'echo'"]


# -- the simulator's audio -------------------------------------------------------------------


def test_the_simulated_speech_is_valid_ogg_opus() -> None:
    data = ogg_opus(0.2)
    pages, offset = [], 0
    while offset < len(data):
        assert data[offset:offset + 4] == b"OggS"
        segments = data[offset + 26]
        lacing = data[offset + 27:offset + 27 + segments]
        end = offset + 27 + segments + sum(lacing)
        page = data[offset:end]
        (crc,) = struct.unpack("<I", page[22:26])
        assert crc == _ogg_crc(page[:22] + b"\0\0\0\0" + page[26:])
        pages.append(page[27 + segments:])
        offset = end
    assert pages[0].startswith(b"OpusHead\x01\x01") and pages[1].startswith(b"OpusTags")
    assert pages[2] == b"\xf8\xff\xfe" * 10


def test_pyav_reads_the_simulated_speech_as_opus() -> None:
    av = pytest.importorskip("av")  # installed with the BambiSleep transcoding work
    import io
    with av.open(io.BytesIO(ogg_opus(0.2))) as container:
        assert container.streams.audio[0].codec_context.name == "opus"
        frames = list(container.decode(audio=0))
    # 10 packets of 20 ms at 48 kHz, less the pre-skip
    assert sum(f.samples for f in frames) == 10 * 960 - 312


# -- tgmux simulate --------------------------------------------------------------------------


async def test_tgmux_simulate_transcribes_a_voice_input_line(lucy, audio, voice_file,
                                                             tmp_path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("store: memory://\n" + config(lucy, audio, plugins="tgmux.plugins.transcribe",
                                                  sections=TRANSCRIBE))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tgmux", "simulate", "-c", str(path),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    line = json.dumps({"user_id": 42, "voice": str(voice_file)}) + "\n"
    out, err = await asyncio.wait_for(proc.communicate(line.encode()), 30)
    assert proc.returncode == 0, err.decode()
    sent = [json.loads(row) for row in out.decode().splitlines()]
    assert [a for a in sent if a["action"] == "send_message"] == [
        {"action": "send_message", "chat_id": 42, "message_id": 1001, "text": f"🎤 {SPOKEN}"},
        {"action": "send_message", "chat_id": 42, "message_id": 1002,
         "text": f"You said: {SPOKEN}"}]
    assert lucy.requests_to("send-message")[0].json["message"] == SPOKEN
    assert audio.requests_to("/audio/transcriptions")[0].form()["file"].value == SPOKEN.encode()


class HearsSettings(BackendSettings):
    type: str = "hears"


class HearsBackend(Backend):
    """A backend that takes voice itself."""

    type_name = "hears"
    Settings = HearsSettings
    accepts_media = frozenset({"voice"})

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        assert turn.media is not None
        yield Text(f"heard {len(await turn.media.read())} bytes of {turn.media.kind}")


class HearsPlugin:
    @hookimpl
    def tgmux_backend_types(self) -> list[type[Backend]]:
        return [HearsBackend]


async def test_a_backend_that_takes_voice_keeps_the_audio(tgmux_bot, audio, voice_file) -> None:
    bot = await tgmux_bot(FAST + "plugins: [tgmux.plugins.transcribe]\n"
                          "backends:\n  ears: {type: hears}\ndefault: ears\n"
                          + textwrap.dedent(TRANSCRIBE).replace("BASE_URL", audio.base_url),
                          plugins=[HearsPlugin()])
    reply = await bot.send(user_id=42, voice=str(voice_file))
    assert reply.texts == [f"heard {len(SPOKEN.encode())} bytes of voice"]
    assert audio.requests == []
