"""From a Pyrogram message to the engine's :class:`~tgmux.types.IncomingMessage`.

The frontend's job, not the engine's:

- ``chat_type`` from Pyrogram's ``ChatType`` (forums are supergroups, bots' chats private);
- ``@ourname`` is stripped from the text and sets ``addressed``; so does a reply to one of our
  messages (Telegram's ``mentioned`` flag covers both) — private chats are always addressed;
- ``/cmd@ourname args`` becomes ``/cmd args``; ``/cmd@otherbot`` is not ours: ignored;
- ``message_thread_id`` is set for messages in topics (forums', and private chats' in
  threaded mode);
- the user's formatting becomes ``entities`` (Bot API names, UTF-16 offsets into the text as
  the engine gets it, after the stripping above); a reply to another message (the user's or
  ours; not a topic's root) becomes ``reply_to`` (its text, author, the quoted part);
- non-text messages carry a :class:`~tgmux.backend.Media` with a :class:`~tgmux.types.MediaRef`
  (the file id, the message): no bytes; a backend that reads them has them fetched then
  (:mod:`tgmux.telegram.media`), also after a restart.

Ignored outright: our own messages, service messages, messages from other bots (no bot loops),
chat types tgmux does not serve (channel direct-message topics), and whatever Telegram's own
accounts say (777000 sends user accounts their login codes: a code handed to a provider or
written back into a chat is a leak, and Telegram blocks a login whose code was shared) — logged
once at INFO, without the text.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from pyrogram import Client, enums
from pyrogram.types import Message, User

from tgmux.backend import ChatIdentity, ChatType, Media
from tgmux.telegram.textsplit import utf16_len
from tgmux.types import Entity, IncomingMessage, MediaFetcher, MediaRef, RepliedTo

__all__ = ["REPLY_FETCH_TIMEOUT", "SERVICE_USER_ID", "RecentIds", "is_reply", "media_object",
           "normalize", "replied_to", "with_replied_to"]

log = logging.getLogger("tgmux.telegram")

#: the longest the replied-to message of a reply is waited for (seconds)
REPLY_FETCH_TIMEOUT = 5.0
#: Telegram's service notifications account (login codes, security notices)
SERVICE_USER_ID = 777000

_CHAT_TYPES: dict[Any, ChatType] = {
    enums.ChatType.PRIVATE: "private",
    enums.ChatType.BOT: "private",
    enums.ChatType.GROUP: "group",
    enums.ChatType.SUPERGROUP: "supergroup",
    enums.ChatType.FORUM: "supergroup",
    enums.ChatType.CHANNEL: "channel",
}

_MEDIA_KINDS = {
    enums.MessageMediaType.PHOTO: "photo",
    enums.MessageMediaType.LIVE_PHOTO: "photo",
    enums.MessageMediaType.VOICE: "voice",
    enums.MessageMediaType.AUDIO: "audio",
    enums.MessageMediaType.STICKER: "sticker",
    enums.MessageMediaType.DOCUMENT: "document",
    enums.MessageMediaType.VIDEO: "video",
    enums.MessageMediaType.VIDEO_NOTE: "video",
    enums.MessageMediaType.ANIMATION: "video",
}

_COMMAND = re.compile(r"^/([A-Za-z0-9_]{1,64})(?:@([A-Za-z0-9_]+))?(?=\s|$)")


class RecentIds:
    """The last few message ids we sent, per chat (to recognize replies to us)."""

    def __init__(self, per_chat: int = 256, chats: int = 10_000) -> None:
        self.per_chat = per_chat
        self.chats = chats
        self._ids: OrderedDict[int, deque[int]] = OrderedDict()

    def add(self, chat_id: int, message_id: int) -> None:
        ids = self._ids.get(chat_id)
        if ids is None:
            ids = self._ids[chat_id] = deque(maxlen=self.per_chat)
            if len(self._ids) > self.chats:
                self._ids.popitem(last=False)
        else:
            self._ids.move_to_end(chat_id)
        ids.append(message_id)

    def __contains__(self, key: tuple[int, int]) -> bool:
        chat_id, message_id = key
        return message_id in self._ids.get(chat_id, ())


def _strip_mentions(text: str, username: str) -> tuple[str, bool]:
    """"@bot, hi" → "hi"; "hey @bot, hi" → "hey, hi".

    Linear in the text: it runs on every group message before access is decided. A pattern
    starting with ``[ \t]*`` would be tried at every blank of a run and rescan the run each time
    (quadratic: 4 096 spaces took 0.4 s), so the search starts at the ``@`` and the blanks
    before a mention are cut from the kept text instead."""
    name = re.escape(username)
    leading = re.compile(rf"^\s*@{name}\b[,:]?", re.IGNORECASE)
    # "@" first (not the look-behind): the search then skips to each "@" at C speed
    inner = re.compile(rf"@(?<![\w@]@){name}\b", re.IGNORECASE)
    first = leading.match(text)
    stripped = text[first.end():] if first else text
    kept: list[str] = []
    end = 0
    for mention in inner.finditer(stripped):
        kept.append(stripped[end:mention.start()].rstrip(" \t"))
        end = mention.end()
    if not first and not kept:
        return text, False
    kept.append(stripped[end:])
    return "".join(kept).strip(), True


def _strip_text_mentions(text: str, message: Message, me: User) -> tuple[str, bool]:
    """Mentions of us by name (users without a username): a text_mention entity."""
    entities = message.entities or message.caption_entities or []
    spans = [(e.offset, e.length) for e in entities
             if e.type == enums.MessageEntityType.TEXT_MENTION and e.user is not None
             and e.user.id == me.id]
    if not spans:
        return text, False
    # entity offsets count UTF-16 units: map them to string indices
    index_of: dict[int, int] = {}
    units = 0
    for i, ch in enumerate(text):
        index_of[units] = i
        units += utf16_len(ch)
    index_of[units] = len(text)
    for offset, length in sorted(spans, reverse=True):
        start, end = index_of.get(offset), index_of.get(offset + length)
        if start is not None and end is not None:
            text = text[:start] + text[end:]
    return re.sub(r"[ \t]{2,}", " ", text).strip(" \t,:"), True


def _entity_type(entity: Any) -> str:
    """The Bot API name of a Pyrogram entity type (an expandable blockquote is its own)."""
    name = getattr(entity.type, "name", "unknown").lower()
    if name == "blockquote" and getattr(entity, "expandable", None):
        return "expandable_blockquote"
    return name


def _kept_units(original: str, kept: str) -> list[int]:
    """For each UTF-16 position of ``original`` (and its end), the UTF-16 position in ``kept``
    where what follows it is: ``kept`` is ``original`` with characters removed (mentions of
    us, a ``@ourname`` after a command), so the characters are matched in order."""
    where: list[int] = []
    j = units = 0
    for ch in original:
        width = utf16_len(ch)
        where.extend([units] * width)
        if j < len(kept) and kept[j] == ch:
            j += 1
            units += width
    where.append(units)
    return where


def _entities(message: Message, original: str, text: str) -> tuple[Entity, ...]:
    """The message's entities (its caption's for media) on ``text``, the stripped
    ``original``; one left empty by the stripping (a mention of us) is dropped."""
    found = message.entities or message.caption_entities or []
    if not found:
        return ()
    moved = None if original == text else _kept_units(original, text)
    size = utf16_len(text)
    entities: list[Entity] = []
    for entity in found:
        start, end = entity.offset, entity.offset + entity.length
        if moved is not None:
            if not 0 <= start < end < len(moved):
                continue
            start, end = moved[start], moved[end]
        start, end = max(0, start), min(size, end)
        if end <= start:
            continue
        kind = _entity_type(entity)
        entities.append(Entity(type=kind, offset=start, length=end - start,
                               url=getattr(entity, "url", None) if kind == "text_link" else None,
                               language=(getattr(entity, "language", None) or None)
                               if kind == "pre" else None))
    return tuple(entities)


def is_reply(message: Message) -> bool:
    """Whether the user replied to a message (one in a topic "replies" to the topic's root
    in Telegram's terms: not a reply the user chose)."""
    if not message.reply_to_message_id:
        return False
    return not (message.topic_message and not message.reply_to_top_message_id
                and message.reply_to_message_id == message.message_thread_id)


def replied_to(message: Message, me: User, sent: RecentIds | None = None) -> RepliedTo | None:
    """The message ``message`` replies to (``message.reply_to_message``, when the client has
    it), as a backend should see it; None when it replies to none."""
    reply = message.reply_to_message
    if reply is None or reply.service or reply.empty or not is_reply(message):
        return None
    user, chat = reply.from_user, message.chat
    from_bot = (user is not None and user.id == me.id) or (
        sent is not None and (chat.id, reply.id) in sent)
    if user is not None:
        author = user.first_name or (f"@{user.username}" if user.username else "")
    else:  # a channel's post, or an anonymous admin: the chat's name
        sender = reply.sender_chat or chat
        author = getattr(sender, "title", None) or ""
    quote = message.quote.text if message.quote is not None and message.quote.text else None
    return RepliedTo(text=str(reply.text or reply.caption or ""), author=author,
                     from_bot=from_bot, quote=str(quote) if quote else None,
                     message_id=reply.id)


async def with_replied_to(client: Client, message: Message, incoming: IncomingMessage,
                          me: User, sent: RecentIds | None = None,
                          answered: Callable[[IncomingMessage], bool] | None = None
                          ) -> IncomingMessage:
    """``incoming`` with the message it replies to, fetched when the client does not have it
    (tgmux's clients fetch nothing while parsing updates: see
    :data:`tgmux.telegram.client.CLIENT_OPTIONS`). One ``messages.getMessages`` (or
    ``channels.getMessages``), only for a reply that is answered (``answered``: default,
    when it is addressed to the bot), bounded by :data:`REPLY_FETCH_TIMEOUT`; when it fails
    the message goes on without the context."""
    if incoming.reply_to is not None or not is_reply(message):
        return incoming
    try:
        if not (incoming.addressed or (answered is not None and answered(incoming))):
            return incoming
        async with asyncio.timeout(REPLY_FETCH_TIMEOUT):
            reply = await client.get_messages(chat_id=message.chat.id, message_ids=message.id,
                                              reply=True, replies=0)
        if not isinstance(reply, Message):
            return incoming
        message.reply_to_message = reply
        found = replied_to(message, me, sent)
    except Exception as exc:  # RPCError, a timeout, a flood wait: the context is a bonus
        log.info("chat %s message %s: the message it replies to could not be fetched (%s); "
                 "answered without it", message.chat.id, message.id, exc)
        return incoming
    return incoming if found is None else replace(incoming, reply_to=found)


def media_object(message: Message) -> Any:
    """The message's Pyrogram media object (``message.photo``, ``.voice``...), or None."""
    kind_enum = message.media
    if kind_enum is None or not hasattr(kind_enum, "name"):
        return None
    return getattr(message, kind_enum.name.lower(), None)


def _media(message: Message, account: str, fetch: MediaFetcher | None) -> Media | None:
    kind_enum = message.media
    if kind_enum is None or kind_enum == enums.MessageMediaType.WEB_PAGE:
        return None
    kind = _MEDIA_KINDS.get(kind_enum, getattr(kind_enum, "name", "other").lower())
    obj = media_object(message)
    mime = getattr(obj, "mime_type", None)
    if kind == "photo":
        mime = "image/jpeg"
    emoji = getattr(obj, "emoji", None) if kind == "sticker" else None
    file_id = getattr(obj, "file_id", None)
    ref = None if not isinstance(file_id, str) else MediaRef(
        file_id=file_id, account=account, chat_id=message.chat.id, message_id=message.id,
        size=getattr(obj, "file_size", None) or None)
    return Media(kind=kind, mime_type=mime, emoji=emoji, ref=ref,
                 fetch=fetch if ref is not None else None)


def normalize(message: Message, me: User, sent: RecentIds | None = None,
              account: str = "main", fetch_media: MediaFetcher | None = None
              ) -> IncomingMessage | None:
    """The engine's view of a Telegram message to ``account``, or None when tgmux ignores it;
    its media is fetched, when a backend reads it, through ``fetch_media``."""
    if message.outgoing or message.service or message.empty:
        return None
    chat = message.chat
    if chat is None:
        return None
    chat_type = _CHAT_TYPES.get(chat.type)
    if chat_type is None:
        return None
    user = message.from_user
    if user is not None and (user.is_self or user.id == me.id):
        return None
    if user is not None and user.is_bot:
        return None
    if user is not None and (user.id == SERVICE_USER_ID or user.is_support):
        # never the text: it may be a login code
        log.info("%s: a message from Telegram's service account %s (chat %s, message %s) is "
                 "not passed on: service messages (login codes) never reach a backend",
                 account, user.id, chat.id, message.id)
        return None
    text = message.text or message.caption or ""
    text = original = str(text)
    addressed = chat_type == "private" or bool(message.mentioned)
    if me.username:
        text, found = _strip_mentions(text, me.username)
        addressed = addressed or found
    text, found = _strip_text_mentions(text, message, me)
    addressed = addressed or found
    command = _COMMAND.match(text)
    if command and command[2]:
        if not me.username or command[2].lower() != me.username.lower():
            return None  # /cmd@otherbot: addressed to another bot
        text = f"/{command[1]}{text[command.end():]}"
        addressed = True
    reply = message.reply_to_message
    if reply is not None and reply.from_user is not None and reply.from_user.id == me.id:
        addressed = True
    elif (message.reply_to_message_id and sent is not None
          and (chat.id, message.reply_to_message_id) in sent):
        addressed = True
    thread = message.message_thread_id if message.topic_message else None
    media = _media(message, account, fetch_media)
    if not text.strip() and media is None:
        return None  # nothing we can show a backend (e.g. an empty caption-less poll)
    return IncomingMessage(
        chat=ChatIdentity(
            chat_type=chat_type,
            chat_id=chat.id,
            user_id=user.id if user is not None else None,
            username=user.username if user is not None else None,
            message_id=message.id,
            message_thread_id=thread,
            first_name=user.first_name if user is not None else None,
            account=account,
            chat_title=(chat.title or None) if chat_type != "private" else None,
        ),
        text=text,
        media=media,
        addressed=addressed,
        entities=_entities(message, original, text),
        reply_to=replied_to(message, me, sent),
        # an album's items come as messages of their own: one turn (tgmux.merging)
        media_group_id=None if message.media_group_id is None else str(message.media_group_id),
        sent_at=float(message.date.timestamp()) if message.date else None,
    )
