"""Link previews: Telegram builds one for the first link of a message, and again on every
edit. AI replies go out without them unless ``telegram.link_previews: true`` (per account).
The fake Telegram marks a message or edit with a link that gets a preview with
``"link_preview": true``, one sent without with ``"link_preview": false``."""

from __future__ import annotations

import tg_test_backends

PLUGINS = [tg_test_backends]
GROUP = -1001234567890
LINKED = "read https://example.com/a and www.example.org then tell me more about it please"

CONFIG = """
telegram:
  flood: {private_per_second: 100, group_per_minute: 6000}
backends:
  echo: {type: echo}
  drip: {type: drip, delay: 0.08}
routes:
  - match: {chat_type: supergroup}
    backend: drip
default: echo
"""


async def test_replies_with_links_ask_for_no_preview_by_default(tgmux_bot):
    bot = await tgmux_bot(CONFIG, plugins=PLUGINS, edit_interval=0.2)
    reply = await bot.send(LINKED, user_id=42)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": LINKED, "link_preview": False}]
    plain = await bot.send("no link here", user_id=42)
    assert "link_preview" not in plain.messages[0]  # nothing to preview
    streamed = await bot.send(f"@tgmux_bot {LINKED}", user_id=42, chat_id=GROUP)
    edits = streamed.of("edit_message")
    assert edits and streamed.texts == [LINKED]
    assert all(a.get("link_preview") is not True for a in streamed.actions)
    assert edits[-1]["link_preview"] is False


async def test_link_previews_true_lets_telegram_build_them(tgmux_bot):
    config = CONFIG.replace("telegram:\n", "telegram:\n  link_previews: true\n")
    bot = await tgmux_bot(config, plugins=PLUGINS, edit_interval=0.2)
    reply = await bot.send(LINKED, user_id=42)
    assert reply.messages == [{"action": "send_message", "chat_id": 42, "message_id": 1001,
                               "text": LINKED, "link_preview": True}]
    plain = await bot.send("no link here", user_id=42)
    assert "link_preview" not in plain.messages[0]  # nothing to preview
    streamed = await bot.send(f"@tgmux_bot {LINKED}", user_id=42, chat_id=GROUP)
    assert streamed.of("edit_message")[-1]["link_preview"] is True


SHOWY = """
  showy:
    telegram: {session_name: showy, link_previews: true}
"""
QUIET = """
  quiet:
    telegram: {session_name: quiet}
"""
BACKENDS = """
backends:
  echo: {type: echo}
default: echo
"""


async def test_link_previews_are_set_per_account(tgmux_bot):
    # the test kit serves the config's first account
    showy = await tgmux_bot("accounts:" + SHOWY + QUIET + BACKENDS)
    reply = await showy.send(LINKED, user_id=42)
    assert reply.messages[0]["link_preview"] is True
    quiet = await tgmux_bot("accounts:" + QUIET + SHOWY + BACKENDS)
    assert list(quiet.config.accounts) == ["quiet", "showy"]
    reply = await quiet.send(LINKED, user_id=42)
    assert reply.messages[0]["link_preview"] is False
