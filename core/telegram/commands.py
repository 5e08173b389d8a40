"""What the ``tgmux run``, ``tgmux login`` and ``tgmux simulate`` commands call."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from pyrogram import Client
from pyrogram.errors import RPCError

from tgmux.config import Config, TelegramConfig
from tgmux.console import read_lines
from tgmux.errors import ConfigError
from tgmux.hooks import PluginManager
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.client import SessionFileStorage, build_client, session_mode
from tgmux.telegram.fake import FakeTelegram, check_chat, infer_chat_type, offline_client

__all__ = ["login", "parse_input_line", "run_telegram", "simulate"]

log = logging.getLogger("tgmux.telegram")

_AUTH_PROBLEMS = {
    "ACCESS_TOKEN_INVALID": "Telegram rejected the bot token (check telegram.bot_token)",
    "ACCESS_TOKEN_EXPIRED": "the bot token was revoked; get a new one from @BotFather",
    "USER_DEACTIVATED": "this Telegram account was deleted",
    "USER_DEACTIVATED_BAN": "this Telegram account was banned",
    "API_ID_INVALID": "Telegram rejected api_id/api_hash (check them at my.telegram.org)",
}
#: The session's authorization is gone (logged out, revoked, token changed...).
_STALE_SESSION = {
    "AUTH_KEY_UNREGISTERED": "is not logged in any more",
    "AUTH_KEY_INVALID": "is not valid any more",
    "SESSION_REVOKED": "was terminated (e.g. from another device)",
    "SESSION_EXPIRED": "expired",
}


def _refusal(code: str, exc: RPCError, tg: TelegramConfig) -> str:
    """What to tell the operator when Telegram refused to start."""
    if code in _AUTH_PROBLEMS:
        return _AUTH_PROBLEMS[code]
    if code not in _STALE_SESSION:
        return str(exc)
    path = Path(tg.data_dir).expanduser() / f"{tg.session_name}.session"
    what = f"the session {_STALE_SESSION[code]}"
    if tg.bot_token:
        return (f"{what} and authorizing again with bot_token did not help: check "
                f"telegram.bot_token (@BotFather /token shows the current one); to start from "
                f"scratch delete {path}")
    if tg.session_string:
        return f"{what}; run `tgmux login` again and set session_string to the new string"
    return (f"{what}; delete {path} and start `tgmux run` in a terminal to log in again, or "
            "run `tgmux login` and set session_string")


def _check_session(config: Config) -> None:
    tg = config.data.telegram
    if tg.bot_token or tg.session_string:
        return
    path = Path(tg.data_dir).expanduser() / f"{tg.session_name}.session"
    if not path.exists() and not sys.stdin.isatty():
        raise ConfigError(
            f"{config.where(('telegram',))}: no bot_token or session_string, and no session "
            f"file {path}: run `tgmux login` and set session_string (or start `tgmux run` in "
            "a terminal once to log in there)"
        )


async def run_telegram(config: Config, plugin_manager: PluginManager) -> int:
    """``tgmux run``: serve Telegram until SIGINT/SIGTERM, then stop gracefully; 0 when
    stopped that way, 1 when Telegram refused to start."""
    tg = config.require_telegram()
    _check_session(config)
    client = build_client(config)
    app = TelegramApp(config, plugin_manager, client)
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal() -> None:
        log.info("stop requested; finishing replies (up to %.0f s). Press Ctrl-C again to "
                 "quit at once.", tg.shutdown_timeout)
        stopping.set()
        for sig in signals:  # a second Ctrl-C interrupts for real
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)

    for sig in signals:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)
    try:
        log.info("connecting to Telegram (%s, session in %s)", session_mode(tg), tg.data_dir)
        storage = client.storage
        for attempt in (1, 2):
            try:
                await app.start()
                break
            except RPCError as exc:
                code = str(exc.ID or exc.NAME)
                if (attempt == 1 and tg.bot_token and code in _STALE_SESSION
                        and isinstance(storage, SessionFileStorage)):
                    # A bot's session is only an authorization made with its token: make
                    # another one (Pyrogram does, with the token, when the file has none).
                    storage.forget_authorization(f"Telegram says {code}")
                    continue
                log.error("Telegram refused to start: %s", _refusal(code, exc, tg))
                return 1
            except (OSError, ConnectionError, TimeoutError) as exc:
                log.error("cannot reach Telegram: %s", exc)
                return 1
        me = client.me
        who = f"@{me.username}" if me and me.username else f"id {me.id if me else '?'}"
        kind = "bot" if me and me.is_bot else "user account"
        log.info("tgmux is running on Telegram as %s (%s); Ctrl-C stops", who, kind)
        await stopping.wait()
        await app.stop(tg.shutdown_timeout)
        log.info("stopped")
        return 0
    finally:
        for sig in signals:
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


async def login(api_id: int, api_hash: str, *, phone: str | None = None) -> str:
    """``tgmux login``: log a user account in interactively (phone, code, 2FA password, as
    Pyrogram asks for them) and return its session string. Keeps nothing on disk."""
    client = Client("tgmux-login", api_id=api_id, api_hash=api_hash, in_memory=True,
                    phone_number=phone, no_updates=True)
    await client.start()
    try:
        return await client.export_session_string()
    finally:
        await client.stop()


# -- tgmux simulate ---------------------------------------------------------------------------

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
