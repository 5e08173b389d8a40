"""From a message to the :class:`~tgmux.backend.Turn` a backend gets: what the user wrote as
the backend should read it, the conversation memory it asked for, and the chat's context.

Kept out of :mod:`tgmux.engine`: each concern of a turn (reply context, group context, the
user's formatting, albums) is built here, called from the one place the engine makes a turn.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from tgmux.backend import Backend, History, ShareMedia, Turn
from tgmux.router import RouteDecision
from tgmux.store import Store
from tgmux.types import COMMAND_PATTERN, ChatIdentity, IncomingMessage, TextFormat
from tgmux.user_text import user_text

__all__ = ["build_turn", "history_for", "text_format", "turn_text"]


def text_format(backend: Backend, options: Any) -> TextFormat:
    """The backend's ``format`` (a route may override it)."""
    return getattr(options, "format", None) or getattr(backend.settings, "format", "plain")


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
        text=turn_text(message, text_format(backend, decision.options)),
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
