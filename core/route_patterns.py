"""Route patterns (``match: {text: ...}``): regular expressions run by RE2, in time linear in the
text, whatever the pattern.

A backtracking engine (Python's ``re``) can take exponential time on a pattern such as
``^(a+)+$``: one 28-character message held every chat for 10 s. RE2 (``google-re2``, Google's
maintained binding) guarantees linear time by refusing what needs backtracking, backreferences
and lookaround; such a pattern is refused when the config is loaded, with the reason.
"""

from __future__ import annotations

import re
from typing import Any

import re2

from tgmux.text import valid_unicode

__all__ = ["RoutePattern", "compile_route_pattern"]

# log_errors off: RE2 would print its own line on stderr beside the config error
_OPTIONS = re2.Options()
_OPTIONS.log_errors = False

_HINT = "(route patterns use RE2 syntax, which runs in linear time)"
_LOOKAROUND = re.compile(r"invalid perl operator: \(\?<?[=!]")
_BACKREFERENCE = re.compile(r"invalid escape sequence: \\[0-9]")


class RoutePattern:
    """A compiled route pattern."""

    def __init__(self, compiled: Any) -> None:
        self._compiled = compiled

    def found_in(self, text: str) -> bool:
        try:
            return self._compiled.search(text) is not None
        except UnicodeEncodeError:  # RE2 reads UTF-8: a lone surrogate half becomes U+FFFD
            return self._compiled.search(valid_unicode(text)) is not None


def compile_route_pattern(pattern: str) -> RoutePattern:
    """The compiled pattern; ValueError says why it cannot be."""
    try:
        return RoutePattern(re2.compile(pattern, _OPTIONS))
    except re2.error as exc:
        raise ValueError(_reason(exc)) from None
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode (a lone surrogate half)") from None


def _reason(exc: Exception) -> str:
    detail = exc.args[0] if exc.args else str(exc)
    if isinstance(detail, bytes):
        detail = detail.decode("utf-8", "replace")
    if _LOOKAROUND.match(detail):
        unsupported = "lookaround ((?=…), (?!…), (?<=…), (?<!…)) is not supported"
    elif _BACKREFERENCE.match(detail):
        unsupported = "backreferences (\\1) are not supported"
    elif detail == "invalid escape sequence: \\Z":
        unsupported = "\\Z is not supported: use \\z (the end of the text) or $"
    elif detail.startswith("pattern too large"):
        unsupported = "the pattern is too large"
    else:
        return f"not a valid regular expression (RE2 syntax): {detail}"
    return f"not a pattern tgmux can use: {unsupported} {_HINT}"
