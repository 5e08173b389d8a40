"""What the user wrote, as a backend should read it: the text with the user's formatting
(Telegram entities) said in Markdown for a backend whose ``format`` is ``markdown``, or kept
readable in plain text for one whose ``format`` is ``plain``.

Markdown (``format: markdown``): bold ``**x**``, italic ``_x_``, strikethrough ``~~x~~``,
inline code ```x```, a code block ````lang`` … ````, a text link ``[x](url)``, a quote
``> x`` (each line); underline, spoiler, mentions, hashtags, URLs... stay as they are written
(Markdown has no underline or spoiler; the others are already in the text). What is outside
the entities is not escaped: a user's ``5 * 3`` reaches the model as they typed it.

Plain (``format: plain``): the text as written, a text link as ``x (url)`` so that its URL is
not lost (``url`` alone when the text is the URL).

Hand-written (no library): entities to Markdown is a tree walk of a few dozen lines, and
the Markdown libraries go the other way (Markdown to entities).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from tgmux.types import Entity, TextFormat

__all__ = ["as_markdown", "as_plain", "user_text"]

_WRAPS = {"bold": "**", "italic": "_", "strikethrough": "~~"}
_QUOTES = ("blockquote", "expandable_blockquote")
#: how one entity is said: (the entity, its content as said, its content as written)
_Say = Callable[[Entity, str, str], str]


def user_text(text: str, entities: Sequence[Entity], text_format: TextFormat) -> str:
    """``text`` with its ``entities`` as a backend of ``text_format`` reads it."""
    if not entities:
        return text
    return as_markdown(text, entities) if text_format == "markdown" else as_plain(text, entities)


def as_markdown(text: str, entities: Sequence[Entity]) -> str:
    """The text with the entities said in Markdown."""
    return _render(text, entities, _markdown)


def as_plain(text: str, entities: Sequence[Entity]) -> str:
    """The text with each text link's URL after it: ``docs (https://…)``."""
    return _render(text, [e for e in entities if e.type == "text_link"], _plain)


# -- the walk ------------------------------------------------------------------------------------


class _Node:
    __slots__ = ("children", "end", "entity", "start")

    def __init__(self, entity: Entity | None, start: int, end: int) -> None:
        self.entity, self.start, self.end = entity, start, end
        self.children: list[_Node] = []


def _index_of(text: str) -> list[int]:
    """For each UTF-16 position (and the end), the string index there (a position inside a
    surrogate pair maps to the character it is part of)."""
    index: list[int] = []
    for i, ch in enumerate(text):
        index.append(i)
        if ord(ch) > 0xFFFF:
            index.append(i)
    index.append(len(text))
    return index


def _tree(text: str, entities: Sequence[Entity]) -> _Node:
    """The entities as a tree of string ranges (Telegram's entities nest; one that overlaps
    its parent's end is cut there)."""
    index = _index_of(text)
    units = len(index) - 1
    root = _Node(None, 0, len(text))
    stack = [root]
    for entity in sorted(entities, key=lambda e: (e.offset, -e.length)):
        first, last = max(0, entity.offset), min(units, entity.offset + entity.length)
        if last <= first:
            continue
        start, end = index[first], index[last]
        while len(stack) > 1 and start >= stack[-1].end:
            stack.pop()
        parent = stack[-1]
        end = min(end, parent.end)
        if end <= start:
            continue
        node = _Node(entity, start, end)
        parent.children.append(node)
        stack.append(node)
    return root


def _render(text: str, entities: Sequence[Entity], say: _Say) -> str:
    def walk(node: _Node) -> str:
        pieces: list[str] = []
        at = node.start
        for child in node.children:
            pieces.append(text[at:child.start])
            pieces.append(walk(child))
            at = child.end
        pieces.append(text[at:node.end])
        inner = "".join(pieces)
        return inner if node.entity is None else say(node.entity, inner,
                                                     text[node.start:node.end])

    return walk(_tree(text, entities))


def _markdown(entity: Entity, inner: str, raw: str) -> str:
    kind = entity.type
    if kind in _WRAPS:
        return _wrap(inner, _WRAPS[kind])
    if kind == "code":
        fence = "``" if "`" in raw else "`"
        pad = " " if fence == "``" else ""
        return f"{fence}{pad}{raw}{pad}{fence}"
    if kind == "pre":
        fence = "````" if "```" in raw else "```"
        body = raw if raw.endswith("\n") else raw + "\n"
        return f"{fence}{entity.language or ''}\n{body}{fence}"
    if kind == "text_link" and entity.url:
        label = inner.replace("]", "\\]")
        return f"[{label}]({entity.url.replace(')', '%29')})"
    if kind in _QUOTES:
        return "\n".join(f"> {line}" if line else ">" for line in inner.split("\n"))
    return inner


def _plain(entity: Entity, inner: str, raw: str) -> str:
    if entity.type != "text_link" or not entity.url:
        return inner
    return entity.url if raw.strip() == entity.url else f"{inner} ({entity.url})"


def _wrap(inner: str, marker: str) -> str:
    """``inner`` between ``marker``s, its blanks outside them (``** x **`` is no Markdown)."""
    core = inner.strip()
    if not core:
        return inner
    head = inner[:len(inner) - len(inner.lstrip())]
    tail = inner[len(inner.rstrip()):]
    return f"{head}{marker}{core}{marker}{tail}"
