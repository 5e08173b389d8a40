"""Secrets out of messages and logs.

* Credentials inside URLs: ``postgresql://tgmux:s3cret@db:5432/tgmux`` is shown as
  ``postgresql://tgmux:***@db:5432/tgmux``; a percent-encoded password is hidden just the same.
* Every secret value of the loaded config (:func:`remember_config_secrets`, called for each
  config validated, at start and on every reload): the values under keys that look secret
  (:data:`SECRET_KEY`: API keys, tokens, webhook secrets, passwords, session strings, the
  ``api_hash``) and the password of every URL in it (the store's DSN, a proxy). Wherever one
  appears (a provider's error body repeating the API key, an exception's text, a message for
  a Telegram user) it is shown as ``***``; also percent-encoded and JSON-escaped. Values
  shorter than :data:`MIN_SECRET_CHARS` are left alone: masking them would garble every line.

The secrets of the config before the current one stay masked too: its backends may still be
finishing requests while a reload replaces them. :func:`redact` is one regular expression
search per text, and nothing when no secret is known.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote, unquote

__all__ = ["MIN_SECRET_CHARS", "SECRET_KEY", "redact", "redact_urls", "remember_config_secrets",
           "remember_secrets"]

#: Config keys whose values are secrets (and are never echoed in an error message).
SECRET_KEY = re.compile(r"secret|token|key|hash|password|session", re.IGNORECASE)
#: Keys :data:`SECRET_KEY` matches that hold no secret.
NOT_SECRET_KEYS = frozenset({"session_name"})
#: Shorter values are not masked (``abc`` would be masked in every word that has it).
MIN_SECRET_CHARS = 6
MASK = "***"

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s'\"]*):"
                          r"(?P<password>[^/@\s'\"]*)@")

_PLACEHOLDER = "PASSWORD"

_current: frozenset[str] = frozenset()
_previous: frozenset[str] = frozenset()
_pattern: re.Pattern[str] | None = None


def redact_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``
    (but the ``USER:PASSWORD`` placeholder of tgmux's own hints, which is no secret)."""
    return _CREDENTIALS.sub(
        lambda m: m[0] if m["password"] == _PLACEHOLDER
        else f"{m['scheme']}{m['user']}:{MASK}@", text)


def redact(text: str) -> str:
    """``text`` with URL passwords and every remembered secret value replaced by ``***``."""
    text = redact_urls(text)
    return text if _pattern is None else _pattern.sub(MASK, text)


def config_secrets(data: Any) -> set[str]:
    """The secret values of a parsed config (see the module doc)."""
    found: set[str] = set()

    def walk(value: Any, secret: bool) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, secret or (isinstance(key, str) and key not in NOT_SECRET_KEYS
                                      and SECRET_KEY.search(key) is not None))
        elif isinstance(value, list):
            for item in value:
                walk(item, secret)
        elif isinstance(value, str):
            if secret:
                found.add(value)
            found.update(m["password"] for m in _CREDENTIALS.finditer(value))

    walk(data, False)
    return found


def remember_secrets(values: Iterable[str]) -> None:
    """Mask ``values`` from now on (with those remembered last time; older ones are
    forgotten). The same values again change nothing."""
    global _current, _previous, _pattern
    values = frozenset(values)
    if values == _current:
        return
    _current, _previous = values, _current
    variants: set[str] = set()
    for value in _current | _previous:
        variants.update((value, unquote(value), quote(value, safe=""),
                         json.dumps(value, ensure_ascii=False)[1:-1]))
    kept = sorted((v for v in variants if len(v) >= MIN_SECRET_CHARS), key=len, reverse=True)
    _pattern = re.compile("|".join(map(re.escape, kept))) if kept else None


def remember_config_secrets(data: Any) -> None:
    """Mask the secret values of a parsed config from now on (see the module doc)."""
    remember_secrets(config_secrets(data))
