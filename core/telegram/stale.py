"""Messages too old when they arrive (``telegram.catch_up_max_age``): caught up after a long
outage, they are not sent to a backend (an answer to a question of yesterday would surprise
more than help); the user is told, once per chat and outage, that the bot was offline and to
send it again if it still matters."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable

from tgmux.types import ChatIdentity, IncomingMessage, ReplyPart, Text

__all__ = ["OFFLINE_NOTICE", "StaleMessages"]

log = logging.getLogger("tgmux.telegram")

OFFLINE_NOTICE = ("Sorry, I was offline when you sent this, so it was not answered. Please "
                  "send it again if it still matters.")
#: Most chats remembered as told (the oldest are forgotten first).
MAX_TOLD = 10_000
#: Most notices being sent at once (more: that user is not told; logged).
MAX_SENDING = 100

Deliver = Callable[..., Awaitable[list[ReplyPart]]]


async def _one(text: str) -> AsyncIterator[ReplyPart]:
    yield Text(text)


class StaleMessages:
    """Decides whether a message is too old, and tells its user (through ``deliver``, a
    frontend's ``deliver``)."""

    def __init__(self, max_age: float, deliver: Deliver, account: str = "main",
                 on_stale: Callable[[], None] | None = None) -> None:
        self.max_age = max_age
        self.deliver = deliver
        self.account = account
        self.on_stale = on_stale
        self._told: OrderedDict[int, None] = OrderedDict()
        self._sending: set[asyncio.Task[None]] = set()

    def check(self, incoming: IncomingMessage, sent_at: float) -> bool:
        """True when ``incoming`` (sent at unix time ``sent_at``) is too old: it is not to be
        answered, and its user is told (the first time in this chat since it was current)."""
        chat = incoming.chat
        if time.time() - sent_at <= self.max_age:
            self._told.pop(chat.chat_id, None)  # current again: a later outage is told again
            return False
        log.info("%s: chat %s message %s is %.0f s old (telegram.catch_up_max_age %.0f s): "
                 "not answered", self.account, chat.chat_id, chat.message_id,
                 time.time() - sent_at, self.max_age)
        if self.on_stale is not None:
            self.on_stale()
        if chat.chat_id in self._told:
            return True
        self._told[chat.chat_id] = None
        while len(self._told) > MAX_TOLD:
            self._told.popitem(last=False)
        if len(self._sending) >= MAX_SENDING:
            log.warning("%s: chat %s not told that its message was too old: %d notices are "
                        "being sent", self.account, chat.chat_id, MAX_SENDING)
            return True
        task = asyncio.create_task(self._tell(chat), name=f"tgmux-offline-{chat.chat_id}")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)
        return True

    async def _tell(self, chat: ChatIdentity) -> None:
        try:
            await self.deliver(chat, _one(OFFLINE_NOTICE), reply_to_message_id=chat.message_id)
        except Exception as exc:  # the frontend logs what it could not send
            log.warning("%s: chat %s not told that its message was too old: %s",
                        self.account, chat.chat_id, exc)

    async def close(self) -> None:
        """Wait for the notices being sent (a stop)."""
        if self._sending:
            await asyncio.gather(*self._sending, return_exceptions=True)
