"""What the fake Telegram knows (users, chats, messages, update sequence numbers) and the raw
MTProto objects it builds from that: incoming messages (peers, entities, media), the
``Updates`` answering a sent message, chat ids and their types."""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pyrogram import Client, raw, utils
from pyrogram.raw.core import TLObject

from tgmux.telegram.fake.log import UpdateLog
from tgmux.telegram.textsplit import utf16_len

__all__ = [
    "CHANNEL_ID_BASE",
    "DELIVERIES",
    "ENTITY_TYPES",
    "FIRST_OUTGOING_ID",
    "MAX_INPUT_MESSAGE_ID",
    "SERVICE_USER_ID",
    "ChatState",
    "World",
    "check_chat",
    "check_entities",
    "grouped_id",
    "infer_chat_type",
    "is_url",
    "wire",
]

CHANNEL_ID_BASE = -1_000_000_000_000  # Bot API ids of supergroups/channels: -100<raw id>
FIRST_OUTGOING_ID = 1001
#: Telegram's service account (login codes, service notifications)
SERVICE_USER_ID = 777000
#: how an incoming message reaches the client (:meth:`World.build_incoming`)
DELIVERIES = ("push", "short", "gap", "too_long")
_MAX_UNDELIVERED = 100_000
#: Telegram's id ranges (as Pyrogram maps Bot API ids to peers): users 1..2^40-1, basic groups
#: -1..-999999999999, supergroups and channels -100<1..10^12-2^31>
MAX_USER_ID = utils.MAX_USER_ID
MAX_CHAT_ID = utils.MAX_CHAT_ID
MAX_CHANNEL_ID = utils.MAX_CHANNEL_ID
#: Message ids are int32 in the TL schema; incoming ones stay below this so that the bot's own
#: messages, numbered after them, fit too.
MAX_INPUT_MESSAGE_ID = 2_000_000_000

#: Starts the file reference of a file given by its path (:func:`file_reference`).
_FILE_REFERENCE = b"tgmux-fake-file:"

MENTION = re.compile(r"(?<![\w@])@([A-Za-z][A-Za-z0-9_]{3,31})\b")
_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z][A-Za-z0-9_]{3,31})?")


#: The user's formatting a message can carry (input ``entities``): Bot API name → raw type.
#: ``text_mention`` and ``custom_emoji`` need a user or a sticker: not simulated.
ENTITY_TYPES: dict[str, type[TLObject]] = {
    "bold": raw.types.MessageEntityBold, "italic": raw.types.MessageEntityItalic,
    "underline": raw.types.MessageEntityUnderline,
    "strikethrough": raw.types.MessageEntityStrike,
    "spoiler": raw.types.MessageEntitySpoiler, "code": raw.types.MessageEntityCode,
    "pre": raw.types.MessageEntityPre, "text_link": raw.types.MessageEntityTextUrl,
    "blockquote": raw.types.MessageEntityBlockquote,
    "expandable_blockquote": raw.types.MessageEntityBlockquote,
    "url": raw.types.MessageEntityUrl, "mention": raw.types.MessageEntityMention,
    "hashtag": raw.types.MessageEntityHashtag, "cashtag": raw.types.MessageEntityCashtag,
    "bot_command": raw.types.MessageEntityBotCommand, "email": raw.types.MessageEntityEmail,
    "phone_number": raw.types.MessageEntityPhone,
}
_ENTITY_KEYS = {"type", "offset", "length", "url", "language"}


def check_entities(text: str, entities: list[Any]) -> None:
    """Raise ValueError when ``entities`` (Bot API form, UTF-16 offsets) cannot be the
    formatting of ``text``, saying which one and why."""
    size = utf16_len(text)
    for number, entity in enumerate(entities):
        where = f"entities[{number}]"
        if not isinstance(entity, dict):
            raise ValueError(f"{where}: expected an object like {{\"type\": \"bold\", "
                             f"\"offset\": 0, \"length\": 4}}, got {entity!r}")
        unknown = sorted(set(entity) - _ENTITY_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown field(s): {', '.join(unknown)} (known: type, "
                             "offset, length, url, language)")
        kind = entity.get("type")
        if kind not in ENTITY_TYPES:
            raise ValueError(f"{where}.type: one of {', '.join(ENTITY_TYPES)}, not {kind!r}")
        offset, length = entity.get("offset"), entity.get("length")
        for key, value in (("offset", offset), ("length", length)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{where}.{key}: expected a number, got {value!r}")
        assert isinstance(offset, int) and isinstance(length, int)
        if offset < 0 or length < 1 or offset + length > size:
            raise ValueError(f"{where}: offset {offset}, length {length} is not within the "
                             f"text ({size} UTF-16 code units)")
        url, language = entity.get("url"), entity.get("language")
        if kind == "text_link":
            if not isinstance(url, str) or not is_url(url):
                raise ValueError(f"{where}.url: a text_link needs its URL "
                                 f"(\"url\": \"https://…\"), got {url!r}")
        elif url is not None:
            raise ValueError(f"{where}.url: only a text_link has a url")
        if language is not None and (kind != "pre" or not isinstance(language, str)):
            raise ValueError(f"{where}.language: a string, for a pre entity only")


def raw_entity(entity: dict[str, Any]) -> TLObject:
    """One input entity (checked by :func:`check_entities`) as Telegram sends it."""
    kind = entity["type"]
    extra: dict[str, Any] = {}
    if kind == "pre":
        extra["language"] = entity.get("language") or ""
    elif kind == "text_link":
        extra["url"] = entity["url"]
    elif kind == "expandable_blockquote":
        extra["collapsed"] = True
    return ENTITY_TYPES[kind](offset=entity["offset"], length=entity["length"], **extra)


def wire(obj: TLObject) -> TLObject:
    """Serialize and parse back, as if the object came off the network (lists not None...)."""
    return TLObject.read(BytesIO(obj.write()))


def is_url(source: str) -> bool:
    """Whether a media source is a URL (anything with a scheme, ``file:`` too: the fake takes
    local paths only)."""
    return re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", source) is not None


def file_reference(data: bytes, path: Path | None = None) -> bytes:
    """The file reference of an incoming file: the content's digest and, for a file the input
    gave by its path, that path. So a fake in another process (a restart) serves the same bytes
    for the same file id, as Telegram keeps a file sent to it, and a fake that does not have
    the file says so instead of serving another one under the same id."""
    return _FILE_REFERENCE + _digest(data) + (os.fsencode(path) if path is not None else b"")


def names_a_file(reference: bytes) -> bool:
    """Whether a file reference is one of :func:`file_reference`."""
    return reference.startswith(_FILE_REFERENCE)


def is_referenced(reference: bytes, data: bytes) -> bool:
    """Whether ``data`` is the file :func:`file_reference` made ``reference`` for."""
    start = len(_FILE_REFERENCE)
    return reference[start:start + len(_digest(b""))] == _digest(data)


def referenced_file(reference: bytes) -> bytes | None:
    """The bytes of the file whose path a :func:`file_reference` names; None when it names no
    path, or the file is gone or changed since (the reference expired)."""
    path = reference[len(_FILE_REFERENCE) + len(_digest(b"")):]
    if not names_a_file(reference) or not path:
        return None
    try:
        data = Path(os.fsdecode(path)).read_bytes()
    except OSError:
        return None
    return data if is_referenced(reference, data) else None


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:8]


def _preview(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"


def grouped_id(media_group_id: str) -> int:
    """The raw ``grouped_id`` (a 64-bit number) of an input's ``media_group_id``: the number
    itself when it is one (Telegram's are; Pyrogram shows them as ``media_group_id``), else
    one derived from the string (the same string, the same album)."""
    if re.fullmatch(r"-?[0-9]{1,19}", media_group_id) and \
            -2**63 <= int(media_group_id) < 2**63:
        return int(media_group_id)
    return int.from_bytes(_digest(media_group_id.encode()), "big") >> 1


def infer_chat_type(chat_id: int) -> str:
    if chat_id > 0:
        return "private"
    if chat_id <= CHANNEL_ID_BASE:
        return "supergroup"
    return "group"


def check_chat(chat_id: int, chat_type: str, user_id: int) -> None:
    """Raise ValueError when a chat id cannot be of that type (Bot API id conventions)."""
    if chat_type not in ("private", "group", "supergroup", "channel"):
        raise ValueError(f"chat_type must be private, group, supergroup or channel, "
                         f"not {chat_type!r}")
    if not 0 < user_id <= MAX_USER_ID:
        raise ValueError(f"user_id: a Telegram user id is 1 to {MAX_USER_ID}, not {user_id}")
    if not (0 < chat_id <= MAX_USER_ID or -MAX_CHAT_ID <= chat_id < 0
            or CHANNEL_ID_BASE - MAX_CHANNEL_ID <= chat_id < CHANNEL_ID_BASE):
        raise ValueError(f"chat_id: not a Telegram chat id: {chat_id} (users 1 to "
                         f"{MAX_USER_ID}, groups -1 to -{MAX_CHAT_ID}, supergroups and "
                         f"channels -100… to {CHANNEL_ID_BASE - MAX_CHANNEL_ID})")
    if chat_type == "private" and chat_id != user_id:
        raise ValueError("a private chat's chat_id is the user's id")
    if chat_type == "group" and not CHANNEL_ID_BASE < chat_id < 0:
        raise ValueError("a group's chat_id is negative (e.g. -4012345678)")
    if chat_type in ("supergroup", "channel") and chat_id >= CHANNEL_ID_BASE:
        raise ValueError(f"a {chat_type}'s chat_id starts with -100 (e.g. -1001234567890)")


@dataclass
class ChatState:
    chat_id: int
    chat_type: str
    raw_chat: TLObject | None = None  # raw Chat/Channel (None for private chats)
    last_incoming: int = 0
    next_outgoing: int = FIRST_OUTGOING_ID
    bot_messages: list[int] = field(default_factory=list)
    topics: set[int] = field(default_factory=set)
    title: str | None = None  # set by an input's chat_title; else a made-up one
    known: bool = False  # the account has seen a message in it (full updates introduced it)


class World:
    """The fake Telegram's state: who and what it knows, and the updates it made."""

    def __init__(self, me: TLObject) -> None:
        self.me = me
        self._users: dict[int, TLObject] = {me.id: me}
        self._chats: dict[int, ChatState] = {}
        self._messages: dict[tuple[int, int], TLObject] = {}
        self._thread_of: dict[tuple[int, int], int] = {}
        #: the update state and the updates that moved it (:mod:`~tgmux.telegram.fake.log`)
        self.log = UpdateLog()
        self._files: dict[int, bytes] = {}
        #: what changed since the state file was last written (:mod:`.state`)
        self.dirty: set[tuple[str, Any]] = set()
        #: the next id of a file (photo, document) the fake makes
        self.next_media_id = 10_000_000_000
        #: the error every request meets once the session is revoked or the account banned
        self.account_error: str | None = None
        #: incoming messages the client has not been served yet (in a full push or a
        #: difference): what a catch-up still owes it
        self.undelivered: dict[tuple[int, int], None] = {}

    def _new_media_id(self) -> int:
        self.next_media_id += 1
        return self.next_media_id - 1

    # -- incoming messages ---------------------------------------------------------------------

    def _chat(self, chat_id: int, chat_type: str, *, forum: bool = False,
              title: str | None = None) -> ChatState:
        state = self._chats.get(chat_id)
        if state is None:
            state = self._chats[chat_id] = ChatState(chat_id, chat_type)
        self.dirty.add(("chat", chat_id))
        if title is not None:  # a group keeps its title until another one is given
            state.title = title
        if chat_type == "group":
            state.raw_chat = raw.types.Chat(
                id=-chat_id, title=state.title or f"Group {-chat_id}",
                photo=raw.types.ChatPhotoEmpty(),
                participants_count=3, date=0, version=1)
        elif chat_type in ("supergroup", "channel"):
            was_forum = bool(getattr(state.raw_chat, "forum", False))
            state.raw_chat = raw.types.Channel(
                id=CHANNEL_ID_BASE - chat_id, title=state.title or f"Chat {chat_id}",
                photo=raw.types.ChatPhotoEmpty(), date=0, access_hash=chat_id & 0xFFFF,
                megagroup=chat_type == "supergroup" or None,
                broadcast=chat_type == "channel" or None, forum=(forum or was_forum) or None)
        return state

    def _user(self, user_id: int, username: str | None, first_name: str | None) -> TLObject:
        service = user_id == SERVICE_USER_ID  # Telegram's own account: support, verified
        user = raw.types.User(id=user_id, access_hash=user_id & 0xFFFF,
                              first_name=first_name or username or (
                                  "Telegram" if service else f"User {user_id}"),
                              username=username or None, support=service or None,
                              verified=service or None)
        self._users[user_id] = user
        self.dirty.add(("user", user_id))
        return user

    def remember_chat(self, *, chat_type: str, chat_id: int, user_id: int | None = None,
                      username: str | None = None, first_name: str | None = None,
                      message_id: int | None = None, message_thread_id: int | None = None,
                      chat_title: str | None = None, **_: Any) -> None:
        """Know a chat (and its user) from before this fake existed: e.g. a chat of an
        earlier run on the same store, which Telegram would still know. Takes the fields of a
        ``ChatIdentity`` (as the engine stores them)."""
        state = self._chat(chat_id, chat_type, forum=message_thread_id is not None,
                           title=chat_title)
        if user_id is not None and (user_id not in self._users or username or first_name):
            self._user(user_id, username, first_name)
        if message_id is not None:
            state.last_incoming = max(state.last_incoming, message_id)
            state.next_outgoing = max(state.next_outgoing, message_id + 1)
        if message_thread_id is not None:
            state.topics.add(message_thread_id)
            if message_id is not None:
                self._thread_of[(chat_id, message_id)] = message_thread_id

    def known_peers(self) -> list[TLObject]:
        """Every user and chat the fake knows, as raw peers (what a client that has seen them
        keeps in its session)."""
        return [*self._users.values(),
                *(s.raw_chat for s in self._chats.values() if s.raw_chat is not None)]

    @staticmethod
    def peer(chat_id: int, chat_type: str) -> TLObject:
        if chat_type == "private":
            return raw.types.PeerUser(user_id=chat_id)
        if chat_type == "group":
            return raw.types.PeerChat(chat_id=-chat_id)
        return raw.types.PeerChannel(channel_id=CHANNEL_ID_BASE - chat_id)

    def _entities(self, text: str, given: list[dict[str, Any]] | None = None
                  ) -> list[TLObject]:
        """What Telegram finds in a text (a leading /command, @mentions) and the user's own
        formatting ``given``, by offset."""
        entities: list[TLObject] = [raw_entity(e) for e in given or ()]
        command = _COMMAND.match(text)
        if command:
            entities.append(raw.types.MessageEntityBotCommand(offset=0,
                                                              length=utf16_len(command[0])))
        for m in MENTION.finditer(text):
            if command and m.start() < command.end():
                continue
            offset = utf16_len(text[:m.start()])
            if not any(e.offset == offset for e in entities):
                entities.append(raw.types.MessageEntityMention(offset=offset,
                                                               length=utf16_len(m[0])))
        return sorted(entities, key=lambda e: (e.offset, -e.length))

    def _media(self, photo: str | bytes | None, voice: str | bytes | None,
               sticker: str | None, document: str | bytes | None) -> TLObject | None:
        def content(source: str | bytes) -> tuple[bytes, int, bytes]:
            if isinstance(source, bytes):
                return source, len(source), file_reference(source)
            if is_url(source):
                raise ValueError(f"the fake Telegram is offline: give a local file path (or "
                                 f"bytes), not a URL ({source})")
            path = Path(source).expanduser().resolve()
            data = path.read_bytes()
            return data, len(data), file_reference(data, path)

        now = int(time.time())
        if photo is not None:
            data, size, reference = content(photo)
            media_id = self._new_media_id()
            self._files[media_id] = data
            self.dirty.add(("file", media_id))
            return raw.types.MessageMediaPhoto(photo=raw.types.Photo(
                id=media_id, access_hash=1, file_reference=reference, date=now, dc_id=2,
                sizes=[raw.types.PhotoSize(type="y", w=800, h=600, size=size or 1)]))
        if voice is not None or document is not None:
            source = voice if voice is not None else document
            assert source is not None
            data, size, reference = content(source)
            media_id = self._new_media_id()
            self._files[media_id] = data
            self.dirty.add(("file", media_id))
            if voice is not None:
                mime = "audio/ogg"
                attributes: list[TLObject] = [raw.types.DocumentAttributeAudio(duration=1,
                                                                               voice=True)]
            else:
                name = Path(source).name if isinstance(source, str) else "file.bin"
                mime = Client.mimetypes.guess_type(name)[0] or "application/octet-stream"
                attributes = [raw.types.DocumentAttributeFilename(file_name=name)]
            return raw.types.MessageMediaDocument(voice=voice is not None or None,
                                                  document=raw.types.Document(
                id=media_id, access_hash=1, file_reference=reference, date=now, mime_type=mime,
                size=size or 1, dc_id=2, attributes=attributes))
        if sticker is not None:
            media_id = self._new_media_id()
            self._files[media_id] = b"RIFF\x00\x00\x00\x00WEBP"
            self.dirty.add(("file", media_id))
            return raw.types.MessageMediaDocument(document=raw.types.Document(
                id=media_id, access_hash=1, file_reference=b"", date=now,
                mime_type="image/webp", size=12, dc_id=2,
                attributes=[raw.types.DocumentAttributeImageSize(w=512, h=512),
                            raw.types.DocumentAttributeSticker(
                                alt=sticker, stickerset=raw.types.InputStickerSetEmpty())]))
        return None

    def build_incoming(self, *, user_id: int, text: str = "", chat_id: int | None = None,
                       chat_type: str | None = None, username: str | None = None,
                       first_name: str | None = None, message_id: int | None = None,
                       thread_id: int | None = None, reply_to_bot: bool = False,
                       photo: str | bytes | None = None, voice: str | bytes | None = None,
                       sticker: str | None = None, document: str | bytes | None = None,
                       chat_title: str | None = None, date: int | None = None,
                       delivery: str | None = None,
                       entities: list[dict[str, Any]] | None = None,
                       reply_to_message_id: int | None = None,
                       quote: str | None = None, media_group_id: str | None = None,
                       ) -> tuple[TLObject | None, int, int]:
        """Log one incoming message; the raw updates that carry it to the client (None when
        ``delivery`` is ``"gap"``), its chat id and message id.

        ``delivery``: ``"push"`` (a full ``Updates``), ``"short"`` (``updateShortMessage`` /
        ``updateShortChatMessage``: the client fetches the message with getDifference),
        ``"gap"`` (not pushed: the client learns of it from the next update's pts or a
        getDifference), ``"too_long"`` (``updatesTooLong``; ``updateChannelTooLong`` in a
        supergroup or channel); None: what Telegram does (compact for a plain text from a
        peer the account has seen, else full). ``date``: the message's unix time (now).
        ``entities``: the user's formatting (Bot API form); ``reply_to_message_id``: a message
        of the chat it replies to (an input one, or one the bot sent), ``quote`` the part of it
        quoted; ``media_group_id``: the album the message (a media) belongs to: Telegram sends
        each item of an album as a message of its own with the album's ``grouped_id``.
        ValueError: a message Telegram would not take (nothing is logged then)."""
        if delivery not in (None, *DELIVERIES):
            raise ValueError(f"delivery: one of {', '.join(DELIVERIES)}, not {delivery!r}")
        chat_type = chat_type or infer_chat_type(user_id if chat_id is None else chat_id)
        chat_id = user_id if chat_id is None else chat_id
        check_chat(chat_id, chat_type, user_id)
        check_entities(text, entities or [])
        replied = self._replied(chat_id, reply_to_message_id, quote, reply_to_bot)
        state = self._chat(chat_id, chat_type, forum=thread_id is not None, title=chat_title)
        if message_id is None:
            message_id = state.last_incoming + 1
        state.last_incoming = max(state.last_incoming, message_id)
        state.next_outgoing = max(state.next_outgoing, message_id + 1)
        known = user_id in self._users and (chat_type == "private" or state.known)
        state.known = True
        user = self._user(user_id, username, first_name)
        if delivery == "short" and chat_type in ("supergroup", "channel"):
            raise ValueError(f"delivery: Telegram has no compact form for a {chat_type} "
                             "message (push, gap or too_long)")
        bot_name = (self.me.username or "").lower()
        mentioned = bool(bot_name) and any(
            m[1].lower() == bot_name for m in MENTION.finditer(text))
        reply_to = None
        if reply_to_bot:
            if not state.bot_messages:  # the bot said something earlier (before this run)
                earlier = self._outgoing_id(state)
                self._messages[(chat_id, earlier)] = raw.types.Message(
                    id=earlier, peer_id=self.peer(chat_id, chat_type), date=0, message="…",
                    out=True, from_id=raw.types.PeerUser(user_id=self.me.id))
                if thread_id is not None:
                    self._thread_of[(chat_id, earlier)] = thread_id
                self.dirty.add(("message", (chat_id, earlier)))
                state.bot_messages.append(earlier)
            target = state.bot_messages[-1]
            if thread_id is not None:
                target = next((m for m in reversed(state.bot_messages)
                               if self._thread_of.get((chat_id, m)) == thread_id), thread_id)
            reply_to = raw.types.MessageReplyHeader(
                reply_to_msg_id=target, forum_topic=thread_id is not None or None,
                reply_to_top_id=thread_id if thread_id is not None and target != thread_id
                else None)
            mentioned = True
        elif replied is not None:
            reply_to = raw.types.MessageReplyHeader(
                reply_to_msg_id=replied.id, forum_topic=thread_id is not None or None,
                reply_to_top_id=thread_id if thread_id is not None and replied.id != thread_id
                else None)
            # Telegram flags a reply to the account's own message as mentioning it
            mentioned = mentioned or bool(replied.out)
        elif thread_id is not None:
            reply_to = raw.types.MessageReplyHeader(reply_to_msg_id=thread_id, forum_topic=True)
        if quote is not None and replied is not None and reply_to is not None:
            whole = replied.message or ""
            reply_to.quote, reply_to.quote_text = True, quote
            reply_to.quote_offset = utf16_len(whole[:whole.index(quote)])
        if thread_id is not None:
            state.topics.add(thread_id)
            self._thread_of[(chat_id, message_id)] = thread_id
        media = self._media(photo, voice, sticker, document)
        if media_group_id is not None and media is None:
            raise ValueError("media_group_id: only a media (photo, voice, sticker, document) "
                             "is in an album")
        entities = self._entities(text, entities)
        date = int(time.time()) if date is None else date
        message = raw.types.Message(
            id=message_id, peer_id=self.peer(chat_id, chat_type), date=date,
            message=text, out=False, mentioned=mentioned or None,
            from_id=None if chat_type == "channel" else raw.types.PeerUser(user_id=user_id),
            post=chat_type == "channel" or None, reply_to=reply_to, media=media,
            entities=entities or None,
            grouped_id=None if media_group_id is None else grouped_id(media_group_id))
        self._messages[(chat_id, message_id)] = message
        self.dirty.add(("message", (chat_id, message_id)))
        self.dirty.add(("chat", chat_id))
        self.undelivered[(chat_id, message_id)] = None
        if len(self.undelivered) > _MAX_UNDELIVERED:
            del self.undelivered[next(iter(self.undelivered))]
        if delivery is None:  # what Telegram does: compact for a plain text from a known peer
            plain = media is None and not entities and reply_to is None
            delivery = "short" if plain and known and chat_type in ("private", "group") \
                else "push"
        updates = self._deliver(message, user, state, delivery)
        return updates, chat_id, message_id

    def will_send(self, chat_id: int, message_id: int) -> bool:
        """Whether ``message_id`` is one the bot has not sent in the chat yet (its messages
        are numbered after the chat's input messages)."""
        state = self._chats.get(chat_id)
        return (state is not None and message_id >= state.next_outgoing
                and (chat_id, message_id) not in self._messages)

    def _replied(self, chat_id: int, message_id: int | None, quote: str | None,
                 reply_to_bot: bool) -> TLObject | None:
        """The message an input line replies to (``reply_to_message_id``), checked as Telegram
        would: a message of that chat it has; a quote needs a replied-to message."""
        if message_id is not None and reply_to_bot:
            raise ValueError("reply_to_message_id and reply_to_bot: give one of them")
        if quote is not None and message_id is None:
            raise ValueError("quote: a quote is part of the message replied to; give "
                             "reply_to_message_id too")
        if message_id is None:
            return None
        message = self._messages.get((chat_id, message_id))
        if not isinstance(message, raw.types.Message):
            raise ValueError(f"reply_to_message_id: chat {chat_id} has no message {message_id} "
                             "(an earlier input message of the chat, or a message the bot "
                             "sent there: its output message_id)")
        whole = message.message or ""
        if quote is not None and (not quote.strip() or quote not in whole):
            raise ValueError(f"quote: not a part of the text of message {message_id} "
                             f"({_preview(whole)!r})")
        return message

    def served(self, items: list[TLObject]) -> None:
        """The client was given these messages (or updates carrying them)."""
        for item in items:
            message = item if isinstance(item, raw.types.Message) else getattr(item, "message",
                                                                               None)
            if isinstance(message, raw.types.Message):
                key = (self.chat_id_of(message.peer_id), message.id)
                self.undelivered.pop(key, None)  # type: ignore[arg-type]

    def _deliver(self, message: TLObject, user: TLObject, state: ChatState,
                 delivery: str) -> TLObject | None:
        """Log a new incoming message; the updates that carry it to the client in the form
        ``delivery`` says (None: a gap, nothing is pushed)."""
        chats = [state.raw_chat] if state.raw_chat is not None else []
        channel = (CHANNEL_ID_BASE - state.chat_id
                   if state.chat_type in ("supergroup", "channel") else None)
        update_type = (raw.types.UpdateNewMessage if channel is None
                       else raw.types.UpdateNewChannelMessage)
        entry = self.log.add(update_type(message=message, pts=0, pts_count=0),
                             channel_id=channel, date=message.date)
        now = int(time.time())
        if delivery == "gap":
            self.log.next_seq()  # as if a container was sent and lost: seq moved on
            return None
        if delivery == "too_long":
            if channel is None:
                return raw.types.UpdatesTooLong()
            return wire(raw.types.Updates(
                updates=[raw.types.UpdateChannelTooLong(channel_id=channel)], users=[],
                chats=chats, date=now, seq=self.log.next_seq()))
        if delivery == "short":
            common = dict(id=message.id, message=message.message, pts=entry.pts,
                          pts_count=entry.pts_count, date=message.date, out=False,
                          mentioned=message.mentioned, reply_to=message.reply_to,
                          entities=message.entities)
            if state.chat_type == "private":
                return wire(raw.types.UpdateShortMessage(user_id=user.id, **common))
            return wire(raw.types.UpdateShortChatMessage(from_id=user.id,
                                                         chat_id=-state.chat_id, **common))
        return wire(raw.types.Updates(updates=[entry.update], users=[user], chats=chats,
                                      date=now, seq=self.log.next_seq()))

    def chat_id_of(self, peer: TLObject | None) -> int | None:
        if isinstance(peer, (raw.types.InputPeerUser, raw.types.PeerUser,
                             raw.types.InputUser)):
            return peer.user_id
        if isinstance(peer, raw.types.InputPeerSelf):
            return self.me.id
        if isinstance(peer, (raw.types.InputPeerChat, raw.types.PeerChat)):
            return -peer.chat_id
        if isinstance(peer, (raw.types.InputPeerChannel, raw.types.PeerChannel,
                             raw.types.InputChannel)):
            return utils.get_channel_id(peer.channel_id)
        return None

    def _state_for(self, chat_id: int) -> ChatState:
        state = self._chats.get(chat_id)
        if state is None:
            chat_type = infer_chat_type(chat_id)
            state = self._chat(chat_id, chat_type)
        return state

    def _outgoing_id(self, state: ChatState) -> int:
        message_id = state.next_outgoing
        state.next_outgoing += 1
        return message_id

    def _updates(self, chat_id: int, message: TLObject, *, edit: bool = False,
                 random_id: int | None = None) -> TLObject:
        """Log a new (or edited) outgoing message; the ``Updates`` answering the request."""
        state = self._state_for(chat_id)
        channel = (CHANNEL_ID_BASE - chat_id
                   if state.chat_type in ("supergroup", "channel") else None)
        if channel is not None:
            update_type = (raw.types.UpdateEditChannelMessage if edit
                           else raw.types.UpdateNewChannelMessage)
        else:
            update_type = raw.types.UpdateEditMessage if edit else raw.types.UpdateNewMessage
        now = int(time.time())
        entry = self.log.add(update_type(message=message, pts=0, pts_count=0),
                             channel_id=channel, date=now)
        self.dirty.add(("message", (chat_id, message.id)))
        updates = [entry.update]
        if random_id is not None:
            updates.insert(0, raw.types.UpdateMessageID(id=message.id, random_id=random_id))
        users = [self.me] + ([self._users[chat_id]] if chat_id in self._users else [])
        chats = [state.raw_chat] if state.raw_chat is not None else []
        return wire(raw.types.Updates(updates=updates, users=users, chats=chats, date=now,
                                       seq=self.log.next_seq()))

    def _reply(self, chat_id: int, reply_to: TLObject | None) -> tuple[int | None, int | None]:
        """(reply_to_message_id, message_thread_id) of an outgoing message."""
        if not isinstance(reply_to, raw.types.InputReplyToMessage):
            return None, None
        state = self._state_for(chat_id)
        if reply_to.top_msg_id:
            return reply_to.reply_to_msg_id, reply_to.top_msg_id
        target = reply_to.reply_to_msg_id
        if target in state.topics:
            return None, target  # "reply" to a topic's root: a message in that topic
        return target, self._thread_of.get((chat_id, target))

    def _new_outgoing(self, chat_id: int, text: str, reply_to: TLObject | None,
                      media: TLObject | None = None,
                      entities: list[TLObject] | None = None) -> tuple[TLObject, dict[str, Any]]:
        state = self._state_for(chat_id)
        message_id = self._outgoing_id(state)
        reply_id, thread = self._reply(chat_id, reply_to)
        header = None
        if reply_id is not None or thread is not None:
            header = raw.types.MessageReplyHeader(
                reply_to_msg_id=reply_id if reply_id is not None else thread,
                reply_to_top_id=thread if reply_id is not None and thread is not None else None,
                forum_topic=thread is not None or None)
        message = raw.types.Message(
            id=message_id, peer_id=self.peer(chat_id, state.chat_type), date=int(time.time()),
            message=text, out=True, from_id=raw.types.PeerUser(user_id=self.me.id),
            reply_to=header, media=media, entities=entities)
        self._messages[(chat_id, message_id)] = message
        if thread is not None:
            self._thread_of[(chat_id, message_id)] = thread
        state.bot_messages.append(message_id)
        info = {"chat_id": chat_id, "message_id": message_id, "reply_to_message_id": reply_id,
                "message_thread_id": thread}
        return message, info
