"""One reply to one chat: where its messages go, what was sent, whether the chat is reachable.

A text goes with its formatting as entities (:mod:`tgmux.telegram.entities`); should Telegram
refuse them (the sender's :class:`~tgmux.telegram.sender.FormattingRefused`, logged once), the
same text goes again once without them: a reply is never lost to formatting."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pyrogram import Client, enums, raw, types, utils

from tgmux.backend import ChatIdentity
from tgmux.formatting import Formatted
from tgmux.telegram.entities import as_formatted, to_pyrogram
from tgmux.telegram.normalize import RecentIds
from tgmux.telegram.sender import FormattingRefused, ReplyGone, Sender

__all__ = ["Outbox", "topic_of", "with_plain_fallback"]

T = TypeVar("T")
Entities = list[types.MessageEntity] | None


def topic_of(chat: ChatIdentity) -> int | None:
    """The topic a reply to ``chat`` goes to (its messages, typing and drafts), if any: a
    forum's, or (Bot API 9.3) a private chat's in threaded mode (:attr:`ChatIdentity.topic`)."""
    return chat.topic


async def with_plain_fallback(shown: Formatted,
                              send: Callable[[Entities], Awaitable[T]]) -> T:
    """``send(entities)`` with ``shown``'s formatting; when Telegram refuses the formatting,
    ``send(None)`` once: the same text, plain."""
    try:
        return await send(to_pyrogram(shown.entities))
    except FormattingRefused:
        return await send(None)


class Outbox:
    """One reply to one chat: the first message quotes the message it answers (in groups),
    every message goes to its topic (a forum's, or a private chat's); ``dead`` once nothing
    more can reach the chat."""

    def __init__(self, client: Client, sender: Sender, sent_ids: RecentIds, chat: ChatIdentity,
                 reply_to: int | None, *, link_previews: bool = False) -> None:
        self.client = client
        self.sender = sender
        self.sent_ids = sent_ids
        self.chat = chat
        # In groups the first message of a reply quotes the message it answers.
        self.reply_to = reply_to if chat.chat_type in ("group", "supergroup") else None
        self.thread = topic_of(chat)
        self.dead = False
        # Telegram builds a preview of a text's first link, again on every edit: a streamed
        # reply would rebuild it on each update. None: Telegram's default (a preview).
        self.link_preview: types.LinkPreviewOptions | None = (
            None if link_previews else types.LinkPreviewOptions(is_disabled=True))

    def _reply_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.thread is not None:
            kwargs["message_thread_id"] = self.thread
        if self.reply_to is not None:
            kwargs["reply_parameters"] = types.ReplyParameters(message_id=self.reply_to)
        return kwargs

    async def send(self, what: str, call: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        """Send one message (the first one quotes ``reply_to``); returns Pyrogram's Message."""
        sender = self.sender
        chat_id = self.chat.chat_id
        try:
            result = await sender.call(chat_id, what, lambda: call(self._reply_kwargs()),
                                       replying=self.reply_to is not None)
        except ReplyGone:
            self.reply_to = None
            result = await sender.call(chat_id, what, lambda: call(self._reply_kwargs()))
        self.reply_to = None
        message_id = getattr(result, "id", None)
        if message_id is not None:
            self.sent_ids.add(chat_id, message_id)
        return result

    async def send_text(self, text: str | Formatted) -> int | None:
        """Send a message (a str: plain text); its id (None: Telegram gave none)."""
        client = self.client
        shown = as_formatted(text)

        async def send(entities: Entities) -> Any:
            return await self.send("send_message", lambda kw: client.send_message(
                self.chat.chat_id, shown.text, parse_mode=enums.ParseMode.DISABLED,
                entities=entities, link_preview_options=self.link_preview, **kw))

        return getattr(await with_plain_fallback(shown, send), "id", None)

    async def edit_text(self, message_id: int, text: str | Formatted) -> None:
        client = self.client
        shown = as_formatted(text)

        async def edit(entities: Entities) -> Any:
            async def request() -> Any:
                # The raw request: kurigram's edit_message_text (2.2.x) drops ``entities``.
                written = await utils.parse_text_entities(client, shown.text,
                                                          enums.ParseMode.DISABLED, entities)
                return await client.invoke(raw.functions.messages.EditMessage(
                    peer=await client.resolve_peer(self.chat.chat_id), id=message_id,
                    no_webpage=self.link_preview.is_disabled if self.link_preview else None,
                    message=written["message"], entities=written["entities"] or None))

            return await self.sender.call(
                self.chat.chat_id, "edit_message", request,
                idempotent=True)  # the same text again: MESSAGE_NOT_MODIFIED at worst

        await with_plain_fallback(shown, edit)

    async def draft(self, draft_id: int, text: str | Formatted) -> None:
        """Show a message draft (bots, private chats); raises as the sender does."""
        client = self.client
        shown = as_formatted(text)

        async def draft(entities: Entities) -> Any:
            return await self.sender.call(
                self.chat.chat_id, "send_draft",
                lambda: client.send_message_draft(
                    self.chat.chat_id, draft_id, shown.text, message_thread_id=self.thread,
                    parse_mode=enums.ParseMode.DISABLED, entities=entities),
                idempotent=True,  # same draft id: shown once
                draft=True, wait_floods=False)  # a later draft replaces this one anyway

        await with_plain_fallback(shown, draft)

    async def delete(self, message_ids: list[int]) -> None:
        client = self.client
        await self.sender.call(
            self.chat.chat_id, "delete_message",
            lambda: client.delete_messages(self.chat.chat_id, message_ids), idempotent=True)
