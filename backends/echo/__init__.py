"""The ``echo`` backend: answers with the text it got (for tests and the demo)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

from pydantic import Field

from tgmux.backend import Backend, BackendSettings, CommandSpec, ReplyPart, Text, TextDelta, Turn
from tgmux.hooks import hookimpl


class EchoSettings(BackendSettings):
    type: Literal["echo"] = "echo"
    prefix: str = Field("", description="put before every echoed text")
    stream: bool = Field(False, description="send the echo word by word as a streamed reply")


class EchoBackend(Backend):
    type_name = "echo"
    Settings = EchoSettings
    description = "Replies with the text it got (optional prefix)."

    def commands(self) -> list[CommandSpec]:
        return [CommandSpec("shout", "Echo in capitals", usage="<text>")]

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        text = f"{turn.options.prefix}{turn.text}"
        if turn.options.stream:
            words = text.split(" ")
            for i, word in enumerate(words):
                yield TextDelta(word if i == 0 else " " + word)
        yield Text(text)

    async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield Text(f"{turn.options.prefix}{turn.args.upper()}")


@hookimpl
def tgmux_backend_types() -> list[type[Backend]]:
    return [EchoBackend]
