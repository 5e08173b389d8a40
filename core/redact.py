"""Secrets out of messages and logs: credentials inside URLs.

``postgresql://tgmux:s3cret@db:5432/tgmux`` is shown as ``postgresql://tgmux:***@db:5432/tgmux``;
a percent-encoded password is hidden just the same.
"""

from __future__ import annotations

import re

__all__ = ["redact_urls"]

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s'\"]*):"
                          r"(?P<password>[^/@\s'\"]*)@")


def redact_urls(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@`` replaced by ``***``."""
    return _CREDENTIALS.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
