"""PROVISIONAL: Markdown to Telegram text + entities (replaced by fmt-render's module at merge).

Same API as the real one; minimal (telegramify-markdown's convert and split_entities).
"""

from __future__ import annotations

from dataclasses import dataclass

import telegramify_markdown

from tgmux.text import utf16_len
from tgmux.types import Entity

__all__ = ["Formatted", "check", "plain", "render", "split", "split_caption"]


@dataclass(frozen=True)
class Formatted:
    text: str
    entities: tuple[Entity, ...] = ()


def plain(text: str) -> Formatted:
    return Formatted(text)


def _entity(e: telegramify_markdown.MessageEntity) -> Entity:
    return Entity(type=e.type, offset=e.offset, length=e.length, url=e.url,
                  language=e.language or None)


def render(markdown: str, *, partial: bool = False) -> Formatted:
    try:
        text, entities = telegramify_markdown.convert(markdown)
    except Exception:  # provisional: never fail
        return Formatted(markdown)
    formatted = Formatted(text, tuple(_entity(e) for e in entities if e.length > 0))
    try:
        check(formatted)
    except ValueError:
        return Formatted(text)
    return formatted


def _to_lib(e: Entity) -> telegramify_markdown.MessageEntity:
    return telegramify_markdown.MessageEntity(type=e.type, offset=e.offset, length=e.length,
                                              url=e.url, language=e.language)


def split(formatted: Formatted, limit: int = 4096) -> list[Formatted]:
    pieces = telegramify_markdown.split_entities(
        formatted.text, [_to_lib(e) for e in formatted.entities], limit)
    return [Formatted(text, tuple(_entity(e) for e in entities if e.length > 0))
            for text, entities in pieces if text.strip()]


def split_caption(formatted: Formatted, caption_limit: int = 1024,
                  limit: int = 4096) -> tuple[Formatted, list[Formatted]]:
    pieces = split(formatted, caption_limit)
    if not pieces:
        return Formatted(""), []
    caption = pieces[0]
    rest_start = len(caption.text)
    rest = formatted.text[rest_start:]
    if not rest.strip():
        return caption, []
    shift = utf16_len(formatted.text[:rest_start])
    entities = []
    for e in formatted.entities:
        start, end = max(e.offset, shift), min(e.offset + e.length, shift + utf16_len(rest))
        if end > start:
            entities.append(Entity(e.type, start - shift, end - start, e.url, e.language))
    return caption, split(Formatted(rest, tuple(entities)), limit)


def check(formatted: Formatted) -> None:
    size = utf16_len(formatted.text)
    for e in formatted.entities:
        if e.length <= 0 or e.offset < 0 or e.offset + e.length > size:
            raise ValueError(f"entity {e.type} at {e.offset}+{e.length} outside the text")
