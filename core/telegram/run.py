"""What the ``tgmux run`` and ``tgmux login`` commands call, and what tgmux tells the operator
when Telegram refuses to start (authorization problems, a stale session)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path

from pyrogram import Client
from pyrogram.errors import RPCError

from tgmux.config import Config, TelegramConfig
from tgmux.errors import ConfigError
from tgmux.hooks import PluginManager
from tgmux.telegram.app import TelegramApp
from tgmux.telegram.client import SessionFileStorage, build_client, session_mode

__all__ = ["login", "run_telegram"]

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
