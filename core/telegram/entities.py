"""tgmux's formatting (:class:`tgmux.types.Entity`, Bot API names, UTF-16 offsets) as
kurigram's ``MessageEntity`` objects, sent with a text as ``entities=`` (never a parse mode:
entities cannot fail to parse)."""

from __future__ import annotations

from collections.abc import Sequence

from pyrogram import enums, types

from tgmux.formatting import Formatted, plain
from tgmux.types import Entity

__all__ = ["as_formatted", "to_pyrogram"]

_TYPES: dict[str, enums.MessageEntityType] = {
    "bold": enums.MessageEntityType.BOLD,
    "italic": enums.MessageEntityType.ITALIC,
    "underline": enums.MessageEntityType.UNDERLINE,
    "strikethrough": enums.MessageEntityType.STRIKETHROUGH,
    "spoiler": enums.MessageEntityType.SPOILER,
    "code": enums.MessageEntityType.CODE,
    "pre": enums.MessageEntityType.PRE,
    "text_link": enums.MessageEntityType.TEXT_LINK,
    "blockquote": enums.MessageEntityType.BLOCKQUOTE,
    "expandable_blockquote": enums.MessageEntityType.BLOCKQUOTE,
    "url": enums.MessageEntityType.URL,
    "mention": enums.MessageEntityType.MENTION,
    "hashtag": enums.MessageEntityType.HASHTAG,
    "cashtag": enums.MessageEntityType.CASHTAG,
    "bot_command": enums.MessageEntityType.BOT_COMMAND,
    "email": enums.MessageEntityType.EMAIL,
    "phone_number": enums.MessageEntityType.PHONE_NUMBER,
    "bank_card": enums.MessageEntityType.BANK_CARD,
}


def as_formatted(text: str | Formatted) -> Formatted:
    return plain(text) if isinstance(text, str) else text


def to_pyrogram(entities: Sequence[Entity]) -> list[types.MessageEntity] | None:
    """kurigram's entities for ``entities`` (None for none). Kinds a reply cannot carry
    without more than a type (a text mention needs a user, a custom emoji its id) are left
    out: the text still shows, unformatted there."""
    converted = []
    for entity in entities:
        kind = _TYPES.get(entity.type)
        if kind is None:
            continue
        converted.append(types.MessageEntity(
            type=kind, offset=entity.offset, length=entity.length,
            url=entity.url if entity.type == "text_link" else None,
            # MTProto's pre always has a language ("" for none)
            language=(entity.language or "") if entity.type == "pre" else None,
            expandable=True if entity.type == "expandable_blockquote" else None))
    return converted or None
