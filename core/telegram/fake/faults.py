"""Faults the fake Telegram injects (:meth:`FakeTelegram.fail`), and its own refusals."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NoReturn

from pyrogram import raw
from pyrogram.errors import RPCError
from pyrogram.errors.exceptions.all import exceptions as _ERRORS
from pyrogram.raw.core import TLObject

__all__ = ["HANG", "TIMEOUT", "Fault", "UnknownRequest", "check_method", "error_code", "refuse"]


class UnknownRequest(RuntimeError):
    """The fake Telegram got a request it has no answer for."""


#: action names :meth:`FakeTelegram.fail` takes besides raw method names
ACTIONS = frozenset({"send_message", "edit_message", "send_draft", "chat_action", "send_photo",
                     "send_voice", "send_audio", "send_document", "set_commands",
                     "delete_message"})


def check_method(method: str) -> None:
    """ValueError unless ``method`` names a request: ``*``, an action name, or a raw method
    as Pyrogram names it under ``pyrogram.raw.functions`` (``updates.GetDifference``)."""
    if method == "*" or method in ACTIONS:
        return
    module, _, name = method.rpartition(".")
    target = getattr(raw.functions, module, None) if module else raw.functions
    function = getattr(target, name, None) if target is not None else None
    if not (isinstance(function, type) and issubclass(function, TLObject)) or \
            not name[:1].isupper():
        raise ValueError(f"method: no Telegram method {method!r} (a raw method as "
                         "pyrogram.raw.functions names it, e.g. messages.SendMessage or "
                         "updates.GetDifference)")


def error_code(error_id: str) -> int:
    """The code Telegram answers ``error_id`` with (420 for flood waits, 400...)."""
    shape = re.sub(r"_\d+", "_X", error_id)
    for code in (420, 403, 400, 406, 401, 500, 503, 303):
        if shape in _ERRORS.get(code, {}):
            return code
    return 400


def refuse(error: str, query: type, code: int = 400) -> NoReturn:
    """Answer a request with Telegram's error ``error`` (as Pyrogram raises it)."""
    RPCError.raise_it(raw.types.RpcError(error_code=code, error_message=error), query)
    raise AssertionError("unreachable")  # raise_it always raises


#: ``fail(..., "TIMEOUT")``: no answer came (the session raises TimeoutError, as Pyrogram's does)
TIMEOUT = "TIMEOUT"
#: ``fail(..., "HANG")``: the request never ends (a network that swallows it; only a
#: cancellation ends the wait)
HANG = "HANG"


@dataclass
class Fault:
    method: str  # raw name ("messages.SendMessage") or action name ("send_message"), or "*"
    error: str  # "FLOOD_WAIT_3", "USER_IS_BLOCKED", "TIMEOUT", ...
    code: int
    chat_id: int | None = None
    times: int | None = 1  # None: every time
    delivered: bool = False  # the request took effect; only its answer is the error

    def matches(self, names: tuple[str, ...], chat_id: int | None) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method != "*" and self.method not in names:
            return False
        return self.chat_id is None or self.chat_id == chat_id
