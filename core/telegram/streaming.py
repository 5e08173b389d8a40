"""Showing a reply while it grows: message drafts (bots, private chats) or a sent message
edited in place, at most one update per interval per chat; the final text replaces whatever
was shown, exactly.

Drafts as Telegram's apps show them: an app drops a draft after ~30 s without an update, and
lets a message replace it only when the message's text starts with the draft's. So a shown
draft is sent again (same draft id, same text) after :data:`DRAFT_KEEPALIVE` seconds without
an update — a model that goes quiet keeps its bubble — and before the message that follows a
draft is sent, a draft of that message's text is shown if the last one is not its start (a
plugin changed the final text's beginning): the bubble turns into the final text, then the
message replaces it. That costs one draft (an overall slot, never the chat's message budget)
and only when the start changed; clearing the draft instead would flash Telegram's "Thinking…"
placeholder. Should that draft not get through (a flood wait), the message is sent anyway and
the stale bubble goes when the apps drop it.

A Markdown stream is shown formatted: each update renders the text so far as a still-growing
text (:func:`tgmux.formatting.render` with ``partial``: an unclosed ``**`` or code fence never
makes broken entities), the final text exactly; drafts and messages are compared by what they
show (the rendered text and its entities)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable

from tgmux.formatting import Formatted
from tgmux.telegram.outbox import Outbox
from tgmux.telegram.sender import (
    ChatUnavailable,
    DeliveryFailed,
    FloodControl,
    FloodWaitRequired,
    OutcomeUnknown,
)
from tgmux.telegram.textsplit import formatted_messages
from tgmux.types import TextFormat

__all__ = ["Pacing", "Stream"]

log = logging.getLogger("tgmux.telegram")

STREAM_COALESCE = 0.01  # seconds to gather tokens of the same burst before showing them
#: Seconds without an update after which a shown draft is sent again: Telegram's apps drop one
#: after ~30 s; 20 leaves room for a slow answer. One request per chat per 20 s is far inside
#: the flood limits (drafts take an overall slot only).
DRAFT_KEEPALIVE = 20.0
#: An edit that cannot be made: the message is gone or too old; its text goes in a new one.
EDIT_GONE = frozenset({"MESSAGE_ID_INVALID", "MESSAGE_EDIT_TIME_EXPIRED",
                       "MESSAGE_AUTHOR_REQUIRED"})


_NO_DRAFT = Formatted("")


class Pacing:
    """The throttle of streamed updates: a chat's next update waits until its last one is
    ``interval`` seconds old: ``edit_interval``, or for edits of sent messages slower when the
    chat's flood budget says so. Drafts are not messages: they are paced by ``edit_interval``
    alone and take nothing from the chat's message budget, so the final message goes at once."""

    def __init__(self, flood: FloodControl, edit_interval: float) -> None:
        self.flood = flood
        self.edit_interval = edit_interval
        self._last_update: dict[int, float] = {}

    def interval(self, chat_id: int, *, drafting: bool = False) -> float:
        if drafting:
            return self.edit_interval
        return max(self.edit_interval, self.flood.min_interval(chat_id))

    async def pace(self, chat_id: int, *, final: bool = False, drafting: bool = False) -> None:
        """Wait until the chat's last streamed update is ``interval`` seconds old (for the
        final update ``edit_interval``: the limiter sees to the chat's budget)."""
        last = self._last_update.get(chat_id)
        if last is not None:
            interval = self.edit_interval if final else self.interval(chat_id,
                                                                     drafting=drafting)
            wait = last + interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)

    def mark_update(self, chat_id: int) -> None:
        self._last_update[chat_id] = time.monotonic()
        if len(self._last_update) > 10_000:
            cutoff = time.monotonic() - 60
            for key in [k for k, v in self._last_update.items() if v < cutoff]:
                del self._last_update[key]

    def hold(self, chat_id: int, seconds: float) -> None:
        """Telegram asked to wait ``seconds`` before the chat's next draft."""
        self._last_update[chat_id] = time.monotonic() + seconds - self.edit_interval


class Stream:
    """A streamed text, shown while it grows: as message drafts in private chats (bots), or as
    a sent message edited in place; at most one update per ``interval`` per chat. The final
    text replaces whatever was shown, exactly (split over several messages when long).

    ``on_drafts_refused`` is called when Telegram refuses drafts (not a bot, old API...):
    this stream edits in place from then on, and so should the next ones."""

    def __init__(self, out: Outbox, pacing: Pacing, *, drafts: bool,
                 on_drafts_refused: Callable[[], None],
                 keepalive: float = DRAFT_KEEPALIVE,
                 text_format: TextFormat | None = None) -> None:
        self.out = out
        self.text_format = text_format
        self.markdown = text_format == "markdown"
        self.pacing = pacing
        self.drafts = drafts
        self.on_drafts_refused = on_drafts_refused
        self.keepalive = keepalive
        self.draft_id = random.randint(1, 2**62)
        self.text = ""
        self.messages: list[tuple[int, Formatted]] = []  # (message id, what it shows)
        #: the draft the chat shows now (no text when none: not yet, or a message replaced it)
        self.draft_shown = _NO_DRAFT
        self._draft_at = 0.0  # when Telegram last took a draft of this stream
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
            await self.pacing.pace(self.out.chat.chat_id, drafting=self._drafts_only())
            async with self._lock:
                await self._show(self.text, final=False)
            await self._quiet()

    async def _quiet(self) -> None:
        """Wait for more text; meanwhile keep a shown draft from being dropped."""
        chat_id = self.out.chat.chat_id
        while not self._wake.is_set() and not self.out.dead:
            if not (self.drafts and self.draft_shown.text):
                await self._wake.wait()
                return
            due = self._draft_at + self.keepalive - time.monotonic()
            if due > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(due):
                        await self._wake.wait()
                continue
            await self.pacing.pace(chat_id, drafting=True)  # a flood wait holds it too
            async with self._lock:
                if self._wake.is_set() or not (self.drafts and self.draft_shown.text):
                    continue
                self.pacing.mark_update(chat_id)
                try:
                    await self._draft(self.draft_shown)  # same id, same text: kept, not redrawn
                except ChatUnavailable:
                    self.out.dead = True

    def _drafts_only(self) -> bool:
        """The next update is a draft and nothing else (no message of this reply to edit)."""
        return self.drafts and not self.messages

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
        # a Markdown stream rendered: as it grows, or exactly when final
        chunks = await formatted_messages(text, self.markdown, partial=not final)
        if not chunks:
            return
        self.updates += 1
        self.pacing.mark_update(self.out.chat.chat_id)
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
                if (self.drafts and self.draft_shown.text
                        and not chunk.text.startswith(self.draft_shown.text)):
                    # the apps replace a draft only by a message that starts with its text
                    await self._draft(chunk)
                message_id = await self.out.send_text(chunk)
                if message_id is not None:
                    self.messages.append((message_id, chunk))
                    self.draft_shown = _NO_DRAFT  # that message took the draft's place
        if final and len(self.messages) > len(chunks):  # the final text is shorter
            extra = [m for m, _ in self.messages[len(chunks):]]
            del self.messages[len(chunks):]
            await self.out.delete(extra)
        if drafting and chunks[-1] != self.draft_shown:
            ok = await self._draft(chunks[-1])
            if not ok:  # drafts refused (not a bot, old API...): edit in place from now on
                self.drafts = False
                await self._update(text, final=False)

    async def _draft(self, text: Formatted) -> bool:
        out = self.out
        chat = out.chat
        try:
            await out.draft(self.draft_id, text)
        except OutcomeUnknown:
            # the network, not a refusal (logged): the next update drafts again; a keepalive
            # tries again after its interval, not at once
            self._draft_at = time.monotonic()
            return True
        except FloodWaitRequired as exc:  # Telegram's wait holds the drafts, not the reply
            self.pacing.hold(chat.chat_id, exc.seconds)
            return True
        except DeliveryFailed:
            self.drafts = False
            self.on_drafts_refused()
            log.warning("message drafts are not available; streaming by editing messages")
            return False
        self.draft_shown = text
        self._draft_at = time.monotonic()
        return True

    async def finish(self, final: str | None) -> tuple[str, bool]:
        """Show the final text (or, without one, the streamed text as it is); returns it and
        whether it all reached the chat."""
        async with self._lock:  # never cut an update in the middle of a request
            await self.abort()
        text = self.text if final is None else final
        async with self._lock:
            # After drafts alone the final message goes at once: drafts are not messages (the
            # limiter still sees to the chat's budget). Edits of sent messages stay paced.
            if self.messages:
                await self.pacing.pace(self.out.chat.chat_id, final=True)
            ok = await self._show(text, final=True)
        return text, ok

    async def abort(self) -> None:
        """Stop showing updates (the final text is :meth:`finish`'s job)."""
        self.task.cancel()
        (outcome,) = await asyncio.gather(self.task, return_exceptions=True)
        if isinstance(outcome, Exception):
            log.error("chat %s: streaming update failed", self.out.chat.chat_id,
                      exc_info=outcome)
