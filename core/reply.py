"""What the engine does to every reply part before a frontend sees it: valid Unicode (UTF-16
halves joined across deltas, lone halves replaced), a cap on the characters one reply
shows (``engine.max_reply_chars``), with a note to the user when it was cut, and the text
format of the backend's parts (its ``format`` setting: Markdown the frontend renders, or
plain text) on each part that does not say its own. tgmux's notices stay plain; a part a
plugin makes is plain unless it says otherwise (it is stamped before the plugins see it).
It also keeps the reply's :class:`Usage` parts as they pass (after the plugins: what they let
through is what is recorded)."""

from __future__ import annotations

import dataclasses
from typing import Any

from tgmux.text import DeltaJoiner, valid_unicode
from tgmux.types import Audio, Image, Notice, ReplyPart, Text, TextDelta, TextFormat, Usage

__all__ = ["ReplyShaper", "clean_part", "cut_notice", "text_format_of", "with_format"]


def cut_notice(limit: int) -> Notice:
    return Notice(f"The reply was cut at {limit:,} characters.")


def clean_part(part: ReplyPart) -> ReplyPart:
    """``part`` with valid Unicode in every text it shows."""
    if isinstance(part, Text | Notice | TextDelta):
        fixed = valid_unicode(part.text)
        return part if fixed is part.text else dataclasses.replace(part, text=fixed)
    if isinstance(part, Image | Audio) and part.caption:
        fixed = valid_unicode(part.caption)
        return part if fixed is part.caption else dataclasses.replace(part, caption=fixed)
    return part


def text_format_of(settings: Any) -> TextFormat | None:
    """The format a backend's parts get: "markdown" when its ``format`` setting says so;
    None (shown as plain text) otherwise."""
    return "markdown" if getattr(settings, "format", None) == "markdown" else None


def with_format(part: ReplyPart, text_format: TextFormat | None) -> ReplyPart:
    """``part`` with ``text_format`` when it says none of its own (a part without text: as
    it is). A frontend shows a part without a format as plain text: plain needs no mark."""
    if (text_format == "markdown" and isinstance(part, Text | TextDelta | Image | Audio)
            and part.format is None):
        return dataclasses.replace(part, format=text_format)
    return part


class ReplyShaper:
    """One reply's parts, shaped: feed each backend part, send what comes out.

    ``cut`` turns True once the reply reached ``max_chars``; the engine then stops reading
    the backend (a provider streaming megabytes must not hold the chat). ``settings``: the
    backend's, whose ``format`` its parts get (:meth:`own`, and every delta); not the
    answer to a ``command`` (tgmux's texts about the chat: a history, a confirmation), plain
    unless its parts say otherwise.
    """

    def __init__(self, max_chars: int, settings: Any = None, *,
                 command: str | None = None) -> None:
        self.max_chars = max_chars
        self.text_format = None if command else text_format_of(settings)
        self.cut = False
        #: the reply's usage parts, as they passed (:meth:`complete`)
        self.usage: list[Usage] = []
        self._joiner = DeltaJoiner()
        self._streamed = 0  # characters of deltas shown since the last complete text

    def own(self, part: ReplyPart) -> ReplyPart:
        """A complete part of the backend, cleaned (:func:`clean_part`), with its format."""
        return with_format(clean_part(part), self.text_format)

    def delta(self, part: TextDelta) -> list[ReplyPart]:
        if self.cut:
            return []
        text = self._joiner.feed(part.text)
        room = self.max_chars - self._streamed
        if len(text) > room:
            text, self.cut = text[:room], True
        self._streamed += len(text)
        return [TextDelta(text, part.format or self.text_format)] if text else []

    def complete(self, part: ReplyPart) -> list[ReplyPart]:
        """A complete part (a final Text after deltas, media, a notice)."""
        tail = self._joiner.flush()
        if isinstance(part, Text):
            self._streamed = 0
        elif isinstance(part, Usage):
            self.usage.append(part)
        part = clean_part(part)
        if isinstance(part, Text) and len(part.text) > self.max_chars:
            self.cut = True
            return [dataclasses.replace(part, text=part.text[: self.max_chars]),
                    cut_notice(self.max_chars)]
        if tail and not isinstance(part, Text):
            return [TextDelta(tail, self.text_format), part]
        return [part]

    def end(self) -> list[ReplyPart]:
        """After the backend's last part (or after it was cut off)."""
        tail = "" if self.cut else self._joiner.flush()
        parts: list[ReplyPart] = [TextDelta(tail, self.text_format)] if tail else []
        if self.cut and self._streamed:
            parts.append(cut_notice(self.max_chars))
        return parts
