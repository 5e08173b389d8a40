"""Audio made into a Telegram voice note: OGG/Opus bytes and their duration.

Telegram shows a message as a voice note (a waveform and a play button, not an audio player)
only when the file is OGG/Opus and is sent as a voice message with its duration. Providers
answer with other formats (BambiSleep with MP3), so :func:`to_voice_note` transcodes: decode
whatever FFmpeg reads, resample to 48 kHz mono (what Opus runs at; mono is what a voice note
is), encode with ``libopus`` into an ``ogg`` container. Audio that already is OGG/Opus is kept
as it is; only its duration is read (from the last Ogg page, without PyAV) — when that page
says a believable one within the caps; else it is transcoded like any other audio.

Transcoding uses PyAV (``pip install 'tgmux[voice]'``: its wheels carry FFmpeg's libraries, no
system ffmpeg is needed). It is imported only when a transcode runs (``tgmux --version`` never
loads it), and it runs off the event loop on a small thread pool of its own, so that a burst of
voice replies neither blocks the loop nor takes every core. Both inputs are bounded: at most
``max_bytes`` of input, at most ``max_seconds`` of decoded audio. A transcode that cannot be
done — too big, too long, not audio, no PyAV — returns None with one log line that says why;
the caller then sends the audio as it was (the Telegram frontend: as an audio file).

Backends and plugins may import this module (as they do :mod:`tgmux.http`); the Telegram
frontend calls it for every ``Audio(voice=True)`` part with bytes, so a backend only says
``voice=True`` and hands over whatever bytes its provider gave.

:func:`tone_mp3` makes a small real MP3 (a sine tone) for simulators, tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import io
import logging
import math
import struct
from array import array
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_SECONDS",
    "VoiceNote",
    "is_ogg_opus",
    "ogg_opus_seconds",
    "pyav_available",
    "to_voice_note",
    "tone_mp3",
    "transcode_to_voice_note",
]

log = logging.getLogger("tgmux.audio")

#: Input bytes transcoded at most (20 MiB: about 20 minutes of 128 kbit/s MP3).
DEFAULT_MAX_BYTES = 20 * 1024 * 1024
#: Seconds of audio transcoded at most (longer is sent as an audio file instead).
DEFAULT_MAX_SECONDS = 15 * 60.0

OPUS_RATE = 48_000  # Opus always runs at 48 kHz; Ogg/Opus granule positions count at 48 kHz
OPUS_FRAME = 960  # 20 ms at 48 kHz: the frame size libopus encodes by default
VOICE_BIT_RATE = 32_000  # plenty for speech in mono (Telegram's own voice notes are ~32 kbit/s)
_OGG_PAGE = "<4sBBqIIIB"  # an Ogg page's fixed header: "OggS", version, flags, granule, ...
_OGG_HEADER = struct.calcsize(_OGG_PAGE)  # 27 bytes, then the segment table
#: An Opus packet lasts at most 120 ms (5760 samples) and takes at least two bytes (a TOC byte
#: and a lacing byte): no more samples than this per byte of the file are believable.
_MAX_SAMPLES_PER_BYTE = 5760 // 2

_MAX_WORKERS = 2  # the machines tgmux runs on are small; a transcode is CPU work
_executor: ThreadPoolExecutor | None = None
_missing_logged = False


@dataclass(frozen=True)
class VoiceNote:
    """OGG/Opus bytes and their duration in seconds (Telegram wants whole seconds:
    :attr:`whole_seconds`)."""

    data: bytes
    seconds: float

    @property
    def whole_seconds(self) -> int:
        """The duration for Telegram's ``duration``: rounded up, at least 1."""
        return max(1, math.ceil(self.seconds - 1e-6))


class _Refused(Exception):
    """A transcode given up on purpose (a cap); the message is the log line's reason."""


def is_ogg_opus(data: bytes) -> bool:
    """True when ``data`` starts as an Ogg stream whose first packet is an Opus header."""
    # The first page: 27 bytes of header, a segment table, then the packet ("OpusHead...").
    return data[:4] == b"OggS" and b"OpusHead" in data[26:64]


def ogg_opus_seconds(data: bytes, max_seconds: float = DEFAULT_MAX_SECONDS) -> float | None:
    """The duration of OGG/Opus bytes from the last page's granule position, less the
    pre-skip (RFC 7845); None when the bytes do not say it believably: the last page is not a
    whole page ending the data, its granule is below the pre-skip, over ``max_seconds``, or more
    than the bytes can hold (an Opus packet is at least a byte and its lacing byte, and at most
    120 ms) — a header is the sender's claim, and Telegram takes a duration of 31 bits only."""
    head = data.find(b"OpusHead", 0, 64)
    last = data.rfind(b"OggS")
    if head < 0 or last < 0 or len(data) < last + _OGG_HEADER or len(data) < head + 12:
        return None
    _, version, _, granule, _, _, _, segments = struct.unpack_from(_OGG_PAGE, data, last)
    lacing = data[last + _OGG_HEADER:last + _OGG_HEADER + segments]
    if version != 0 or len(lacing) != segments or \
            last + _OGG_HEADER + segments + sum(lacing) != len(data):
        return None  # "OggS" inside a packet, or bytes after the last page: not a page
    (pre_skip,) = struct.unpack_from("<H", data, head + 10)
    samples = granule - pre_skip
    if samples <= 0 or samples > len(data) * _MAX_SAMPLES_PER_BYTE:
        return None
    seconds = samples / OPUS_RATE
    return seconds if seconds <= max_seconds else None


def pyav_available() -> bool:
    """Whether PyAV can be imported (the ``voice`` extra is installed)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


async def to_voice_note(data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES,
                        max_seconds: float = DEFAULT_MAX_SECONDS,
                        name: str = "audio") -> VoiceNote | None:
    """``data`` (any audio FFmpeg reads) as a voice note, or None (logged) when it cannot be
    made: more than ``max_bytes``, more than ``max_seconds`` of audio, not decodable, or
    PyAV not installed. ``name`` says in the log whose audio it was."""
    if is_ogg_opus(data):
        # kept as it is when its header says a believable duration within the cap; else it is
        # transcoded like any other audio, which counts the samples it decodes
        seconds = ogg_opus_seconds(data, max_seconds)
        if seconds is not None:
            return VoiceNote(data, seconds)
    if len(data) > max_bytes:
        log.warning("%s: audio of %d bytes is over the voice note cap of %d bytes; sent as an "
                    "audio file", name, len(data), max_bytes)
        return None
    if not pyav_available():
        _log_missing_pyav()
        return None
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(_pool(), transcode_to_voice_note, data, max_seconds)
    except _Refused as exc:
        log.warning("%s: %s; sent as an audio file", name, exc)
    except Exception as exc:  # FFmpeg's errors (av.error.*) and anything odd in the input
        log.warning("%s: could not transcode audio to a voice note (%s: %s); sent as an audio "
                    "file", name, type(exc).__name__, exc)
    return None


def transcode_to_voice_note(data: bytes, max_seconds: float = DEFAULT_MAX_SECONDS) -> VoiceNote:
    """The blocking transcode (PyAV): ``data`` decoded, resampled to 48 kHz mono, encoded with
    libopus into Ogg. Raises on input FFmpeg cannot read, on no audio, and (``_Refused``) past
    ``max_seconds`` of decoded audio — counted while decoding, so a long input costs at most
    ``max_seconds`` of work whatever its header claims."""
    import av

    out = io.BytesIO()
    samples = 0
    limit = int(max_seconds * OPUS_RATE)
    with av.open(io.BytesIO(data), "r") as source:
        if not source.streams.audio:
            raise ValueError("no audio stream")
        audio_in = source.streams.audio[0]
        with av.open(out, "w", format="ogg") as target:
            audio_out: Any = target.add_stream("libopus", rate=OPUS_RATE, layout="mono")
            audio_out.bit_rate = VOICE_BIT_RATE
            # libopus takes whole 20 ms frames: the resampler cuts them
            resampler = av.AudioResampler(format=audio_out.codec_context.format.name,
                                          layout="mono", rate=OPUS_RATE, frame_size=OPUS_FRAME)

            def encode(frames: list[Any]) -> None:
                nonlocal samples
                for frame in frames:
                    samples += frame.samples
                    if samples > limit:
                        raise _Refused(f"audio is longer than the voice note cap of "
                                       f"{max_seconds:g} s")
                    target.mux(audio_out.encode(frame))

            for frame in source.decode(audio_in):
                encode(resampler.resample(frame))
            encode(resampler.resample(None))
            target.mux(audio_out.encode(None))
    if samples == 0:
        raise ValueError("no audio decoded")
    return VoiceNote(out.getvalue(), samples / OPUS_RATE)


def tone_mp3(seconds: float = 1.0, *, rate: int = 44_100, frequency: float = 440.0) -> bytes:
    """A real MP3 of a sine tone, mono (PyAV's ``libmp3lame``): what simulators serve and
    tests and benchmarks transcode, made on the spot rather than kept as a binary file."""
    import av

    out = io.BytesIO()
    total = int(seconds * rate)
    step = 2 * math.pi * frequency / rate
    with av.open(out, "w", format="mp3") as target:
        stream: Any = target.add_stream("libmp3lame", rate=rate, layout="mono")
        chunk = 1152  # one MP3 frame of samples
        for start in range(0, total, chunk):
            count = min(chunk, total - start)
            tone = array("h", (int(8000 * math.sin(step * i))
                               for i in range(start, start + count)))
            frame = av.AudioFrame(format="s16p", layout="mono", samples=count)
            frame.planes[0].update(tone.tobytes())
            frame.sample_rate = rate
            frame.pts = start
            target.mux(stream.encode(frame))
        target.mux(stream.encode(None))
    return out.getvalue()


def _pool() -> ThreadPoolExecutor:
    global _executor
    if _executor is None:
        _executor = ThreadPoolExecutor(max_workers=_MAX_WORKERS, thread_name_prefix="tgmux-audio")
    return _executor


def _log_missing_pyav() -> None:
    global _missing_logged
    if not _missing_logged:
        _missing_logged = True
        log.warning("PyAV is not installed (pip install 'tgmux[voice]'): voice replies are sent "
                    "as audio files, not transcoded to voice notes")
