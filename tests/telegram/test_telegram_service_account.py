"""Telegram's service account (777000) sends login codes to user accounts: what it says never
reaches a backend and is never answered (a code shared anywhere is one Telegram blocks)."""

from __future__ import annotations

import logging

import pytest
from pyrogram import enums
from pyrogram.types import Chat, Message, User

from tgmux.telegram.normalize import normalize

CONFIG = """
backends:
  echo: {type: echo, prefix: "echo: "}
default: echo
"""

CODE = ("Login code: 61307. Do not give this code to anyone, even if they say they are from "
        "Telegram!")


@pytest.mark.parametrize("is_bot", [False, True])
async def test_a_login_code_from_777000_reaches_no_backend_and_is_not_answered(
        tgmux_bot, caplog, is_bot):
    bot = await tgmux_bot(CONFIG, is_bot=is_bot)
    caplog.set_level(logging.INFO, logger="tgmux")
    service = await bot.send(CODE, user_id=777000, first_name="Telegram")
    assert service.ignored and service.actions == []
    assert await bot.engine.store.inbox_unanswered(account="main") == []
    # the next user is answered as usual (nothing is stuck behind it)
    other = await bot.send("hi", user_id=42)
    assert other.texts == ["echo: hi"]
    lines = [r for r in caplog.records if "777000" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert all("61307" not in r.getMessage() for r in caplog.records)
    assert all("61307" not in str(a) for a in bot.telegram.actions)


def test_a_support_account_is_never_passed_on():
    """``is_support`` (Telegram's own accounts) as well as the id 777000."""
    me = User(id=5_000_000_001, is_self=True, is_bot=False, username="me_account")
    staff = User(id=4242, is_support=True, first_name="Telegram Support")
    message = Message(id=7, chat=Chat(id=4242, type=enums.ChatType.PRIVATE), from_user=staff,
                      text="your account is fine")
    assert normalize(message, me) is None
    user = User(id=4243, first_name="Ann")
    message = Message(id=8, chat=Chat(id=4243, type=enums.ChatType.PRIVATE), from_user=user,
                      text="hello")
    assert normalize(message, me) is not None


async def test_nothing_is_ever_sent_to_the_service_account(tgmux_bot, caplog):
    """A message of 777000 stored by an older version and replayed after a restart (the
    "I was restarted while answering “Login code…”" notice) must not write the code back."""
    from tgmux.backend import Text
    from tgmux.types import ChatIdentity

    bot = await tgmux_bot(CONFIG, is_bot=False)
    read: list[str] = []

    async def parts():
        for text in (f"I was restarted while answering your message “{CODE}”", "more"):
            read.append(text)
            yield Text(text)

    chat = ChatIdentity(chat_type="private", chat_id=777000, user_id=777000, message_id=3)
    bot.telegram.remember_chat(chat_type="private", chat_id=777000, user_id=777000,
                               first_name="Telegram", message_id=3)  # Telegram knows it
    caplog.set_level(logging.WARNING, logger="tgmux")
    delivered = await bot.app.frontend.deliver(chat, parts(), reply_to_message_id=3)
    assert delivered == [] and len(read) == 2  # the stream is read to its end, nothing sent
    assert bot.telegram.actions == [] or all(
        a["action"] == "set_commands" for a in bot.telegram.actions)
    assert all("61307" not in r.getMessage() for r in caplog.records)
    assert any("777000" in r.getMessage() for r in caplog.records)
