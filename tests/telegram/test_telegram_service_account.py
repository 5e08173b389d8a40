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
