"""The cyclic garbage collector's thresholds while an engine serves.

Why (measured in docs/benchmarks.md, "Issue 14: HTTP path"): a turn in flight keeps a few
hundred container objects alive while it waits for its provider (a task, futures, the request
and response objects, the reply's parts). With CPython's default thresholds ``(700, 10, 10)``
those survive the young collections, are promoted, and soon trigger full collections that walk
the whole heap, in-flight turns included: with N turns in flight there are more full
collections, each longer, so the collector's share grows with N. At 10 000 concurrent requests
it was 2.2 s of bare aiohttp's 3.3 s, and 4.7 s of the engine's 6.8 s. Rarer young collections
(:data:`SERVING_THRESHOLDS`) let most turns finish before their objects are looked at: the
engine's collector time at 10 000 fell from 4.97 s to 1.27 s, at 3 000 from 1.19 s to 0.3 s.

Only Python's defaults are replaced (an application embedding tgmux with its own thresholds
keeps them), and they come back when the last engine stops.
"""

from __future__ import annotations

import gc

__all__ = ["SERVING_THRESHOLDS", "serving_started", "serving_stopped"]

PYTHON_DEFAULTS = (700, 10, 10)
#: Young collections every 10 000 net container allocations instead of 700; a middle
#: collection every 50 young ones. Unreachable cycles wait a little longer (a few MB at most).
SERVING_THRESHOLDS = (10_000, 50, 10)

_engines = 0
_replaced = False


def serving_started() -> None:
    """An engine starts serving: use :data:`SERVING_THRESHOLDS` if the defaults are set."""
    global _engines, _replaced
    _engines += 1
    if _engines == 1 and gc.get_threshold() == PYTHON_DEFAULTS:
        gc.set_threshold(*SERVING_THRESHOLDS)
        _replaced = True


def serving_stopped() -> None:
    """An engine stopped: the last one puts back what was there, unless someone else changed
    the thresholds meanwhile."""
    global _engines, _replaced
    _engines = max(0, _engines - 1)
    if _engines == 0 and _replaced:
        if gc.get_threshold() == SERVING_THRESHOLDS:
            gc.set_threshold(*PYTHON_DEFAULTS)
        _replaced = False
