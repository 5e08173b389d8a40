"""SIGHUP never ends ``tgmux run``, ``tgmux chat`` or ``tgmux simulate``.

Python's default for SIGHUP ends the process, and a reload is only possible while the engine
runs (:class:`tgmux.reload.Reloader` takes SIGHUP over then). So each of these commands calls
:func:`hold_sighup` as its first instruction; from then on, outside a reloader's time, a SIGHUP

* while starting is remembered, and the config is read again as soon as a reloader runs (the
  operator's edit is not lost: the file may have changed after it was read);
* while stopping is ignored, with a log line.

Only the standard library is imported: the handler is installed before anything heavy is
loaded or read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType

__all__ = ["hand_back", "hold_sighup", "stopping", "take_pending"]

log = logging.getLogger("tgmux.reload")


class _State:
    held = False  # hold_sighup() was called in this process
    stopping = False
    pending = False  # a SIGHUP came while starting


def _on_sighup(signum: int, frame: FrameType | None) -> None:
    if _State.stopping:
        _say("SIGHUP ignored: tgmux is stopping")
        return
    _State.pending = True
    _say("SIGHUP while tgmux starts: the config file is read again once it runs")


def _say(message: str) -> None:
    """Log from the signal handler: through the event loop when one runs (the handler may have
    interrupted a log line being written), else at once."""
    try:
        asyncio.get_running_loop().call_soon_threadsafe(log.warning, message)
    except RuntimeError:  # no loop running (or it is closing)
        log.warning(message)


def hold_sighup() -> None:
    """From now on SIGHUP is deferred (starting) or ignored (stopping), never fatal. Nothing
    where the process has no SIGHUP (Windows) or this is not the main thread."""
    if not hasattr(signal, "SIGHUP") or threading.current_thread() is not threading.main_thread():
        return
    _State.held, _State.stopping, _State.pending = True, False, False
    signal.signal(signal.SIGHUP, _on_sighup)


def stopping() -> None:
    """The process stops (also when it never ran far enough for a reloader): SIGHUP is
    ignored from now on."""
    _State.stopping = True


def take_pending() -> bool:
    """Whether a SIGHUP came while starting (once: it is forgotten)."""
    pending, _State.pending = _State.pending, False
    return pending


def hand_back(remove: Callable[[], object]) -> None:
    """A reloader is done with SIGHUP: ``remove`` its handler, and (when :func:`hold_sighup`
    was called) put the one that ignores SIGHUP in its place, the process now stopping.
    SIGHUP is blocked in between: the moment without a handler would end the process."""
    if not _State.held:
        remove()
        return
    blocked = hasattr(signal, "pthread_sigmask")
    if blocked:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    try:
        _State.stopping = True
        with contextlib.suppress(Exception):  # whatever it did, ours is installed next
            remove()
        signal.signal(signal.SIGHUP, _on_sighup)
    finally:
        if blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
