"""Telegram's text limits on top of :mod:`tgmux.text`.

Telegram limits a message to 4096 and a caption to 1024 characters as UTF-16 code units (after
entity parsing: tgmux sends text and entities, never markup, so the text is what is measured).
A formatted text is split by :func:`tgmux.formatting.split` (its entities kept whole).
"""

from __future__ import annotations

import asyncio

from tgmux import formatting
from tgmux import text as _text
from tgmux.formatting import Formatted, plain, render, split
from tgmux.text import utf16_len

__all__ = [
    "CAPTION_LIMIT",
    "MESSAGE_LIMIT",
    "RENDER_ON_LOOP",
    "formatted_messages",
    "rendered",
    "split_caption",
    "split_formatted",
    "split_formatted_caption",
    "split_pieces",
    "split_text",
    "utf16_len",
]

MESSAGE_LIMIT = 4096
CAPTION_LIMIT = 1024
#: Characters of Markdown rendered on the event loop at most: a longer text is rendered in a
#: worker thread (a 16 000-character reply costs ~4 ms of CPU, odd input such as thousands of
#: nested lists up to ~170 ms: no other chat waits for that).
RENDER_ON_LOOP = 2000


def split_pieces(text: str, limit: int = MESSAGE_LIMIT) -> list[tuple[str, str]]:
    """:func:`tgmux.text.split_pieces` at Telegram's message limit by default."""
    return _text.split_pieces(text, limit)


def split_text(text: str, limit: int = MESSAGE_LIMIT) -> list[str]:
    """The messages to send for ``text`` (``[]`` for blank text: Telegram refuses it)."""
    return _text.split_text(text, limit)


def split_caption(text: str, caption_limit: int = CAPTION_LIMIT,
                  limit: int = MESSAGE_LIMIT) -> tuple[str, list[str]]:
    """A media caption of at most ``caption_limit`` units and the messages that follow it
    with the rest of the text."""
    pieces = split_pieces(text, caption_limit)
    if not pieces:
        return "", []
    caption = pieces[0][0]
    rest = "".join(c + s for c, s in pieces[1:])
    return caption, split_text(rest, limit)


def split_formatted(shown: Formatted, limit: int = MESSAGE_LIMIT) -> list[Formatted]:
    """The messages to send for ``shown``: with entities, split keeping them whole; without,
    exactly as :func:`split_text` splits a plain text."""
    if shown.entities:
        return split(shown, limit)
    return [plain(chunk) for chunk in split_text(shown.text, limit)]


def split_formatted_caption(shown: Formatted, caption_limit: int = CAPTION_LIMIT,
                            limit: int = MESSAGE_LIMIT) -> tuple[Formatted, list[Formatted]]:
    """:func:`split_caption` for a formatted text (entities kept whole); one without entities
    exactly as :func:`split_caption` splits it."""
    if shown.entities:
        return formatting.split_caption(shown, caption_limit, limit)
    caption, rest = split_caption(shown.text, caption_limit, limit)
    return plain(caption), [plain(chunk) for chunk in rest]


async def rendered(text: str | None, markdown: bool, *, partial: bool = False) -> Formatted:
    """What ``text`` shows: Markdown rendered as text and entities (``partial``: a text still
    growing), else as it is; a long Markdown text is rendered off the event loop."""
    if not text:
        return plain("")
    if not markdown:
        return plain(text)
    if len(text) <= RENDER_ON_LOOP:
        return render(text, partial=partial)
    return await asyncio.to_thread(render, text, partial=partial)


async def formatted_messages(text: str, markdown: bool, *,
                             partial: bool = False) -> list[Formatted]:
    """The messages that show ``text`` (:func:`rendered`, then :func:`split_formatted`)."""
    shown = await rendered(text, markdown, partial=partial)
    if len(shown.text) <= RENDER_ON_LOOP:
        return split_formatted(shown)
    return await asyncio.to_thread(split_formatted, shown)
