"""The ``echo`` backend: answers with the text it got (for tests and the demo).

With ``stream: true`` it streams the echo word by word, ``delay`` seconds apart, so that a
frontend shows it growing (drafts, edits) as it would an AI's. The default ``delay`` is 0 (all
words at once, as before ``delay`` existed: a stream that fast is shown once, without drafts or
edits); a frontend that updates once a second needs a long text and a ``delay`` of a few tenths
of a second to show several updates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from tgmux.backend import Backend, BackendSettings, CommandSpec, ReplyPart, Text, TextDelta, Turn
from tgmux.hooks import hookimpl


class EchoSettings(BackendSettings):
    type: Literal["echo"] = "echo"
    prefix: str = Field("", description="put before every echoed text")
    stream: bool = Field(False, description="send the echo word by word as a streamed reply")
    delay: float = Field(
        0.0, ge=0, le=60, description="with stream: seconds between words (0: all at once; "
        "e.g. 0.3 to watch a long echo grow in Telegram)"
    )


class EchoBackend(Backend):
    type_name = "echo"
    Settings = EchoSettings
    description = "Replies with the text it got (optional prefix)."

    def commands(self) -> list[CommandSpec]:
        return [CommandSpec("shout", "Echo in capitals", usage="<text>")]

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        text = f"{turn.options.prefix}{turn.text}"
        if turn.options.stream:
            delay = turn.options.delay
            words = text.split(" ")
            for i, word in enumerate(words):
                if i and delay:
                    await asyncio.sleep(delay)
                yield TextDelta(word if i == 0 else " " + word)
        yield Text(text)

    async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield Text(f"{turn.options.prefix}{turn.args.upper()}")


@hookimpl
def tgmux_backend_types() -> list[type[Backend]]:
    return [EchoBackend]
