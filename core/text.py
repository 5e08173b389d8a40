"""Text measured and split in UTF-16 code units, the way Telegram and JavaScript APIs count.

Telegram limits messages and captions, and JavaScript-based APIs (Sensay) limit content, in
UTF-16 code units: an emoji outside the Basic Multilingual Plane counts 2. A Python ``str``
counts code points, so ``len()`` is not the measure. Frontends and backends share these helpers.

:func:`split_text` cuts on the best boundary inside the limit: a paragraph break, else a line
break, else the end of a sentence, else a space, else (one enormous word) anywhere that does not
break a character or a grapheme cluster (combining marks, emoji ZWJ sequences, skin tones,
flags, keycaps). The whitespace at a cut is dropped (Telegram trims it anyway); nothing else is.

:func:`str_or_none` reads a text field out of a provider's JSON (a string, or nothing).
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

__all__ = [
    "DeltaJoiner",
    "shorten",
    "split_pieces",
    "split_text",
    "str_or_none",
    "utf16_index",
    "utf16_len",
    "valid_unicode",
]

#: A boundary of a level is only used when it keeps at least this share of the window;
#: otherwise a lower level (sentence, space) that fills the message better is tried.
MIN_FILL = 0.3

_PARAGRAPH = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_LINE = re.compile(r"[ \t]*\r?\n\s*")
_SENTENCE = re.compile(r"[.!?…‼⁉][\"'”’»)\]]*(\s+)")
_CJK_SENTENCE = re.compile(r"[。！？](\s*)")
_SPACE = re.compile(r"\s+")


def str_or_none(value: Any) -> str | None:
    """``value`` when it is a ``str``, else None: a text field of decoded JSON, which may be
    missing, null or of another type. Never converts (``5`` gives None, not ``"5"``)."""
    return value if isinstance(value, str) else None


def shorten(text: str, limit: int) -> str:
    """``text`` as an echo in a message: at most ``limit`` characters, ``...`` where cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    # The codec counts in C; surrogatepass keeps a lone surrogate countable (1 unit).
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def utf16_index(text: str, limit: int) -> int:
    """The largest index ``i`` with ``utf16_len(text[:i]) <= limit``."""
    if utf16_len(text[:limit]) == min(limit, len(text)):  # no astral character: units = chars
        return min(limit, len(text))
    units = 0
    for i, ch in enumerate(text):
        units += 2 if ord(ch) > 0xFFFF else 1
        if units > limit:
            return i
    return len(text)


def _extends_cluster(ch: str) -> bool:
    """True when ``ch`` belongs to the grapheme cluster of the character before it."""
    cp = ord(ch)
    return (
        unicodedata.combining(ch) != 0
        or unicodedata.category(ch) in ("Mn", "Me", "Mc")
        or cp == 0x200D  # zero-width joiner
        or 0xFE00 <= cp <= 0xFE0F  # variation selectors
        or 0xE0100 <= cp <= 0xE01EF
        or 0x1F3FB <= cp <= 0x1F3FF  # skin tone modifiers
        or 0xE0020 <= cp <= 0xE007F  # tag characters (subdivision flags)
        or cp == 0x20E3  # combining enclosing keycap
    )


def _is_regional(ch: str) -> bool:
    return 0x1F1E6 <= ord(ch) <= 0x1F1FF


def _safe_cut(text: str, i: int) -> int:
    """Move a cut at ``i`` left until it does not split a grapheme cluster."""
    start = i
    while 0 < i < len(text):
        if _extends_cluster(text[i]) or text[i - 1] == "\u200d":
            i -= 1
            continue
        if _is_regional(text[i]) and _is_regional(text[i - 1]):
            run = 0  # regional indicators pair up from the start of their run
            j = i - 1
            while j >= 0 and _is_regional(text[j]):
                run += 1
                j -= 1
            if run % 2 == 1:
                i -= 1
                continue
        break
    return i if i > 0 else start


def _last_boundary(pattern: re.Pattern[str], window: str, min_pos: int,
                   group: int = 0) -> tuple[int, int] | None:
    """(chunk end, next start) of the last match of ``pattern`` ending the chunk at or after
    ``min_pos`` with a non-blank chunk before it."""
    first_visible = len(window) - len(window.lstrip())
    best = None
    for m in pattern.finditer(window):
        end = m.start(group) if group else m.start()
        if end >= min_pos and end > first_visible:
            best = (end, m.end())
    return best


def split_pieces(text: str, limit: int) -> list[tuple[str, str]]:
    """Split into ``(chunk, separator)`` pairs: ``"".join(c + s for c, s in pieces) == text``.

    Every chunk is non-blank and at most ``limit`` UTF-16 units; each separator is the
    whitespace dropped at that cut (empty for a hard cut; the last one is empty).

    Linear in the text's length: each step looks at one window of about ``limit`` characters.
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 (one character outside the BMP)")
    pieces: list[tuple[str, str]] = []
    pos = 0
    remaining = utf16_len(text)  # units from ``pos`` to the end
    while remaining > limit:
        # ``limit`` units are at most ``limit`` characters: one window holds the next chunk.
        window = text[pos:pos + limit + 1]
        end = utf16_index(window, limit)
        if not window[:end].strip():  # a long blank run: it is all separator
            blank = end
            while pos + blank < len(text) and text[pos + blank].isspace():
                blank += 1
            if pieces:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + text[pos:pos + blank])
            remaining -= utf16_len(text[pos:pos + blank])
            pos += blank
            continue
        window = window[: end + 1]  # a separator may start at `end`
        chunk_end, next_start = _best_cut(text, pos, window, end, limit)
        # the separator may run past the window: take all of it
        while pos + next_start < len(text) and text[pos + next_start].isspace():
            next_start += 1
        pieces.append((text[pos:pos + chunk_end], text[pos + chunk_end:pos + next_start]))
        remaining -= utf16_len(text[pos:pos + next_start])
        pos += next_start
    rest = text[pos:]
    if rest.strip():
        pieces.append((rest, ""))
    elif pieces:
        chunk, sep = pieces[-1]
        pieces[-1] = (chunk, sep + rest)
    return pieces


def _best_cut(text: str, pos: int, window: str, end: int, limit: int) -> tuple[int, int]:
    """(chunk end, next start) relative to ``pos``: the best boundary in ``window``."""
    min_pos = int(end * MIN_FILL)
    for pattern, group in ((_PARAGRAPH, 0), (_LINE, 0), (_SENTENCE, 1), (_CJK_SENTENCE, 1)):
        found = _last_boundary(pattern, window, min_pos, group)
        if found and found[0] <= end:
            return found
    found = _last_boundary(_SPACE, window, 1)
    if found and found[0] <= end:
        if found[0] >= min_pos or not _word_too_long(text, pos + found[1], limit):
            return found
        # A short chunk before a word that needs a hard cut anyway ("e:" then 2048 emoji)
        # only adds a message: cut hard here instead.
    hard = _safe_cut(window, end)
    return hard, hard


def _word_too_long(text: str, start: int, limit: int) -> bool:
    """Whether the word at ``start`` is longer than ``limit`` UTF-16 units."""
    m = _SPACE.search(text, start, start + limit + 1)
    word = text[start:m.start() if m else start + limit + 1]
    return utf16_len(word) > limit


def split_text(text: str, limit: int) -> list[str]:
    """The messages to send for ``text``: non-blank chunks of at most ``limit`` UTF-16 units.

    Blank text gives ``[]`` (Telegram refuses empty messages).
    """
    return [chunk for chunk, _ in split_pieces(text, limit)]


def join_blocks(blocks: list[str], limit: int) -> list[str]:
    """Join blocks with newlines into parts of at most ``limit`` UTF-16 code units, never
    splitting a block unless it alone is too long (then at a newline or space if possible)."""
    parts: list[str] = []
    current = ""
    for block in blocks:
        for piece in split_text(block, limit):
            candidate = f"{current}\n{piece}" if current else piece
            if utf16_len(candidate) <= limit:
                current = candidate
            else:
                parts.append(current)
                current = piece
    if current:
        parts.append(current)
    return parts


# -- text from providers -------------------------------------------------------------------------

_SURROGATE = re.compile("[\ud800-\udfff]")


def valid_unicode(text: str) -> str:
    """``text`` as valid Unicode: UTF-16 surrogate halves written as two JSON escapes
    (``"\\ud83d\\ude00"`` decoded piecewise) are joined, a lone half becomes U+FFFD.

    Providers' JSON may hold such halves; no frontend can encode them (stdout and Telegram
    both refuse), so text is made valid once, in the engine, before any frontend sees it.
    """
    if _SURROGATE.search(text) is None:
        return text
    return text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


class DeltaJoiner:
    """Makes a stream of text deltas valid Unicode, joining an emoji whose two UTF-16 halves
    came in two deltas (the Vercel AI SDK sends ``0:"\\ud83d"`` then ``0:"\\ude00"``; a
    JavaScript client joins them)."""

    def __init__(self) -> None:
        self._high = ""

    def feed(self, delta: str) -> str:
        """The part of ``delta`` that can be shown now (a trailing high half waits)."""
        text = self._high + delta
        self._high = ""
        if text and "\ud800" <= text[-1] <= "\udbff":
            text, self._high = text[:-1], text[-1]
        return valid_unicode(text)

    def flush(self) -> str:
        """What is left when the stream ends (a lone half, as U+FFFD)."""
        text, self._high = self._high, ""
        return valid_unicode(text)
