"""Bundled plugin: deliver provider events (webhooks, pushes) that name a chat to that chat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tgmux.hooks import hookimpl
from tgmux.types import ProviderEvent, Text

if TYPE_CHECKING:
    from tgmux.engine import Engine


@hookimpl(trylast=True)
async def tgmux_provider_event(event: ProviderEvent, engine: Engine) -> None:
    if event.chat_id is not None and event.text:
        await engine.deliver(event.chat_id, [Text(event.text)])
