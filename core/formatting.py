"""Markdown replies as Telegram text plus entities; split to Telegram's limits; streamed text.

AI providers answer in Markdown. :func:`render` turns it into the text a user reads and the
:class:`~tgmux.types.Entity` list that formats it (Bot API type names, UTF-16 offsets):
entities, not a parse-mode string, so a reply cannot fail to parse. Parsing is
telegramify-markdown's (pyromark: pulldown-cmark, CommonMark + GFM tables, strikethrough,
task lists), with tgmux's choices on top:

- **bold**, *italic*, ~~strikethrough~~, ``||spoiler||``, `code`, links (``text_link``; a
  link whose text is its URL is a ``url``), ``> quotes`` (``blockquote``; over 200 UTF-16
  units ``expandable_blockquote``), fenced code (``pre`` with its language).
- Headings: the heading's text, ``bold`` (every level; no emoji before it).
- Lists: ``•`` bullets, ``1.`` numbers as written, two spaces of indent per nested level
  (six levels at most); task items ``☐`` / ``☑``.
- Tables: a ``pre`` block (monospace), cells padded to the column's width (wide characters
  count 2), `` | `` between cells and ``-+-`` under the header row: columns stay aligned. A
  table wider than 80 characters is its rows with `` | `` between cells, unpadded.
- A horizontal rule: ``————————``.
- Raw HTML (``<div>``, ``a <br> b``) stays as the text it is (Telegram shows no HTML).
- Single stars and underscores that do not format (``5 * 3``, ``snake_case``) stay as written,
  and so do stars between digits (``5*3 and 4*2``, which CommonMark would read as italic).
- A link Telegram would refuse (relative, ``javascript:``, ``mailto:``, no host...) is plain
  text with its URL shown: ``text (url)`` (URLs shown add at most as many characters as the
  text has).

Entities always satisfy Telegram's nesting rules (:func:`check`): two entities sharing text
nest; nothing inside ``pre``/``code``; ``bold``-like entities never cover code (they are cut
around it); no link inside a link; no quote inside a quote. They are ordered by offset, then
longest first, then (for equal ranges) blockquote, pre, text_link/url, code, bold, italic,
underline, strikethrough, spoiler. Leading and trailing whitespace is trimmed (Telegram trims
it), except the indentation of a code block.

``render(text, partial=True)`` renders a reply still being streamed: an open code fence is a
``pre``; an unclosed ``**``, ``*``, ``_``, ``~~`` or backtick in the last paragraph is closed
(shown as formatting) when that parses and at most four are open, else left as written; a
half-written link ``[abc](htt`` shows its text; a marker just typed (``**`` at the end) is not
shown yet. The final text rendered without ``partial`` is exact. No input makes
:func:`render` raise: on an internal failure the text goes out plain (logged once per
process). Cost: about 3.5 ms of CPU for a 16 000-character reply (docs/benchmarks.md); odd
input (thousands of nested lists or quotes) up to about 0.2 s for as much text.

:func:`split` cuts a long reply into messages of at most ``limit`` UTF-16 units: at a blank
line, else a line break, a sentence end, a space (a boundary keeping at least 30 % of the
message), before a code block or link rather than inside it, else anywhere that does not break
a character or an emoji. The whitespace at a cut is dropped (not a code line's indentation);
an entity the cut crosses continues in the next message (a code block: both pieces ``pre``,
same language). :func:`split_caption` does the same with a shorter first piece (a media
caption, 1 024 units).
"""

from __future__ import annotations

import heapq
import logging
import re
import unicodedata
from bisect import bisect_left, bisect_right
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from telegramify_markdown import converter as _converter
from telegramify_markdown.config import RenderConfig

from tgmux.types import Entity

__all__ = [
    "Formatted",
    "check",
    "link_url_ok",
    "plain",
    "render",
    "split",
    "split_caption",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Formatted:
    """A message's text and its formatting (UTF-16 offsets, Bot API type names)."""

    text: str
    entities: tuple[Entity, ...] = ()


def plain(text: str) -> Formatted:
    """``text`` as it is: no formatting."""
    return Formatted(text)


# -- entity kinds and Telegram's nesting rules ---------------------------------------------

#: may contain, and be part of, any entity but pre and code (cut around those)
SPLITTABLE = frozenset({"bold", "italic", "underline", "strikethrough", "spoiler"})
CODE = frozenset({"pre", "code"})
QUOTES = frozenset({"blockquote", "expandable_blockquote"})
#: everything else (links, mentions...): contains no non-splittable entity, and is in none
#: but a quote
KNOWN = SPLITTABLE | CODE | QUOTES | frozenset({
    "text_link", "url", "mention", "hashtag", "cashtag", "bot_command", "email",
    "phone_number", "text_mention", "custom_emoji", "bank_card",
})
#: which of two entities with the same range is the outer one
_RANK = {"blockquote": 0, "expandable_blockquote": 0, "pre": 1, "code": 3, "bold": 4,
         "italic": 5, "underline": 6, "strikethrough": 7, "spoiler": 8}
_ATOMIC_RANK = 2


def _rank(kind: str) -> int:
    return _RANK.get(kind, _ATOMIC_RANK)


def _may_contain(outer: str, inner: str) -> bool:
    """Whether Telegram accepts an ``inner`` entity inside an ``outer`` one."""
    if outer in CODE:
        return False
    if inner in SPLITTABLE:
        return True
    if outer in SPLITTABLE:
        return inner not in CODE
    # Quotes hold code and links (Telegram shows quoted code and links); never a quote.
    return outer in QUOTES and inner not in QUOTES


def link_url_ok(url: str) -> bool:
    """Whether Telegram takes ``url`` as a ``text_link``'s URL: http(s) with a host name,
    or tg:// / ton://. Anything else (relative, ``javascript:``, ``mailto:``) it may refuse."""
    if not url or len(url) > 2048 or any(ch.isspace() or ord(ch) < 32 for ch in url):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        parts.port  # noqa: B018 -- raises ValueError on a malformed port
    except ValueError:
        return False
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        return "." in host or ":" in host
    return scheme in ("tg", "ton") and len(url) > len(scheme) + 3


# -- UTF-16 positions ----------------------------------------------------------------------

_ASTRAL = re.compile("[\U00010000-\U0010ffff]")


def _utf16_len(text: str) -> int:
    # tgmux.text has the same; this module imports tgmux.types only
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


class _Units:
    """Character index <-> UTF-16 offset in one text (characters outside the BMP count 2)."""

    __slots__ = ("astral", "astral_units", "total")

    def __init__(self, text: str) -> None:
        self.astral = [] if text.isascii() else [m.start() for m in _ASTRAL.finditer(text)]
        self.astral_units = [index + k for k, index in enumerate(self.astral)]
        self.total = len(text) + len(self.astral)

    def units(self, index: int) -> int:
        return index + bisect_left(self.astral, index) if self.astral else index

    def index(self, units: int) -> int:
        """The character at UTF-16 offset ``units`` (an offset between the halves of a
        surrogate pair gives that character)."""
        return units - bisect_left(self.astral_units, units) if self.astral else units

    def index_within(self, start: int, limit: int) -> int:
        """The largest index ``i`` with ``units(i) - units(start) <= limit``."""
        target = self.units(start) + limit
        if target >= self.total:
            return self.total - len(self.astral)
        i = self.index(target)
        return i - 1 if self.units(i) > target else i

    def inside_pair(self, units: int) -> bool:
        """Whether ``units`` falls between the two halves of a surrogate pair."""
        k = bisect_left(self.astral_units, units)
        return k > 0 and self.astral_units[k - 1] + 1 == units


# -- rendering -----------------------------------------------------------------------------


def _config() -> RenderConfig:
    # Our own config: the library's global one is shared by everything in the process.
    config = RenderConfig.isolated()
    symbols = config.markdown_symbol
    for level in range(1, 7):
        setattr(symbols, f"heading_level_{level}", "")
    symbols.unordered_list_item = "•"
    symbols.task_completed = "☑"
    symbols.task_uncompleted = "☐"
    symbols.image = ""
    return config


_CONFIG = _config()
#: nested list levels indented (deeper ones are indented as this one)
LIST_DEPTH = 6
#: a table is aligned (cells padded) when its lines are at most this wide
TABLE_WIDTH = 80
#: at most this many markers are closed in a streamed text's last paragraph
OPEN_MARKERS = 4


def _cell_width(text: str) -> int:
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else
               0 if unicodedata.combining(ch) else 1 for ch in text)


class _Buffer(_converter._TextBuffer):
    """The library's text buffer, keeping no empty part: it looks back over its parts for
    trailing newlines, and 2 000 empty code blocks made that take 0.2 s."""

    __slots__ = ()

    def write(self, text: str) -> None:
        if text:
            super().write(text)


class _Walker(_converter.EventWalker):
    """The library's walker with tgmux's choices: every heading bold, inline HTML kept as
    text, tables aligned by display width."""

    _HEADING_ENTITIES = {f"H{level}": ["bold"] for level in range(1, 7)}

    def __init__(self, config: RenderConfig, source_markdown: str) -> None:
        super().__init__(config, source_markdown)
        self._buf = _Buffer()

    def _on_start_item(self) -> None:
        # Indent at most LIST_DEPTH levels: "1. 1. 1. ..." nests 5 000 lists in 15 000
        # characters, and an indent per level made 25 million characters of it.
        lists = self._list_stack
        if len(lists) <= LIST_DEPTH:
            super()._on_start_item()
            return
        self._list_stack = lists[-LIST_DEPTH:]
        try:
            super()._on_start_item()
        finally:
            lists[-1] = self._list_stack[-1]  # the next item's number
            self._list_stack = lists

    def _on_inline_html(self, html: str) -> None:
        if html.strip().lower() in ("<tg-spoiler>", "</tg-spoiler>"):  # ||spoiler||
            super()._on_inline_html(html)
        else:
            self._on_text(html)

    def _format_table(self, rows: list[list[str]]) -> str:
        if not rows:
            return ""
        columns = max(len(row) for row in rows)
        widths = [0] * columns
        for row in rows:
            for i, cell in enumerate(row):
                widths[i] = max(widths[i], _cell_width(cell))
        if sum(widths) + 3 * (columns - 1) > TABLE_WIDTH:
            # too wide to align (and padding would multiply a long cell by the rows)
            return "\n".join(" | ".join(row) for row in rows)
        lines = []
        for n, row in enumerate(rows):
            cells = [*row, *[""] * (columns - len(row))]
            lines.append(" | ".join(cell + " " * (widths[i] - _cell_width(cell))
                                    for i, cell in enumerate(cells)).rstrip())
            if n == 0 and len(rows) > 1:
                lines.append("-+-".join("-" * width for width in widths))
        return "\n".join(lines)


class _HtmlWalker(_Walker):
    """For a text with HTML in it: blocks of raw HTML kept as the text they are too (the
    check per event is only paid when there can be one)."""

    def _handle_event(self, event: Any) -> None:
        payload = event[0] if isinstance(event, tuple) else event
        if isinstance(payload, dict) and "Html" in payload:
            self._on_text(payload["Html"])
            return
        super()._handle_event(event)

    def _on_start(self, tag: Any, source_range: dict[str, int] | None = None) -> None:
        if tag == "HtmlBlock":
            self._ensure_block_spacing(self._source_start(source_range))
        super()._on_start(tag, source_range)

    def _on_end(self, tag: Any) -> None:
        if tag == "HtmlBlock":
            last = self._buf.pop_last()
            self._buf.write(last.rstrip("\n"))
            self._mark_block_end()
        super()._on_end(tag)


# Spans are [start, end) in UTF-16 units, mutable while the entities are made valid.
_Span = list  # [start, end, type, url, language]


_DIGIT_STARS = re.compile(rb"(?<=[0-9])\*{1,2}(?=[0-9])")


def _literal_stars(markdown: str) -> str:
    """Stars between digits escaped outside code: ``5*3 and 4*2`` is arithmetic, where
    CommonMark reads ``*3 and 4*`` as italic and the stars would be lost."""
    if _DIGIT_STARS.search(markdown.encode("utf-8")) is None:
        return markdown
    data = markdown.encode("utf-8")
    parts, last = [], 0
    # byte ranges, as the parser reports them
    for start, end in [*_converter._code_regions(markdown, _converter.STANDARD_OPTIONS),
                       (len(data), len(data))]:
        parts += (_DIGIT_STARS.sub(lambda m: b"\\*" * len(m.group()), data[last:start]),
                  data[start:end])
        last = end
    return b"".join(parts).decode("utf-8")


def _convert(markdown: str) -> tuple[str, list[_Span]]:
    markdown = _literal_stars(markdown)
    source, events = _converter._parse(markdown, _converter.STANDARD_OPTIONS,
                                       latex_escape=True)
    walker = _HtmlWalker if "<" in source else _Walker
    text, entities, _segments = walker(_CONFIG, source).walk(events)
    spans = [[e.offset, e.offset + e.length, e.type, e.url, e.language or None]
             for e in entities if e.type in KNOWN and e.type != "custom_emoji"]
    return text, spans


def _fix_links(text: str, spans: list[_Span]) -> str:
    """Links Telegram would refuse become plain text with the URL shown; a link whose text is
    its URL is a ``url``."""
    units: _Units | None = None
    inserts: list[tuple[int, str]] = []
    budget = max(len(text), 1000)  # characters of URLs shown at most
    for span in spans:
        if span[2] != "text_link":
            continue
        units = units or _Units(text)
        shown = text[units.index(span[0]):units.index(span[1])]
        url = span[3] or ""
        if shown == url or shown == url.removeprefix("mailto:"):
            span[2], span[3] = ("url", None) if link_url_ok(url) else ("drop", None)
        elif not link_url_ok(url):
            span[2] = "drop"
            if budget >= len(url):  # shown, unless that would multiply the text
                budget -= len(url) + 3
                inserts.append((span[1], f" ({url})"))
    if not inserts:
        return text
    # One pass, however many links: the text rebuilt in pieces, each offset moved by the
    # inserts before it (an entity ending where a link ends does not take its URL).
    units = units or _Units(text)
    inserts.sort()
    ats = [at for at, _ in inserts]
    moved = [0]
    parts, last = [], 0
    for at, added in inserts:
        index = units.index(at)
        parts += (text[last:index], added)
        last = index
        moved.append(moved[-1] + _utf16_len(added))
    parts.append(text[last:])
    for span in spans:
        span[0] += moved[bisect_right(ats, span[0])]
        span[1] += moved[bisect_left(ats, span[1])]
    return "".join(parts)


def _trim(text: str, spans: list[_Span]) -> tuple[str, list[_Span]]:
    """Without leading and trailing whitespace (a code block's indentation stays)."""
    start, end = 0, len(text)
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    if start == 0 and end == len(text):
        return text, spans
    units = _Units(text)
    line_start = text.rfind("\n", 0, start) + 1
    if line_start < start and any(s[2] == "pre" and s[0] <= units.units(line_start) < s[1]
                                  for s in spans):
        start = line_start  # the indentation of a code block's first line is code
    low, high = units.units(start), units.units(end)
    kept = []
    for s, e, *rest in spans:
        s, e = max(s, low) - low, min(e, high) - low
        if e > s:
            kept.append([s, e, *rest])
    return text[start:end], kept


def _without_code(spans: list[_Span]) -> list[_Span]:
    """Bold-like spans cut around the code they cover (Telegram formats no code)."""
    code = sorted((s[0], s[1]) for s in spans if s[2] in CODE)
    if not code:
        return spans
    starts = [start for start, _ in code]
    out = []
    for span in spans:
        if span[2] not in SPLITTABLE:
            out.append(span)
            continue
        start, end = span[0], span[1]
        k = max(0, bisect_left(starts, start) - 1)
        while k < len(code) and code[k][0] < end:
            if code[k][1] > start:
                out.append([start, min(code[k][0], end), *span[2:]])
                start = max(start, code[k][1])
            k += 1
        out.append([start, end, *span[2:]])
    return out


def _valid(spans: list[_Span], total: int, units: _Units | None) -> list[_Span]:
    """The spans cut, merged or dropped so that Telegram accepts them (see :func:`check`)."""
    spans = _without_code(spans)
    ordered = []
    for n, span in enumerate(spans):
        start, end = max(span[0], 0), min(span[1], total)
        if units is not None:  # never between the halves of an emoji
            start += units.inside_pair(start)
            end -= units.inside_pair(end)
        if end > start and span[2] in KNOWN:
            ordered.append((start, -end, _rank(span[2]), n, [start, end, *span[2:]]))
    ordered.sort(reverse=True)  # popped from the end: in order
    pieces: list[tuple[int, int, int, int, _Span]] = []  # cut off on the way: a heap
    serial = len(spans)
    stack: list[_Span] = []
    out: list[_Span] = []

    def later(start: int, end: int, like: _Span) -> None:
        nonlocal serial
        if end > start:
            serial += 1
            heapq.heappush(pieces, (start, -end, _rank(like[2]), serial, [start, end, *like[2:]]))

    while ordered or pieces:
        if pieces and (not ordered or pieces[0] < ordered[-1]):
            span = heapq.heappop(pieces)[4]
        else:
            span = ordered.pop()[4]
        start = span[0]
        end, kind = span[1], span[2]
        while stack and stack[-1][1] <= start:
            stack.pop()
        k = len(stack)
        while k and stack[k - 1][1] < end:
            k -= 1
        if k < len(stack):  # crosses the end of entities it starts in
            if kind in SPLITTABLE:
                later(stack[-1][1], end, span)
                span[1] = end = stack[-1][1]
            elif all(outer[2] in SPLITTABLE for outer in stack[k:]):
                for outer in stack[k:]:
                    later(start, outer[1], outer)
                    outer[1] = start
                del stack[k:]
            else:
                continue
        if not all(_may_contain(outer[2], kind) for outer in stack):
            continue
        out.append(span)
        stack.append(span)
    out = [span for span in out if span[1] > span[0]]
    out.sort(key=lambda s: (s[0], -s[1], _rank(s[2])))
    return out


def _formatted(text: str, spans: list[_Span]) -> Formatted:
    return Formatted(text, tuple(
        Entity(kind, start, end - start, url=url if kind == "text_link" else None,
               language=language if kind == "pre" else None)
        for start, end, kind, url, language in spans))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _render(markdown: str) -> Formatted:
    if _SURROGATE.search(markdown):  # the engine makes text valid; a direct caller may not
        markdown = markdown.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    text, spans = _convert(markdown)
    text = _fix_links(text, spans)
    text, spans = _trim(text, spans)
    units = None if text.isascii() else _Units(text)
    return _formatted(text, _valid(spans, units.total if units else len(text), units))


_failed_once = False


def render(markdown: str, *, partial: bool = False) -> Formatted:
    """``markdown`` as Telegram text and entities (see the module's docstring).

    ``partial``: the text is a reply still being streamed (an unclosed marker, an open code
    fence, a half-written link at its end). Never raises: on any failure, the text as it is.
    """
    global _failed_once
    try:
        if partial:
            return _render_partial(markdown)
        return _render(markdown)
    except BaseException as exc:
        # pyo3 raises a Rust panic as PanicException, a BaseException: a reply is never
        # lost to it. Anything else (cancellation, interrupts) goes on.
        if not isinstance(exc, Exception) and type(exc).__name__ != "PanicException":
            raise
        if not _failed_once:
            _failed_once = True
            log.warning("a reply could not be rendered as Markdown; sent as plain text "
                        "(said once)", exc_info=True)
        return plain(markdown)


# -- streaming -----------------------------------------------------------------------------

_FENCE = re.compile(r"^(?:[ \t]*>)*[ \t]*(?:[-*+]|\d+[.)])?[ \t]*(`{3,}|~{3,})(.*)$", re.M)
_HALF_LINK = re.compile(r"!?\[([^\[\]\n]*)\]\([^()\s]*\Z")
_DANGLING = re.compile(r"(^|\s)[*_~`]+\Z")
_MARKER = re.compile(r"\\.|`+|\*{1,3}|_{1,3}|~~")


def _fence_open(markdown: str) -> bool:
    """Whether ``markdown`` ends inside a fenced code block (a quick look at the fences)."""
    fence = None
    for m in _FENCE.finditer(markdown):
        run, info = m.group(1), m.group(2)
        if fence is None:
            if not (run[0] == "`" and "`" in info):
                fence = run
        elif run[0] == fence[0] and len(run) >= len(fence) and not info.strip():
            fence = None
    return fence is not None


def _closers(tail: str) -> str:
    """The markers that close what ``tail`` (the last paragraph) left open, innermost first."""
    opened: list[str] = []
    code = ""
    for m in _MARKER.finditer(tail):
        run = m.group()
        if run[0] == "\\":
            continue
        if code:
            if run == code:
                code = ""
            continue
        if run[0] == "`":
            code = run
            continue
        before = tail[m.start() - 1] if m.start() else " "
        after = tail[m.end()] if m.end() < len(tail) else " "
        if run[0] == "_" and before.isalnum() and after.isalnum():
            continue  # snake_case
        if opened and opened[-1] == run and not before.isspace():
            opened.pop()
        elif not after.isspace():
            opened.append(run)
    if len(opened) > OPEN_MARKERS:  # not formatting being written: leave it as it is
        opened = []
    return code + "".join(reversed(opened))


def _render_partial(markdown: str) -> Formatted:
    if _fence_open(markdown):
        return _render(markdown)  # an open fence is a pre to the end
    start = markdown.rfind("\n\n") + 1
    head, tail = markdown[:start], markdown[start:]
    tail = _HALF_LINK.sub(r"\1", tail)
    tail = _DANGLING.sub(r"\1", tail).rstrip()
    closers = _closers(tail)
    if closers:
        shown = _render(head + tail + closers)
        if not shown.text.endswith(closers[-1]):  # the closers parsed as formatting
            return shown
    return _render(head + tail)


# -- validity ------------------------------------------------------------------------------


def check(formatted: Formatted) -> None:
    """Raise ValueError unless Telegram accepts ``formatted``'s entities: known types, inside
    the text, not empty, not between the halves of an emoji, nested as Telegram allows,
    a valid URL on each ``text_link``."""
    text = formatted.text
    units = _Units(text)
    for e in formatted.entities:
        where = f"{e.type} at {e.offset}+{e.length}"
        if e.type not in KNOWN:
            raise ValueError(f"{where}: unknown entity type")
        if e.offset < 0 or e.length <= 0 or e.offset + e.length > units.total:
            raise ValueError(f"{where}: outside the text ({units.total} UTF-16 units)")
        if units.inside_pair(e.offset) or units.inside_pair(e.offset + e.length):
            raise ValueError(f"{where}: cuts a character outside the BMP in two")
        if e.type == "text_link" and not link_url_ok(e.url or ""):
            raise ValueError(f"{where}: Telegram refuses the URL {e.url!r}")
    stack: list[Entity] = []
    for e in sorted(formatted.entities, key=lambda e: (e.offset, -e.length, _rank(e.type))):
        while stack and stack[-1].offset + stack[-1].length <= e.offset:
            stack.pop()
        for outer in stack:
            if outer.offset + outer.length < e.offset + e.length:
                raise ValueError(f"{e.type} at {e.offset}+{e.length} crosses {outer.type} at "
                                 f"{outer.offset}+{outer.length}")
            if not _may_contain(outer.type, e.type):
                raise ValueError(f"{e.type} at {e.offset}+{e.length} may not be inside "
                                 f"{outer.type} at {outer.offset}+{outer.length}")
        stack.append(e)


# -- splitting -----------------------------------------------------------------------------

#: A boundary of a level is only used when it keeps at least this share of the message.
MIN_FILL = 0.3
#: Entities Telegram shows in one message at most: it drops the rest silently
#: (tdlib/telegram-bot-api#820), so a piece holds no more.
MAX_ENTITIES = 100

_LEVELS = (
    (re.compile(r"\n[ \t\r\f\v]*\n\s*"), 0),  # a blank line
    (re.compile(r"[ \t]*\r?\n\s*"), 0),  # a line break
    (re.compile(r"[.!?…。！？][\"'”’»)\]]*(\s+)"), 1),  # a sentence's end
    (re.compile(r"\s+"), 0),  # a space
)
#: cut before or after these rather than inside
_WHOLE = CODE | frozenset({"text_link", "url"})


def _extends_cluster(ch: str) -> bool:
    """Whether ``ch`` belongs to the grapheme cluster of the character before it."""
    cp = ord(ch)
    return (unicodedata.category(ch) in ("Mn", "Me", "Mc") or cp == 0x200D
            or 0xFE00 <= cp <= 0xFE0F or 0x1F3FB <= cp <= 0x1F3FF
            or 0xE0020 <= cp <= 0xE007F or cp == 0x20E3)


def _safe_cut(text: str, i: int, low: int) -> int:
    """A cut at ``i`` moved left (not to ``low`` or before) so it splits no emoji or accent."""
    j = i
    while j > low + 1 and j < len(text) and (
            _extends_cluster(text[j]) or text[j - 1] == "\u200d"
            or (0x1F1E6 <= ord(text[j]) <= 0x1F1FF and 0x1F1E6 <= ord(text[j - 1]) <= 0x1F1FF
                and _flag_half(text, j))):
        j -= 1
    return j if j > low else i


def _flag_half(text: str, j: int) -> bool:
    """Whether ``j`` is the second regional indicator of a flag."""
    run = 0
    k = j - 1
    while k >= 0 and 0x1F1E6 <= ord(text[k]) <= 0x1F1FF:
        run += 1
        k -= 1
    return run % 2 == 1


class _Cutter:
    def __init__(self, formatted: Formatted) -> None:
        self.text = text = formatted.text
        self.units = _Units(text)
        self.entities = sorted(formatted.entities, key=lambda e: (e.offset, -e.length))
        whole = [(self.units.index(e.offset), self.units.index(e.offset + e.length), e.type)
                 for e in self.entities if e.type in _WHOLE]
        self.whole = whole
        self.whole_starts = [start for start, _, _ in whole]
        self.code = [(start, end) for start, end, kind in whole if kind in CODE]
        self.code_starts = [start for start, _ in self.code]

    def _inside(self, spans: list[tuple[Any, ...]], starts: list[int], i: int,
                strict: bool = True) -> bool:
        # these entities never nest (code holds no link, a link no code): one may hold ``i``
        k = (bisect_left(starts, i) if strict else bisect_right(starts, i)) - 1
        if k < 0:
            return False
        start, end = spans[k][0], spans[k][1]
        return (start < i < end) if strict else (start <= i < end)

    def in_code(self, i: int) -> bool:
        return self._inside(self.code, self.code_starts, i, strict=False)

    def inside_whole(self, i: int) -> bool:
        return self._inside(self.whole, self.whole_starts, i)

    def best_cut(self, pos: int, end: int) -> tuple[int, int]:
        """(piece end, next piece start): the best boundary for a piece from ``pos`` that may
        end at ``end`` at most."""
        text = self.text
        window = text[pos:end + 1]  # a boundary may start at ``end``
        least = int((end - pos) * MIN_FILL)
        visible = len(window) - len(window.lstrip())
        for whole_only in (True, False):
            for n, (pattern, group) in enumerate(_LEVELS):
                low = 1 if n == len(_LEVELS) - 1 and not whole_only else least
                best = None
                for m in pattern.finditer(window):
                    cut = m.start(group)
                    if cut > end - pos:
                        break
                    if cut >= low and cut > visible and not (
                            whole_only and self.inside_whole(pos + cut)):
                        best = (pos + cut, pos + m.end())
                if best:
                    return best
        cut = _safe_cut(text, end, pos)
        return cut, cut

    def entity_room(self, pos: int, end: int) -> int:
        """``end``, or before it where the piece from ``pos`` would hold more than
        :data:`MAX_ENTITIES` entities (those continuing into it count too)."""
        low, high = self.units.units(pos), self.units.units(end)
        count = 0
        for e in self.entities:  # by offset
            if e.offset >= high:
                break
            if e.offset + e.length <= low:
                continue
            count += 1
            if count > MAX_ENTITIES and e.offset > low:
                return self.units.index(e.offset)
        return end

    def next_start(self, cut: int, after: int) -> int:
        """Where the piece after a cut starts: past the whitespace, but a code line's
        indentation is code."""
        text = self.text
        while after < len(text) and text[after].isspace():
            after += 1
        newline = text.rfind("\n", cut, after)
        line = newline + 1 if newline >= 0 or cut == 0 else -1  # the text's start is a line's
        if 0 <= line < after < len(text) and self.in_code(after - 1):
            return max(line, cut)
        return after

    def piece(self, start: int, end: int) -> Formatted:
        low, high = self.units.units(start), self.units.units(end)
        kept = []
        for e in self.entities:
            if e.offset >= high:
                break
            s, t = max(e.offset, low), min(e.offset + e.length, high)
            if t > s:
                kept.append(Entity(e.type, s - low, t - s, e.url, e.language))
        return Formatted(self.text[start:end], tuple(kept))

    def pieces(self, first_limit: int, limit: int) -> list[Formatted]:
        if min(first_limit, limit) < 2:
            raise ValueError("limit must be at least 2 (one character outside the BMP)")
        text = self.text
        out = []
        pos = self.next_start(0, 0)
        room = first_limit
        while pos < len(text):
            fits = self.units.total - self.units.units(pos) <= room
            end = self.entity_room(pos, len(text) if fits else
                                   self.units.index_within(pos, room))
            if end == len(text):
                cut = after = len(text)
            else:
                cut, after = self.best_cut(pos, end)
            end = cut
            while end > pos and text[end - 1].isspace():
                end -= 1
            if end > pos:
                out.append(self.piece(pos, end))
                room = limit
            pos = self.next_start(cut, max(after, pos + 1))
        return out


def split(formatted: Formatted, limit: int = 4096) -> list[Formatted]:
    """``formatted`` as messages of at most ``limit`` UTF-16 units and
    :data:`MAX_ENTITIES` entities each (none when blank); an entity cut by a boundary
    continues in the next message."""
    if formatted.text.isascii() and len(formatted.text) <= limit and \
            formatted.text == formatted.text.strip() and \
            len(formatted.entities) <= MAX_ENTITIES:
        return [formatted] if formatted.text else []
    return _Cutter(formatted).pieces(limit, limit)


def split_caption(formatted: Formatted, caption_limit: int = 1024,
                  limit: int = 4096) -> tuple[Formatted, list[Formatted]]:
    """A media's caption (at most ``caption_limit`` units) and the messages that follow it
    with the rest (at most ``limit`` each). A blank text is an empty caption."""
    pieces = _Cutter(formatted).pieces(caption_limit, limit)
    if not pieces:
        return Formatted(""), []
    return pieces[0], pieces[1:]
