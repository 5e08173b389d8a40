"""Drive the engine without Telegram: a frontend that records what it delivers.

Used by tgmux's own tests and by plugin authors::

    async with EngineHarness.from_yaml(config_text) as h:
        parts = await h.say("hello", user_id=42)
        assert parts == [Text("echo: hello")]
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from tgmux.backend import ChatIdentity, ChatType, Media, ReplyPart
from tgmux.bootstrap import load_text
from tgmux.config import Config
from tgmux.engine import Engine
from tgmux.hooks import PluginManager, build_plugin_manager
from tgmux.store import Store, open_store
from tgmux.types import IncomingMessage


class CaptureFrontend:
    """Delivers by recording: ``delivered`` holds (chat_id, part) in order."""

    def __init__(self) -> None:
        self.delivered: list[tuple[int, ReplyPart]] = []
        self.by_message: dict[tuple[int, int | None], list[ReplyPart]] = defaultdict(list)

    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        sent = []
        async for part in parts:
            self.delivered.append((chat.chat_id, part))
            self.by_message[(chat.chat_id, reply_to_message_id)].append(part)
            sent.append(part)
        return sent


class EngineHarness:
    def __init__(self, config: Config, *, store: Store | None = None,
                 plugin_manager: PluginManager | None = None) -> None:
        self.config = config
        self.frontend = CaptureFrontend()
        self.pm = plugin_manager or build_plugin_manager(config.data.plugins)
        self.store = store or open_store(config.data.store.url)
        self.engine = Engine(config, self.pm, self.store, self.frontend)
        self._ids: dict[int, itertools.count[int]] = defaultdict(lambda: itertools.count(1))

    @classmethod
    def from_yaml(cls, text: str, *, store: str | None = None, env: dict[str, str] | None = None,
                  plugins: list[Any] = ()) -> EngineHarness:
        """``store`` overrides the config's (default for tests: ``memory://``); ``plugins``
        are extra plugin objects to register (modules or instances with hookimpls)."""
        config, pm = load_text(text, source="<test config>", env=env, plugins=plugins)
        url = store or "memory://"
        return cls(config, store=open_store(url), plugin_manager=pm)

    @property
    def delivered(self) -> list[tuple[int, ReplyPart]]:
        return self.frontend.delivered

    async def __aenter__(self) -> EngineHarness:
        await self.engine.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.engine.stop()

    def message(self, text: str = "", *, user_id: int = 1, chat_id: int | None = None,
                chat_type: ChatType = "private", username: str | None = None,
                message_id: int | None = None, thread_id: int | None = None,
                addressed: bool = True, media: Media | None = None,
                account: str = "main", chat_title: str | None = None) -> IncomingMessage:
        chat_id = user_id if chat_id is None else chat_id
        if message_id is None:
            # one count per chat id across accounts: `by_message` keys stay unique
            message_id = next(self._ids[chat_id])
        return IncomingMessage(
            chat=ChatIdentity(chat_type=chat_type, chat_id=chat_id, user_id=user_id,
                              username=username, message_id=message_id,
                              message_thread_id=thread_id, account=account,
                              chat_title=chat_title),
            text=text, media=media, addressed=addressed,
        )

    async def submit(self, text: str = "", **kwargs: Any) -> Any:
        """Queue a message without waiting; returns (message, future)."""
        message = self.message(text, **kwargs)
        return message, await self.engine.submit(message)

    async def say(self, text: str = "", **kwargs: Any) -> list[ReplyPart]:
        """Send a message and return what was delivered in answer to it."""
        message, done = await self.submit(text, **kwargs)
        await done
        return list(self.frontend.by_message[(message.chat.chat_id, message.chat.message_id)])
