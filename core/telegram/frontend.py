"""Delivering replies to Telegram: typing actions, splitting, streaming, media, flood control.

:class:`TelegramFrontend` implements the engine's ``Frontend`` protocol. Every request that
sends something goes through :class:`Sender`, which owns the one outgoing limiter
(:class:`FloodControl`), honours ``FloodWait`` (waits, then sends the same thing again), treats
``MESSAGE_NOT_MODIFIED`` as success and turns errors that will not go away (bot blocked, chat
write forbidden, peer invalid...) into one log line with the chat id, never an exception.

A new message is never sent a second time after a timeout or a server error: Pyrogram's session
has already retried that very request (same ``random_id``, which Telegram deduplicates), and a
fresh ``send_message`` would carry a new one, so a message whose answer was lost would appear
twice. Only idempotent requests (edits, drafts, deletions, the command menu) are run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextvars import ContextVar
from io import BytesIO
from typing import Any, TypeVar

from pyrogram import Client, enums, raw, types
from pyrogram.errors import RPCError

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
)
from tgmux.config import FloodLimits, TelegramConfig
from tgmux.ratelimit import KeyedLimiter, SlidingWindowLimiter
from tgmux.telegram.normalize import RecentIds
from tgmux.telegram.textsplit import split_caption, split_text

__all__ = ["ChatUnavailable", "DeliveryFailed", "FloodControl", "FloodWaitRequired",
           "OutcomeUnknown", "Sender", "TelegramFrontend", "delivering"]

log = logging.getLogger("tgmux.telegram")

T = TypeVar("T")

#: (chat id, message id) of the message whose reply is being delivered, for the requests made
#: meanwhile (the offline Telegram files each action under it; logs may use it too).
delivering: ContextVar[tuple[int, int | None] | None] = ContextVar("tgmux_delivering",
                                                                  default=None)

#: Errors after which nothing more can be sent to the chat (for now): logged, never retried.
CHAT_GONE = frozenset({
    "USER_IS_BLOCKED", "CHAT_WRITE_FORBIDDEN", "PEER_ID_INVALID", "INPUT_USER_DEACTIVATED",
    "USER_DEACTIVATED", "USER_DEACTIVATED_BAN", "CHANNEL_PRIVATE", "CHANNEL_INVALID",
    "CHAT_ID_INVALID", "CHAT_ADMIN_REQUIRED", "CHAT_RESTRICTED", "CHAT_SEND_PLAIN_FORBIDDEN",
    "CHAT_GUEST_SEND_FORBIDDEN", "USER_BANNED_IN_CHANNEL", "TOPIC_CLOSED", "TOPIC_DELETED",
    "BOT_KICKED", "USER_KICKED", "CHAT_FORBIDDEN", "BOT_BLOCKED",
})
#: The message we reply to is gone: send without the reply.
REPLY_GONE = frozenset({"REPLY_MESSAGE_ID_INVALID", "REPLY_TO_INVALID", "MESSAGE_ID_INVALID"})
FLOOD = frozenset({"FLOOD_WAIT_X", "FLOOD_PREMIUM_WAIT_X", "SLOWMODE_WAIT_X"})
EDIT_GONE = frozenset({"MESSAGE_ID_INVALID", "MESSAGE_EDIT_TIME_EXPIRED",
                       "MESSAGE_AUTHOR_REQUIRED"})
MEDIA_REJECTED = frozenset({
    "PHOTO_INVALID_DIMENSIONS", "PHOTO_EXT_INVALID", "IMAGE_PROCESS_FAILED",
    "PHOTO_SAVE_FILE_INVALID", "WEBPAGE_CURL_FAILED", "WEBPAGE_MEDIA_EMPTY", "MEDIA_INVALID",
    "MEDIA_EMPTY", "PHOTO_CONTENT_URL_EMPTY", "FILE_PARTS_INVALID", "VOICE_MESSAGES_FORBIDDEN",
})

MAX_FLOOD_RETRIES = 5
MAX_FLOOD_WAIT = 3600.0  # seconds; beyond that the message is dropped (and logged)
MAX_TRANSIENT_RETRIES = 3
TYPING_GRACE = 0.4  # seconds before the first typing action (instant replies need none)
STREAM_COALESCE = 0.01  # seconds to gather tokens of the same burst before showing them


_RAW_ACTIONS: dict[enums.ChatAction, Callable[[], Any]] = {
    enums.ChatAction.TYPING: raw.types.SendMessageTypingAction,
    enums.ChatAction.UPLOAD_PHOTO: lambda: raw.types.SendMessageUploadPhotoAction(progress=0),
    enums.ChatAction.RECORD_AUDIO: raw.types.SendMessageRecordAudioAction,
    enums.ChatAction.UPLOAD_AUDIO: lambda: raw.types.SendMessageUploadAudioAction(progress=0),
    enums.ChatAction.UPLOAD_DOCUMENT: lambda: raw.types.SendMessageUploadDocumentAction(
        progress=0),
}


def error_id(exc: BaseException) -> str:
    return str(getattr(exc, "ID", None) or getattr(exc, "NAME", None) or type(exc).__name__)


class ChatUnavailable(Exception):
    """Nothing can be sent to this chat (blocked, kicked, no rights): stop this reply."""


class DeliveryFailed(Exception):
    """This one request failed for good (logged); the reply goes on with its other parts."""


class OutcomeUnknown(DeliveryFailed):
    """No answer (timeout, server error) even after retries: Telegram may or may not have
    done it. Not a refusal: nothing is concluded about the chat or the method."""


class FloodWaitRequired(DeliveryFailed):
    """Telegram asks to wait ``seconds`` before this request (raised instead of waiting when
    the caller said ``wait_floods=False``)."""

    def __init__(self, code: str, seconds: float) -> None:
        super().__init__(code)
        self.seconds = seconds


class ReplyGone(Exception):
    """The message to reply to no longer exists."""


class FloodControl:
    """The one outgoing limiter: overall per second, per private chat per second, per group
    per minute (``telegram.flood``), for every message, edit and draft. Chat actions have a
    budget of their own (``global_per_second``) and are skipped, never queued, when it is
    spent: "typing…" must never delay a reply."""

    def __init__(self, limits: FloodLimits) -> None:
        self.overall = SlidingWindowLimiter(limits.global_per_second, 1.0)
        self.actions = SlidingWindowLimiter(limits.global_per_second, 1.0)
        self.private = KeyedLimiter(limits.private_per_second, 1.0)
        self.group = KeyedLimiter(limits.group_per_minute, 60.0)
        self.limits = limits

    def for_chat(self, chat_id: int) -> SlidingWindowLimiter:
        return self.private.get(chat_id) if chat_id > 0 else self.group.get(chat_id)

    def min_interval(self, chat_id: int) -> float:
        """The average spacing the chat's limit allows (edits are paced to it)."""
        if chat_id > 0:
            return 1.0 / self.limits.private_per_second
        return 60.0 / self.limits.group_per_minute

    async def acquire(self, chat_id: int | None) -> None:
        """A slot for a message (or edit, draft) to ``chat_id``. A request to no chat (the
        command menu...) is not a message: it takes nothing from the messages' budget."""
        if chat_id is None:
            return
        await self.for_chat(chat_id).acquire()
        await self.overall.acquire()

    async def acquire_action(self) -> bool:
        """A slot for a chat action if one is free right now (False: skip it)."""
        if self.actions.delay() > 0:
            return False
        await self.actions.acquire()
        return True

    def penalize(self, chat_id: int | None, seconds: float, *, action: bool = False) -> None:
        """Telegram said FLOOD_WAIT for a request. Its waits are per method (and chat): a
        chat's wait slows that chat; a request to no chat (``set_bot_commands``...) slows
        nothing shared, its caller waits (or gives up) by itself."""
        if action:
            self.actions.penalize(seconds)
        elif chat_id is not None:
            self.for_chat(chat_id).penalize(seconds)


class Sender:
    """Runs one Telegram request at a time through the limiter, with the error policy."""

    def __init__(self, flood: FloodControl, *, sleep: Callable[[float], Awaitable[Any]]
                 = asyncio.sleep) -> None:
        self.flood = flood
        self._sleep = sleep

    async def call(self, chat_id: int | None, what: str, make: Callable[[], Awaitable[T]], *,
                   chat_action: bool = False, replying: bool = False, idempotent: bool = False,
                   wait_floods: bool = True) -> T | None:
        """Run ``make()``; returns its result, or None for MESSAGE_NOT_MODIFIED. Raises
        ChatUnavailable, DeliveryFailed, and ReplyGone when ``replying`` and the message
        replied to is gone. A ``chat_action`` never raises and is skipped (None) when its
        budget is spent.

        ``FloodWait``: Telegram refused the request, nothing was done; it is waited out and the
        same call made again (``wait_floods=False``: FloodWaitRequired is raised instead).
        A timeout or server error (after Pyrogram's own retries of that very request) may
        hide a request Telegram did carry out: ``make()`` is run again only when
        ``idempotent`` (an edit, a draft, a deletion); a new message is given up (logged
        with the chat id), since a second one could show up in the chat twice."""
        best_effort = chat_action
        floods = transient = 0
        while True:
            if chat_action:
                if not await self.flood.acquire_action():
                    return None
            else:
                await self.flood.acquire(chat_id)
            try:
                return await make()
            except asyncio.CancelledError:
                raise
            except RPCError as exc:
                code = error_id(exc)
                if code in FLOOD and isinstance(exc.value, int):
                    seconds = float(exc.value)
                    self.flood.penalize(chat_id, seconds, action=chat_action)
                    floods += 1
                    if best_effort:
                        return None
                    if not wait_floods:
                        raise FloodWaitRequired(code, seconds) from exc
                    if floods > MAX_FLOOD_RETRIES or seconds > MAX_FLOOD_WAIT:
                        log.error("chat %s: %s dropped: Telegram asks to wait %.0f s (%s)",
                                  chat_id, what, seconds, code)
                        raise DeliveryFailed(code) from exc
                    log.warning("chat %s: Telegram asks to wait %.0f s (%s); %s will be sent "
                                "then", chat_id, seconds, code, what)
                    await self._sleep(seconds)
                    continue
                if code == "MESSAGE_NOT_MODIFIED":
                    return None
                if best_effort:
                    log.debug("chat %s: %s failed: %s", chat_id, what, code)
                    return None
                if code in CHAT_GONE:
                    log.warning("chat %s: cannot send (%s); the reply is dropped", chat_id, code)
                    raise ChatUnavailable(code) from exc
                if replying and code in REPLY_GONE:
                    raise ReplyGone(code) from exc
                if (exc.CODE or 0) >= 500:
                    if idempotent and transient < MAX_TRANSIENT_RETRIES:
                        transient += 1
                        log.warning("chat %s: %s: %s; retrying", chat_id, what, code)
                        await self._sleep(2.0 ** (transient - 1))
                        continue
                    raise self._unsure(chat_id, what, exc, idempotent) from exc
                log.error("chat %s: %s failed: %s", chat_id, what, exc)
                raise DeliveryFailed(code) from exc
            except (OSError, TimeoutError, ConnectionError) as exc:
                if best_effort:
                    return None
                if idempotent and transient < MAX_TRANSIENT_RETRIES:
                    transient += 1
                    log.warning("chat %s: %s: %s; retrying", chat_id, what, exc)
                    await self._sleep(2.0 ** (transient - 1))
                    continue
                raise self._unsure(chat_id, what, exc, idempotent) from exc
            except Exception as exc:  # a bug or an unknown request: logged, never crashes
                if best_effort:
                    log.debug("chat %s: %s failed", chat_id, what, exc_info=True)
                    return None
                log.exception("chat %s: %s failed", chat_id, what)
                raise DeliveryFailed(type(exc).__name__) from exc

    @staticmethod
    def _unsure(chat_id: int | None, what: str, exc: BaseException,
                idempotent: bool) -> OutcomeUnknown:
        """A request whose outcome is unknown (timeout, server error), given up: logged."""
        cause = str(exc) or type(exc).__name__
        if idempotent:
            log.error("chat %s: %s failed: %s", chat_id, what, cause)
        else:
            log.error("chat %s: %s may or may not have reached the chat (%s); not sent again, "
                      "so that it cannot appear twice", chat_id, what, cause)
        return OutcomeUnknown(error_id(exc))


class _ChatActions:
    """"typing…" (or "sending a photo…") shown while a reply is on its way, repeated every
    ``interval`` seconds (Telegram shows one for about 5 s) until the reply is sent."""

    def __init__(self, frontend: TelegramFrontend, chat: ChatIdentity) -> None:
        self.frontend = frontend
        self.chat = chat
        self.action = enums.ChatAction.TYPING
        self.showing = False
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"tgmux-typing-{chat.chat_id}")

    def set(self, action: enums.ChatAction) -> None:
        if action != self.action:
            self.action = action
            if self.showing:  # before the grace period ends nothing is shown yet
                self._wake.set()

    async def _run(self) -> None:
        frontend = self.frontend
        await asyncio.sleep(TYPING_GRACE)
        self.showing = True
        while True:
            self._wake.clear()
            await frontend.chat_action(self.chat, self.action)
            with contextlib.suppress(asyncio.TimeoutError):
                async with asyncio.timeout(frontend.typing_interval):
                    await self._wake.wait()



class _Outbox:
    """One reply to one chat: where it goes, what was sent, whether the chat is reachable."""

    def __init__(self, frontend: TelegramFrontend, chat: ChatIdentity,
                 reply_to: int | None) -> None:
        self.frontend = frontend
        self.chat = chat
        # In groups the first message of a reply quotes the message it answers.
        self.reply_to = reply_to if chat.chat_type in ("group", "supergroup") else None
        self.thread = chat.message_thread_id if chat.chat_type == "supergroup" else None
        self.dead = False

    def _reply_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        if self.thread is not None:
            kwargs["message_thread_id"] = self.thread
        if self.reply_to is not None:
            kwargs["reply_parameters"] = types.ReplyParameters(message_id=self.reply_to)
        return kwargs

    async def send(self, what: str, call: Callable[[dict[str, Any]], Awaitable[Any]]) -> Any:
        """Send one message (the first one quotes ``reply_to``); returns Pyrogram's Message."""
        sender = self.frontend.sender
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
            self.frontend.sent_ids.add(chat_id, message_id)
        return result

    async def send_text(self, text: str) -> int | None:
        client = self.frontend.client
        result = await self.send("send_message", lambda kw: client.send_message(
            self.chat.chat_id, text, parse_mode=enums.ParseMode.DISABLED, **kw))
        return getattr(result, "id", None)

    async def edit_text(self, message_id: int, text: str) -> None:
        client = self.frontend.client
        await self.frontend.sender.call(
            self.chat.chat_id, "edit_message",
            lambda: client.edit_message_text(self.chat.chat_id, message_id, text,
                                             parse_mode=enums.ParseMode.DISABLED),
            idempotent=True)  # the same text again: MESSAGE_NOT_MODIFIED at worst

    async def delete(self, message_ids: list[int]) -> None:
        client = self.frontend.client
        await self.frontend.sender.call(
            self.chat.chat_id, "delete_message",
            lambda: client.delete_messages(self.chat.chat_id, message_ids), idempotent=True)


class _Stream:
    """A streamed text, shown while it grows: as message drafts in private chats (bots), or as
    a sent message edited in place; at most one update per ``interval`` per chat. The final
    text replaces whatever was shown, exactly (split over several messages when long)."""

    def __init__(self, frontend: TelegramFrontend, out: _Outbox, *, drafts: bool) -> None:
        self.frontend = frontend
        self.out = out
        self.drafts = drafts
        self.draft_id = random.randint(1, 2**62)
        self.text = ""
        self.messages: list[tuple[int, str]] = []  # (message id, text shown in it)
        self.draft_shown = ""
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"tgmux-stream-{out.chat.chat_id}")
        self.updates = 0

    def push(self, delta: str) -> None:
        self.text += delta
        self._wake.set()

    async def _run(self) -> None:
        await self._wake.wait()
        await asyncio.sleep(STREAM_COALESCE)
        while not self.out.dead:
            self._wake.clear()
            await self.frontend.pace(self.out.chat.chat_id)
            async with self._lock:
                await self._show(self.text, final=False)
            await self._wake.wait()

    async def _show(self, text: str, *, final: bool) -> bool:
        """Make the chat show ``text``; False when some of it could not be sent (logged)."""
        try:
            await self._update(text, final=final)
        except ChatUnavailable:
            self.out.dead = True
            return False
        except DeliveryFailed:
            return False
        return True

    async def _update(self, text: str, *, final: bool) -> None:
        if self.out.dead:
            return
        chunks = split_text(text)
        if not chunks:
            return
        self.updates += 1
        self.frontend.mark_update(self.out.chat.chat_id)
        drafting = self.drafts and not final
        settled = chunks[:-1] if drafting else chunks
        for i, chunk in enumerate(settled):
            if i < len(self.messages):
                message_id, shown = self.messages[i]
                if shown != chunk:
                    try:
                        await self.out.edit_text(message_id, chunk)
                    except DeliveryFailed as exc:
                        if exc.args and exc.args[0] not in EDIT_GONE:
                            raise
                        # deleted meanwhile, or too old to edit: show it in a new message
                        new_id = await self.out.send_text(chunk)
                        if new_id is None:
                            raise
                        message_id = new_id
                    self.messages[i] = (message_id, chunk)
            else:
                message_id = await self.out.send_text(chunk)
                if message_id is not None:
                    self.messages.append((message_id, chunk))
        if final and len(self.messages) > len(chunks):  # the final text is shorter
            extra = [m for m, _ in self.messages[len(chunks):]]
            del self.messages[len(chunks):]
            await self.out.delete(extra)
        if drafting and chunks[-1] != self.draft_shown:
            ok = await self._draft(chunks[-1])
            if not ok:  # drafts refused (not a bot, old API...): edit in place from now on
                self.drafts = False
                await self._update(text, final=False)

    async def _draft(self, text: str) -> bool:
        frontend = self.frontend
        chat = self.out.chat
        try:
            await frontend.sender.call(
                chat.chat_id, "send_draft",
                lambda: frontend.client.send_message_draft(
                    chat.chat_id, self.draft_id, text, message_thread_id=self.out.thread,
                    parse_mode=enums.ParseMode.DISABLED),
                idempotent=True)  # same draft id: shown once
        except OutcomeUnknown:
            return True  # the network, not a refusal (logged): the next update drafts again
        except DeliveryFailed:
            frontend.drafts_supported = False
            log.warning("message drafts are not available; streaming by editing messages")
            return False
        self.draft_shown = text
        return True

    async def finish(self, final: str | None) -> tuple[str, bool]:
        """Show the final text (or, without one, the streamed text as it is); returns it and
        whether it all reached the chat."""
        async with self._lock:  # never cut an update in the middle of a request
            await self.abort()
        text = self.text if final is None else final
        async with self._lock:
            if self.messages or self.draft_shown:
                await self.frontend.pace(self.out.chat.chat_id, final=True)
            ok = await self._show(text, final=True)
        return text, ok

    async def abort(self) -> None:
        """Stop showing updates (the final text is :meth:`finish`'s job)."""
        self.task.cancel()
        (outcome,) = await asyncio.gather(self.task, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("chat %s: streaming update failed", self.out.chat.chat_id,
                      exc_info=outcome)


class TelegramFrontend:
    """The engine's frontend for Telegram (see the module docstring)."""

    def __init__(self, client: Client, tg: TelegramConfig, *,
                 edit_interval: float | None = None, typing_interval: float | None = None,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.client = client
        self.tg = tg
        self.flood = FloodControl(tg.flood)
        self.sender = Sender(self.flood, sleep=sleep)
        self.edit_interval = tg.stream_edit_interval if edit_interval is None else edit_interval
        self.typing_interval = tg.typing_interval if typing_interval is None else typing_interval
        self.drafts_supported = tg.drafts
        self.sent_ids = RecentIds()
        self._last_update: dict[int, float] = {}

    # -- pacing of streamed updates --------------------------------------------------------------

    def interval(self, chat_id: int) -> float:
        return max(self.edit_interval, self.flood.min_interval(chat_id))

    async def pace(self, chat_id: int, *, final: bool = False) -> None:
        """Wait until the chat's last streamed update is ``interval`` seconds old (for the
        final update ``edit_interval``: the limiter sees to the chat's budget)."""
        last = self._last_update.get(chat_id)
        if last is not None:
            interval = self.edit_interval if final else self.interval(chat_id)
            wait = last + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def mark_update(self, chat_id: int) -> None:
        self._last_update[chat_id] = time.monotonic()
        if len(self._last_update) > 10_000:
            cutoff = time.monotonic() - 60
            for key in [k for k, v in self._last_update.items() if v < cutoff]:
                del self._last_update[key]

    # -- small requests ----------------------------------------------------------------------------

    async def chat_action(self, chat: ChatIdentity, action: enums.ChatAction) -> None:
        client = self.client
        thread = chat.message_thread_id if chat.chat_type == "supergroup" else None

        async def send() -> Any:
            # send_chat_action has no topic parameter; the raw request does.
            return await client.invoke(raw.functions.messages.SetTyping(
                peer=await client.resolve_peer(chat.chat_id), action=_RAW_ACTIONS[action](),
                top_msg_id=thread))

        await self.sender.call(chat.chat_id, "chat_action", send, chat_action=True)

    async def publish_commands(self, specs: list[CommandSpec]) -> bool:
        """Telegram's command menu (bots only): every command any chat may use. One attempt
        (TelegramApp runs it in the background); False when Telegram refused it (logged).
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
        try:
            await self.sender.call(None, "set_bot_commands",
                                   lambda: self.client.set_bot_commands(commands),
                                   idempotent=True, wait_floods=False)
        except FloodWaitRequired:
            raise
        except (DeliveryFailed, ChatUnavailable):
            return False
        return True

    # -- delivery ----------------------------------------------------------------------------------

    async def deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart], *,
                      reply_to_message_id: int | None) -> list[ReplyPart]:
        token = delivering.set((chat.chat_id, chat.message_id))
        try:
            return await self._deliver(chat, parts, reply_to_message_id)
        finally:
            delivering.reset(token)

    async def _deliver(self, chat: ChatIdentity, parts: AsyncIterator[ReplyPart],
                       reply_to_message_id: int | None) -> list[ReplyPart]:
        out = _Outbox(self, chat, reply_to_message_id)
        actions = _ChatActions(self, chat)
        stream: _Stream | None = None
        delivered: list[ReplyPart] = []
        try:
            async for part in parts:
                if out.dead:
                    continue  # keep reading: the backend's stream must finish cleanly
                try:
                    if isinstance(part, TextDelta):
                        if stream is None:
                            stream = _Stream(self, out, drafts=self._drafts_for(chat))
                        stream.push(part.text)
                        continue
                    if stream is not None:
                        final = part.text if isinstance(part, Text) else None
                        text, ok = await stream.finish(final)
                        stream = None
                        if ok and text.strip():
                            delivered.append(Text(text))
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
                stream = None
                if ok and text.strip():
                    delivered.append(Text(text))
        except ChatUnavailable:
            out.dead = True
        finally:
            # cancel first (nothing more is shown from here on), then wait for both
            helpers = [actions.task] + ([stream.task] if stream is not None else [])
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)
        return delivered

    def _drafts_for(self, chat: ChatIdentity) -> bool:
        me = self.client.me
        return (self.drafts_supported and chat.chat_type == "private"
                and me is not None and bool(me.is_bot))

    async def _deliver_part(self, out: _Outbox, actions: _ChatActions,
                            part: ReplyPart) -> bool:
        """Send one complete part; True when it reached the chat."""
        try:
            if isinstance(part, Text | Notice):
                sent = False
                for chunk in split_text(part.text):
                    sent = await out.send_text(chunk) is not None or sent
                return sent
            if isinstance(part, Image):
                actions.set(enums.ChatAction.UPLOAD_PHOTO)
                return await self._send_media(out, "photo", part.url, part.data, part.caption,
                                              part.filename or _image_name(part.data))
            if isinstance(part, Audio):
                if part.voice:
                    actions.set(enums.ChatAction.RECORD_AUDIO)
                    return await self._send_media(out, "voice", part.url, part.data,
                                                  part.caption, part.filename or "voice.ogg")
                actions.set(enums.ChatAction.UPLOAD_AUDIO)
                return await self._send_media(out, "audio", part.url, part.data, part.caption,
                                              part.filename or _audio_name(part.mime_type))
            if isinstance(part, Metadata):
                return False
            log.warning("chat %s: cannot show a %s", out.chat.chat_id, type(part).__name__)
            return False
        except DeliveryFailed:
            return False
        finally:
            actions.set(enums.ChatAction.TYPING)

    async def _send_media(self, out: _Outbox, kind: str, url: str | None, data: bytes | None,
                          caption: str | None, filename: str) -> bool:
        caption_text, rest = split_caption(caption or "")
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

        async def call(kwargs: dict[str, Any]) -> Any:
            return await method(out.chat.chat_id, source(), caption=caption_text or None,
                                parse_mode=enums.ParseMode.DISABLED, **kwargs)

        try:
            await out.send(f"send_{kind}", call)
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
            text = f"{caption}\n{url}" if caption else (url or "")
            for chunk in split_text(text):
                await out.send_text(chunk)
            return True
        for chunk in rest:
            await out.send_text(chunk)
        return True


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
