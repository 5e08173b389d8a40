"""What the engine does to every reply part before a frontend sees it: valid Unicode (UTF-16
halves joined across deltas, lone halves replaced) and a cap on the characters one reply
shows (``engine.max_reply_chars``), with a note to the user when it was cut."""

from __future__ import annotations

import dataclasses

from tgmux.text import DeltaJoiner, valid_unicode
from tgmux.types import Audio, Image, Notice, ReplyPart, Text, TextDelta

__all__ = ["ReplyShaper", "clean_part", "cut_notice"]


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


class ReplyShaper:
    """One reply's parts, shaped: feed each backend part, send what comes out.

    ``cut`` turns True once the reply reached ``max_chars``; the engine then stops reading
    the backend (a provider streaming megabytes must not hold the chat).
    """

    def __init__(self, max_chars: int) -> None:
        self.max_chars = max_chars
        self.cut = False
        self._joiner = DeltaJoiner()
        self._streamed = 0  # characters of deltas shown since the last complete text

    def delta(self, part: TextDelta) -> list[ReplyPart]:
        if self.cut:
            return []
        text = self._joiner.feed(part.text)
        room = self.max_chars - self._streamed
        if len(text) > room:
            text, self.cut = text[:room], True
        self._streamed += len(text)
        return [TextDelta(text)] if text else []

    def complete(self, part: ReplyPart) -> list[ReplyPart]:
        """A complete part (a final Text after deltas, media, a notice)."""
        tail = self._joiner.flush()
        if isinstance(part, Text):
            self._streamed = 0
        part = clean_part(part)
        if isinstance(part, Text) and len(part.text) > self.max_chars:
            self.cut = True
            return [Text(part.text[: self.max_chars]), cut_notice(self.max_chars)]
        if tail and not isinstance(part, Text):
            return [TextDelta(tail), part]
        return [part]

    def end(self) -> list[ReplyPart]:
        """After the backend's last part (or after it was cut off)."""
        tail = "" if self.cut else self._joiner.flush()
        parts: list[ReplyPart] = [TextDelta(tail)] if tail else []
        if self.cut and self._streamed:
            parts.append(cut_notice(self.max_chars))
        return parts
