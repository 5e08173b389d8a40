"""From a message to the :class:`~tgmux.backend.Turn` a backend gets: what the user wrote as
the backend should read it, the conversation memory it asked for, and the chat's context.

Kept out of :mod:`tgmux.engine`: each concern of a turn (reply context, group context, the
user's formatting, albums) is built here, called from the one place the engine makes a turn.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from tgmux.backend import Backend, History, ShareMedia, Turn
from tgmux.reply import text_format_of
from tgmux.router import RouteDecision
from tgmux.store import Store
from tgmux.types import COMMAND_PATTERN, ChatIdentity, ChatLine, IncomingMessage, TextFormat
from tgmux.user_text import user_text

__all__ = ["CONTEXT_LINE_CHARS", "CONTEXT_MAX_AGE", "build_turn", "chat_line", "history_for",
           "keep_context", "prune_context", "take_context", "turn_text"]

log = logging.getLogger("tgmux.turns")

#: Characters of one group message kept as context at most (the rest is cut).
CONTEXT_LINE_CHARS = 1000
#: Characters of an author's name kept at most (Telegram's own limit for a first name).
AUTHOR_CHARS = 64
#: Seconds a group message is kept as context when no turn takes it: "what was just said".
CONTEXT_MAX_AGE = 86400.0


def turn_text(message: IncomingMessage, text_format: TextFormat) -> str:
    """What the user wrote as the backend reads it: their formatting in Markdown for a
    Markdown backend (:mod:`tgmux.user_text`); a command's arguments for a command."""
    text = user_text(message.text, message.entities, text_format)
    if message.command is None:
        return text
    match = COMMAND_PATTERN.match(text)
    return (match.group(2) or "").strip() if match else message.args


def history_for(store: Store, backend: Backend, chat: ChatIdentity,
                options: Any) -> History | None:
    """The conversation memory of ``chat`` with ``backend``, when the backend asks for one."""
    memory = backend.memory(options)
    if memory is None:
        return None
    return store.conversation(backend.name, chat, max_turns=memory.max_turns,
                              max_chars=memory.max_chars, scope=memory.scope)


def build_turn(message: IncomingMessage, decision: RouteDecision, backend: Backend, *,
               store: Store, notify: Callable[[str], Awaitable[None]],
               share: ShareMedia | None) -> Turn:
    """The turn ``backend`` gets for ``message`` on the route ``decision`` chose."""
    chat = message.chat
    command = message.command
    return Turn(
        text=turn_text(message, text_format_of(decision.options) or "plain"),
        chat=chat,
        options=decision.options,
        kv=backend.kv,
        backend_name=backend.name,
        command=command,
        args=message.args,
        media=message.media,
        notify=notify,
        history=history_for(store, backend, chat, decision.options),
        share=share,
        reply_to=message.reply_to,
        album=((message.media, *message.album) if message.media is not None and message.album
               else ()),
    )


# -- group context (route key ``group_context``) ------------------------------------------------


def _topic(chat: ChatIdentity) -> int | None:
    """The forum topic whose context a message belongs to (a group has none)."""
    return chat.message_thread_id if chat.chat_type == "supergroup" else None


def chat_line(message: IncomingMessage) -> ChatLine:
    """``message`` as a line of its group's context: its author as the chat shows them (first
    name, else @username), its text cut to :data:`CONTEXT_LINE_CHARS`."""
    chat = message.chat
    author = chat.first_name or (f"@{chat.username}" if chat.username else None) or (
        f"user {chat.user_id}" if chat.user_id is not None else "someone")
    text = message.text.strip()
    if len(text) > CONTEXT_LINE_CHARS:
        text = text[:CONTEXT_LINE_CHARS - 1] + "…"
    return ChatLine(author=author[:AUTHOR_CHARS], text=text, at=message.received_at,
                    user_id=chat.user_id, message_id=chat.message_id, username=chat.username)


async def keep_context(store: Store, message: IncomingMessage,
                       decision: RouteDecision) -> None:
    """Keep a group message the bot was not asked to answer as its chat's (topic's) context,
    when the route asks for some (``group_context``): one store write, the newest N kept. A
    store outage skips it (the store's guard logs it)."""
    chat = message.chat
    if (decision.group_context <= 0 or chat.chat_type not in ("group", "supergroup")
            or not message.text.strip()):
        return
    try:
        await store.context_add(chat.account, chat.chat_id, _topic(chat), chat_line(message),
                                keep=decision.group_context)
    except Exception:  # never the chat's problem: it asked for nothing
        log.exception("chat %s: a group message could not be kept as context", chat.chat_id)


async def take_context(store: Store, turn: Turn, decision: RouteDecision) -> Turn:
    """``turn`` with its chat's (topic's) context: the group messages not addressed to the bot
    since it last answered there, at most the route's ``group_context``, oldest first. Each
    is given once: taken, they are forgotten. One store read; none for a command, a private
    chat or a route without ``group_context``."""
    chat = turn.chat
    if (decision.group_context <= 0 or chat.chat_type not in ("group", "supergroup")
            or turn.command):
        return turn
    try:
        lines = await store.context_take(chat.account, chat.chat_id, _topic(chat))
    except Exception:  # the answer matters more than its context
        log.exception("chat %s: the group context could not be read", chat.chat_id)
        return turn
    if not lines:
        return turn
    return dataclasses.replace(turn, group_context=tuple(lines[-decision.group_context:]))


async def prune_context(store: Store, now: float | None = None) -> int:
    """Forget group messages older than :data:`CONTEXT_MAX_AGE` that no turn took."""
    return await store.context_prune((time.time() if now is None else now) - CONTEXT_MAX_AGE)
