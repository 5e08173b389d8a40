"""Offline Telegram: the real Pyrogram ``Client`` with only its network layer replaced.

:class:`FakeTelegram` plays Telegram's servers. :meth:`FakeTelegram.attach` replaces a client's
``connect``, ``disconnect`` and ``get_session`` so that every raw request reaches
:meth:`FakeTelegram.answer` instead of a socket; everything above that — ``start()``/``stop()``,
update parsing, the dispatcher, handlers, ``send_message``, ``edit_message_text``,
``send_message_draft``, media uploads — is Pyrogram's own code.

Incoming messages (:meth:`FakeTelegram.incoming`) are built as raw MTProto ``Updates``,
round-tripped through the wire format (as if they came off the network) and handed to
``client.handle_updates``. Messages that arrive while the client is not connected are kept and
served through ``updates.getDifference`` when it starts again (catch-up).

Every outgoing request that does something visible is recorded as an *action*: a dict in the
``tgmux simulate`` output format (see docs/simulate.md), e.g.
``{"action": "send_message", "chat_id": 42, "message_id": 1001, "text": "hi"}``.
Requests the fake does not know raise :class:`UnknownRequest` (fail loudly). Faults are injected
with :meth:`FakeTelegram.fail` (``FLOOD_WAIT_3``, ``USER_IS_BLOCKED``, ``RPC_CALL_FAIL``,
``TIMEOUT``..., before or after the request took effect). As with the real network, the client's
session retries a request that timed out or met a server error (the same request, so the same
``random_id``), and the fake, as Telegram does, sends a message only once per ``random_id``.

Used by ``tgmux simulate``, the ``tgmux.testing`` pytest plugin and tgmux's own tests.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
import os
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

from pyrogram import Client, raw, utils
from pyrogram.errors import InternalServerError, RPCError, ServiceUnavailable
from pyrogram.errors.exceptions.all import exceptions as _ERRORS
from pyrogram.raw.core import TLObject

from tgmux.telegram.frontend import delivering
from tgmux.telegram.textsplit import utf16_len

__all__ = ["FakeTelegram", "UnknownRequest", "chat_action_name", "offline_client"]

log = logging.getLogger("tgmux.telegram.offline")

CHANNEL_ID_BASE = -1_000_000_000_000  # Bot API ids of supergroups/channels: -100<raw id>
FIRST_OUTGOING_ID = 1001

_VOICE_EXT = {".ogg", ".oga", ".opus"}
_AUDIO_EXT = {".mp3", ".m4a", ".aac", ".wav", ".flac", ".mpga", ".weba"}
_MENTION = re.compile(r"(?<![\w@])@([A-Za-z][A-Za-z0-9_]{3,31})\b")
_COMMAND = re.compile(r"^/[A-Za-z0-9_]{1,32}(@[A-Za-z][A-Za-z0-9_]{3,31})?")

#: Keys of an action, in the order they are written (absent when not set).
_KEY_ORDER = ("action", "chat_id", "message_id", "draft_id", "chat_action", "text", "media",
              "reply_to_message_id", "message_thread_id", "scope", "commands")

_CHAT_ACTIONS = {
    "SendMessageTypingAction": "typing",
    "SendMessageUploadPhotoAction": "upload_photo",
    "SendMessageRecordAudioAction": "record_voice",
    "SendMessageUploadAudioAction": "upload_voice",
    "SendMessageUploadDocumentAction": "upload_document",
    "SendMessageRecordVideoAction": "record_video",
    "SendMessageUploadVideoAction": "upload_video",
    "SendMessageChooseStickerAction": "choose_sticker",
    "SendMessageCancelAction": "cancel",
}


def chat_action_name(action: TLObject) -> str:
    """Bot API name of a raw ``SendMessageAction`` (typing, upload_photo, record_voice...)."""
    name = type(action).__name__
    if name in _CHAT_ACTIONS:
        return _CHAT_ACTIONS[name]
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removeprefix("SendMessage")).lower()
    return snake.removesuffix("_action")


class UnknownRequest(RuntimeError):
    """The fake Telegram got a request it has no answer for."""


def _wire(obj: TLObject) -> TLObject:
    """Serialize and parse back, as if the object came off the network (lists not None...)."""
    return TLObject.read(BytesIO(obj.write()))


def _error_code(error_id: str) -> int:
    shape = re.sub(r"_\d+", "_X", error_id)
    for code in (420, 403, 400, 406, 401, 500, 503, 303):
        if shape in _ERRORS.get(code, {}):
            return code
    return 400


#: ``fail(..., "TIMEOUT")``: no answer came (the session raises TimeoutError, as Pyrogram's does)
TIMEOUT = "TIMEOUT"


@dataclass
class Fault:
    method: str  # raw name ("messages.SendMessage") or action name ("send_message"), or "*"
    error: str  # "FLOOD_WAIT_3", "USER_IS_BLOCKED", "TIMEOUT", ...
    code: int
    chat_id: int | None = None
    times: int | None = 1  # None: every time
    delivered: bool = False  # the request took effect; only its answer is the error

    def matches(self, names: tuple[str, ...], chat_id: int | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method != "*" and self.method not in names:
            return False
        return self.chat_id is None or self.chat_id == chat_id


@dataclass
class Request:
    """One raw request the fake got (``error`` set when it was answered with an RPC error)."""

    name: str
    query: TLObject
    chat_id: int | None
    at: float
    error: str | None = None  # as Telegram says it: "FLOOD_WAIT_3", "MESSAGE_NOT_MODIFIED"


@dataclass
class _ChatState:
    chat_id: int
    chat_type: str
    raw_chat: TLObject | None = None  # raw Chat/Channel (None for private chats)
    last_incoming: int = 0
    next_outgoing: int = FIRST_OUTGOING_ID
    bot_messages: list[int] = field(default_factory=list)
    topics: set[int] = field(default_factory=set)


class FakeSession:
    """Stands in for ``pyrogram.session.Session``: ``invoke`` goes to the fake Telegram."""

    def __init__(self, fake: FakeTelegram, client: Client) -> None:
        self.fake = fake
        self.client = client
        self.auth_key = b"\x00" * 256
        self.is_started = asyncio.Event()
        self.is_started.set()

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def invoke(self, query: TLObject, retries: int = 10, timeout: float = 15,
                     sleep_threshold: float = 10, retry_delay: float = 1, **_: Any) -> Any:
        """As ``Session.invoke``: sleeps through flood waits up to ``sleep_threshold``, and
        sends the same request again (up to ``retries`` times in all) after a timeout or a
        server error, then raises TimeoutError. Between those attempts it waits
        ``fake.retry_delay`` (default 0: time is compressed), not ``retry_delay``."""
        inner = query
        while isinstance(inner, (raw.functions.InvokeWithoutUpdates,
                                 raw.functions.InvokeWithTakeout)):
            inner = inner.query
        name = inner.QUALNAME.removeprefix("functions.")
        attempts = 0
        while True:
            try:
                return await self.fake.answer(inner, self.client)
            except (OSError, InternalServerError, ServiceUnavailable):
                attempts += 1
                if attempts >= retries:
                    raise TimeoutError(f'Failed to invoke "{name}" after {retries} '
                                       "retries") from None
                await asyncio.sleep(self.fake.retry_delay)
            except RPCError as exc:
                seconds = exc.value if exc.ID == "FLOOD_WAIT_X" else None
                if not isinstance(seconds, int) or seconds > sleep_threshold or \
                        sleep_threshold < 0:
                    raise
                await asyncio.sleep(seconds)


class FakeTelegram:
    """Telegram's servers, in memory, for one bot (or user account)."""

    def __init__(self, *, bot_username: str = "tgmux_bot", is_bot: bool = True,
                 user_id: int = 5_000_000_001, first_name: str = "tgmux") -> None:
        self.me = raw.types.User(
            id=user_id, is_self=True, bot=is_bot or None, access_hash=0x5EED,
            first_name=first_name, username=bot_username or None,
            bot_info_version=1 if is_bot else None,
        )
        self.is_bot = is_bot
        self.actions: list[dict[str, Any]] = []
        self.action_times: list[float] = []
        #: per action: (chat id, message id) of the message it answers, None when it answers
        #: none (command menu, announcements)
        self.action_origins: list[tuple[int, int | None] | None] = []
        self.requests: list[Request] = []
        self.unknown: list[str] = []
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self.client: Client | None = None
        #: seconds the client's session waits before it sends a request again after a
        #: timeout or server error (Pyrogram: 1 s; here 0 so that tests stay fast)
        self.retry_delay = 0.0
        self._faults: list[Fault] = []
        self._sent: dict[tuple[int, int], TLObject] = {}  # (chat, random_id) → the answer
        self._changed = asyncio.Event()
        self._users: dict[int, TLObject] = {self.me.id: self.me}
        self._chats: dict[int, _ChatState] = {}
        self._messages: dict[tuple[int, int], TLObject] = {}
        self._thread_of: dict[tuple[int, int], int] = {}
        self._pts = 1
        self._channel_pts: dict[int, int] = defaultdict(lambda: 1)
        self._log: list[tuple[int, int | None, TLObject]] = []  # (pts, channel raw id, msg)
        self._files: dict[int, bytes | str] = {}
        self._uploads: dict[int, dict[int, bytes]] = defaultdict(dict)
        self._ids = itertools.count(10_000_000_000)

    # -- wiring --------------------------------------------------------------------------------

    def attach(self, client: Client) -> Client:
        """Route ``client``'s network layer here; returns the client."""
        fake = self

        async def connect() -> bool:
            if client.is_connected:
                raise ConnectionError("Client is already connected")
            await client.storage.open()
            # Never load_session() an empty session: it would create an auth key on a socket.
            if await client.storage.user_id() is None or await client.storage.auth_key() is None:
                await client.storage.dc_id(2)
                await client.storage.api_id(client.api_id or 1)
                await client.storage.test_mode(False)
                await client.storage.auth_key(os.urandom(256))
                await client.storage.user_id(fake.me.id)
                await client.storage.is_bot(fake.is_bot)
                await client.storage.date(int(time.time()))
            client.session = FakeSession(fake, client)
            client.is_connected = True
            return True

        async def disconnect() -> None:
            if not client.is_connected:
                raise ConnectionError("Client is already disconnected")
            if client.is_initialized:
                raise ConnectionError("Can't disconnect an initialized client")
            await client.storage.close()
            client.session = None
            client.is_connected = False

        async def get_session(*args: Any, **kwargs: Any) -> FakeSession:
            if client.session is None:
                raise ConnectionError("Client is not connected")
            return client.session

        client.connect = connect  # type: ignore[method-assign]
        client.disconnect = disconnect  # type: ignore[method-assign]
        client.get_session = get_session  # type: ignore[method-assign]
        self.client = client
        return client

    def fail(self, method: str, error: str, *, times: int | None = 1,
             chat_id: int | None = None, code: int | None = None,
             delivered: bool = False) -> None:
        """Answer the next ``times`` matching requests with an RPC error.

        ``method`` is a raw name (``messages.EditMessage``), an action name (``send_message``,
        ``edit_message``, ``send_draft``, ``chat_action``, ``send_photo``...) or ``*``.
        ``error`` is Telegram's error (``FLOOD_WAIT_3``, ``USER_IS_BLOCKED``, the server error
        ``RPC_CALL_FAIL``...; use ids Pyrogram knows, it logs unknown ones to
        ``unknown_errors.txt``) or ``TIMEOUT`` (no answer at all). ``delivered``: the request
        takes effect (the message is sent) and only its answer is lost or an error.
        The client's session retries timeouts and server errors by itself (each retry is a
        matching request too).
        """
        self._faults.append(Fault(method, error, code or _error_code(error), chat_id, times,
                                  delivered))

    # -- recording -----------------------------------------------------------------------------

    def _record(self, action: dict[str, Any]) -> dict[str, Any]:
        order = {key: i for i, key in enumerate(_KEY_ORDER)}
        action = dict(sorted(((k, v) for k, v in action.items() if v is not None),
                             key=lambda kv: order.get(kv[0], len(order))))
        self.actions.append(action)
        self.action_times.append(time.monotonic())
        self.action_origins.append(delivering.get())
        for listener in list(self.listeners):
            listener(action)
        self._changed.set()
        self._changed = asyncio.Event()
        return action

    async def wait_for(self, predicate: Callable[[dict[str, Any]], bool], *, start: int = 0,
                       timeout: float = 10.0) -> dict[str, Any]:
        """The first action from index ``start`` on that matches, waiting for it if needed."""
        async with asyncio.timeout(timeout):
            seen = start
            while True:
                for action in self.actions[seen:]:
                    if predicate(action):
                        return action
                seen = len(self.actions)
                await self._changed.wait()

    # -- incoming messages ---------------------------------------------------------------------

    def _chat(self, chat_id: int, chat_type: str, *, forum: bool = False) -> _ChatState:
        state = self._chats.get(chat_id)
        if state is None:
            state = self._chats[chat_id] = _ChatState(chat_id, chat_type)
        if chat_type == "group":
            state.raw_chat = raw.types.Chat(
                id=-chat_id, title=f"Group {-chat_id}", photo=raw.types.ChatPhotoEmpty(),
                participants_count=3, date=0, version=1)
        elif chat_type in ("supergroup", "channel"):
            was_forum = bool(getattr(state.raw_chat, "forum", False))
            state.raw_chat = raw.types.Channel(
                id=CHANNEL_ID_BASE - chat_id, title=f"Chat {chat_id}",
                photo=raw.types.ChatPhotoEmpty(), date=0, access_hash=chat_id & 0xFFFF,
                megagroup=chat_type == "supergroup" or None,
                broadcast=chat_type == "channel" or None, forum=(forum or was_forum) or None)
        return state

    def _user(self, user_id: int, username: str | None, first_name: str | None) -> TLObject:
        user = raw.types.User(id=user_id, access_hash=user_id & 0xFFFF,
                              first_name=first_name or username or f"User {user_id}",
                              username=username or None)
        self._users[user_id] = user
        return user

    @staticmethod
    def peer(chat_id: int, chat_type: str) -> TLObject:
        if chat_type == "private":
            return raw.types.PeerUser(user_id=chat_id)
        if chat_type == "group":
            return raw.types.PeerChat(chat_id=-chat_id)
        return raw.types.PeerChannel(channel_id=CHANNEL_ID_BASE - chat_id)

    def _entities(self, text: str) -> list[TLObject]:
        entities: list[TLObject] = []
        command = _COMMAND.match(text)
        if command:
            entities.append(raw.types.MessageEntityBotCommand(offset=0,
                                                              length=utf16_len(command[0])))
        for m in _MENTION.finditer(text):
            if command and m.start() < command.end():
                continue
            entities.append(raw.types.MessageEntityMention(
                offset=utf16_len(text[:m.start()]), length=utf16_len(m[0])))
        return entities

    def _media(self, photo: str | bytes | None, voice: str | bytes | None,
               sticker: str | None, document: str | bytes | None) -> TLObject | None:
        def content(source: str | bytes) -> tuple[bytes | str, int]:
            if isinstance(source, bytes):
                return source, len(source)
            if re.match(r"^https?://", source):
                return source, 0
            data = Path(source).expanduser().read_bytes()
            return data, len(data)

        now = int(time.time())
        if photo is not None:
            data, size = content(photo)
            media_id = next(self._ids)
            self._files[media_id] = data
            return raw.types.MessageMediaPhoto(photo=raw.types.Photo(
                id=media_id, access_hash=1, file_reference=b"", date=now, dc_id=2,
                sizes=[raw.types.PhotoSize(type="y", w=800, h=600, size=size or 1)]))
        if voice is not None or document is not None:
            source = voice if voice is not None else document
            assert source is not None
            data, size = content(source)
            media_id = next(self._ids)
            self._files[media_id] = data
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
                id=media_id, access_hash=1, file_reference=b"", date=now, mime_type=mime,
                size=size or 1, dc_id=2, attributes=attributes))
        if sticker is not None:
            media_id = next(self._ids)
            self._files[media_id] = b"RIFF\x00\x00\x00\x00WEBP"
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
                       ) -> tuple[TLObject, int, int]:
        """The raw ``Updates`` for one incoming message, its chat id and message id."""
        chat_type = chat_type or infer_chat_type(user_id if chat_id is None else chat_id)
        chat_id = user_id if chat_id is None else chat_id
        check_chat(chat_id, chat_type, user_id)
        state = self._chat(chat_id, chat_type, forum=thread_id is not None)
        if message_id is None:
            message_id = state.last_incoming + 1
        state.last_incoming = max(state.last_incoming, message_id)
        state.next_outgoing = max(state.next_outgoing, message_id + 1)
        user = self._user(user_id, username, first_name)
        bot_name = (self.me.username or "").lower()
        mentioned = bool(bot_name) and any(
            m[1].lower() == bot_name for m in _MENTION.finditer(text))
        reply_to = None
        if reply_to_bot:
            if not state.bot_messages:  # the bot said something earlier (before this run)
                earlier = self._outgoing_id(state)
                self._messages[(chat_id, earlier)] = raw.types.Message(
                    id=earlier, peer_id=self.peer(chat_id, chat_type), date=0, message="…",
                    out=True, from_id=raw.types.PeerUser(user_id=self.me.id))
                if thread_id is not None:
                    self._thread_of[(chat_id, earlier)] = thread_id
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
        elif thread_id is not None:
            reply_to = raw.types.MessageReplyHeader(reply_to_msg_id=thread_id, forum_topic=True)
        if thread_id is not None:
            state.topics.add(thread_id)
            self._thread_of[(chat_id, message_id)] = thread_id
        media = self._media(photo, voice, sticker, document)
        message = raw.types.Message(
            id=message_id, peer_id=self.peer(chat_id, chat_type), date=int(time.time()),
            message=text, out=False, mentioned=mentioned or None,
            from_id=None if chat_type == "channel" else raw.types.PeerUser(user_id=user_id),
            post=chat_type == "channel" or None, reply_to=reply_to, media=media,
            entities=self._entities(text) or None)
        self._messages[(chat_id, message_id)] = message
        chats = [state.raw_chat] if state.raw_chat is not None else []
        if chat_type in ("supergroup", "channel"):
            channel = CHANNEL_ID_BASE - chat_id
            self._channel_pts[channel] += 1
            pts = self._channel_pts[channel]
            update: TLObject = raw.types.UpdateNewChannelMessage(message=message, pts=pts,
                                                                 pts_count=1)
            self._log.append((pts, channel, message))
        else:
            self._pts += 1
            update = raw.types.UpdateNewMessage(message=message, pts=self._pts, pts_count=1)
            self._log.append((self._pts, None, message))
        updates = raw.types.Updates(updates=[update], users=[user], chats=chats,
                                    date=int(time.time()), seq=0)
        return _wire(updates), chat_id, message_id

    async def incoming(self, **fields: Any) -> tuple[int, int]:
        """Deliver one incoming message (fields as in a ``tgmux simulate`` input line);
        returns ``(chat_id, message_id)``. While the client is offline the message waits for
        its catch-up (``updates.getDifference``) at the next start."""
        updates, chat_id, message_id = self.build_incoming(**fields)
        await self.push(updates)
        return chat_id, message_id

    async def push(self, updates: TLObject) -> None:
        """Push raw updates to the client, as the network does (dropped while it is not
        connected: it catches up through getDifference when it starts)."""
        client = self.client
        if client is not None and client.is_connected:
            await client.handle_updates(updates)

    # -- answering requests --------------------------------------------------------------------

    def chat_id_of(self, peer: TLObject | None) -> int | None:
        if isinstance(peer, (raw.types.InputPeerUser, raw.types.PeerUser)):
            return peer.user_id
        if isinstance(peer, raw.types.InputPeerSelf):
            return self.me.id
        if isinstance(peer, (raw.types.InputPeerChat, raw.types.PeerChat)):
            return -peer.chat_id
        if isinstance(peer, (raw.types.InputPeerChannel, raw.types.PeerChannel,
                             raw.types.InputChannel)):
            return utils.get_channel_id(peer.channel_id)
        return None

    def _state_for(self, chat_id: int) -> _ChatState:
        state = self._chats.get(chat_id)
        if state is None:
            chat_type = infer_chat_type(chat_id)
            state = self._chat(chat_id, chat_type)
        return state

    def _outgoing_id(self, state: _ChatState) -> int:
        message_id = state.next_outgoing
        state.next_outgoing += 1
        return message_id

    async def answer(self, query: TLObject, client: Client) -> Any:
        name = query.QUALNAME.removeprefix("functions.")
        peer = getattr(query, "peer", None) or getattr(query, "channel", None)
        chat_id = self.chat_id_of(peer)
        action = self._action_name(query)
        request = Request(name, query, chat_id, time.monotonic())
        self.requests.append(request)
        fault = next((f for f in self._faults if f.matches((name, action or name), chat_id)),
                     None)
        if fault is not None:
            if fault.times is not None:
                fault.times -= 1
            if not fault.delivered:
                self._raise(fault, request)
        handler = getattr(self, "_on_" + name.replace(".", "_"), None)
        if handler is None:
            self.unknown.append(name)
            raise UnknownRequest(f"the fake Telegram has no answer for {name}: {query}")
        try:
            result = await handler(query)
        except RPCError as exc:
            error = str(exc.ID or exc.NAME)
            if error.endswith("_X") and isinstance(exc.value, int):
                error = f"{error[:-2]}_{exc.value}"
            request.error = error
            raise
        if fault is not None:  # done, but the client never hears so
            self._raise(fault, request)
        return result

    @staticmethod
    def _raise(fault: Fault, request: Request) -> None:
        request.error = fault.error
        if fault.error == TIMEOUT:
            raise TimeoutError("Request timed out")  # what Pyrogram's Session.send raises
        RPCError.raise_it(raw.types.RpcError(error_code=fault.code, error_message=fault.error),
                          type(request.query))

    def _action_name(self, query: TLObject) -> str | None:
        if isinstance(query, raw.functions.messages.SendMessage):
            return "send_message"
        if isinstance(query, raw.functions.messages.EditMessage):
            return "edit_message"
        if isinstance(query, raw.functions.messages.SetTyping):
            if isinstance(query.action, raw.types.SendMessageTextDraftAction):
                return "send_draft"
            return "chat_action"
        if isinstance(query, raw.functions.messages.SendMedia):
            return self._media_action(query.media)
        if isinstance(query, raw.functions.bots.SetBotCommands):
            return "set_commands"
        if isinstance(query, (raw.functions.messages.DeleteMessages,
                              raw.functions.channels.DeleteMessages)):
            return "delete_message"
        return None

    @staticmethod
    def _media_action(media: TLObject) -> str:
        if isinstance(media, (raw.types.InputMediaUploadedPhoto,
                              raw.types.InputMediaPhotoExternal, raw.types.InputMediaPhoto)):
            return "send_photo"
        if isinstance(media, raw.types.InputMediaDocumentExternal):
            # Telegram fetches the URL and looks at the file; so does the fake, by its name.
            ext = Path(media.url.split("?", 1)[0]).suffix.lower()
            return ("send_voice" if ext in _VOICE_EXT else
                    "send_audio" if ext in _AUDIO_EXT else "send_document")
        for attribute in getattr(media, "attributes", None) or []:
            if isinstance(attribute, raw.types.DocumentAttributeAudio):
                return "send_voice" if attribute.voice else "send_audio"
        return "send_document"

    def _updates(self, chat_id: int, message: TLObject, *, edit: bool = False,
                 random_id: int | None = None) -> TLObject:
        state = self._state_for(chat_id)
        if state.chat_type in ("supergroup", "channel"):
            channel = CHANNEL_ID_BASE - chat_id
            self._channel_pts[channel] += 1
            pts = self._channel_pts[channel]
            update: TLObject = (raw.types.UpdateEditChannelMessage if edit else
                                raw.types.UpdateNewChannelMessage)(message=message, pts=pts,
                                                                   pts_count=1)
        else:
            self._pts += 1
            update = (raw.types.UpdateEditMessage if edit else raw.types.UpdateNewMessage)(
                message=message, pts=self._pts, pts_count=1)
        updates = [update]
        if random_id is not None:
            updates.insert(0, raw.types.UpdateMessageID(id=message.id, random_id=random_id))
        users = [self.me] + ([self._users[chat_id]] if chat_id in self._users else [])
        chats = [state.raw_chat] if state.raw_chat is not None else []
        return _wire(raw.types.Updates(updates=updates, users=users, chats=chats,
                                       date=int(time.time()), seq=0))

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
                      media: TLObject | None = None) -> tuple[TLObject, dict[str, Any]]:
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
            reply_to=header, media=media)
        self._messages[(chat_id, message_id)] = message
        if thread is not None:
            self._thread_of[(chat_id, message_id)] = thread
        state.bot_messages.append(message_id)
        info = {"chat_id": chat_id, "message_id": message_id, "reply_to_message_id": reply_id,
                "message_thread_id": thread}
        return message, info

    def _check_text(self, text: str, limit: int = 4096) -> None:
        if not text.strip():
            RPCError.raise_it(raw.types.RpcError(error_code=400, error_message="MESSAGE_EMPTY"),
                              raw.functions.messages.SendMessage)
        if utf16_len(text) > limit:
            error = "MESSAGE_TOO_LONG" if limit == 4096 else "MEDIA_CAPTION_TOO_LONG"
            RPCError.raise_it(raw.types.RpcError(error_code=400, error_message=error),
                              raw.functions.messages.SendMessage)

    def _require_chat(self, chat_id: int | None) -> int:
        if chat_id is None or (chat_id > 0 and chat_id not in self._users):
            RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                 error_message="PEER_ID_INVALID"),
                              raw.functions.messages.SendMessage)
        assert chat_id is not None
        return chat_id

    # handlers: _on_<module>_<Function>

    async def _on_updates_GetState(self, query: TLObject) -> TLObject:
        return raw.types.updates.State(pts=self._pts, qts=0, date=int(time.time()), seq=0,
                                       unread_count=0)

    async def _on_users_GetFullUser(self, query: TLObject) -> TLObject:
        user_id = self.me.id if isinstance(query.id, raw.types.InputUserSelf) else query.id.user_id
        user = self._users.get(user_id)
        if user is None:
            RPCError.raise_it(raw.types.RpcError(error_code=400, error_message="USER_ID_INVALID"),
                              type(query))
        return _wire(raw.types.users.UserFull(
            full_user=raw.types.UserFull(id=user_id, settings=raw.types.PeerSettings(),
                                         notify_settings=raw.types.PeerNotifySettings(),
                                         common_chats_count=0),
            chats=[], users=[user]))

    async def _on_users_GetUsers(self, query: TLObject) -> list[TLObject]:
        found = []
        for item in query.id:
            if isinstance(item, raw.types.InputUserSelf):
                found.append(self.me)
            elif getattr(item, "user_id", None) in self._users:
                found.append(self._users[item.user_id])
        return [_wire(u) for u in found]

    async def _on_messages_SendMessage(self, query: TLObject) -> TLObject:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        again = self._sent.get((chat_id, query.random_id))
        if again is not None:  # the same request again (a retry): sent once, as Telegram does
            return again
        self._check_text(query.message)
        message, info = self._new_outgoing(chat_id, query.message, query.reply_to)
        self._record({"action": "send_message", **info, "text": query.message})
        state = self._state_for(chat_id)
        if state.chat_type == "private":
            self._pts += 1
            answer: TLObject = raw.types.UpdateShortSentMessage(
                id=message.id, pts=self._pts, pts_count=1, date=message.date, out=True)
        else:
            answer = self._updates(chat_id, message, random_id=query.random_id)
        self._sent[(chat_id, query.random_id)] = answer
        return answer

    async def _on_messages_EditMessage(self, query: TLObject) -> TLObject:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        old = self._messages.get((chat_id, query.id))
        if old is None or not old.out:
            RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                 error_message="MESSAGE_ID_INVALID"),
                              type(query))
        text = query.message if query.message is not None else old.message
        self._check_text(text, 4096 if old.media is None else 1024)
        if text == old.message:
            RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                 error_message="MESSAGE_NOT_MODIFIED"),
                              type(query))
        old.message = text
        old.edit_date = int(time.time())
        self._record({"action": "edit_message", "chat_id": chat_id, "message_id": query.id,
                      "text": text})
        return self._updates(chat_id, old, edit=True)

    async def _on_messages_SetTyping(self, query: TLObject) -> bool:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        if isinstance(query.action, raw.types.SendMessageTextDraftAction):
            if not self.is_bot:
                RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                     error_message="BOT_METHOD_INVALID"),
                                  type(query))
            if self._state_for(chat_id).chat_type != "private":
                RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                     error_message="PEER_ID_INVALID"),
                                  type(query))
            text = query.action.text.text
            if utf16_len(text) > 4096:
                RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                     error_message="MESSAGE_TOO_LONG"),
                                  type(query))
            self._record({"action": "send_draft", "chat_id": chat_id,
                          "draft_id": query.action.random_id, "text": text,
                          "message_thread_id": query.top_msg_id})
            return True
        self._record({"action": "chat_action", "chat_id": chat_id,
                      "chat_action": chat_action_name(query.action),
                      "message_thread_id": query.top_msg_id})
        return True

    async def _on_messages_SendMedia(self, query: TLObject) -> TLObject:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        again = self._sent.get((chat_id, query.random_id))
        if again is not None:  # a retry of a sent one
            return again
        if query.message:
            self._check_text(query.message, 1024)
        media = query.media
        now = int(time.time())
        if isinstance(media, (raw.types.InputMediaPhotoExternal,
                              raw.types.InputMediaDocumentExternal)):
            shown = media.url
        elif isinstance(media, (raw.types.InputMediaUploadedPhoto,
                                raw.types.InputMediaUploadedDocument)):
            parts = self._uploads.pop(media.file.id, {})
            if len(parts) != media.file.parts:
                RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                     error_message="FILE_PARTS_INVALID"),
                                  type(query))
            data = b"".join(parts[i] for i in range(media.file.parts))
            shown = f"bytes:{hashlib.sha256(data).hexdigest()}:{len(data)}"
        else:
            raise UnknownRequest(f"the fake Telegram cannot send media {type(media).__name__}")
        action = self._media_action(media)
        media_id = next(self._ids)
        if action == "send_photo":
            stored: TLObject = raw.types.MessageMediaPhoto(photo=raw.types.Photo(
                id=media_id, access_hash=1, file_reference=b"", date=now, dc_id=2,
                sizes=[raw.types.PhotoSize(type="y", w=800, h=600, size=1)]))
        else:
            attributes = list(getattr(media, "attributes", None) or [])
            stored = raw.types.MessageMediaDocument(
                voice=action == "send_voice" or None,
                document=raw.types.Document(
                    id=media_id, access_hash=1, file_reference=b"", date=now,
                    mime_type=getattr(media, "mime_type", None) or "application/octet-stream",
                    size=1, dc_id=2, attributes=attributes))
        message, info = self._new_outgoing(chat_id, query.message or "", query.reply_to,
                                           media=stored)
        self._record({"action": action, **info, "media": shown, "text": query.message or None})
        answer = self._updates(chat_id, message, random_id=query.random_id)
        self._sent[(chat_id, query.random_id)] = answer
        return answer

    async def _on_upload_SaveFilePart(self, query: TLObject) -> bool:
        self._uploads[query.file_id][query.file_part] = query.bytes
        return True

    async def _on_upload_SaveBigFilePart(self, query: TLObject) -> bool:
        self._uploads[query.file_id][query.file_part] = query.bytes
        return True

    async def _on_upload_GetFile(self, query: TLObject) -> TLObject:
        content = self._files.get(query.location.id)
        if content is None:
            RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                 error_message="FILE_REFERENCE_INVALID"),
                              type(query))
        if isinstance(content, str):  # given as a URL: fetched when somebody wants the bytes
            import httpx

            async with httpx.AsyncClient(timeout=30, follow_redirects=True) as http:
                response = await http.get(content)
                response.raise_for_status()
                content = self._files[query.location.id] = response.content
        chunk = content[query.offset: query.offset + query.limit]
        return raw.types.upload.File(type=raw.types.storage.FilePartial(), mtime=0, bytes=chunk)

    async def _on_bots_SetBotCommands(self, query: TLObject) -> bool:
        if not self.is_bot:
            RPCError.raise_it(raw.types.RpcError(error_code=400,
                                                 error_message="USER_BOT_REQUIRED"),
                              type(query))
        scope = re.sub(r"(?<!^)(?=[A-Z])", "_",
                       type(query.scope).__name__.removeprefix("BotCommandScope")).lower()
        self._record({"action": "set_commands", "scope": scope or "default",
                      "commands": [{"command": c.command, "description": c.description}
                                   for c in query.commands]})
        return True

    async def _delete(self, chat_id: int, ids: list[int]) -> TLObject:
        for message_id in ids:
            if self._messages.pop((chat_id, message_id), None) is not None:
                self._record({"action": "delete_message", "chat_id": chat_id,
                              "message_id": message_id})
        self._pts += 1
        return raw.types.messages.AffectedMessages(pts=self._pts, pts_count=len(ids))

    async def _on_messages_DeleteMessages(self, query: TLObject) -> TLObject:
        # Private chats and basic groups share one id space: find the chat by message id.
        for (chat_id, message_id), message in list(self._messages.items()):
            if message_id in query.id and message.out:
                await self._delete(chat_id, [message_id])
        self._pts += 1
        return raw.types.messages.AffectedMessages(pts=self._pts, pts_count=len(query.id))

    async def _on_channels_DeleteMessages(self, query: TLObject) -> TLObject:
        return await self._delete(self.chat_id_of(query.channel) or 0, list(query.id))

    def _known_messages(self, chat_id: int | None, ids: list[TLObject]) -> TLObject:
        found = []
        for item in ids:
            if isinstance(item, raw.types.InputMessageID):
                message_id = item.id
            elif isinstance(item, raw.types.InputMessageReplyTo):
                source = self._find(chat_id, item.id)
                header = getattr(source, "reply_to", None)
                message_id = getattr(header, "reply_to_msg_id", None) or 0
            else:
                message_id = 0
            message = self._find(chat_id, message_id)
            found.append(message or raw.types.MessageEmpty(id=message_id))
        users = list(self._users.values())
        chats = [s.raw_chat for s in self._chats.values() if s.raw_chat is not None]
        return _wire(raw.types.messages.Messages(messages=found, topics=[], chats=chats,
                                                 users=users))

    def _find(self, chat_id: int | None, message_id: int) -> TLObject | None:
        if chat_id is not None:
            return self._messages.get((chat_id, message_id))
        return next((m for (c, i), m in self._messages.items()
                     if i == message_id and c > CHANNEL_ID_BASE), None)

    async def _on_messages_GetMessages(self, query: TLObject) -> TLObject:
        return self._known_messages(None, list(query.id))

    async def _on_channels_GetMessages(self, query: TLObject) -> TLObject:
        return self._known_messages(self.chat_id_of(query.channel), list(query.id))

    async def _on_updates_GetDifference(self, query: TLObject) -> TLObject:
        now = int(time.time())
        new = [m for pts, channel, m in self._log if channel is None and pts > query.pts]
        if not new:
            return raw.types.updates.DifferenceEmpty(date=now, seq=0)
        return _wire(raw.types.updates.Difference(
            new_messages=new, new_encrypted_messages=[], other_updates=[],
            chats=[s.raw_chat for s in self._chats.values() if s.raw_chat is not None],
            users=list(self._users.values()),
            state=raw.types.updates.State(pts=self._pts, qts=0, date=now, seq=0,
                                          unread_count=0)))

    async def _on_updates_GetChannelDifference(self, query: TLObject) -> TLObject:
        channel = query.channel.channel_id
        current = self._channel_pts[channel]
        new = [m for pts, ch, m in self._log if ch == channel and pts > query.pts]
        if not new:
            return raw.types.updates.ChannelDifferenceEmpty(final=True, pts=current)
        return _wire(raw.types.updates.ChannelDifference(
            final=True, pts=current, new_messages=new, other_updates=[],
            chats=[s.raw_chat for s in self._chats.values() if s.raw_chat is not None],
            users=list(self._users.values())))

    async def _on_messages_GetChats(self, query: TLObject) -> TLObject:
        chats = [s.raw_chat for s in self._chats.values()
                 if isinstance(s.raw_chat, raw.types.Chat) and s.raw_chat.id in query.id]
        return _wire(raw.types.messages.Chats(chats=chats))

    async def _on_channels_GetChannels(self, query: TLObject) -> TLObject:
        wanted = {getattr(c, "channel_id", None) for c in query.id}
        chats = [s.raw_chat for s in self._chats.values()
                 if isinstance(s.raw_chat, raw.types.Channel) and s.raw_chat.id in wanted]
        return _wire(raw.types.messages.Chats(chats=chats))


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
    if chat_type == "private" and chat_id != user_id:
        raise ValueError("a private chat's chat_id is the user's id")
    if chat_type == "group" and not CHANNEL_ID_BASE < chat_id < 0:
        raise ValueError("a group's chat_id is negative (e.g. -4012345678)")
    if chat_type in ("supergroup", "channel") and chat_id >= CHANNEL_ID_BASE:
        raise ValueError(f"a {chat_type}'s chat_id starts with -100 (e.g. -1001234567890)")


def offline_client(fake: FakeTelegram, *, skip_updates: bool = False, storage: Any = None,
                   name: str = "tgmux-offline") -> Client:
    """A Client with tgmux's options, attached to ``fake``; in memory unless ``storage`` (a
    Pyrogram Storage, e.g. a session file to show catch-up after a restart) is given."""
    from tgmux.telegram.client import CLIENT_OPTIONS

    options: dict[str, Any] = {**CLIENT_OPTIONS, "api_id": 1, "api_hash": "0" * 32,
                               "skip_updates": skip_updates}
    if storage is not None:
        options["storage_engine"] = storage
    else:
        options["in_memory"] = True
    return fake.attach(Client(name, **options))
