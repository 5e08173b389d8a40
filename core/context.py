"""The context of a turn said in short text, for providers that take one text message only
(LucyDream, BambiSleep, Sensay): what the user replied to, and what the group said before.

A provider with a message list (the OpenAI-compatible backend) sends these as messages of
their own instead; see its adapter.
"""

from __future__ import annotations

from tgmux.types import ChatLine, RepliedTo

__all__ = ["QUOTE_CHARS", "group_transcript", "reply_preamble", "with_context"]

#: characters of a replied-to message (or of one group line) kept at most in the short form
QUOTE_CHARS = 300


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def reply_preamble(reply_to: RepliedTo | None, *, limit: int = QUOTE_CHARS) -> str:
    """``[In reply to Anna: "…"]`` (the quoted part when the user quoted one); "" for none."""
    if reply_to is None:
        return ""
    shown = reply_to.quote or reply_to.text
    if not shown.strip():
        return ""
    who = "your message" if reply_to.from_bot else reply_to.author or "a message"
    return f'[In reply to {who}: "{_shorten(shown, limit)}"]'


def group_transcript(lines: tuple[ChatLine, ...] | list[ChatLine], *,
                     limit: int = QUOTE_CHARS) -> str:
    """The group's recent messages, one per line (``Anna: …``); "" for none."""
    return "\n".join(f"{line.author}: {_shorten(line.text, limit)}" for line in lines
                     if line.text.strip())


def with_context(text: str, reply_to: RepliedTo | None = None,
                 lines: tuple[ChatLine, ...] | list[ChatLine] = (), *,
                 max_chars: int | None = None) -> str:
    """``text`` with the group's recent messages and the replied-to message before it, cut
    (oldest context first, never the user's own text) to ``max_chars`` when given."""
    before = [part for part in (group_transcript(lines), reply_preamble(reply_to)) if part]
    if not before:
        return text
    whole = "\n".join(before) + "\n\n" + text
    if max_chars is None or len(whole) <= max_chars:
        return whole
    room = max_chars - len(text) - 2
    if room <= 0:
        return text
    head = "\n".join(before)
    return head[len(head) - room:].lstrip() + "\n\n" + text
