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

import importlib
from typing import Any

from tgmux.telegram.app import Intake, TelegramApp
from tgmux.telegram.frontend import TelegramFrontend
from tgmux.telegram.normalize import normalize
from tgmux.telegram.run import login, run_telegram
from tgmux.telegram.sender import FloodControl, Sender
from tgmux.telegram.textsplit import split_caption, split_text, utf16_len

# ``simulate`` and ``parse_input_line`` are left out on purpose (a star import would load the
# fake): see __getattr__.
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

_LAZY = ("parse_input_line", "simulate")


def __getattr__(name: str) -> Any:
    """``simulate`` and ``parse_input_line`` of :mod:`tgmux.telegram.simulate`, imported on
    first use: that module loads the fake Telegram, which ``tgmux run`` must not.

    Transitional, for ``tgmux.cli``'s ``from tgmux.telegram import simulate``; import them from
    :mod:`tgmux.telegram.simulate`. (The module and the function share the name ``simulate``:
    once the module is imported, the package attribute ``simulate`` is the module, unless this
    function ran and bound the function over it, as it does below.)"""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module("tgmux.telegram.simulate")
    functions = {lazy: getattr(module, lazy) for lazy in _LAZY}
    globals().update(functions)
    return functions[name]
