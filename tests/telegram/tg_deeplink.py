"""A backend with its own /start and a plugin that reads deep-link payloads (test plugin for
tests/telegram/test_telegram_deep_links.py)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import Any, Literal

from tgmux.backend import Backend, BackendSettings, CommandSpec, ReplyPart, Text, Turn
from tgmux.hooks import hookimpl
from tgmux.types import IncomingMessage


class StarterSettings(BackendSettings):
    type: Literal["starter"] = "starter"


class StarterBackend(Backend):
    """Declares ``/start``: says what its turn carried."""

    type_name = "starter"
    Settings = StarterSettings

    def commands(self) -> list[CommandSpec]:
        return [CommandSpec("start", "Start talking")]

    async def run_command(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield Text(f"command={turn.command} args={turn.args!r} text={turn.text!r}")

    async def reply(self, turn: Turn) -> AsyncIterator[ReplyPart]:
        yield Text(f"starter: {turn.text}")


@hookimpl
def tgmux_backend_types() -> list[type[Backend]]:
    return [StarterBackend]


@hookimpl
def tgmux_pre_route(message: IncomingMessage, engine: Any, triggered: bool) -> None:
    if message.start_payload is not None:  # a referral plugin would keep it
        print(f"plugin: start payload {message.start_payload!r} from user "
              f"{message.chat.user_id}", file=sys.stderr, flush=True)
