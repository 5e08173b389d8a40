"""Small backends for the Telegram tests (registered as a test plugin)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from tgmux.audio import tone_mp3, transcode_to_voice_note
from tgmux.backend import (
    Audio,
    Backend,
    BackendSettings,
    Image,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Turn,
)
from tgmux.hooks import hookimpl

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
#: a real voice note (OGG/Opus, 0.5 s): the frontend sends it as it is
OGG = transcode_to_voice_note(tone_mp3(0.5)).data

#: (backend name, chat id, text) of every turn, in the order turns started / finished
STARTED: list[tuple[str, int, str]] = []
FINISHED: list[tuple[str, int, str]] = []


class Running:
    """Turns of the slow backend running now, and the most that ran at once (``reset()``)."""

    now = most = 0

    @classmethod
    def reset(cls) -> None:
        cls.now = cls.most = 0


def untimed(actions: list[dict]) -> list[dict]:
    """``actions`` without "typing…": it is shown when a reply takes over 0.4 s, as any reply
    can on a loaded machine."""
    return [a for a in actions if a["action"] != "chat_action"]


#: name -> what a slow backend's turn "hold NAME" waits for (:func:`let_go`)
HELD: dict[str, asyncio.Event] = {}


def let_go(name: str) -> None:
    """Ends the wait of the turn "hold ``name``" (now or when it comes)."""
    HELD.setdefault(name, asyncio.Event()).set()


class SlowSettings(BackendSettings):
    type: Literal["slow"] = "slow"
    delay: float = Field(0.2, description="seconds before answering")


class SlowBackend(Backend):
    """Answers "slow: TEXT" after ``delay`` seconds ("wait N" in the text waits N seconds,
    "hold NAME" until :func:`let_go` is called: a wait no loaded machine can cut short)."""

    type_name = "slow"
    Settings = SlowSettings

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        STARTED.append((self.name, turn.chat.chat_id, turn.text))
        delay = turn.options.delay
        if turn.text.startswith("wait "):
            delay = float(turn.text.split()[1])
        Running.now += 1
        Running.most = max(Running.most, Running.now)
        try:
            if turn.text.startswith("hold "):
                await HELD.setdefault(turn.text.split()[1], asyncio.Event()).wait()
            await asyncio.sleep(delay)
        finally:
            Running.now -= 1
        FINISHED.append((self.name, turn.chat.chat_id, turn.text))
        yield Text(f"slow: {turn.text}")


class DripSettings(BackendSettings):
    type: Literal["drip"] = "drip"
    delay: float = Field(0.1, description="seconds between streamed words")
    final: bool = Field(True, description="end with the complete Text")
    error_after: int | None = Field(None, description="yield a Notice after N words, then stop")


class DripBackend(Backend):
    """Streams the text word by word, ``delay`` seconds apart ("repeat N WORDS" repeats)."""

    type_name = "drip"
    Settings = DripSettings

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        text = turn.text
        if text.startswith("repeat "):
            _, count, rest = text.split(" ", 2)
            text = " ".join([rest] * int(count))
        words = text.split(" ")
        for i, word in enumerate(words):
            if turn.options.error_after is not None and i == turn.options.error_after:
                yield Notice("The AI provider is unavailable right now.")
                return
            yield TextDelta(word if i == 0 else " " + word)
            await asyncio.sleep(turn.options.delay)
        if turn.options.final:
            yield Text(text)


class MediaSettings(BackendSettings):
    type: Literal["media"] = "media"


class MediaBackend(Backend):
    """Takes photos and voice (says how many bytes it read; with the caption "sha256", their
    digest); answers commands in the text with media parts; "wait N" waits N seconds first."""

    type_name = "media"
    Settings = MediaSettings
    accepts_media = frozenset({"photo", "voice"})

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        what = turn.text
        if what.startswith("wait "):
            await asyncio.sleep(float(what.split()[1]))
        if turn.media is not None:
            data = await turn.media.read()
            if what == "sha256":
                yield Text(f"got {turn.media.kind} sha256 {hashlib.sha256(data).hexdigest()}")
                return
            yield Text(f"got {turn.media.kind} ({len(data)} bytes) {turn.text}".strip())
            return
        if what == "photo url":
            yield Image(url="https://example.com/cat.jpg", caption="a cat")
        elif what == "photo bytes":
            yield Image(data=PNG, caption="a png")
        elif what == "voice":
            yield Audio(data=OGG, voice=True)
        elif what == "voice url":
            yield Audio(url="https://example.com/hello.ogg", voice=True)
        elif what == "audio url":
            yield Audio(url="https://example.com/song.mp3", caption="a song")
        elif what.startswith("long caption"):
            yield Image(url="https://example.com/cat.jpg", caption="word " * 400)
        elif what == "text and photo":
            yield Text("here it is")
            yield Image(url="https://example.com/cat.jpg")
        else:
            yield Text(f"media: {what}")


@hookimpl
def tgmux_backend_types() -> list[type[Backend]]:
    return [SlowBackend, DripBackend, MediaBackend]
