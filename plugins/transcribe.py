"""Bundled plugin ``tgmux.plugins.transcribe``: a user's voice message becomes its text before
routing, so every backend that takes text takes voice too.

Enable it by listing it, and configure the transcription API as a backend is::

    plugins: [tgmux.plugins.transcribe]
    transcribe:
      base_url: https://api.openai.com/v1
      api_key: ${OPENAI_API_KEY}
      model: whisper-1
      echo_transcript: true      # the user first sees what was heard

A voice message that a backend will answer (and whose backend does not take voice itself) is
sent to ``POST {base_url}/audio/transcriptions`` (multipart: ``file``, ``model``; the answer
``{"text": ...}``); the message then goes on as that text, without its media. When that fails,
the user reads one line (:data:`COULD_NOT_UNDERSTAND`) and nothing else happens with it.

Hooks: ``tgmux_plugin_settings`` (the section), ``tgmux_startup``/``tgmux_shutdown`` (the
client), ``tgmux_incoming`` (the rewrite; the voice's bytes fetched then, with
``await message.media.read()``).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING, Any

from pydantic import Field

from tgmux.errors import BackendError, BadRequestError, ProtocolError
from tgmux.hooks import hookimpl
from tgmux.http import HttpClient
from tgmux.types import IncomingMessage, MediaUnavailable, Notice

from .audio_api import AudioApiSettings, EngineClients, make_client

if TYPE_CHECKING:
    from tgmux.engine import Engine

log = logging.getLogger("tgmux.plugins.transcribe")

SECTION = "transcribe"
COULD_NOT_UNDERSTAND = "I could not understand the voice message. Please try again, or type it."
#: The largest upload OpenAI's transcription endpoint takes.
MAX_VOICE_BYTES = 25 * 1024 * 1024
#: One transcription request, upload to answer (an hour of speech takes Whisper a while).
TIMEOUT = 120.0
#: What is read of an answer at most: a transcript is text.
MAX_ANSWER_BYTES = 1024 * 1024
#: What the echo shows before the transcript.
ECHO_PREFIX = "🎤 "


class TranscribeSettings(AudioApiSettings):
    """``transcribe:``."""

    echo_transcript: bool = Field(False, description="send the user what was heard before "
                                  "the answer")


_clients = EngineClients()


@hookimpl
def tgmux_plugin_settings() -> dict[str, type[TranscribeSettings]]:
    return {SECTION: TranscribeSettings}


@hookimpl
def tgmux_startup(engine: Engine) -> None:
    settings = engine.config.plugin_section(SECTION, TranscribeSettings)
    _clients.open(engine, make_client(settings, name="transcribe", timeout=TIMEOUT,
                                      max_response_bytes=MAX_ANSWER_BYTES))


@hookimpl
async def tgmux_shutdown(engine: Engine) -> None:
    await _clients.close(engine)


def _is_voice(message: IncomingMessage) -> bool:
    return message.media is not None and message.media.kind == "voice"


async def voice_bytes(message: IncomingMessage, engine: Engine) -> bytes | None:
    """The voice message's audio, fetched now (:meth:`tgmux.types.Media.read`; None when it
    cannot be had: the reason is logged)."""
    assert message.media is not None
    try:
        return await message.media.read()
    except MediaUnavailable as exc:
        log.warning("chat %s: the voice message could not be fetched: %s",
                    message.chat.chat_id, exc)
        return None


@hookimpl
async def tgmux_incoming(message: IncomingMessage, engine: Engine) -> IncomingMessage | None:
    if not _is_voice(message):
        return None
    backend = await engine.backend_for(message)
    if backend is None or "voice" in backend.accepts_media:
        return None  # nobody will answer it, or its backend hears voice itself
    client = _clients.get(engine)
    assert client is not None, "tgmux_startup made the client"
    chat = message.chat
    try:
        audio = await voice_bytes(message, engine)
        if not audio:
            raise BadRequestError(f"transcribe: chat {chat.chat_id}: the voice message's audio "
                                  "could not be fetched (too large, or the download failed)")
        if len(audio) > MAX_VOICE_BYTES:
            raise BadRequestError(f"transcribe: a voice message of {len(audio)} bytes is over "
                                  f"the {MAX_VOICE_BYTES} bytes the API takes")
        settings = engine.config.plugin_section(SECTION, TranscribeSettings)
        mime = message.media.mime_type if message.media and message.media.mime_type else \
            "audio/ogg"
        heard = await transcribe(client, settings.model, audio, mime)
    except BackendError as exc:
        exc.user_message = COULD_NOT_UNDERSTAND
        raise
    log.info("chat %s message %s: voice transcribed (%d characters)", chat.chat_id,
             chat.message_id, len(heard))
    if settings.echo_transcript:
        await engine.reply_to(message, [Notice(ECHO_PREFIX + heard)])
    caption = message.text.strip()
    return dataclasses.replace(message, text=f"{caption}\n\n{heard}" if caption else heard,
                               media=None)


async def transcribe(client: HttpClient, model: str, audio: bytes,
                     mime_type: str = "audio/ogg") -> str:
    """``POST audio/transcriptions``: the text heard in ``audio`` (a BackendError when the
    server fails, answers something else than ``{"text": ...}``, or heard nothing)."""
    answer: Any = await client.request_json(
        "POST", "audio/transcriptions", files={"file": ("voice.ogg", audio, mime_type)},
        form={"model": model})
    text = answer.get("text") if isinstance(answer, dict) else None
    if not isinstance(text, str):
        raise ProtocolError("transcribe: POST audio/transcriptions answered no text",
                            provider_message=str(answer)[:200])
    text = text.strip()
    if not text:
        raise BadRequestError("transcribe: no speech was heard in the voice message")
    return text
