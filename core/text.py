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

__all__ = ["split_pieces", "split_text", "str_or_none", "utf16_index", "utf16_len"]

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


def utf16_len(text: str) -> int:
    """Length as Telegram counts it (UTF-16 code units)."""
    return len(text) + sum(1 for ch in text if ord(ch) > 0xFFFF)


def utf16_index(text: str, limit: int) -> int:
    """The largest index ``i`` with ``utf16_len(text[:i]) <= limit``."""
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
    best = None
    for m in pattern.finditer(window):
        end = m.start(group) if group else m.start()
        if end >= min_pos and window[:end].strip():
            best = (end, m.end())
    return best


def split_pieces(text: str, limit: int) -> list[tuple[str, str]]:
    """Split into ``(chunk, separator)`` pairs: ``"".join(c + s for c, s in pieces) == text``.

    Every chunk is non-blank and at most ``limit`` UTF-16 units; each separator is the
    whitespace dropped at that cut (empty for a hard cut; the last one is empty).
    """
    if limit < 2:
        raise ValueError("limit must be at least 2 (one character outside the BMP)")
    pieces: list[tuple[str, str]] = []
    rest = text
    while utf16_len(rest) > limit:
        end = utf16_index(rest, limit)
        if not rest[:end].strip():  # a long blank run: it is all separator
            blank = len(rest) - len(rest.lstrip())
            if pieces:
                pieces[-1] = (pieces[-1][0], pieces[-1][1] + rest[:blank])
            rest = rest[blank:]
            continue
        window = rest[: end + 1] if end < len(rest) else rest  # a separator may start at `end`
        min_pos = int(end * MIN_FILL)
        cut = None
        for pattern, group in ((_PARAGRAPH, 0), (_LINE, 0), (_SENTENCE, 1),
                               (_CJK_SENTENCE, 1)):
            found = _last_boundary(pattern, window, min_pos, group)
            if found and found[0] <= end:
                cut = found
                break
        if cut is None:
            found = _last_boundary(_SPACE, window, 1)
            if found and found[0] <= end:
                cut = found
        if cut is None:
            hard = _safe_cut(rest, end)
            cut = (hard, hard)
        chunk_end, next_start = cut
        # the separator may run past the window: take all of it
        while next_start < len(rest) and rest[next_start].isspace():
            next_start += 1
        pieces.append((rest[:chunk_end], rest[chunk_end:next_start]))
        rest = rest[next_start:]
    if rest.strip():
        pieces.append((rest, ""))
    elif pieces:
        chunk, sep = pieces[-1]
        pieces[-1] = (chunk, sep + rest)
    return pieces


def split_text(text: str, limit: int) -> list[str]:
    """The messages to send for ``text``: non-blank chunks of at most ``limit`` UTF-16 units.

    Blank text gives ``[]`` (Telegram refuses empty messages).
    """
    return [chunk for chunk, _ in split_pieces(text, limit)]
