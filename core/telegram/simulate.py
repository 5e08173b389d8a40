"""``tgmux simulate``: JSON lines in (incoming messages), JSON lines out (what tgmux sends),
through the real Pyrogram client on the fake Telegram (:mod:`tgmux.telegram.fake`).

Kept apart from :mod:`tgmux.telegram.run`: this module loads the fake, ``tgmux run`` must not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, TextIO

from tgmux.config import Config
from tgmux.console import read_lines
from tgmux.hooks import PluginManager
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.fake import FakeTelegram, check_chat, infer_chat_type, offline_client

__all__ = ["parse_input_line", "simulate"]


_INPUT_FIELDS: dict[str, type] = {
    "chat_id": int, "chat_type": str, "user_id": int, "username": str, "first_name": str,
    "text": str, "message_id": int, "thread_id": int, "reply_to_bot": bool, "photo": str,
    "voice": str, "sticker": str, "document": str,
}
_MEDIA_FIELDS = ("photo", "voice", "sticker", "document")


def parse_input_line(line: str) -> dict[str, Any]:
    """One ``tgmux simulate`` input line as keyword arguments for
    :meth:`FakeTelegram.incoming`; ValueError says what is wrong."""
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc.msg}") from None
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    unknown = sorted(set(data) - set(_INPUT_FIELDS))
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)} "
                         f"(known: {', '.join(_INPUT_FIELDS)})")
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if value is None:
            continue
        wanted = _INPUT_FIELDS[key]
        if (wanted is int and (isinstance(value, bool) or not isinstance(value, int))) or \
                not isinstance(value, wanted):
            raise ValueError(f"{key}: expected {'a number' if wanted is int else wanted.__name__}"
                             f", got {value!r}")
        fields[key] = value
    if "user_id" not in fields:
        raise ValueError("user_id is required")
    if "text" not in fields and not any(k in fields for k in _MEDIA_FIELDS):
        raise ValueError("text is required (or one of: photo, voice, sticker, document)")
    chat_id = fields.get("chat_id", fields["user_id"])
    chat_type = fields.get("chat_type") or infer_chat_type(chat_id)
    check_chat(chat_id, chat_type, fields["user_id"])
    if "thread_id" in fields and chat_type != "supergroup":
        raise ValueError("thread_id: forum topics exist in supergroups only")
    for key in ("photo", "voice", "document"):
        source = fields.get(key)
        if source and not source.startswith(("http://", "https://")) and \
                not Path(source).expanduser().is_file():
            raise ValueError(f"{key}: no such file: {source}")
    return fields


async def simulate(config: Config, plugin_manager: PluginManager, *, stdin: TextIO,
                   stdout: TextIO, bot_username: str = "tgmux_bot") -> int:
    """``tgmux simulate``: JSON lines in (incoming messages), JSON lines out (what tgmux
    sends), through the real Pyrogram client with a fake network. Exits 0 when the input
    ended and every reply was sent; 1 when some input line was invalid (reported on stderr
    with its line number, the other lines are still answered)."""
    fake = FakeTelegram(bot_username=bot_username.lstrip("@"))
    client = offline_client(fake, skip_updates=config.data.telegram.skip_updates)
    app = TelegramApp(config, plugin_manager, client)
    broken = False

    def write(action: dict[str, Any]) -> None:
        nonlocal broken
        if broken:
            return
        try:
            stdout.write(json.dumps(action, ensure_ascii=False) + "\n")
            stdout.flush()
        except (BrokenPipeError, ValueError):  # the reader went away: keep answering quietly
            broken = True

    fake.listeners.append(write)
    await app.start()
    bad = 0
    try:
        lines = read_lines(stdin)
        number = 0
        while (line := await lines.get()) is not None:
            number += 1
            if not line.strip():
                continue
            try:
                fields = parse_input_line(line)
            except ValueError as exc:
                bad += 1
                print(f"input line {number}: {exc}", file=sys.stderr)
                continue
            await fake.incoming(**fields)
    finally:
        await app.stop(None)
    if fake.unknown:
        print(f"the fake Telegram got requests it does not know: {sorted(set(fake.unknown))}",
              file=sys.stderr)
        return 1
    return 1 if bad else 0
