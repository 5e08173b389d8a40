"""The fake Telegram's answers to the requests Pyrogram makes: ``_on_<module>_<Function>``
(``_on_messages_SendMessage``...). Whatever they send, edit or delete is recorded as an action
(:meth:`Handlers._record`); a request with no handler is unknown (the fake fails loudly)."""

from __future__ import annotations

import hashlib
import re
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from pyrogram import raw
from pyrogram.raw.core import TLObject

from tgmux.telegram.fake.entities import bot_api_entities, has_link, raw_entities
from tgmux.telegram.fake.faults import UnknownRequest, refuse
from tgmux.telegram.fake.updates import (
    CHANNEL_ID_BASE,
    World,
    is_referenced,
    names_a_file,
    referenced_file,
    wire,
)
from tgmux.telegram.textsplit import utf16_len

__all__ = ["Handlers", "chat_action_name"]

_VOICE_EXT = {".ogg", ".oga", ".opus"}
_AUDIO_EXT = {".mp3", ".m4a", ".aac", ".wav", ".flac", ".mpga", ".weba"}

#: raw command scopes by their Bot API names (BotCommandScope...)
_SCOPES = {
    "BotCommandScopeDefault": "default",
    "BotCommandScopeUsers": "all_private_chats",
    "BotCommandScopeChats": "all_group_chats",
    "BotCommandScopeChatAdmins": "all_chat_administrators",
    "BotCommandScopePeer": "chat",
    "BotCommandScopePeerAdmins": "chat_administrators",
    "BotCommandScopePeerUser": "chat_member",
}

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


#: What Telegram makes a link preview for (the first link of a text): a URL, or www.…
_LINK = re.compile(r"(?i)\b(?:https?://|www\.)[^\s/$.?#]\S*")


def previewed(text: str, no_webpage: bool | None,
              entities: list[dict[str, Any]] | None = None) -> bool | None:
    """For a message with a link (in its text, or behind a text link): True when Telegram
    would show a link preview under it, False when the request asked for none; None (left
    out of the action) for a message with nothing to preview."""
    if not has_link(text, _LINK, entities):
        return None
    return not no_webpage


def chat_action_name(action: TLObject) -> str:
    """Bot API name of a raw ``SendMessageAction`` (typing, upload_photo, record_voice...)."""
    name = type(action).__name__
    if name in _CHAT_ACTIONS:
        return _CHAT_ACTIONS[name]
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", name.removeprefix("SendMessage")).lower()
    return snake.removesuffix("_action")


def _same(a: list[TLObject] | None, b: list[TLObject] | None) -> bool:
    """The same formatting (as Telegram compares an edit's with the message's)."""
    return [e.write() for e in a or ()] == [e.write() for e in b or ()]


class Handlers(World):
    """The requests the fake Telegram answers (on top of its state, :class:`World`)."""

    def __init__(self, me: TLObject, *, is_bot: bool) -> None:
        super().__init__(me)
        self.is_bot = is_bot
        self._sent: dict[tuple[int, int], TLObject] = {}  # (chat, random_id) → the answer
        self._uploads: dict[int, dict[int, bytes]] = defaultdict(dict)
        #: what was uploaded and sent, by the action's ``media`` ("bytes:<sha256>:<size>"),
        #: for tests that look inside (a voice note's codec); see :meth:`uploaded`
        self.uploaded_media: dict[str, bytes] = {}
        #: files given by their path, as read for a download (by file reference)
        self._referenced: dict[bytes, bytes] = {}
        #: channels the client has asked the difference of since it connected: until then a
        #: push may have been lost in flight (a client killed), so a difference names them
        self._channels_fetched: set[int] = set()

    def connected(self) -> None:
        """A client (re)connected: what it heard before is not known to have arrived."""
        self._channels_fetched.clear()

    def uploaded(self, action: dict[str, Any]) -> bytes:
        """The bytes a media action uploaded (KeyError for media sent by URL)."""
        return self.uploaded_media[action["media"]]

    def _record(self, action: dict[str, Any]) -> dict[str, Any]:
        """File one action (what a chat would show); :class:`FakeTelegram` keeps them."""
        raise NotImplementedError

    def _check_text(self, text: str, limit: int = 4096) -> None:
        if not text.strip():
            refuse("MESSAGE_EMPTY", raw.functions.messages.SendMessage)
        if utf16_len(text) > limit:
            error = "MESSAGE_TOO_LONG" if limit == 4096 else "MEDIA_CAPTION_TOO_LONG"
            refuse(error, raw.functions.messages.SendMessage)

    def _require_chat(self, chat_id: int | None) -> int:
        if chat_id is None or (chat_id > 0 and chat_id not in self._users):
            refuse("PEER_ID_INVALID", raw.functions.messages.SendMessage)
        assert chat_id is not None
        return chat_id

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

    # handlers: _on_<module>_<Function>

    async def _on_updates_GetState(self, query: TLObject) -> TLObject:
        return self.log.state(date=max(self.log.date, int(time.time())))

    async def _on_users_GetFullUser(self, query: TLObject) -> TLObject:
        user_id = self.me.id if isinstance(query.id, raw.types.InputUserSelf) else query.id.user_id
        user = self._users.get(user_id)
        if user is None:
            refuse("USER_ID_INVALID", type(query))
        return wire(raw.types.users.UserFull(
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
        return [wire(u) for u in found]

    async def _on_messages_SendMessage(self, query: TLObject) -> TLObject:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        again = self._sent.get((chat_id, query.random_id))
        if again is not None:  # the same request again (a retry): sent once, as Telegram does
            return again
        self._check_text(query.message)
        entities = bot_api_entities(query.message, query.entities, type(query))
        message, info = self._new_outgoing(chat_id, query.message, query.reply_to,
                                           entities=raw_entities(query.entities))
        self._record({"action": "send_message", **info, "text": query.message,
                      "entities": entities,
                      "link_preview": previewed(query.message, query.no_webpage, entities)})
        state = self._state_for(chat_id)
        if state.chat_type == "private":
            entry = self.log.add(raw.types.UpdateNewMessage(message=message, pts=0,
                                                            pts_count=0),
                                 channel_id=None, date=message.date)
            self.dirty.add(("message", (chat_id, message.id)))
            answer: TLObject = raw.types.UpdateShortSentMessage(
                id=message.id, pts=entry.pts, pts_count=1, date=message.date, out=True)
        else:
            answer = self._updates(chat_id, message, random_id=query.random_id)
        self._sent[(chat_id, query.random_id)] = answer
        return answer

    async def _on_messages_EditMessage(self, query: TLObject) -> TLObject:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        old = self._messages.get((chat_id, query.id))
        if old is None or not old.out:
            refuse("MESSAGE_ID_INVALID", type(query))
        text = query.message if query.message is not None else old.message
        self._check_text(text, 4096 if old.media is None else 1024)
        given = query.entities if query.message is not None else old.entities
        entities = bot_api_entities(text, given, type(query))
        kept = raw_entities(given)
        if text == old.message and _same(kept, old.entities):
            refuse("MESSAGE_NOT_MODIFIED", type(query))
        old.message = text
        old.entities = kept
        old.edit_date = int(time.time())
        self._record({"action": "edit_message", "chat_id": chat_id, "message_id": query.id,
                      "text": text, "entities": entities,
                      "link_preview": previewed(text, query.no_webpage, entities)})
        return self._updates(chat_id, old, edit=True)

    async def _on_messages_SetTyping(self, query: TLObject) -> bool:
        chat_id = self._require_chat(self.chat_id_of(query.peer))
        if isinstance(query.action, raw.types.SendMessageTextDraftAction):
            if not self.is_bot:
                refuse("BOT_METHOD_INVALID", type(query))
            if self._state_for(chat_id).chat_type != "private":
                refuse("PEER_ID_INVALID", type(query))
            text = query.action.text.text
            if utf16_len(text) > 4096:
                refuse("MESSAGE_TOO_LONG", type(query))
            entities = bot_api_entities(text, query.action.text.entities, type(query))
            self._record({"action": "send_draft", "chat_id": chat_id,
                          "draft_id": query.action.random_id, "text": text,
                          "entities": entities, "message_thread_id": query.top_msg_id})
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
        entities = bot_api_entities(query.message or "", query.entities, type(query))
        media = query.media
        now = int(time.time())
        if isinstance(media, (raw.types.InputMediaPhotoExternal,
                              raw.types.InputMediaDocumentExternal)):
            shown = media.url
        elif isinstance(media, (raw.types.InputMediaUploadedPhoto,
                                raw.types.InputMediaUploadedDocument)):
            parts = self._uploads.pop(media.file.id, {})
            if len(parts) != media.file.parts:
                refuse("FILE_PARTS_INVALID", type(query))
            data = b"".join(parts[i] for i in range(media.file.parts))
            shown = f"bytes:{hashlib.sha256(data).hexdigest()}:{len(data)}"
            self.uploaded_media[shown] = data
        else:
            raise UnknownRequest(f"the fake Telegram cannot send media {type(media).__name__}")
        action = self._media_action(media)
        media_id = self._new_media_id()
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
                                           media=stored, entities=raw_entities(query.entities))
        audio = next((a for a in getattr(media, "attributes", None) or []
                      if isinstance(a, raw.types.DocumentAttributeAudio)), None)
        self._record({"action": action, **info, "media": shown, "text": query.message or None,
                      "entities": entities,
                      "mime_type": getattr(media, "mime_type", None),
                      "duration": audio.duration if audio is not None else None})
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
        location = query.location
        reference = location.file_reference
        content = self._files.get(location.id)
        if names_a_file(reference) and (content is None or not is_referenced(reference, content)):
            # not a file of this fake (an earlier process's): one given by its path is read
            # again, as Telegram keeps it; any other this fake does not have
            content = self._referenced.get(reference) or referenced_file(reference)
            if content is None:
                refuse("FILE_REFERENCE_EXPIRED", type(query))
            self._referenced[reference] = content
        if content is None:
            refuse("FILE_REFERENCE_INVALID", type(query))
        chunk = content[query.offset: query.offset + query.limit]
        return raw.types.upload.File(type=raw.types.storage.FilePartial(), mtime=0, bytes=chunk)

    async def _on_bots_SetBotCommands(self, query: TLObject) -> bool:
        if not self.is_bot:
            refuse("USER_BOT_REQUIRED", type(query))
        scope = query.scope
        name = _SCOPES.get(type(scope).__name__)
        if name is None:
            raise UnknownRequest(f"the fake Telegram knows no command scope {scope}")
        peer = getattr(scope, "peer", None)
        user = getattr(scope, "user_id", None)
        self._record({"action": "set_commands",
                      "chat_id": self.chat_id_of(peer) if peer is not None else None,
                      "scope": name,
                      "user_id": self.chat_id_of(user) if user is not None else None,
                      "language_code": query.lang_code or None,
                      "commands": [{"command": c.command, "description": c.description}
                                   for c in query.commands]})
        return True

    def _delete(self, chat_id: int, ids: list[int]) -> list[int]:
        """Delete the bot's messages ``ids`` of a chat; the ids that were deleted."""
        deleted = []
        for message_id in ids:
            message = self._messages.get((chat_id, message_id))
            if message is not None and message.out:
                del self._messages[(chat_id, message_id)]
                self.dirty.add(("message", (chat_id, message_id)))
                deleted.append(message_id)
                self._record({"action": "delete_message", "chat_id": chat_id,
                              "message_id": message_id})
        return deleted

    async def _on_messages_DeleteMessages(self, query: TLObject) -> TLObject:
        # Private chats and basic groups share one id space: find the chat by message id.
        wanted = set(query.id)
        deleted = []
        for chat_id, message_id in list(self._messages):
            if message_id in wanted and chat_id > CHANNEL_ID_BASE:
                deleted += self._delete(chat_id, [message_id])
        if deleted:  # one update, as many pts as messages deleted
            self.log.add(raw.types.UpdateDeleteMessages(messages=deleted, pts=0, pts_count=0),
                         channel_id=None, date=int(time.time()), pts_count=len(deleted))
        return raw.types.messages.AffectedMessages(pts=self.log.common.pts,
                                                   pts_count=len(deleted))

    async def _on_channels_DeleteMessages(self, query: TLObject) -> TLObject:
        chat_id = self.chat_id_of(query.channel) or 0
        deleted = self._delete(chat_id, list(query.id))
        channel = CHANNEL_ID_BASE - chat_id
        if deleted:
            self.log.add(raw.types.UpdateDeleteChannelMessages(
                channel_id=channel, messages=deleted, pts=0, pts_count=0),
                channel_id=channel, date=int(time.time()), pts_count=len(deleted))
        return raw.types.messages.AffectedMessages(pts=self.log.channel(channel).pts,
                                                   pts_count=len(deleted))

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
        return wire(raw.types.messages.Messages(messages=found, topics=[], chats=chats,
                                                 users=users))

    def _find(self, chat_id: int | None, message_id: int) -> TLObject | None:
        if chat_id is not None:
            return self._messages.get((chat_id, message_id))
        return next((m for (c, i), m in self._messages.items()
                     if i == message_id and c > CHANNEL_ID_BASE), None)

    async def _on_messages_GetMessages(self, query: TLObject) -> TLObject:
        return self._known_messages(None, list(query.id))

    async def _on_messages_GetHistory(self, query: TLObject) -> TLObject:
        """A chat's messages, newest first (``min_id``/``max_id`` exclusive, ``limit``)."""
        chat_id = self.chat_id_of(query.peer)
        found = sorted((m for (c, i), m in self._messages.items() if c == chat_id
                        and i > query.min_id and (not query.max_id or i < query.max_id)),
                       key=lambda m: -m.id)[:max(1, min(query.limit or 100, 100))]
        self.served(found)
        users, chats = self._peers_of(found)
        return wire(raw.types.messages.Messages(messages=found, topics=[], chats=chats,
                                                 users=users))

    async def _on_channels_GetMessages(self, query: TLObject) -> TLObject:
        return self._known_messages(self.chat_id_of(query.channel), list(query.id))

    def _peers_of(self, items: list[TLObject]) -> tuple[list[TLObject], list[TLObject]]:
        """The users and chats that messages (or updates carrying one) name."""
        user_ids = {self.me.id}
        chat_ids = set()
        for item in items:
            message = item if isinstance(item, raw.types.Message) else getattr(item, "message",
                                                                               None)
            named = (getattr(message, "peer_id", None), getattr(message, "from_id", None))
            if isinstance(item, raw.types.UpdateChannel):  # the channel itself
                named = (raw.types.PeerChannel(channel_id=item.channel_id),)
            for peer in named:
                chat_id = self.chat_id_of(peer)
                if chat_id is None:
                    continue
                (user_ids if chat_id > 0 else chat_ids).add(chat_id)
        users = [self._users[u] for u in user_ids if u in self._users]
        chats = [self._chats[c].raw_chat for c in chat_ids
                 if c in self._chats and self._chats[c].raw_chat is not None]
        return users, chats

    async def _on_updates_GetDifference(self, query: TLObject) -> TLObject:
        difference = self.log.difference(query.pts, self._peers_of, query.date,
                                         told=self._channels_fetched)
        self.served(getattr(difference, "new_messages", []))
        return wire(difference)

    async def _on_updates_GetChannelDifference(self, query: TLObject) -> TLObject:
        chat_id = self.chat_id_of(query.channel)
        if chat_id is None or chat_id not in self._chats:
            refuse("CHANNEL_INVALID", type(query))
        channel = CHANNEL_ID_BASE - chat_id
        self._channels_fetched.add(channel)
        ranges = None
        if isinstance(query.filter, raw.types.ChannelMessagesFilter):
            ranges = [(r.min_id, r.max_id) for r in query.filter.ranges]

        def dialog(box: Any) -> TLObject:
            top = next((e.message.id for e in reversed(box.entries) if e.message is not None),
                       0)
            return raw.types.Dialog(peer=raw.types.PeerChannel(channel_id=channel),
                                    top_message=top, read_inbox_max_id=0,
                                    read_outbox_max_id=0, unread_count=0,
                                    unread_mentions_count=0, unread_reactions_count=0,
                                    unread_poll_votes_count=0,
                                    notify_settings=raw.types.PeerNotifySettings(),
                                    pts=box.pts)

        difference = self.log.channel_difference(channel, query.pts, query.limit,
                                                 self._peers_of, dialog, ranges)
        self.served(getattr(difference, "new_messages", None)
                    or getattr(difference, "messages", []))
        return wire(difference)

    async def _on_messages_GetChats(self, query: TLObject) -> TLObject:
        chats = [s.raw_chat for s in self._chats.values()
                 if isinstance(s.raw_chat, raw.types.Chat) and s.raw_chat.id in query.id]
        return wire(raw.types.messages.Chats(chats=chats))

    async def _on_channels_GetChannels(self, query: TLObject) -> TLObject:
        wanted = {getattr(c, "channel_id", None) for c in query.id}
        chats = [s.raw_chat for s in self._chats.values()
                 if isinstance(s.raw_chat, raw.types.Channel) and s.raw_chat.id in wanted]
        return wire(raw.types.messages.Chats(chats=chats))
