"""``Retry-After`` read for every provider: delta-seconds or an HTTP date, made sane.

Providers have said ``inf``, ``1e308``, ``NaN``, ``-5`` and dates in the year 9999: a value that
is not a number is no ``Retry-After`` (None); a negative one is 0; an absurdly long one is
clamped to :data:`tgmux.errors.MAX_WAIT` (and said to users as a date).
"""

from __future__ import annotations

import email.utils
import time

from tgmux.errors import clamp_wait

__all__ = ["parse_retry_after"]


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), at most
    :data:`~tgmux.errors.MAX_WAIT`; None when absent or not a number."""
    if not value:
        return None
    value = value.strip()
    try:
        return clamp_wait(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return clamp_wait(when.timestamp() - (time.time() if now is None else now))
