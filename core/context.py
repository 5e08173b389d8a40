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


def reply_preamble(reply_to: RepliedTo | None, *, limit: int = QUOTE_CHARS,
                   whole: bool = False) -> str:
    """``[In reply to Anna: "…"]`` (the quoted part when the user quoted one); "" for none.
    ``whole``: the replied-to text and the quoted part, ``[In reply to Anna: "…" — quoting:
    "…"]`` (for a provider with room for both)."""
    if reply_to is None:
        return ""
    shown = reply_to.quote or reply_to.text
    if not shown.strip():
        return ""
    who = "your message" if reply_to.from_bot else reply_to.author or "a message"
    if whole and reply_to.quote and reply_to.text.strip():
        return (f'[In reply to {who}: "{_shorten(reply_to.text, limit)}" — quoting: '
                f'"{_shorten(reply_to.quote, limit)}"]')
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
    to ``max_chars`` when given: the oldest group lines go first (whole lines), then the
    replied-to text is shortened; the user's own text is never cut."""
    preamble = reply_preamble(reply_to)
    said = [said for said in (group_transcript([line]) for line in lines) if said]
    before = [*said, preamble] if preamble else list(said)
    if not before:
        return text
    if max_chars is None:
        return "\n".join(before) + "\n\n" + text
    room = max_chars - len(text) - 2
    while said and len("\n".join(before)) > room:
        said.pop(0)  # the oldest group line first
        before.pop(0)
    if preamble and len("\n".join(before)) > room:
        shorter = [p for p in (reply_preamble(reply_to, limit=n) for n in (150, 60))
                   if len(p) <= room]
        before = shorter[:1]
    return "\n".join(before) + "\n\n" + text if before else text
