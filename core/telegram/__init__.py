"""tgmux's Telegram frontend (MTProto through kurigram, the maintained Pyrogram fork).

Everything Telegram-specific lives in this package; no backend imports it.

- :func:`run_telegram` — ``tgmux run``: serve a bot or user account until SIGINT/SIGTERM;
- :func:`login` — ``tgmux login``: log a user account in, return its session string;
- :func:`simulate` — ``tgmux simulate``: JSON lines in and out through the real Pyrogram
  client with a fake network (:mod:`tgmux.telegram.offline`);
- :class:`TelegramApp` — client, engine and frontend wired together;
- :class:`TelegramFrontend` — delivery: typing, splitting, streaming, media, flood control;
- :class:`FakeTelegram` — the offline Telegram used by ``simulate`` and ``tgmux.testing``.
"""

from tgmux.telegram.app import Intake, TelegramApp
from tgmux.telegram.commands import login, parse_input_line, run_telegram, simulate
from tgmux.telegram.frontend import TelegramFrontend
from tgmux.telegram.normalize import normalize
from tgmux.telegram.sender import FloodControl, Sender
from tgmux.telegram.textsplit import split_caption, split_text, utf16_len

__all__ = [
    "FloodControl",
    "Intake",
    "Sender",
    "TelegramApp",
    "TelegramFrontend",
    "login",
    "normalize",
    "parse_input_line",
    "run_telegram",
    "simulate",
    "split_caption",
    "split_text",
    "utf16_len",
]
