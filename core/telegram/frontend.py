"""Delivering replies to Telegram: typing actions, splitting, streaming, media.

:class:`TelegramFrontend` implements the engine's ``Frontend`` protocol. Every request it makes
goes through :class:`~tgmux.telegram.sender.Sender` (the outgoing limiter and the error policy:
flood waits, errors that will not go away, what may be sent again after a timeout); a reply's
messages go through an :class:`~tgmux.telegram.outbox.Outbox`, and a text that grows while it
is shown through a :class:`~tgmux.telegram.streaming.Stream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from io import BytesIO
from typing import Any

from pyrogram import Client, enums, raw, types
from pyrogram.errors import RPCError

from tgmux.audio import DEFAULT_MAX_BYTES, DEFAULT_MAX_SECONDS, to_voice_note
from tgmux.backend import (
    Audio,
    ChatIdentity,
    CommandSpec,
    Image,
    Metadata,
    Notice,
    ReplyPart,
    Text,
    TextDelta,
    Usage,
)
from tgmux.command_menus import Scope
from tgmux.config import TelegramConfig
from tgmux.formatting import Formatted
from tgmux.telegram.normalize import SERVICE_USER_ID, RecentIds
from tgmux.telegram.outbox import Entities, Outbox, topic_of, with_plain_fallback
from tgmux.telegram.sender import (
    ChatUnavailable,
    DeliveryFailed,
    FloodControl,
    FloodWaitRequired,
    Sender,
)
from tgmux.telegram.streaming import DRAFT_KEEPALIVE, Pacing, Stream
from tgmux.telegram.textsplit import (
    formatted_messages,
    rendered,
    split_formatted,
    split_formatted_caption,
)

__all__ = ["TelegramFrontend"]

log = logging.getLogger("tgmux.telegram")

#: Telegram would not take the media as that kind (a file still gets through as a document).
MEDIA_REJECTED = frozenset({
    "PHOTO_INVALID_DIMENSIONS", "PHOTO_EXT_INVALID", "IMAGE_PROCESS_FAILED",
    "PHOTO_SAVE_FILE_INVALID", "WEBPAGE_CURL_FAILED", "WEBPAGE_MEDIA_EMPTY", "MEDIA_INVALID",
    "MEDIA_EMPTY", "PHOTO_CONTENT_URL_EMPTY", "FILE_PARTS_INVALID", "VOICE_MESSAGES_FORBIDDEN",
})

TYPING_GRACE = 0.4  # seconds before the first typing action (instant replies need none)


#: Bot API scope name -> kurigram's scope, from (chat_id, user_id)
_SCOPES: dict[str, Callable[[Any, Any], types.BotCommandScope]] = {
    "default": lambda _c, _u: types.BotCommandScopeDefault(),
    "all_private_chats": lambda _c, _u: types.BotCommandScopeAllPrivateChats(),
    "all_group_chats": lambda _c, _u: types.BotCommandScopeAllGroupChats(),
    "all_chat_administrators": lambda _c, _u: types.BotCommandScopeAllChatAdministrators(),
    "chat": lambda c, _u: types.BotCommandScopeChat(c),
    "chat_administrators": lambda c, _u: types.BotCommandScopeChatAdministrators(c),
    "chat_member": types.BotCommandScopeChatMember,
}

_RAW_ACTIONS: dict[enums.ChatAction, Callable[[], Any]] = {
    enums.ChatAction.TYPING: raw.types.SendMessageTypingAction,
    enums.ChatAction.UPLOAD_PHOTO: lambda: raw.types.SendMessageUploadPhotoAction(progress=0),
    enums.ChatAction.RECORD_AUDIO: raw.types.SendMessageRecordAudioAction,
    enums.ChatAction.UPLOAD_AUDIO: lambda: raw.types.SendMessageUploadAudioAction(progress=0),
    enums.ChatAction.UPLOAD_DOCUMENT: lambda: raw.types.SendMessageUploadDocumentAction(
        progress=0),
}


class _ChatActions:
    """"typing…" (or "sending a photo…") shown while a reply is on its way, repeated every
    ``interval`` seconds (Telegram shows one for about 5 s) until the reply is sent. Not
    shown while the reply only waits for its send slot (it is ready: nothing is being
    typed), and at most once per ``typing_interval`` per chat across replies. Nothing runs
    for a reply sent within the grace period (a timer, no task)."""

    def __init__(self, frontend: TelegramFrontend, chat: ChatIdentity) -> None:
        self.frontend = frontend
        self.chat = chat
        self.action = enums.ChatAction.TYPING
        self.showing = False
        self._wake: asyncio.Event | None = None
        self.task: asyncio.Task[None] | None = None
        self._timer = asyncio.get_running_loop().call_later(TYPING_GRACE, self._begin)

    def _begin(self) -> None:
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"tgmux-typing-{self.chat.chat_id}")

    def set(self, action: enums.ChatAction) -> None:
        if action != self.action:
            self.action = action
            if self.showing and self._wake is not None:  # nothing is shown before the grace
                self._wake.set()

    def cancel(self) -> asyncio.Task[None] | None:
        """Stop (the task to wait for, if one started)."""
        self._timer.cancel()
        if self.task is not None:
            self.task.cancel()
        return self.task

    async def _run(self) -> None:
        frontend = self.frontend
        chat_id = self.chat.chat_id
        wake = self._wake
        assert wake is not None
        self.showing = True
        while True:
            wake.clear()
            wait = frontend.typing_interval
            if not frontend.flood.queued.get(chat_id):
                due = frontend.action_due(chat_id, self.action)
                if due <= 0:
                    await frontend.chat_action(self.chat, self.action)
                else:
                    wait = due
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(wait):
                    await wake.wait()


class TelegramFrontend:
    """The engine's frontend for Telegram (see the module docstring)."""

    def __init__(self, client: Client, tg: TelegramConfig, *,
                 edit_interval: float | None = None, typing_interval: float | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.client = client
        self.tg = tg
        self.flood = FloodControl(tg.flood)
        self.sender = Sender(self.flood, sleep=sleep)
        self.pacing = Pacing(self.flood, tg.stream_edit_interval if edit_interval is None
                             else edit_interval)
        self.typing_interval = tg.typing_interval if typing_interval is None else typing_interval
        self.drafts_supported = tg.drafts
        #: seconds without an update after which a shown draft is sent again
        self.draft_keepalive = DRAFT_KEEPALIVE
        #: what is transcoded into a voice note at most (more is sent as an audio file)
        self.voice_max_bytes = DEFAULT_MAX_BYTES
        self.voice_max_seconds = DEFAULT_MAX_SECONDS
        self.sent_ids = RecentIds()
        #: chat id -> (when, which) of its last chat action
        self._last_action: dict[int, tuple[float, enums.ChatAction]] = {}

    @property
    def edit_interval(self) -> float:
        """Seconds between two updates of a streamed reply (at least)."""
        return self.pacing.edit_interval

    # -- small requests ----------------------------------------------------------------------------

    def action_due(self, chat_id: int, action: enums.ChatAction) -> float:
        """Seconds until the chat may be shown ``action`` again (at most once per
        ``typing_interval``; another action at once)."""
        last = self._last_action.get(chat_id)
        if last is None or last[1] != action:
            return 0.0
        return last[0] + self.typing_interval - time.monotonic()

    async def chat_action(self, chat: ChatIdentity, action: enums.ChatAction) -> None:
        now = time.monotonic()
        last_action = self._last_action
        last_action[chat.chat_id] = (now, action)
        if len(last_action) > 10_000:  # memory follows the chats typing now
            cutoff = now - self.typing_interval
            for key in [k for k, (t, _) in last_action.items() if t < cutoff]:
                del last_action[key]
        client = self.client
        thread = topic_of(chat)

        async def send() -> Any:
            # send_chat_action has no topic parameter; the raw request does.
            return await client.invoke(raw.functions.messages.SetTyping(
                peer=await client.resolve_peer(chat.chat_id), action=_RAW_ACTIONS[action](),
                top_msg_id=thread))

        await self.sender.call(chat.chat_id, "chat_action", send, chat_action=True)

    async def publish_commands(self, specs: Sequence[CommandSpec],
                               scope: Scope | None = None) -> bool:
        """A command menu (bots only) for ``scope`` (default: everyone's), as the core computed
        it (:mod:`tgmux.command_menus`). One attempt; False when Telegram refused it (logged).
        Raises FloodWaitRequired when Telegram asks to wait first: that wait is for this
        method only and slows no message."""
        commands = []
        for spec in specs:
            name = spec.name.lower()
            if not (1 <= len(name) <= 32 and name.replace("_", "a").isalnum() and name.isascii()):
                log.warning("command /%s not published: Telegram allows 1-32 of a-z, 0-9, _",
                            spec.name)
                continue
            description = (spec.description or name)[:256]
            commands.append(types.BotCommand(name, description))
        scope = scope or Scope("default")
        for peer in (scope.chat_id, scope.user_id):
            if peer is None:
                continue
            try:  # Telegram takes a chat's or user's menu only once the bot knows them
                await self.client.resolve_peer(peer)
            except (KeyError, ValueError, RPCError) as exc:
                log.info("command menu for %s %s not published yet: this bot does not know %s "
                         "(%s); it is once they write to it", scope.kind, scope.chat_id, peer,
                         type(exc).__name__)
                return False
        bot_scope = _SCOPES[scope.kind](scope.chat_id, scope.user_id)
        try:
            # chat None: the menu takes nothing from a chat's budget, its flood waits are its own
            await self.sender.call(None, "set_bot_commands",
                                   lambda: self.client.set_bot_commands(
                                       commands[:100], bot_scope, scope.language_code or ""),
                                   idempotent=True, wait_floods=False)
        except FloodWaitRequired:
            raise
        except (DeliveryFailed, ChatUnavailable):
            return False
        return True

    # -- delivery ----------------------------------------------------------------------------------

    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        if chat.chat_type == "private" and chat.chat_id == SERVICE_USER_ID:
            # normalize never passes its messages on; one stored by an older version and
            # answered after a restart must not write a login code back either
            log.warning("%s: nothing is sent to Telegram's service account %s", chat.account,
                        chat.chat_id)
            async for _ in parts:  # the backend's stream must finish cleanly
                pass
            return []
        out = Outbox(self.client, self.sender, self.sent_ids, chat, reply_to_message_id,
                     link_previews=self.tg.link_previews)
        actions = _ChatActions(self, chat)
        stream: Stream | None = None
        delivered: list[ReplyPart] = []
        try:
            async for part in parts:
                if out.dead:
                    continue  # keep reading: the backend's stream must finish cleanly
                try:
                    if isinstance(part, TextDelta):
                        if stream is None:
                            stream = Stream(out, self.pacing, drafts=self._drafts_for(chat),
                                            on_drafts_refused=self._drafts_refused,
                                            keepalive=self.draft_keepalive,
                                            text_format=part.format)
                        stream.push(part.text)
                        continue
                    if isinstance(part, Metadata | Usage):
                        continue  # not shown: a stream goes on past it
                    if stream is not None:
                        final = part.text if isinstance(part, Text) else None
                        text, ok = await stream.finish(final)
                        shown_as, stream = stream.text_format, None
                        if ok and text.strip():
                            delivered.append(Text(text, shown_as))
                            if isinstance(part, Audio):  # its text is shown: not again
                                part = dataclasses.replace(part, text=None)
                        if isinstance(part, Text):
                            continue
                    if await self._deliver_part(out, actions, part):
                        delivered.append(part)
                except ChatUnavailable:
                    out.dead = True
                except DeliveryFailed:
                    pass  # logged by the sender; the reply goes on
            if stream is not None and not out.dead:  # deltas and no final Text: as shown
                text, ok = await stream.finish(None)
                if ok and text.strip():
                    delivered.append(Text(text, stream.text_format))
                stream = None
        except ChatUnavailable:
            out.dead = True
        finally:
            # cancel first (nothing more is shown from here on), then wait for both
            helpers = [t for t in (actions.cancel(), stream.task if stream is not None
                                   else None) if t is not None]
            for task in helpers:
                task.cancel()
            if helpers:
                await asyncio.gather(*helpers, return_exceptions=True)
        return delivered

    def _drafts_refused(self) -> None:
        self.drafts_supported = False

    def _drafts_for(self, chat: ChatIdentity) -> bool:
        me = self.client.me
        return (self.drafts_supported and chat.chat_type == "private"
                and me is not None and bool(me.is_bot))

    async def _deliver_part(self, out: Outbox, actions: _ChatActions,
                            part: ReplyPart) -> bool:
        """Send one complete part; True when it reached the chat."""
        try:
            if isinstance(part, Text | Notice):
                sent = False
                for chunk in await formatted_messages(
                        part.text, getattr(part, "format", None) == "markdown"):
                    sent = await out.send_text(chunk) is not None or sent
                return sent
            if isinstance(part, Image):
                actions.set(enums.ChatAction.UPLOAD_PHOTO)
                return await self._send_media(out, "photo", part.url, part.data,
                                              await _caption(part),
                                              part.filename or _image_name(part.data))
            if isinstance(part, Audio):
                return await self._send_audio_or_text(out, actions, part)
            log.warning("chat %s: cannot show a %s", out.chat.chat_id, type(part).__name__)
            return False
        except DeliveryFailed:
            return False
        finally:
            actions.set(enums.ChatAction.TYPING)

    async def _send_audio_or_text(self, out: Outbox, actions: _ChatActions,
                                  part: Audio) -> bool:
        """The audio; when it cannot be sent and it says what it says (``Audio.text``), that
        text instead: a reply spoken in place of its text still reaches the user."""
        try:
            if await self._send_audio(out, actions, part):
                return True
        except DeliveryFailed:
            if not part.text:
                raise
        if not part.text:
            return False
        log.warning("chat %s: the audio could not be sent; sending its text", out.chat.chat_id)
        return await self._deliver_part(out, actions, Text(part.text, part.format))

    async def _send_audio(self, out: Outbox, actions: _ChatActions, part: Audio) -> bool:
        """A voice note when asked for and possible, else an audio file. Telegram shows a
        voice note only for OGG/Opus sent with its duration, so bytes in any other format are
        transcoded here (:mod:`tgmux.audio`): once for every backend and plugin. Audio that
        cannot be made a voice note (too big, too long, broken, no PyAV) goes out as it is,
        as an audio file. A voice part by URL only is sent as a voice by URL: there are no
        bytes to transcode (a backend that can fetch them hands over bytes)."""
        if part.voice:
            actions.set(enums.ChatAction.RECORD_AUDIO)
            if part.data is None:
                return await self._send_media(out, "voice", part.url, None,
                                              await _caption(part),
                                              part.filename or "voice.ogg")
            note = await to_voice_note(part.data, max_bytes=self.voice_max_bytes,
                                       max_seconds=self.voice_max_seconds,
                                       name=f"chat {out.chat.chat_id}")
            if note is not None:
                return await self._send_media(out, "voice", None, note.data,
                                              await _caption(part),
                                              "voice.ogg", duration=note.whole_seconds)
        actions.set(enums.ChatAction.UPLOAD_AUDIO)
        return await self._send_media(out, "audio", part.url, part.data,
                                      await _caption(part),
                                      part.filename or _audio_name(part.mime_type))

    async def _send_media(self, out: Outbox, kind: str, url: str | None, data: bytes | None,
                          caption: Formatted, filename: str, **extra: Any) -> bool:
        """``caption``: as shown (rendered when Markdown); its first 1024 UTF-16 units go
        with the media, the rest in messages after it."""
        first, rest = split_formatted_caption(caption)
        client = self.client
        method = {"photo": client.send_photo, "voice": client.send_voice,
                  "audio": client.send_audio, "document": client.send_document}[kind]

        def source() -> Any:
            if data is None:
                return url
            buffer = BytesIO(data)
            buffer.name = filename
            return buffer

        if url is None and data is None:
            log.warning("chat %s: a %s without url or bytes was not sent", out.chat.chat_id, kind)
            return False

        async def send(entities: Entities) -> Any:
            async def call(kwargs: dict[str, Any]) -> Any:
                return await method(out.chat.chat_id, source(), caption=first.text or None,
                                     parse_mode=enums.ParseMode.DISABLED,
                                     caption_entities=entities, **extra, **kwargs)

            return await out.send(f"send_{kind}", call)

        try:
            await with_plain_fallback(first, send)
        except DeliveryFailed as exc:
            cause = exc.args[0] if exc.args else ""
            if cause not in MEDIA_REJECTED:
                raise
            # Telegram would not take it as that kind: a file still gets through; a URL it
            # could not fetch is at least shown as a link.
            if data is not None and kind != "document":
                log.info("chat %s: %s refused (%s); sending it as a file", out.chat.chat_id,
                         kind, cause)
                return await self._send_media(out, "document", None, data, caption, filename)
            text = f"{caption.text}\n{url}" if caption.text else (url or "")
            for shown in split_formatted(Formatted(text, caption.entities)):
                await out.send_text(shown)
            return True
        for chunk in rest:
            await out.send_text(chunk)
        return True




async def _caption(part: Image | Audio) -> Formatted:
    """What a media part's caption shows (Markdown rendered)."""
    return await rendered(part.caption, part.format == "markdown")


def _image_name(data: bytes | None) -> str:
    if data is None:
        return "image.jpg"
    if data.startswith(b"\x89PNG"):
        return "image.png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image.webp"
    if data.startswith(b"GIF8"):
        return "image.gif"
    return "image.jpg"


def _audio_name(mime: str | None) -> str:
    return {
        "audio/ogg": "audio.ogg", "audio/wav": "audio.wav", "audio/x-wav": "audio.wav",
        "audio/mp4": "audio.m4a", "audio/aac": "audio.aac", "audio/flac": "audio.flac",
        "audio/webm": "audio.weba",
    }.get(mime or "", "audio.mp3")
