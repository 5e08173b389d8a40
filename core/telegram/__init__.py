"""tgmux's Telegram frontend (MTProto through kurigram, the maintained Pyrogram fork).

Everything Telegram-specific lives in this package; no backend imports it.

- :func:`run_telegram` — ``tgmux run``: serve a bot or user account until SIGINT/SIGTERM, and
  :func:`login` — ``tgmux login``: log a user account in, return its session string
  (:mod:`tgmux.telegram.run`);
- :func:`~tgmux.telegram.simulate.simulate` — ``tgmux simulate``: JSON lines in and out through
  the real Pyrogram client on the fake Telegram (:mod:`tgmux.telegram.simulate`);
- :class:`TelegramApp` — client, engine and frontend wired together (:mod:`~tgmux.telegram.app`);
- :class:`TelegramFrontend` — delivery: typing, splitting, media (:mod:`~tgmux.telegram.frontend`),
  one reply's messages (:mod:`~tgmux.telegram.outbox`), streaming and its throttle
  (:mod:`~tgmux.telegram.streaming`);
- :class:`Sender`, :class:`FloodControl` — every request through the outgoing limiter and the
  error policy (:mod:`~tgmux.telegram.sender`);
- the fake Telegram (``FakeTelegram``, ``offline_client``) is a test kit of its own,
  :mod:`tgmux.telegram.fake`, used by ``simulate``, ``tgmux.testing`` and tests only: nothing
  here imports it, so ``tgmux run`` never loads it.
"""

from tgmux.telegram.app import Intake, TelegramApp
from tgmux.telegram.frontend import TelegramFrontend
from tgmux.telegram.normalize import normalize
from tgmux.telegram.run import login, run_telegram
from tgmux.telegram.sender import FloodControl, Sender
from tgmux.telegram.textsplit import split_caption, split_text, utf16_len

# ``simulate`` is not imported here: it loads the fake Telegram (import tgmux.telegram.simulate).
__all__ = [
    "FloodControl",
    "Intake",
    "Sender",
    "TelegramApp",
    "TelegramFrontend",
    "login",
    "normalize",
    "run_telegram",
    "split_caption",
    "split_text",
    "utf16_len",
]
