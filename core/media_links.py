"""Short-lived public links to media bytes (``server.public_url``): a backend whose provider
takes a picture only by URL (Sensay's ``imageURL``) publishes the bytes here and sends the
link; the ops server (:mod:`tgmux.server`) serves them at ``GET /media/{token}``.

Each link is an unguessable token (``secrets.token_urlsafe(32)``, 256 bits) that works for
``ttl`` seconds, then is forgotten. The map is bounded by count and by bytes: publishing past
either bound drops the oldest links first (logged; their URLs stop working early). Nothing
lists the tokens. Plain stdlib: the engine owns one without importing the HTTP server.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MediaLinks", "SharedMedia"]

log = logging.getLogger("tgmux.media_links")

#: How long a link works: long enough for a provider to fetch it while answering.
DEFAULT_TTL = 600.0
#: Links kept at once, and their bytes in all (a Telegram photo is at most a few MB).
DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
#: A media type as served: ``type/subtype``; anything else goes as octet-stream.
MIME = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]{0,126}")


@dataclass(frozen=True)
class SharedMedia:
    data: bytes
    mime_type: str
    expires_at: float


class MediaLinks:
    """Bytes under random tokens, each for ``ttl`` seconds; at most ``max_entries`` links and
    ``max_bytes`` bytes (oldest dropped first). ``clock`` is monotonic seconds (tests pass
    their own)."""

    def __init__(self, public_url: str, *, ttl: float = DEFAULT_TTL,
                 max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.public_url = public_url.rstrip("/")
        self.ttl = ttl
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.clock = clock
        # insertion order is expiry order (one ttl for all): the oldest is first
        self._entries: OrderedDict[str, SharedMedia] = OrderedDict()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def total_bytes(self) -> int:
        return self._bytes

    def url_for(self, token: str) -> str:
        return f"{self.public_url}/media/{token}"

    async def share(self, data: bytes, mime_type: str) -> str | None:
        """The URL at which ``data`` is served for ``ttl`` seconds; None when it is larger
        than ``max_bytes`` on its own (then it is not kept). Matches ``Turn.share``."""
        size = len(data)
        if size > self.max_bytes:
            log.warning("media links: %d bytes of %s not shared: over the %d bytes kept at most",
                        size, mime_type, self.max_bytes)
            return None
        now = self.clock()
        self._expire(now)
        dropped = 0
        while self._entries and (len(self._entries) >= self.max_entries
                                 or self._bytes + size > self.max_bytes):
            self._remove(next(iter(self._entries)))
            dropped += 1
        if dropped:
            log.warning("media links: dropped the %d oldest link(s) before they expired, to "
                        "stay within %d links and %d bytes; their URLs no longer work",
                        dropped, self.max_entries, self.max_bytes)
        token = secrets.token_urlsafe(32)
        served_as = mime_type if MIME.fullmatch(mime_type) else "application/octet-stream"
        self._entries[token] = SharedMedia(bytes(data), served_as, now + self.ttl)
        self._bytes += size
        return self.url_for(token)

    def get(self, token: str) -> SharedMedia | None:
        """The media under ``token``, or None when it is unknown or has expired."""
        self._expire(self.clock())
        return self._entries.get(token)

    def _expire(self, now: float) -> None:
        while self._entries:
            token, entry = next(iter(self._entries.items()))
            if entry.expires_at > now:
                break
            self._remove(token)

    def _remove(self, token: str) -> None:
        entry = self._entries.pop(token)
        self._bytes -= len(entry.data)
