"""Message entities as the fake Telegram takes them: checked as Telegram checks them, and
written in Bot API form (``tgmux simulate``'s ``entities``).

What Telegram does with a request's entities (MTProto ``messages.sendMessage`` and friends):
an entity outside the text (UTF-16 offsets), or of no length, is ``ENTITY_BOUNDS_INVALID``;
a text link whose URL is not one it can open is ``ENTITY_TEXTURL_INVALID``; a mention of a
user it cannot resolve is ``ENTITY_MENTION_USER_INVALID``. A message shows at most
:data:`MAX_ENTITIES` entities: Telegram keeps the first 100 and drops the rest silently
(tdlib/telegram-bot-api#820); the fake records what a chat would show.
"""

from __future__ import annotations

import re
from typing import Any

from pyrogram.raw.core import TLObject

from tgmux.telegram.fake.faults import refuse
from tgmux.text import utf16_len

__all__ = ["MAX_ENTITIES", "bot_api_entities", "has_link", "raw_entities"]

#: entities a message shows at most (Telegram drops the rest)
MAX_ENTITIES = 100

#: raw entity class → Bot API type
_TYPES = {
    "MessageEntityBold": "bold",
    "MessageEntityItalic": "italic",
    "MessageEntityUnderline": "underline",
    "MessageEntityStrike": "strikethrough",
    "MessageEntitySpoiler": "spoiler",
    "MessageEntityCode": "code",
    "MessageEntityPre": "pre",
    "MessageEntityTextUrl": "text_link",
    "MessageEntityBlockquote": "blockquote",
    "MessageEntityUrl": "url",
    "MessageEntityMention": "mention",
    "MessageEntityHashtag": "hashtag",
    "MessageEntityCashtag": "cashtag",
    "MessageEntityBotCommand": "bot_command",
    "MessageEntityEmail": "email",
    "MessageEntityPhone": "phone_number",
    "MessageEntityBankCard": "bank_card",
    "MessageEntityCustomEmoji": "custom_emoji",
    "MessageEntityMentionName": "text_mention",
    "InputMessageEntityMentionName": "text_mention",
}

#: a URL a text link may open: http(s) with a host, or a tg:// link
_TEXT_URL = re.compile(r"(?i)(?:https?://[^\s/?#]+\.[^\s/?#]+(?:[/?#]\S*)?|tg://\S+)\Z")


def bot_api_entities(text: str, entities: list[TLObject] | None,
                     query: type) -> list[dict[str, Any]] | None:
    """The entities a request gave ``text``, in Bot API form (None when there are none);
    refuses the request as Telegram would when one is invalid."""
    if not entities:
        return None
    size = utf16_len(text)
    shown: list[dict[str, Any]] = []
    for entity in entities:
        name = _TYPES.get(type(entity).__name__)
        if name is None:
            refuse("ENTITY_BOUNDS_INVALID", query)  # the fake takes no other kinds
        if entity.offset < 0 or entity.length <= 0 or entity.offset + entity.length > size:
            refuse("ENTITY_BOUNDS_INVALID", query)
        item: dict[str, Any] = {"type": name, "offset": entity.offset, "length": entity.length}
        if name == "text_link":
            if not _TEXT_URL.match(entity.url or ""):
                refuse("ENTITY_TEXTURL_INVALID", query)
            item["url"] = entity.url
        elif name == "pre" and entity.language:
            item["language"] = entity.language
        elif name == "blockquote" and getattr(entity, "collapsed", None):
            item["type"] = "expandable_blockquote"
        elif name == "text_mention":
            refuse("ENTITY_MENTION_USER_INVALID", query)  # the fake resolves no users
        shown.append(item)
    return shown[:MAX_ENTITIES]


def has_link(text: str, link: re.Pattern[str], entities: list[dict[str, Any]] | None) -> bool:
    """A link Telegram could preview: one in the text, or behind a text link."""
    return bool(link.search(text)) or any(e["type"] == "text_link" for e in entities or ())


def raw_entities(entities: list[TLObject] | None) -> list[TLObject] | None:
    """The entities as the sent message keeps them (the first :data:`MAX_ENTITIES`)."""
    return list(entities[:MAX_ENTITIES]) if entities else None
