"""An OpenAI-compatible audio API on 127.0.0.1 for the voice plugins' tests and trials.

``POST /v1/audio/transcriptions`` (multipart ``file``, ``model``): ``{"text": ...}``, the text
:attr:`AudioSimulator.hear` derives from the uploaded bytes (by default: the bytes themselves
when they are UTF-8 text — a test uploads a "voice message" that says what it contains —
else ``(N bytes of audio)``). ``POST /v1/audio/speech`` (JSON ``{model, input, voice,
response_format}``): for ``opus`` a small valid OGG/Opus file (:func:`ogg_opus`: silence,
built by hand, so no FFmpeg is needed), for ``mp3`` a few MPEG frames; ``answer_mp3=True``
answers MP3 whatever was asked (as some servers do); ``speech=BYTES`` answers those OGG bytes
instead (a test's own file, a hostile one). Errors have OpenAI's body
``{"error": {"message", "type", "param", "code"}}``: 401 for a wrong key (when ``api_keys`` is
given), 404 ``model_not_found``, 400 for a missing or wrong field. Every request is in
:attr:`requests` (``request.form()`` reads a multipart one).

Run it alone: ``python -m tgmux.plugins.audio_simulator --port 8095``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import web

from tgmux.simulator import SimulatorServer, run_cli

TRANSCRIPTION_MODELS = ("whisper-1", "gpt-4o-transcribe")
SPEECH_MODELS = ("tts-1", "gpt-4o-mini-tts")
VOICES = ("alloy", "echo", "fable", "onyx", "nova", "shimmer")
#: Bytes of a transcription upload at most (OpenAI's limit).
MAX_UPLOAD_BYTES = 25 * 1024 * 1024

#: ``hear(audio bytes) -> text``: what a transcription answers.
HearFn = Callable[[bytes], str]


def default_hear(audio: bytes) -> str:
    try:
        text = audio.decode("utf-8").strip()
    except UnicodeDecodeError:
        text = ""
    return text if text and text.isprintable() else f"({len(audio)} bytes of audio)"


# -- a valid OGG/Opus file, by hand ------------------------------------------------------------

def _ogg_crc(data: bytes) -> int:
    """The CRC-32 of an Ogg page (polynomial 0x04C11DB7, not reflected: not zlib's)."""
    crc = 0
    for byte in data:
        crc ^= byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
            crc &= 0xFFFFFFFF
    return crc


def _ogg_page(packets: list[bytes], *, granule: int, sequence: int, flags: int,
              serial: int = 0x7467) -> bytes:
    lacing = b""
    for packet in packets:  # each packet here is under 255 bytes or a multiple handled below
        lacing += b"\xff" * (len(packet) // 255) + bytes([len(packet) % 255])
    header = struct.pack("<4sBBqIIIB", b"OggS", 0, flags, granule, serial, sequence, 0,
                         len(lacing)) + lacing
    page = header + b"".join(packets)
    return page[:22] + struct.pack("<I", _ogg_crc(page)) + page[26:]


#: A 20 ms Opus packet of silence (TOC: CELT fullband, 20 ms, mono, one frame).
OPUS_SILENCE = b"\xf8\xff\xfe"
PRE_SKIP = 312


def ogg_opus(seconds: float = 0.2) -> bytes:
    """A valid OGG/Opus file of ``seconds`` of mono silence (RFC 7845: OpusHead, OpusTags, the
    audio packets on one page)."""
    head = struct.pack("<8sBBHIhB", b"OpusHead", 1, 1, PRE_SKIP, 48000, 0, 0)
    vendor = b"tgmux simulator"
    tags = struct.pack("<8sI", b"OpusTags", len(vendor)) + vendor + struct.pack("<I", 0)
    count = max(1, min(250, round(seconds / 0.02)))
    return (_ogg_page([head], granule=0, sequence=0, flags=0x02)
            + _ogg_page([tags], granule=0, sequence=1, flags=0)
            + _ogg_page([OPUS_SILENCE] * count, granule=PRE_SKIP + 960 * count, sequence=2,
                        flags=0x04))


#: Three MPEG-1 Layer III frames of silence (128 kbit/s, 44.1 kHz): what an MP3 server sends.
MP3_FRAMES = (b"\xff\xfb\x90\x64" + bytes(413)) * 3


class AudioSimulator(SimulatorServer):
    name = "openai-audio"

    def __init__(self, *, api_keys: set[str] | None = None, hear: HearFn = default_hear,
                 answer_mp3: bool = False, speech: bytes | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.api_keys = api_keys
        self.hear = hear
        self.answer_mp3 = answer_mp3
        self.speech_bytes = speech  # answered for opus in place of ogg_opus()

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def routes(self, app: web.Application) -> None:
        app.router.add_post("/v1/audio/transcriptions", self.transcriptions)
        app.router.add_post("/v1/audio/speech", self.speech)

    @staticmethod
    def _error(status: int, message: str, *, code: str | None = None,
               param: str | None = None, type: str = "invalid_request_error") -> web.Response:
        return web.json_response({"error": {"message": message, "type": type, "param": param,
                                            "code": code}}, status=status)

    def _refused(self, request: web.Request) -> web.Response | None:
        if self.api_keys is None:
            return None
        auth = request.headers.get("Authorization", "")
        if auth.removeprefix("Bearer ") not in self.api_keys:
            return self._error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    async def transcriptions(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        form = self.requests[-1].form()
        upload, model = form.get("file"), form.get("model")
        if upload is None or upload.filename is None:
            return self._error(400, "A file upload is required.", param="file")
        if model is None:
            return self._error(400, "you must provide a model parameter", param="model")
        if model.text not in TRANSCRIPTION_MODELS:
            return self._error(404, f"The model `{model.text}` does not exist.",
                               code="model_not_found", param="model")
        if not upload.value or len(upload.value) > MAX_UPLOAD_BYTES:
            return self._error(400, "The audio file is empty or too large.", param="file")
        return web.json_response({"text": self.hear(upload.value)})

    async def speech(self, request: web.Request) -> web.Response:
        if (refused := self._refused(request)) is not None:
            return refused
        try:
            body = json.loads(self.requests[-1].body)
        except ValueError:
            return self._error(400, "The body is not JSON.")
        if not isinstance(body, dict):
            return self._error(400, "The body must be a JSON object.")
        for key in ("model", "input", "voice"):
            if not isinstance(body.get(key), str) or not body[key]:
                return self._error(400, f"{key} is required", param=key)
        if body["model"] not in SPEECH_MODELS:
            return self._error(404, f"The model `{body['model']}` does not exist.",
                               code="model_not_found", param="model")
        if body["voice"] not in VOICES or len(body["input"]) > 4096:
            return self._error(400, "Invalid voice or input too long.", param="voice")
        wanted = body.get("response_format", "mp3")
        if wanted not in ("opus", "mp3"):
            return self._error(400, f"response_format {wanted!r} is not simulated",
                               param="response_format")
        if wanted == "mp3" or self.answer_mp3:
            return web.Response(body=MP3_FRAMES, content_type="audio/mpeg")
        speech = ogg_opus() if self.speech_bytes is None else self.speech_bytes
        return web.Response(body=speech, content_type="audio/ogg")


def with_last_granule(ogg: bytes, granule: int) -> bytes:
    """``ogg`` whose last page claims ``granule`` samples, with a CRC to match (so that FFmpeg
    still reads that page): what a hostile TTS or provider could send."""
    last = ogg.rfind(b"OggS")
    page = bytearray(ogg[last:])
    struct.pack_into("<q", page, 6, granule)
    struct.pack_into("<I", page, 22, 0)
    struct.pack_into("<I", page, 22, _ogg_crc(bytes(page)))
    return ogg[:last] + bytes(page)


def _factory(args: Any) -> AudioSimulator:
    return AudioSimulator(host=args.host, port=args.port, latency=args.latency)


if __name__ == "__main__":
    run_cli(_factory, "An OpenAI-compatible audio API (transcriptions, speech) on 127.0.0.1.")
