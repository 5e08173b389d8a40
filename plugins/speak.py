"""Bundled plugin ``tgmux.plugins.speak``: replies also (or only) as voice notes, spoken by an
OpenAI-compatible ``POST {base_url}/audio/speech``.

Enable it by listing it; name the backends whose replies are spoken (none named: every
backend's)::

    plugins: [tgmux.plugins.speak]
    speak:
      base_url: https://api.openai.com/v1
      api_key: ${OPENAI_API_KEY}
      model: tts-1
      voice: alloy
      mode: also                 # also: text and voice; only: the voice note alone
      backends: [lucy]

Per backend, not per route: a route that should speak picks a backend listed here (define a
second backend of the same type for it when the other routes should not speak).

Each final text of a listed backend's reply becomes ``{model, input, voice,
response_format: "opus"}``; OpenAI answers OGG/Opus, which Telegram shows as a voice note
(``Audio(voice=True)``). A server that answers another format anyway (MP3) is sent as an
audio file. When speaking fails, the reply goes out as text and the failure is logged; with
``mode: only``, so does a voice note Telegram would not take.

Hooks: ``tgmux_plugin_settings``, ``tgmux_startup``/``tgmux_shutdown`` (the client; the
backend names are checked at startup), ``tgmux_after_backend`` (the voice part).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from tgmux.errors import BackendError, ConfigError, ProtocolError
from tgmux.hooks import hookimpl
from tgmux.http import HttpClient
from tgmux.types import Audio, ReplyPart, Text

from .audio_api import AudioApiSettings, EngineClients, make_client

if TYPE_CHECKING:
    from tgmux.backend import Turn
    from tgmux.engine import Engine

log = logging.getLogger("tgmux.plugins.speak")

SECTION = "speak"
#: The longest text OpenAI's speech endpoint takes; longer replies stay text only.
MAX_INPUT_CHARS = 4096
TIMEOUT = 60.0
#: A voice note of a 4096-character reply is a few MB of Opus.
MAX_AUDIO_BYTES = 20 * 1024 * 1024


class SpeakSettings(AudioApiSettings):
    """``speak:``."""

    model: str = Field("tts-1", min_length=1, description="the speech model id")
    voice: str = Field("alloy", min_length=1, description="the voice the server knows")
    mode: Literal["also", "only"] = Field("also", description="also: the text and a voice "
                                          "note; only: the voice note in place of the text")
    backends: list[str] = Field(default_factory=list, description="backends whose replies "
                                "are spoken (empty: every backend's)")


_clients = EngineClients()


@hookimpl
def tgmux_plugin_settings() -> dict[str, type[SpeakSettings]]:
    return {SECTION: SpeakSettings}


@hookimpl
def tgmux_startup(engine: Engine) -> None:
    config = engine.config
    settings = config.plugin_section(SECTION, SpeakSettings)
    unknown = [f"{config.where((SECTION, 'backends', i))}: unknown backend {name!r} "
               f"(defined: {', '.join(sorted(config.backend_settings))})"
               for i, name in enumerate(settings.backends) if name not in config.backend_settings]
    if unknown:
        raise ConfigError(unknown)
    _clients.open(engine, make_client(settings, name="speak", timeout=TIMEOUT,
                                      max_response_bytes=MAX_AUDIO_BYTES))


@hookimpl
async def tgmux_shutdown(engine: Engine) -> None:
    await _clients.close(engine)


@hookimpl
async def tgmux_after_backend(turn: Turn, part: ReplyPart,
                              engine: Engine) -> list[ReplyPart] | None:
    if not isinstance(part, Text) or turn.command is not None:
        return None
    settings = engine.config.plugin_section(SECTION, SpeakSettings)
    text = part.text.strip()
    if (settings.backends and turn.backend_name not in settings.backends) or not text:
        return None
    if len(text) > MAX_INPUT_CHARS:
        log.info("chat %s: a reply of %d characters is too long to speak; sent as text",
                 turn.chat.chat_id, len(text))
        return None
    client = _clients.get(engine)
    assert client is not None, "tgmux_startup made the client"
    try:
        audio = await speak(client, settings, text)
    except BackendError as exc:  # the reply still reaches the chat, as text
        log.warning("chat %s: the reply could not be spoken: %s", turn.chat.chat_id,
                    exc.log_text())
        return None
    if settings.mode == "also":
        return [part, audio]
    # the voice note alone; should it not get through, the user reads the text after all
    return [dataclasses.replace(audio, text=part.text)]


async def speak(client: HttpClient, settings: SpeakSettings, text: str) -> Audio:
    """``POST audio/speech``: ``text`` as a voice note (OGG/Opus), or as an audio file when
    the server answered another format."""
    response = await client.request("POST", "audio/speech", json={
        "model": settings.model, "input": text, "voice": settings.voice,
        "response_format": "opus"})
    data = response.content
    if not data:
        raise ProtocolError("speak: POST audio/speech answered no audio")
    if data.startswith(b"OggS"):
        return Audio(data=data, voice=True, mime_type="audio/ogg", filename="reply.ogg")
    mime = response.headers.get("Content-Type", "audio/mpeg").split(";")[0].strip()
    return Audio(data=data, voice=False, mime_type=mime,
                 filename="reply.mp3" if mime == "audio/mpeg" else None)
